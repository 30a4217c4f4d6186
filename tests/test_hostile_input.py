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
from lm_eval_contrans.lm_eval_model import ConTransLM

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
    from lm_eval_contrans.loading import _loadable_folder

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
    from lm_eval_contrans.steering import steer, stop_if_not_finite

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
