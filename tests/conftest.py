"""Tiny random models built in the test session: two architectures (Llama, GPT-2), two hidden
sizes (32, 48) and two tokenizers (word-level with BOS, byte-level BPE without), saved as local
folders so that the lm_eval command line can load them too. No network is used."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`-n 2`) each worker, and every process it starts, gets its share of the cores: two workers
# each running torch on all of them spend the run contending (the fast run took 250 s so, 121 s with a share each)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

REPO = Path(__file__).resolve().parents[1]
# multiple-choice shaped contexts: long openings that several answers share
OPENINGS = ["We walked along the river on a cold morning and stopped at the old bridge, where",
            "The museum was quiet on Tuesday, and the guide showed us the hall of maps, which"]


DATA = REPO / "tests" / "data" / "tiny_task.jsonl"
TASKS = """
task: contrans_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{[positive, negative]}}}}"
doc_to_target: 0
metric_list:
  - metric: acc
---
task: contrans_tiny_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{positive}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    """Two tiny tasks of our own (multiple choice, generation), found with --include_path."""
    folder = tmp_path_factory.mktemp("tasks")
    for index, text in enumerate(TASKS.format(data=DATA).split("---")):
        (folder / f"task{index}.yaml").write_text(text)
    return folder



@pytest.fixture(scope="session")
def small_inputs(tmp_path_factory) -> tuple[str, str]:
    """(concept set, anchor corpus) files: 12 sentiment pairs and 80 anchor texts, enough rows for a
    48-wide map and seconds per build."""
    import json

    import yaml

    folder = tmp_path_factory.mktemp("small-inputs")
    pairs = yaml.safe_load((REPO / "concept_sets" / "sentiment.yaml").read_text())["pairs"][:12]
    concept = folder / "sentiment12.jsonl"
    concept.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    anchors = folder / "anchors80.txt"
    anchors.write_text("\n".join(_shipped_anchor_texts()[:80]))
    return str(concept), str(anchors)


def _shipped_anchor_texts() -> list[str]:
    return (REPO / "lm_eval_contrans" / "data" / "neutral_anchors.txt").read_text().splitlines()


def _corpus() -> list[str]:
    texts = (REPO / "lm_eval_contrans" / "data" / "neutral_anchors.txt").read_text().splitlines()
    texts += (REPO / "concept_sets" / "sentiment.yaml").read_text().splitlines()
    texts += (REPO / "tests" / "data" / "tiny_task.jsonl").read_text().splitlines()
    return texts


def _word_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for text in _corpus() for word in re.findall(r"\w+|[^\w\s]", text)})
    vocab = {token: index for index, token in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        pad_token="<pad>", padding_side="left", model_max_length=512,
    )


def _byte_bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        padding_side="right", model_max_length=512,
    )


def publish_to_hub_cache(cache: Path, repo: str, folder: Path, commit: str, refs: list[str]) -> Path:
    """Lay `folder` out as the Hugging Face hub's cache does after a download of `repo` at `commit` (read
    offline: HF_HUB_OFFLINE); the snapshot folder is returned."""
    import shutil

    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    shutil.copytree(folder, snapshot, symlinks=True)
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)
    return snapshot


CHAT_TEMPLATE = ("{% for message in messages %}[{{ message['role'] }}] {{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}[assistant] {% endif %}")


def with_chat_template(folder: Path, destination: Path) -> Path:
    """A copy of a tiny model folder whose tokenizer has a small chat template."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(folder, destination)
    tokenizer = AutoTokenizer.from_pretrained(destination)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(destination)
    return destination


def _save(folder: Path, model, tokenizer) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _word_level_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=2, eos_token_id=3, pad_token_id=0, tie_word_embeddings=False,
        initializer_range=0.3,  # large weights so that states differ visibly between texts and layers
    )
    return _save(tmp_path_factory.mktemp("tiny-llama"), LlamaForCausalLM(config).eval(), tokenizer)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _byte_bpe_tokenizer()
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=48, n_layer=3, n_head=4, n_positions=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, initializer_range=0.3,
    )
    return _save(tmp_path_factory.mktemp("tiny-gpt2"), GPT2LMHeadModel(config).eval(), tokenizer)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny_model_dir(request, tiny_llama_dir, tiny_gpt2_dir) -> Path:
    return {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[request.param]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """A fresh cache per test run (subprocesses inherit it), shared by the run's xdist workers (`-n 2`: each
    worker's temporary folder lies inside the run's, and the cache computes each entry once under its lock);
    CONTRANS_TEST_CACHE reuses one across runs."""
    previous = os.environ.get("CONTRANS_CACHE")
    run_folder = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_folder = run_folder.parent
    os.environ["CONTRANS_CACHE"] = os.environ.get("CONTRANS_TEST_CACHE") or str(run_folder / "contrans-cache")
    yield
    if previous is None:
        os.environ.pop("CONTRANS_CACHE", None)
    else:
        os.environ["CONTRANS_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def _environment_described_once():
    """lm-eval runs torch's collect_env (`pip list` and more; about 1 s a call after the first) after every
    in-process evaluation; the machine does not change within a test session, so it is described once."""
    from lm_eval_contrans.experiments.grid import environment_described_once

    with environment_described_once():
        yield


@pytest.fixture(scope="session", autouse=True)
def _task_folders_indexed_once():
    """lm-eval's TaskManager parses every task YAML under its folders (about 14,000 files, 8 s on 2 cores) each
    time one is made, and most tests make one. Within a session each folder's index is built once per
    state of its YAML files (paths and modification times), so a test that writes a task gets it indexed."""
    from lm_eval.tasks import _index

    build, built = _index.TaskIndex.build, {}

    def build_each_folder_once(paths, *, resolve_includes=True):
        index = {}
        for root in paths:
            files = tuple((str(path), path.stat().st_mtime_ns) for path in sorted(Path(root).glob("**/*.yaml")))
            key = (str(root), resolve_includes, files)
            if key not in built:
                built[key] = build([root], resolve_includes=resolve_includes)
            index.update(built[key])  # later folders override earlier ones, as in lm-eval
        return index

    _index.TaskIndex.build = staticmethod(build_each_folder_once)
    yield
    _index.TaskIndex.build = staticmethod(build)


PACKAGED_PAIR = ("packaged:smollm2-135m-instruct", "packaged:gemma-3-270m")
ANCHOR_TEXTS = 600  # of the shipped 2,397: a quarter of the anchor passes (bench/experiments/corpus_size.py: R^2 0.52 vs 0.58)


def skip_without_the_packaged_pair() -> None:
    """Skip the calling test module where the packaged models are not installed (never in CI)."""
    from lm_eval_contrans.errors import ConTransError
    from lm_eval_contrans.loading import packaged_gguf

    try:
        for name in PACKAGED_PAIR:
            packaged_gguf(name.removeprefix("packaged:"), "model")
    except ConTransError as missing:
        # CI installs both; there a missing model is a broken install step, not a reason to skip.
        if os.environ.get("CI"):
            raise
        pytest.skip(str(missing), allow_module_level=True)


@pytest.fixture(scope="session")
def packaged_sentiment(tmp_path_factory):
    """(transplant, artifact path): sentiment from the packaged SmolLM2 into the packaged Gemma, on a seeded
    600-text subset of the shipped anchors (its states are cached; CONTRANS_TEST_CACHE shares them between
    sessions, as .ci/run does for the vLLM session)."""
    import random

    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.artifact import save_transplant
    from lm_eval_contrans.pipeline import build_transplant

    folder = tmp_path_factory.mktemp("real")
    texts, _ = load_anchor_texts(None)
    anchors = folder / "anchors.txt"
    anchors.write_text("\n".join(random.Random(0).sample(texts, ANCHOR_TEXTS)))  # corpus_size.py's seeded subset
    transplant = build_transplant(*PACKAGED_PAIR, "sentiment", anchors=str(anchors), device="cpu")
    path = folder / "sentiment.safetensors"
    save_transplant(transplant, path)
    return transplant, path


def load(folder: Path):
    from lm_eval_contrans.loading import load_model

    return load_model(str(folder), dtype="float32", device="cpu")


def evaluate(model_args: str, tasks: list[str], model: str = "hf", metadata: dict | None = None,
             include_path: str | None = None, **options) -> dict:
    """What `lm_eval --model M --model_args A --tasks T --metadata J --include_path P --device cpu --log_samples`
    computes, in this process (the command line itself is tested in test_cli.py): lm-eval's results with
    "samples" (each document's doc, responses and per-sample metrics) and "n-samples"."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=include_path, metadata=metadata or {})
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=task_manager,
                                   device="cpu", log_samples=True, metadata=metadata, verbosity="ERROR", **options)


SLOW_MARKS = ("cli", "tasks", "real", "vllm")


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true",
                     help="also run the slower task (-m tasks), command-line (-m cli) and real-model (-m real) checks, as CI does")


def pytest_collection_modifyitems(config, items):
    """`python -m pytest -q` runs the fast tests on tiny models; `--all` (or any -m) adds the slow ones."""
    if config.getoption("--all") or config.getoption("markexpr"):
        return
    slow = [item for item in items if any(item.get_closest_marker(mark) for mark in SLOW_MARKS)]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item not in slow]
