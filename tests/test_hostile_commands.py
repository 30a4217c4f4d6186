"""Hostile runs of issue 42, part A: lm-eval's response cache under steering, and the tracebacks a user met
(unknown tasks, --limit 0, a full disk, a truncated row.json, a chat template a base model lacks, Ctrl-C).

Two kinds, kept apart: checks through the real command lines, where what the user reads is the point (marked
`cli`), and in-process checks of the mechanism under them."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import evaluate, with_chat_template
from lm_eval_contrans import cli
from lm_eval_contrans.errors import ConTransError

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def artifact(tiny_llama_dir, tiny_gpt2_dir, small_inputs, tmp_path_factory) -> Path:
    from lm_eval_contrans.artifact import save_transplants
    from lm_eval_contrans.pipeline import build_transplants

    concept, anchors = small_inputs
    path = tmp_path_factory.mktemp("hostile-commands") / "tiny.safetensors"
    save_transplants(build_transplants(str(tiny_llama_dir), str(tiny_gpt2_dir), concept, anchors=anchors,
                                       device="cpu"), path)
    return path


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def lm_eval_command(model_args: str, task_dir: Path, *extra: str) -> list[str]:
    return [str(BIN / "lm_eval"), "--model", "contrans", "--model_args", model_args, "--tasks", "contrans_tiny_choice",
            "--include_path", str(task_dir), "--batch_size", "2", "--device", "cpu", *extra]


def loglikelihoods(samples: list[dict]) -> dict:
    return {row["doc_id"]: [float(choice[0][0]) for choice in row["resps"]] for row in samples}


def logged_samples(output: Path) -> list[dict]:
    files = sorted(output.rglob("samples_contrans_tiny_choice_*.jsonl"))
    assert files, f"no samples under {output}"
    return [json.loads(line) for line in files[-1].read_text().splitlines()]


# ---- through the real command lines: what the user reads


@pytest.mark.cli
def test_use_cache_never_returns_another_steerings_answers(artifact, tiny_gpt2_dir, task_dir, tmp_path, monkeypatch):
    """alpha 2, then alpha -50, through the real command line with one --use_cache: each run's numbers are its own
    steering's (equal to an uncached run's); then alpha 2 again (in this process: lm-eval's same simple_evaluate
    path) reads the first run's answers back without a forward pass."""
    from lm_eval_contrans.hf.scoring import FastScoringHFLM

    database = tmp_path / "responses"
    found = {}
    for run_index, alpha in enumerate((2, -50)):
        output = tmp_path / f"out{run_index}"
        result = run(lm_eval_command(f"target={tiny_gpt2_dir},vector={artifact},alpha={alpha}", task_dir, "--limit", "4",
                                     "--use_cache", str(database), "--log_samples", "--output_path", str(output)),
                     tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "--use_cache: responses of this steering are kept in" in result.stderr
        found[run_index] = loglikelihoods(logged_samples(output))
    passes = []
    real_call = FastScoringHFLM._model_call
    monkeypatch.setattr(FastScoringHFLM, "_model_call", lambda self, *a, **k: passes.append(1) or real_call(self, *a, **k))
    uncached = {alpha: loglikelihoods(evaluate(f"target={tiny_gpt2_dir},vector={artifact},alpha={alpha}",
                                               ["contrans_tiny_choice"], model="contrans", include_path=str(task_dir),
                                               limit=4, batch_size=2)["samples"]["contrans_tiny_choice"])
                for alpha in (2, -50)}
    assert passes  # the count sees the forward passes of a run that reads no cache
    passes.clear()
    found[2] = loglikelihoods(evaluate(f"target={tiny_gpt2_dir},vector={artifact},alpha=2", ["contrans_tiny_choice"],
                                       model="contrans", include_path=str(task_dir), limit=4, batch_size=2,
                                       use_cache=str(database))["samples"]["contrans_tiny_choice"])
    assert not passes  # every answer read from the first run's database
    assert uncached[2] != uncached[-50]
    for run_index, alpha in enumerate((2, -50, 2)):
        assert found[run_index].keys() == uncached[alpha].keys()
        for doc in uncached[alpha]:
            assert found[run_index][doc] == pytest.approx(uncached[alpha][doc], abs=1e-4), (alpha, doc)
    assert len(list(tmp_path.glob("responses_rank0.steer-*.db"))) == 2


@pytest.mark.cli
def test_lm_eval_refuses_limit_0_before_any_build(
        tiny_llama_dir, tiny_gpt2_dir, small_inputs, task_dir, tmp_path):
    concept, anchors = small_inputs
    model_args = f"source={tiny_llama_dir},target={tiny_gpt2_dir},concept={concept},anchors={anchors}"
    # one command line: the chat-template refusal is the same check and the same one-line printing, tested in process
    # (test_evaluation_options_that_fail_only_after_a_build_are_refused_first)
    result = run(lm_eval_command(model_args, task_dir, "--limit", "0"), tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("contrans: error: limit: 0 evaluates no documents")
    assert "Loading weights" not in result.stderr  # said before the build


SLOW_MODEL_CALL = """
import signal, sys, time
# Ctrl-C as a terminal delivers it, also where the tests run in a background job (which starts with SIGINT ignored,
# and Python then keeps it ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv = ["lm_eval", *sys.argv[1:]]  # the real command line, with every forward pass slowed down
from lm_eval_contrans.hf.scoring import FastScoringHFLM
real = FastScoringHFLM._model_call
def slow(self, *args, **kwargs):
    print("EVALUATING", file=sys.stderr, flush=True)
    time.sleep(0.5)
    return real(self, *args, **kwargs)
FastScoringHFLM._model_call = slow
from lm_eval.__main__ import cli_evaluate
cli_evaluate()
"""


@pytest.mark.cli
def test_ctrl_c_during_an_lm_eval_run_is_one_line_with_status_130_and_the_cache_stays_sound(
        tiny_llama_dir, tiny_gpt2_dir, small_inputs, task_dir, tmp_path):
    from lm_eval_contrans.cache import cache_root, has_tensor

    concept, anchors = small_inputs
    model_args = f"source={tiny_llama_dir},target={tiny_gpt2_dir},concept={concept},anchors={anchors},alpha=2"
    command = [sys.executable, "-c", SLOW_MODEL_CALL, *lm_eval_command(model_args, task_dir, "--limit", "8")[1:]]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "EVALUATING" in line:
            break
    process.send_signal(signal.SIGINT)
    lines += process.stderr.readlines()
    process.wait(timeout=120)
    text = "".join(lines)
    assert process.returncode in (130, -signal.SIGINT), text[-3000:]  # 130 to a shell either way
    assert "Traceback" not in text, text[-3000:]
    said = [line for line in text.splitlines() if line.strip() and "it/s]" not in line]  # tqdm closes its bar last
    assert said[-1].startswith("contrans: interrupted; the cache") and "KeyboardInterrupt" not in text, text[-600:]
    entries = [entry for entry in cache_root().rglob("*.safetensors") if entry.parent.name in ("concept_vectors", "anchor_states")]
    assert entries and not [path for path in cache_root().rglob(".*") if not path.name.endswith(".lock")]
    from safetensors import safe_open

    for entry in entries:
        with safe_open(str(entry), framework="pt") as handle:
            assert has_tensor(entry.parent.name, json.loads(handle.metadata()["fields"])), entry


@pytest.mark.cli
def test_contrans_compare_names_an_unknown_task_and_limit_0_before_any_work(tmp_path):
    for extra, line in ((["--tasks", "no_such_task"], "contrans: error: tasks: no_such_task: no such lm-eval task"),
                        (["--tasks", "contrans_sentiment", "--limit", "0"], "contrans: error: limit: 0 evaluates no "
                                                                            "documents")):
        started = time.perf_counter()
        result = run([str(BIN / "contrans"), "compare", "--source", "S", "--target", "T", "--out", str(tmp_path / "out"),
                      *extra], tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1].startswith(line)
        assert time.perf_counter() - started < 120 and not (tmp_path / "out" / "rows").exists()


@pytest.mark.cli
def test_contrans_table_names_a_truncated_row_file(tmp_path):
    rows = tmp_path / "grid" / "rows"
    (rows / "base").mkdir(parents=True)
    (rows / "index.json").write_text(json.dumps(["base"]))
    (rows / "base" / "row.json").write_text('{"name": "base", "results": {"t": {"acc,none"')
    result = run([str(BIN / "contrans"), "table", str(tmp_path / "grid")], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"contrans: error: folders: {rows / 'base' / 'row.json'}: not a readable "
                                            "JSON file")


# ---- in process: the mechanism under them


def test_the_response_cache_file_is_the_steerings_own(artifact, tiny_gpt2_dir, tmp_path, caplog):
    """Each alpha, direction set or positions gets its own database; lm-eval's other models keep the path they were
    given; a model whose steering changes under an open cache is refused rather than served another's answers."""
    import logging

    import lm_eval.api.model
    import lm_eval.evaluator  # noqa: F401 (simple_evaluate's module: its import installs the keyed cache)
    from lm_eval.api.instance import Instance

    from lm_eval_contrans.hf.lm_eval_model import ConTransLM
    from lm_eval_contrans.response_cache import SteeringKeyedCachingLM, steering_digest

    assert lm_eval.api.model.CachingLM is SteeringKeyedCachingLM
    lm = ConTransLM(target=str(tiny_gpt2_dir), vector=str(artifact), alpha=2, device="cpu", batch_size=2)
    digests = {steering_digest(lm)}
    lm.use_transplants(lm.transplants, -50.0)
    digests.add(steering_digest(lm))
    lm.positions = "prompt"
    digests.add(steering_digest(lm))
    lm.request_steering = {"alpha": 3}  # a vLLM engine's requests tagged with a steering of their own (use_steering)
    digests.add(steering_digest(lm))
    lm.request_steering = None
    assert len(digests) == 4 and None not in digests
    with caplog.at_level(logging.INFO, logger="lm_eval.contrans"):
        cached = SteeringKeyedCachingLM(lm, str(tmp_path / "db_rank0.db"))
    assert cached.cache_db == str(tmp_path / f"db_rank0.steer-{steering_digest(lm)}.db")
    assert f"responses of this steering are kept in {cached.cache_db}" in caplog.text
    request = [Instance("loglikelihood", {}, ("The hotel room", " was spotless."), 0)]
    assert len(cached.loglikelihood(request)) == 1
    lm.use_transplants(lm.transplants, 2.0)
    with pytest.raises(ConTransError, match="^use_cache: the model's steering changed after .*steer-"):
        cached.loglikelihood(request)
    plain = SteeringKeyedCachingLM(type("OtherLM", (), {"set_cache_hook": lambda self, hook: None})(),
                                   str(tmp_path / "hf_rank0.db"))
    assert plain.cache_db == str(tmp_path / "hf_rank0.db")


def test_evaluation_options_that_fail_only_after_a_build_are_refused_first(tiny_gpt2_dir, tmp_path, no_model_loads):
    from lm_eval_contrans.response_cache import check_evaluation

    with pytest.raises(ConTransError, match="^limit: 0 evaluates no documents"):
        check_evaluation("contrans", f"target={tiny_gpt2_dir}", 0.0, False)
    with pytest.raises(ConTransError, match="^limit: -1 evaluates no documents"):
        check_evaluation("contrans-vllm", {"target": str(tiny_gpt2_dir)}, -1, False)
    with pytest.raises(ConTransError, match=f"^apply_chat_template: the target {tiny_gpt2_dir} has no chat template"):
        check_evaluation("contrans", f"pretrained={tiny_gpt2_dir},alpha=2", None, True)
    chat = with_chat_template(tiny_gpt2_dir, tmp_path / "chat")
    check_evaluation("contrans", f"target={chat}", 0.5, True)  # a template, a fraction: fine
    check_evaluation("hf", f"pretrained={tiny_gpt2_dir}", 0, True)  # lm-eval's own models: lm-eval's to judge
    check_evaluation("contrans", "target=no/such-model-here", None, True)  # the model's construction says what is wrong


@pytest.fixture
def no_model_loads(monkeypatch):
    import transformers

    def refused(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was named")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refused)


def test_a_full_disk_under_the_cache_is_one_line_naming_the_folder(tiny_llama_dir, tiny_gpt2_dir, small_inputs, tmp_path,
                                                                   monkeypatch, capsys):
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = tmp_path / "cache"
    monkeypatch.setenv("CONTRANS_CACHE", str(cache))
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    concept, anchors = small_inputs
    argv = ["build", "--source", str(tiny_llama_dir), "--target", str(tiny_gpt2_dir), "--concept", concept,
            "--anchors", anchors, "--device", "cpu", "--out", str(tmp_path / "x.safetensors")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().replace("\r", "\n").splitlines()[-1]  # after the build's progress bars
    assert err.startswith("contrans: error: CONTRANS_CACHE: no space left in the cache folder "), err
    assert f"{cache}/" in err and "free; this entry needs " in err and "set CONTRANS_CACHE to a folder with room" in err
    assert not [path for path in cache.rglob(".*") if not path.name.endswith(".lock")]  # no half-written entry


def test_a_de_quantization_that_fills_the_disk_says_how_much_it_had_written(tmp_path, monkeypatch):
    from lm_eval_contrans.cache import cached_dir

    def produce(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"0" * 3_000_000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    with pytest.raises(ConTransError, match=f"^CONTRANS_CACHE: no space left in the cache folder {tmp_path}/gguf .*the "
                                            "step had written 3.0 MB when the disk filled"):
        cached_dir("gguf", "model-key", produce)
    assert list((tmp_path / "gguf").iterdir()) == [tmp_path / "gguf" / "model-key.lock"]


def test_compare_refuses_unknown_tasks_and_limit_0_before_any_model_loads(tiny_llama_dir, tiny_gpt2_dir, task_dir,
                                                                          tmp_path, no_model_loads):
    from lm_eval_contrans.experiments.compare import ComparePlan, run_compare

    plan = ComparePlan(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", tasks=["contrans_tiny_chioce"],
                       out=tmp_path / "out", include_path=[str(task_dir)], device="cpu")
    with pytest.raises(ConTransError, match="^tasks: contrans_tiny_chioce: no such lm-eval task; did you mean "
                                            "contrans_tiny_choice"):
        run_compare(plan)
    plan.tasks, plan.limit = ["contrans_tiny_choice"], 0
    with pytest.raises(ConTransError, match="^limit: 0 evaluates no documents"):
        run_compare(plan)


def test_a_grid_resumes_past_a_truncated_row_file_by_running_the_row_again(tiny_gpt2_dir, task_dir, tmp_path, caplog):
    import logging

    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow

    grid = Grid(tmp_path / "grid", EvalSettings(tasks=["contrans_tiny_choice"], limit=2, batch_size=2, device="cpu",
                                                include_path=[str(task_dir)], bootstrap_iters=0))
    row = GridRow("base", "other", str(tiny_gpt2_dir))
    first, = grid.run([row])
    stored = tmp_path / "grid" / "rows" / "base" / "row.json"
    stored.write_text(stored.read_text()[:40])
    # the package's logger stops propagating once a ConTransLM has run in this process (its lines go to lm-eval's
    # handlers), so the capture is attached to the grid's logger itself
    grid_logger = logging.getLogger("lm_eval_contrans.experiments.grid")
    grid_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="lm_eval_contrans.experiments.grid"):
            again, = grid.run([row])
    finally:
        grid_logger.removeHandler(caplog.handler)
    assert f"{stored}: not a readable JSON file" in caplog.text and grid.seconds  # run again, not read
    assert again.results == first.results and json.loads(stored.read_text())["key"]


def test_compare_builds_again_when_its_artifact_is_not_the_one_its_settings_made(tiny_llama_dir, tiny_gpt2_dir, task_dir,
                                                                                 small_inputs, tmp_path, caplog):
    """The comparison's transplant in its output folder is checked against the settings it was built with: another
    concept's artifact copied over it (or a link) is built again, with a warning naming it, never steered with."""
    import logging
    import shutil

    from lm_eval_contrans.artifact import load_transplant
    from lm_eval_contrans.experiments.compare import ComparePlan, _built

    concept, anchors = small_inputs
    common = dict(tasks=["contrans_tiny_choice"], include_path=[str(task_dir)], device="cpu",
                  build_options={"anchors": anchors})
    plan = ComparePlan(str(tiny_llama_dir), str(tiny_gpt2_dir), concept, out=tmp_path / "a", **common)
    other = ComparePlan(str(tiny_llama_dir), str(tiny_gpt2_dir), "honesty", out=tmp_path / "b", **common)
    first, foreign = _built(plan, "cpu"), _built(other, "cpu")
    path, = (tmp_path / "a" / "artifacts").glob("*.safetensors")
    assert torch.equal(_built(plan, "cpu").vector, first.vector)  # read back, not built again
    for swap in ("copy", "link"):
        path.unlink()
        foreign_file, = (tmp_path / "b" / "artifacts").glob("*.safetensors")
        shutil.copy(foreign_file, path) if swap == "copy" else path.symlink_to(foreign_file)
        with caplog.at_level(logging.WARNING, logger="lm_eval_contrans.experiments.compare"):
            logging.getLogger("lm_eval_contrans.experiments.compare").addHandler(caplog.handler)
            rebuilt = _built(plan, "cpu")
            logging.getLogger("lm_eval_contrans.experiments.compare").removeHandler(caplog.handler)
        assert f"{path} does not hold the transplant of this comparison's settings" in caplog.text, swap
        assert torch.equal(rebuilt.vector, first.vector) and not torch.equal(rebuilt.vector, foreign.vector), swap
        assert not path.is_symlink() and load_transplant(path).concept_hash == first.concept_hash
        caplog.clear()
