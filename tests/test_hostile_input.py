"""What a careless or hostile user gives: each mistake is one error naming the argument, before any model
loads where it can be told then; nothing non-finite steers or is reported as a score; nothing is written outside
the folder the user named; the cache heals after a killed write or a damaged entry."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
import torch

from lm_eval_contrans import cli
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.hf.lm_eval_model import ConTransLM

PAIRS = [("The hotel room", " was spotless."), ("The concert", " was awful.")]


@pytest.fixture(autouse=True)
def _warnings_reach_caplog():
    """Under lm-eval the package's log goes to lm-eval's handlers only, at lm-eval's level (lm_eval_model), which
    an earlier in-process evaluation may have left at ERROR; here it goes to pytest's too, at every level."""
    package = logging.getLogger("lm_eval_contrans")
    level, propagate = package.level, package.propagate
    package.setLevel(logging.NOTSET)
    package.propagate = True
    yield
    package.setLevel(level)
    package.propagate = propagate


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails a test whose refusal came only after a model load (the slow part a mistake should never wait for)."""
    import transformers

    def refused(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was named")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refused)


@pytest.fixture(scope="module")
def artifact(tiny_llama_dir, tiny_gpt2_dir, small_inputs, tmp_path_factory):
    from lm_eval_contrans.artifact import save_transplants
    from lm_eval_contrans.pipeline import build_transplants

    concept, anchors = small_inputs
    path = tmp_path_factory.mktemp("hostile") / "tiny.safetensors"
    save_transplants(build_transplants(str(tiny_llama_dir), str(tiny_gpt2_dir), concept, anchors=anchors,
                                       device="cpu"), path)
    return path


def adapter_args(tiny_llama_dir, tiny_gpt2_dir, small_inputs, **extra) -> dict:
    concept, anchors = small_inputs
    return dict(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept=concept, anchors=anchors,
                device="cpu", **extra)


@pytest.mark.parametrize("extra, message", [
    (dict(alpah=2), "^alpah: unknown model arg; did you mean alpha\\?"),
    (dict(target_layr=1), "^target_layr: unknown model arg; did you mean target_layer\\?"),
    (dict(build_batch_size=0), "^build_batch_size: expected a whole number >= 1 or auto, got 0"),
    (dict(build_batch_size=-3), "^build_batch_size: expected a whole number >= 1 or auto"),
    (dict(build_batch_size=2.5), "^build_batch_size: expected a whole number >= 1 or auto, got 2.5"),
])
def test_model_arg_mistakes_are_named_before_any_model_loads(extra, message, tiny_llama_dir, tiny_gpt2_dir,
                                                             small_inputs, no_model_loads):
    with pytest.raises(ConTransError, match=message):
        ConTransLM(**adapter_args(tiny_llama_dir, tiny_gpt2_dir, small_inputs, **extra))


def test_a_save_vector_that_cannot_be_written_is_named_before_the_build(tiny_llama_dir, tiny_gpt2_dir, small_inputs,
                                                                        tmp_path, no_model_loads):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for path, message in ((tmp_path, "is a folder; name a file"), (blocker / "x.safetensors", "cannot write to")):
        with pytest.raises(ConTransError, match=f"^save_vector: .*{message}"):
            ConTransLM(**adapter_args(tiny_llama_dir, tiny_gpt2_dir, small_inputs, save_vector=str(path)))


def test_a_text_longer_than_the_context_is_refused_naming_its_file_and_place(tiny_llama_dir, tiny_gpt2_dir,
                                                                             small_inputs, tmp_path, no_model_loads):
    concept, anchors = small_inputs
    long_text = " ".join(["good"] * 600)  # the tiny models' context: 512 (and 1024) positions
    pairs = tmp_path / "long.jsonl"
    pairs.write_text("".join(json.dumps({"positive": text, "negative": "It was bad."}) + "\n"
                             for text in ("It was good.", long_text, "It was fine.")))
    with pytest.raises(ConTransError, match=f"^concept: {pairs}, positive of pair 2: 60[0-9] tokens, longer than "
                                            ".* context of 512"):
        ConTransLM(**{**adapter_args(tiny_llama_dir, tiny_gpt2_dir, small_inputs), "concept": str(pairs)})
    corpus = tmp_path / "anchors.txt"
    corpus.write_text(Path(anchors).read_text() + "\n" + long_text + "\n")
    with pytest.raises(ConTransError, match="^anchors: anchor corpus .*anchors.txt, text 81: 60[0-9] tokens"):
        ConTransLM(**{**adapter_args(tiny_llama_dir, tiny_gpt2_dir, small_inputs), "anchors": str(corpus)})


def test_degenerate_concept_sets_and_anchor_corpora(tmp_path, caplog):
    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.concepts import load_concept_set

    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"positive": "It was good.", "negative": "It was good. "}) + "\n")
    with pytest.raises(ConTransError, match="pair 1: the positive and negative texts are the same"):
        load_concept_set(str(same))
    repeated = tmp_path / "repeated.jsonl"
    repeated.write_text(json.dumps({"positive": "It was good.", "negative": "It was bad."}) + "\n" * 1 +
                        json.dumps({"positive": "It was good.", "negative": "It was bad."}) + "\n")
    with caplog.at_level(logging.WARNING):
        load_concept_set(str(repeated))
    assert "1 of its 2 pairs repeat an earlier pair" in caplog.text and "has 1 distinct pair(s)" in caplog.text
    identical = tmp_path / "identical.txt"
    identical.write_text("The same sentence.\n" * 200)
    with pytest.raises(ConTransError, match="^anchors: .*every text is the same"):
        load_anchor_texts(str(identical))
    caplog.clear()
    some = tmp_path / "some.txt"
    some.write_text("One sentence.\nAnother sentence.\nOne sentence.\n")
    with caplog.at_level(logging.WARNING):
        assert load_anchor_texts(str(some))[0] == ["One sentence.", "Another sentence.", "One sentence."]
    assert "1 of the 3 texts" in caplog.text and "overstates" in caplog.text


def _with_vector(artifact: Path, destination: Path, change) -> Path:
    """A copy of the artifact with its first vector changed, written as a careless tool would (no checks)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(artifact))
    with safe_open(str(artifact), framework="pt") as handle:
        metadata = handle.metadata()
    change(tensors, metadata)
    save_file(tensors, str(destination), metadata=metadata)
    return destination


@pytest.mark.parametrize("change, message", [
    (lambda t, m: t["0.vector"].__setitem__(0, float("nan")), "the vector of .* holds non-finite values"),
    (lambda t, m: t["0.vector"].__setitem__(slice(None), float("inf")), "holds non-finite values"),
    (lambda t, m: t["0.vector"].zero_(), "is all zeros: it would steer nothing"),
    (lambda t, m: m.__setitem__("lm_eval_contrans", re.sub('"target_layer": [0-9]+', '"target_layer": 999', m["lm_eval_contrans"])),
     "target block 999 is not one of the 3 blocks"),
    (lambda t, m: m.__setitem__("lm_eval_contrans", m["lm_eval_contrans"].replace('"residual_norm": ', '"residual_norm": -')),
     "residual_norm -.* is not a finite, non-negative number"),
    # JSON's true is Python's 1: it must not be read as block 1
    (lambda t, m: m.__setitem__("lm_eval_contrans", re.sub('"target_layer": [0-9]+', '"target_layer": true', m["lm_eval_contrans"])),
     "target block True is not one of the 3 blocks"),
    (lambda t, m: m.__setitem__("lm_eval_contrans", m["lm_eval_contrans"][:-1]),
     "its 'lm_eval_contrans' metadata is not valid JSON \\(Expecting .* at character [0-9]+\\); the file was damaged"),
])
def test_an_artifact_that_cannot_steer_is_refused_by_every_reader(change, message, artifact, tiny_gpt2_dir, tmp_path,
                                                                  capsys):
    from lm_eval_contrans.artifact import load_transplants

    bad = _with_vector(artifact, tmp_path / "bad.safetensors", change)
    with pytest.raises(ConTransError, match=f"^vector: {bad}: .*{message}"):
        ConTransLM(target=str(tiny_gpt2_dir), vector=str(bad), device="cpu")
    assert cli.main(["inspect", str(bad)]) == 2
    assert cli.main(["export", str(bad), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]) == 2
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(ConTransError, match=message):
        load_transplants(bad)


def test_nothing_that_cannot_steer_is_written(artifact, tmp_path):
    from lm_eval_contrans.artifact import load_transplant, save_transplant

    transplant = load_transplant(artifact)
    vector = transplant.vector.clone()
    vector[1] = float("nan")
    transplant = transplant.with_steering(vector=vector)
    with pytest.raises(ConTransError, match="^out: .*holds non-finite values"):
        save_transplant(transplant, tmp_path / "nan.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value, message", [(float("nan"), "non-finite"), (0.0, "all zeros")])
def test_another_tools_vector_that_cannot_steer_is_refused(value, message, tiny_gpt2_dir, tmp_path):
    path = tmp_path / "vector.pt"
    vector = torch.ones(48)
    vector[:] = value
    torch.save({2: vector}, path)
    with pytest.raises(ConTransError, match=f"^vector: {path}: the vector for block 2 .*{message}"):
        ConTransLM(target=str(tiny_gpt2_dir), vector=str(path), alpha_unit="raw", device="cpu")


def test_an_alpha_that_dwarfs_the_residual_stream_is_refused_before_anything_runs(artifact, tiny_gpt2_dir):
    with pytest.raises(ConTransError, match="^alpha: 1e\\+30 adds a vector of norm .* times its median residual norm "
                                            ".* At most 1000 times"):
        ConTransLM(target=str(tiny_gpt2_dir), vector=str(artifact), alpha=1e30, device="cpu")
    ConTransLM(target=str(tiny_gpt2_dir), vector=str(artifact), alpha=-500, device="cpu")  # 50 times: allowed


def test_a_steered_pass_that_turns_non_finite_stops_the_evaluation(artifact, tiny_gpt2_dir, monkeypatch):
    """The net under the range check (half precision overflows far earlier): alpha 1e30 is finite, and so is the
    vector it scales; GPT-2's states after it are not."""
    from lm_eval.api.instance import Instance

    import lm_eval_contrans.transplant_args as transplant_args

    monkeypatch.setattr(transplant_args, "MOST_PUSH", float("inf"))
    lm = ConTransLM(target=str(tiny_gpt2_dir), vector=str(artifact), alpha=1e30, device="cpu", batch_size=2)
    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(PAIRS)]
    with pytest.raises(ConTransError, match="^alpha: the steered model's outputs are not finite .*sentiment12 at "
                                            "block 2, alpha 1e\\+30"):
        lm.loglikelihood(requests, disable_tqdm=True)
    generation = [Instance("generate_until", {}, ("The hotel room", {"until": ["\n"], "max_gen_toks": 4}), 0)]
    with pytest.raises(ConTransError, match="^alpha: the steered model's outputs are not finite"):
        lm.generate_until(generation, disable_tqdm=True)
    lm.use_transplants(lm.transplants, 1.0)  # the same model at a sane alpha scores again
    assert all(torch.isfinite(torch.tensor(score)) for score, _ in lm.loglikelihood(requests, disable_tqdm=True))


@pytest.mark.parametrize("argv, message", [
    (["export", "{artifact}", "--format", "steered", "--alpha", "nan", "--out", "{tmp}/x.pt"], "alpha: must be finite"),
    (["export", "{artifact}", "--format", "gguf", "--alpha", "inf", "--out", "{tmp}/x.gguf"], "alpha: must be finite"),
    (["export", "{artifact}", "--format", "gguf", "--out", "{tmp}"], "out: {tmp} is a folder; name a file"),
    (["build", "--source", "S", "--target", "T", "--out", "{tmp}/file/x.safetensors"], "out: cannot write to"),
    (["compare", "--source", "S", "--target", "T", "--tasks", "t", "--out", "{tmp}/file"], "out: {tmp}/file is a file"),
    (["compare", "--source", "S", "--target", "T", "--tasks", "t", "--alphas", "1", "2", "1.0", "--out", "{tmp}/o"],
     "alphas: 1 is given twice (1 2 1); each alpha makes one row of the table"),
])
def test_command_line_outputs_and_numbers_are_checked_before_any_work(argv, message, artifact, tmp_path, capsys,
                                                                      no_model_loads):
    (tmp_path / "file").write_text("")
    before = sorted(tmp_path.rglob("*"))
    argv = [part.format(artifact=artifact, tmp=tmp_path) for part in argv]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip().startswith(f"contrans: error: {message.format(tmp=tmp_path)}")
    assert sorted(tmp_path.rglob("*")) == before


def test_names_that_become_paths_stay_inside_the_output_folder(tmp_path):
    from lm_eval_contrans.experiments.report import Row, write_report
    from lm_eval_contrans.paths import safe_name

    assert [safe_name(name) for name in ("../../escaped", "a/b", "..", ".hidden", "", "ok-1.2")] == \
        ["escaped", "a_b", "unnamed", "hidden", "unnamed", "ok-1.2"]
    out = tmp_path / "deep" / "out"
    rows = [Row(name="base", results={"../../trav_task": {"acc,none": 0.5}}, kind="base")]
    write_report(rows, out)
    written = {path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file()}
    assert written == {Path("deep/out/table.md"), Path("deep/out/table.csv"), Path("deep/out/plots/trav_task.png")}
    assert "../../trav_task" in (out / "table.md").read_text()  # the original name, inside the file


def test_a_cache_folder_that_cannot_be_used_is_named(tmp_path, monkeypatch):
    from lm_eval_contrans.cache import cached_tensor

    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("CONTRANS_CACHE", str(not_a_folder))
    with pytest.raises(ConTransError, match=f"^CONTRANS_CACHE: cannot make the cache folder {not_a_folder}/states"):
        cached_tensor("states", {"x": 1}, lambda: torch.ones(2))


def test_leftovers_of_killed_writes_are_removed_by_the_next_run_that_takes_the_lock(tmp_path, monkeypatch):
    from lm_eval_contrans.cache import _entry_path, cached_dir, cached_tensor

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    (tmp_path / "gguf" / ".model-key.x1y2").mkdir(parents=True)  # a de-quantization killed half-way
    (tmp_path / "gguf" / ".model-key.x1y2" / "model.safetensors").write_bytes(b"\0" * 1000)
    entry = _entry_path("states", {"x": 1})
    entry.parent.mkdir(parents=True)
    (entry.parent / f".{entry.stem}.abc").write_bytes(b"\0" * 100)  # a recording killed while writing
    cached_dir("gguf", "model-key", lambda folder: (folder / "config.json").write_text("{}"))
    cached_tensor("states", {"x": 1}, lambda: torch.ones(2))
    leftovers = [path.name for path in tmp_path.rglob(".*") if not path.name.endswith(".lock")]
    assert leftovers == []


def test_a_damaged_entry_is_made_again_once_with_a_warning_naming_it(tmp_path, monkeypatch, caplog):
    from lm_eval_contrans.cache import _entry_path, cached_dir, cached_tensor
    from lm_eval_contrans.loading.gguf_files import _loadable_folder

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    made = []

    def produce(folder: Path) -> None:
        made.append(folder)
        (folder / "config.json").write_text("{}")
        from safetensors.torch import save_file

        save_file({"w": torch.ones(1000)}, str(folder / "model.safetensors"))

    folder = cached_dir("gguf", "model-key", produce, sound=_loadable_folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])  # truncated
    with caplog.at_level(logging.WARNING):
        again = cached_dir("gguf", "model-key", produce, sound=_loadable_folder)
    assert again == folder and len(made) == 2 and f"the cache entry {folder} is damaged" in caplog.text
    assert _loadable_folder(again)
    cached_tensor("states", {"x": 2}, lambda: torch.ones(3))
    entry = _entry_path("states", {"x": 2})
    entry.write_bytes(entry.read_bytes()[:-4])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert torch.equal(cached_tensor("states", {"x": 2}, lambda: torch.full((3,), 2.0)), torch.full((3,), 2.0))
    assert f"the cache entry {entry} is damaged" in caplog.text


def test_a_write_killed_with_sigkill_leaves_nothing_the_next_run_keeps(tmp_path, monkeypatch):
    """A real `kill -9` half-way through filling a cache folder (as a de-quantization is filled)."""
    import signal
    import subprocess
    import sys
    import time

    script = ("import time; from pathlib import Path; from lm_eval_contrans.cache import cached_dir\n"
              "def produce(folder):\n"
              "    (folder / 'model.safetensors').write_bytes(b'0' * 1_000_000)\n"
              "    Path(folder.parent / 'started').write_text('')\n"
              "    time.sleep(60)\n"
              "cached_dir('gguf', 'model-key', produce)\n")
    writer = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "CONTRANS_CACHE": str(tmp_path)})
    started = tmp_path / "gguf" / "started"
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert started.exists(), "the writer never started"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert [path.name for path in (tmp_path / "gguf").glob(".model-key.*")], "the kill left no staging folder?"

    from lm_eval_contrans.cache import cached_dir

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    folder = cached_dir("gguf", "model-key", lambda folder: (folder / "config.json").write_text("{}"))
    assert (folder / "config.json").is_file() and not (folder / "model.safetensors").exists()
    assert list((tmp_path / "gguf").glob(".model-key.*")) == []


@pytest.mark.parametrize("output_layer_called", [True, False])
def test_non_finite_states_stop_the_pass_at_the_output_layer_or_in_the_logits(output_layer_called, tiny_gpt2_dir,
                                                                              monkeypatch):
    """The check reads the output layer's input; a model that never calls its output layer as a module (it
    multiplies by the embedding matrix itself) has its logits read instead, so neither kind scores NaN."""
    from lm_eval_contrans.loading import load_model
    from lm_eval_contrans.transplant import steer, stop_if_not_finite

    model, _ = load_model(str(tiny_gpt2_dir), dtype="float32", device="cpu")
    head, head_runs = model.get_output_embeddings(), []
    original_forward = head.forward
    monkeypatch.setattr(head, "forward", lambda states: head_runs.append(1) or original_forward(states))
    if not output_layer_called:
        monkeypatch.setattr(model, "get_output_embeddings", lambda: None)  # the check finds no output layer
    ids = torch.tensor([[5, 17, 33]])
    with torch.no_grad(), stop_if_not_finite(model, lambda: "a test steer"):
        assert torch.isfinite(model(ids).logits).all()  # an unsteered pass goes through
        with steer(model, 1, torch.full((48,), 1e30), 1e10):  # 1e40 overflows float32: inf, then NaN after the norm
            with pytest.raises(ConTransError, match="^alpha: the steered model's outputs are not finite .*a test steer"):
                model(ids)
        # stopped before the output layer ran, or (no output layer found) by its logits after it
        assert len(head_runs) == (1 if output_layer_called else 2)
        assert torch.isfinite(model(ids).logits).all()  # and the next pass is checked afresh


def test_a_vector_for_the_target_with_an_overflowing_alpha_stops_instead_of_scoring_a_uniform_distribution(
        tiny_llama_dir, tmp_path):
    """Another tool's vector has no recorded residual norm, so alpha's range check cannot judge it; at 1e30 its sum
    overflows float32 and the Llama's RMS norm turns the state into zeros (logits then uniform, finite), which
    the stop catches as a constant state."""
    from lm_eval.api.instance import Instance

    torch.save({1: torch.ones(32)}, tmp_path / "ones.pt")
    lm = ConTransLM(target=str(tiny_llama_dir), vector=str(tmp_path / "ones.pt"), alpha=1e30, device="cpu", batch_size=2)
    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(PAIRS)]
    with pytest.raises(ConTransError, match="^alpha: the steered model's outputs are not finite .*or constant at a "
                                            "position, with ones at block 1, alpha 1e\\+30"):
        lm.loglikelihood(requests, disable_tqdm=True)
    lm.use_transplants(lm.transplants, 1.0)
    assert all(torch.isfinite(torch.tensor(score)) for score, _ in lm.loglikelihood(requests, disable_tqdm=True))


# --- duplicated, invisible and mistyped inputs (issue 42), in process: the mechanism is the point ---

def _pairs_file(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"positive": p, "negative": n}, ensure_ascii=False) + "\n" for p, n in pairs))
    return path


def test_a_concept_given_twice_at_the_same_blocks_is_refused_before_any_model_loads(tiny_llama_dir, tiny_gpt2_dir,
                                                                                    small_inputs, no_model_loads):
    from lm_eval_contrans.pipeline import plan_build

    concept, anchors = small_inputs
    with pytest.raises(ConTransError, match="^concept: 'sentiment12' \\(concept 2\\) repeats 'sentiment12' \\(concept "
                                            "1\\) at the same blocks, so its vector would be added twice"):
        ConTransLM(**{**adapter_args(tiny_llama_dir, tiny_gpt2_dir, small_inputs), "concept": f"{concept}+{concept}"})
    shipped = Path(__file__).resolve().parents[1] / "concept_sets" / "sentiment.yaml"  # one set under two names
    with pytest.raises(ConTransError, match="^concept: 'sentiment' \\(concept 2\\) repeats 'sentiment'"):
        plan_build(str(tiny_llama_dir), str(tiny_gpt2_dir), f"sentiment+{shipped}", anchors=anchors, target_layer=1)
    # at two blocks it is a choice, and planned
    plan = plan_build(str(tiny_llama_dir), str(tiny_gpt2_dir), f"{concept}+{concept}", anchors=anchors,
                      source_layer=1, target_layer="1+2")
    assert plan.target_layers == [1, 2]  # read at the request boundary: the plan sees numbers


def test_a_concept_file_whose_name_holds_a_plus_is_read_whole(tmp_path, tiny_llama_dir, tiny_gpt2_dir, small_inputs,
                                                              no_model_loads):
    from lm_eval_contrans.concepts import split_concepts
    from lm_eval_contrans.pipeline.build import concept_sets
    from lm_eval_contrans.request import parse_concepts

    pairs = [(f"It was good {i}.", f"It was bad {i}.") for i in range(6)]
    plus = _pairs_file(tmp_path / "a+b.jsonl", pairs)
    assert split_concepts(str(plus)) == [str(plus)]
    assert split_concepts(f"{plus}+sentiment") == [str(plus), "sentiment"]
    assert split_concepts("honesty + toxicity") == ["honesty", "toxicity"]
    assert [len(concept) for concept in concept_sets(parse_concepts(f"sentiment+{plus}"))][1] == 6
    # one concept, so one alpha: two are refused as for any single concept
    with pytest.raises(ConTransError, match="^alpha: 2 values .* for 1 concepts"):
        ConTransLM(**{**adapter_args(tiny_llama_dir, tiny_gpt2_dir, small_inputs), "concept": str(plus), "alpha": "1+2"})
    missing, folder = str(tmp_path / "c+d.jsonl"), re.escape(str(tmp_path))
    with pytest.raises(ConTransError, match=f"^concept: unknown concept '{folder}/c': not a shipped concept set and "
                                            f"not a file. Shipped concepts: .* \\('\\+' splits concepts: "
                                            f"'{re.escape(missing)}' was read as '{folder}/c' and 'd.jsonl'; a file "
                                            "whose name holds '\\+' is read whole where it exists\\)$"):
        parse_concepts(missing)  # at the request boundary, before anything is read


@pytest.mark.parametrize("positive, negative, shown", [
    ("It was good.", "It was\u200b good.", "U+200B"),  # a zero-width space
    ("It was\u200b good.", "It was\u200c good.", "U+200B, U+200C"),
    ("It was \ufb01ne.", "It was fine.", "U+FB01"),  # a ligature, the same text after NFKC
    ("It was good.\u2060", "\u202aIt was good.", "U+202A, U+2060"),
])
def test_sides_that_differ_only_invisibly_are_refused_as_the_same(positive, negative, shown, tmp_path):
    from lm_eval_contrans.concepts import load_concept_set

    path = _pairs_file(tmp_path / "invisible.jsonl", [("It was lovely.", "It was awful."), (positive, negative)])
    with pytest.raises(ConTransError, match=f"^concept: {path}, pair 2: the positive and negative texts differ only in "
                                            f"invisible or compatibility characters \\({re.escape(shown)}\\), so the pair says "
                                            "nothing about the concept"):
        load_concept_set(str(path))


def test_visible_differences_with_invisible_characters_still_read(tmp_path, caplog):
    from lm_eval_contrans.concepts import load_concept_set

    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"  # a zero-width joiner inside an emoji
    pairs = [(f"A {family} day was lovely.", f"A {family} day was awful."),
             ("It was good.", "It was bad."), ("It was\u200b good.", "It was bad.")]
    with caplog.at_level(logging.WARNING):
        concept = load_concept_set(str(_pairs_file(tmp_path / "ok.jsonl", pairs)))
    assert concept.positives[0] == pairs[0][0]  # texts are kept as written; only the comparison folds them
    assert "1 of its 3 pairs repeat an earlier pair" in caplog.text  # pair 3 is pair 2 to a reader


@pytest.mark.parametrize("text, message", [
    ('[{"positive": "a", "negative": "b"},\n {"positive": "c", "negative": "d"}]\n',
     "is one JSON array of 2 item\\(s\\), not JSON Lines \\(one JSON object per line\\); rename it to .json, or write"),
    ('[{"positive": "a", "negative": "b"}]\n', "is one JSON array of 1 item"),
    ('{"positive": "It was good.", "negative": 3}\n', "pair 1: the 'negative' text is 3 \\(int\\), not a string; quote it"),
])
def test_a_concept_file_of_the_wrong_shape_is_named_for_what_it_is(text, message, tmp_path):
    from lm_eval_contrans.concepts import load_concept_set

    path = tmp_path / "pairs.jsonl"
    path.write_text(text)
    with pytest.raises(ConTransError, match=f"^concept: {path},? {message}"):
        load_concept_set(str(path))


def test_an_anchor_corpus_that_is_a_json_array_in_a_jsonl_is_named(tmp_path):
    from lm_eval_contrans.anchors import load_anchor_texts

    path = tmp_path / "anchors.jsonl"
    path.write_text(json.dumps([{"text": f"Sentence {i}."} for i in range(3)]))
    with pytest.raises(ConTransError, match=f"^anchors: {path} is one JSON array of 3 item"):
        load_anchor_texts(str(path))


def test_vector_and_source_vector_together_are_refused(artifact, tiny_llama_dir, tiny_gpt2_dir, tmp_path,
                                                       no_model_loads):
    torch.save({1: torch.ones(32)}, tmp_path / "for_source.pt")
    with pytest.raises(ConTransError, match="^source_vector: give vector= \\(steering the target as it is\\) or "
                                            "source_vector= .* not both$"):
        ConTransLM(target=str(tiny_gpt2_dir), source=str(tiny_llama_dir), vector=str(artifact),
                   source_vector=str(tmp_path / "for_source.pt"), device="cpu")


def test_model_args_as_lm_evals_parser_hands_them_over(artifact, tiny_gpt2_dir, no_model_loads):
    """What `--model_args` becomes in lm-eval's own parser (the real one, in process): a space after a comma stays in
    the name, and is named; a repeated key keeps its last value (lm-eval's rule, which its parser logs)."""
    from lm_eval._cli.utils import key_val_to_dict

    parsed = key_val_to_dict(f"target={tiny_gpt2_dir}, vector={artifact},alpha=2")
    assert " vector" in parsed  # lm-eval keeps the space: if it ever strips it, this test has done its work
    with pytest.raises(ConTransError, match="^vector: ' vector' has spaces around its name \\(a space after a comma "
                                            "in --model_args\\?\\), which lm-eval keeps, so no model arg takes it; "
                                            "write vector=... with no space$"):
        ConTransLM(**parsed, device="cpu")
    with pytest.raises(ConTransError, match="^dtype: ' dtype' has spaces"):  # an engine's arg as much as ours
        ConTransLM(target=str(tiny_gpt2_dir), vector=str(artifact), device="cpu", **{" dtype": "float32"})
    assert key_val_to_dict("alpha=1,alpha=2")["alpha"] == 2


def test_layer_args_as_lm_eval_hands_them_over_are_block_indices(tmp_path):
    """lm-eval's parser turns "-1" into -1.0 ("-1".isnumeric() is false) and "1" into 1: every layer arg reads a
    whole float outside [0, 1] as the block index it was typed as."""
    from lm_eval._cli.utils import key_val_to_dict
    from lm_eval_contrans.blocks import resolve_layer
    from lm_eval_contrans.pipeline.depth import depth_of
    from lm_eval_contrans.vectors import read_vector, target_directions

    parsed = key_val_to_dict("target_layer=-1,source_layer=-2,other=3.0,fraction=1.0,half=0.5")
    assert parsed["target_layer"] == -1.0 and isinstance(parsed["target_layer"], float)
    assert [resolve_layer(parsed[name], 4, name) for name in parsed] == [3, 2, 3, 3, 2]
    assert depth_of(parsed["source_layer"], 4) == 0.5
    with pytest.raises(ConTransError, match="^target_layer: a fractional layer must lie in \\[0, 1\\]"):
        resolve_layer(-1.5, 4, "target_layer")
    with pytest.raises(ConTransError, match="^target_layer: expected a block index or a depth fraction, got True"):
        resolve_layer(True, 4, "target_layer")
    torch.save(torch.ones(32), tmp_path / "bare.pt")  # a bare tensor placed by the layer arg: a port's or vector='s
    bare = read_vector(tmp_path / "bare.pt", parsed["source_layer"])
    assert bare.blocks == [-2] and bare.checked(32, 4, "source_vector").blocks == [2]
    placed = target_directions(read_vector(tmp_path / "bare.pt", parsed["target_layer"], "vector"), hidden_size=32,
                               num_layers=4)
    assert [direction.block for direction in placed] == [3]


def test_alpha_from_python_is_a_number(artifact, tiny_gpt2_dir):
    from lm_eval_contrans.artifact import load_transplant
    from lm_eval_contrans.loading import load_model
    from lm_eval_contrans.transplant import steer
    from lm_eval_contrans.transplant_args import alphas_for

    model, _ = load_model(str(tiny_gpt2_dir), dtype="float32", device="cpu")
    direction = load_transplant(artifact).direction
    for alpha in (True, "2", b"2"):
        with pytest.raises(ConTransError, match=f"^alpha: expected a number, got {re.escape(repr(alpha))}$"):
            with direction.apply(model, alpha=alpha):
                pass
    with pytest.raises(ConTransError, match="^alpha: expected a number, got '2'$"):
        with steer(model, 1, direction.vector, alpha="2"):
            pass
    with direction.apply(model, alpha=2), direction.apply(model, alpha=torch.tensor(0.5)):  # numbers of any kind steer
        pass
    # text is how model args arrive (lm-eval's parser, one part of 1.5+2): read there, and only there
    assert alphas_for("1.5+2", 2) == [1.5, 2.0] and alphas_for("2", 1) == [2.0]
    with pytest.raises(ConTransError, match="^alpha: expected a number, got True"):  # `alpha=true` in --model_args
        ConTransLM(target=str(tiny_gpt2_dir), vector=str(artifact), alpha=True, device="cpu")


def _gguf(path: Path, tensors: dict) -> Path:
    """A control-vector GGUF holding exactly these tensors (names and numpy arrays as given, unchecked)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", len(tensors))
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("name, write, message", [
    ("int.gguf", lambda p: _gguf(p, {"direction.1": torch.arange(32, dtype=torch.int32).numpy()}),
     "the tensor for block 1 holds int32 values; a steering vector holds floating-point numbers"),
    ("twice.gguf", lambda p: _gguf(p, {"direction.2": torch.ones(32).numpy(), "direction.02": torch.ones(32).numpy()}),
     "'direction.2' and 'direction.02' both name block 2; keep one"),
    ("matrix.gguf", lambda p: _gguf(p, {"direction.1": torch.ones(64, 64).numpy()}),
     "the tensor for block 1 has shape \\(64, 64\\); a steering vector is one row of numbers \\(1-D\\)"),
    ("matrix.npy", lambda p: __import__("numpy").save(p, torch.ones(64, 64).numpy()),
     "(the tensor for block 1|its tensor) has shape \\(64, 64\\); a steering vector is one row"),  # placed, or not
    ("twice.safetensors", lambda p: __import__("safetensors.torch").torch.save_file(
        {"layers.3": torch.ones(32), "layers.03": torch.ones(32)}, str(p)), "'layers.03' and 'layers.3' both name block 3"),
    ("twice.pt", lambda p: torch.save({3: torch.ones(32), "model.layers.3": torch.ones(32)}, p),
     "3 and 'model.layers.3' both name block 3"),
])
def test_another_tools_file_that_is_not_a_vector_is_refused_by_every_reader(name, write, message, tmp_path, capsys):
    from lm_eval_contrans.vectors import read_vector

    path = tmp_path / name
    write(path)
    with pytest.raises(ConTransError, match=f"^source_vector: {path}: {message}"):
        read_vector(path, 1)
    assert cli.main(["inspect", str(path)]) == 2  # not "width 64": what it holds is said, as port would
    assert re.match(f"contrans: error: artifact: {path}: {message}", capsys.readouterr().err)


def test_a_map_worse_than_the_mean_is_warned_about_at_build_time(artifact, tiny_llama_dir, tiny_gpt2_dir,
                                                                 small_inputs, monkeypatch, caplog):
    """Held-out R² below 0: the map predicts the target's states worse than their mean; the build says so once."""
    import dataclasses

    import lm_eval_contrans.pipeline.build as build
    from lm_eval_contrans.pipeline import build_transplants

    fitted = build.make_transplant
    monkeypatch.setattr(build, "make_transplant", lambda *a, **k: dataclasses.replace(fitted(*a, **k), heldout_r2=-0.25))
    concept, anchors = small_inputs
    with caplog.at_level(logging.WARNING, logger="lm_eval_contrans"):
        (transplant,) = build_transplants(str(tiny_llama_dir), str(tiny_gpt2_dir), concept, anchors=anchors, device="cpu")
    warned = [record.getMessage() for record in caplog.records if "below 0" in record.getMessage()]
    assert warned == [f"sentiment12: the map from source block {transplant.source_layer} to target block "
                      f"{transplant.target_layer} has held-out R^2 -0.250, below 0 (worse than predicting the mean "
                      "state): the transplanted vector is unreliable; try more anchors, another block or map=ridge"]


@pytest.mark.cli
def test_lm_eval_cli_takes_negative_layers_and_says_which_repeated_alpha_won(tiny_llama_dir, tiny_gpt2_dir, task_dir,
                                                                             small_inputs, tmp_path):
    """Through the real `lm_eval` once (its parser hands "-1" over as -1.0; the README's negative layers must work
    there), with a key given twice, which lm-eval's own rule settles (the last wins) and its log names."""
    import subprocess
    import sys

    concept, anchors = small_inputs
    model_args = (f"source={tiny_llama_dir},target={tiny_gpt2_dir},concept={concept},anchors={anchors},"
                  "target_layer=-1,source_layer=-2,alpha=1,alpha=2")
    result = subprocess.run([str(Path(sys.executable).parent / "lm_eval"), "--model", "contrans", "--model_args",
                             model_args, "--tasks", "contrans_tiny_choice", "--include_path", str(task_dir), "--limit",
                             "1", "--device", "cpu", "--output_path", str(tmp_path / "out")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Overwriting key 'alpha': 1 -> 2" in result.stderr
    config = json.loads(sorted((tmp_path / "out").rglob("results_*.json"))[-1].read_text())["config"]["contrans"]
    # GPT-2 has 3 blocks (-1: block 2), the Llama 4 (-2: block 2)
    assert (config["target_layer"], config["source_layer"], config["alpha"]) == (2, 2, 2.0)
