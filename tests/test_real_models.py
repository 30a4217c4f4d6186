"""Checks on the packaged real pair: SmolLM2-135M-Instruct (Llama, 30 blocks, hidden 576) ->
Gemma-3-270M base (18 blocks, hidden 640), both GGUF files shipped in PyPI packages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ANCHOR_TEXTS, PACKAGED_PAIR, evaluate, publish_to_hub_cache, skip_without_the_packaged_pair
from lm_eval_contrans.loading import packaged_gguf

pytestmark = pytest.mark.real

SOURCE, TARGET = PACKAGED_PAIR
skip_without_the_packaged_pair()
PROMPTS = Path(__file__).resolve().parents[1] / "tasks" / "contrans_sentiment" / "sentiment_prompts.jsonl"


@pytest.fixture(scope="module")
def artifact(packaged_sentiment):
    return packaged_sentiment


def test_build_diagnostics(artifact):
    transplant, _ = artifact
    assert (transplant.source_num_layers, transplant.source_hidden_size) == (30, 576)
    assert (transplant.target_num_layers, transplant.target_hidden_size) == (18, 640)
    sweep = {int(layer): r2 for layer, r2 in transplant.extra["source_layer_sweep"].items()}
    assert transplant.target_layer == 14 and sorted(sweep) == list(range(19, 28))  # within 0.15 of block 14's depth 14/18
    assert transplant.source_layer == max(sweep, key=sweep.get)
    assert transplant.target_model_type == "gemma3_text" and transplant.anchor_count == ANCHOR_TEXTS
    assert 0.2 < transplant.heldout_r2 < 1.0


def test_gguf_is_dequantized_once(artifact, monkeypatch):
    import transformers

    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    def no_gguf(*args, **kwargs):
        raise AssertionError(f"de-quantized again: {args} {kwargs}")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_gguf)
    folder = Path(pretrained_path(parse_model_spec(TARGET, "target")))
    assert (folder / "config.json").is_file() and (folder / "SOURCE_GGUF").is_file()


@pytest.mark.parametrize("model", PACKAGED_PAIR)
def test_each_packaged_tokenizer_adds_bos_as_its_gguf_file_says(model):
    """transformers < 5.20 (vLLM's CPU build pins it) converts the Gemma file's tokenizer without the BOS the file
    asks for; every text then reads from another state (the transplant's anchor states, the task's scores)."""
    from transformers import AutoTokenizer

    from lm_eval_contrans.loading import gguf_adds_bos, parse_model_spec, pretrained_path

    spec = parse_model_spec(model, "model")
    tokenizer = AutoTokenizer.from_pretrained(pretrained_path(spec))
    ids = tokenizer("The hotel room was spotless.").input_ids
    assert (ids[0] == tokenizer.bos_token_id) == gguf_adds_bos(packaged_gguf(model.removeprefix("packaged:"), "model"))
    assert gguf_adds_bos(packaged_gguf("gemma-3-270m", "model")) is True  # the case the fix is for


def test_a_gguf_file_in_a_hub_repository_is_downloaded_and_dequantized(tmp_path, monkeypatch):
    """`owner/repo/file.gguf`, read offline from a hub cache that holds a copy of the packaged SmolLM2 file:
    a GGUF file is named by its content, so the copy is the packaged file's de-quantized folder (made once)."""
    import huggingface_hub.constants as constants
    from safetensors.torch import load_file

    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    packaged = packaged_gguf("smollm2-135m-instruct", "source")
    (tmp_path / "repo").mkdir()
    shutil.copy(packaged, tmp_path / "repo" / packaged.name)  # another path, the same bytes
    publish_to_hub_cache(tmp_path / "hub", "contrans-test/SmolLM2-GGUF", tmp_path / "repo", "f" * 40, ["main"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from_hub = Path(pretrained_path(parse_model_spec(f"contrans-test/SmolLM2-GGUF/{packaged.name}", "source")))
    from_package = Path(pretrained_path(parse_model_spec(SOURCE, "source")))
    assert from_hub == from_package and (from_hub / "SOURCE_GGUF").read_text().strip().endswith(packaged.name)
    assert "model.layers.3.mlp.down_proj.weight" in load_file(from_hub / "model.safetensors")


def _margins(model, tokenizer, rows, layer=None, vector=None, alpha=0.0):
    """log p(positive verdict) - log p(negative verdict) after each prompt: every prompt and ending in one
    left-padded batch, so that each ending sits at the end of its row, where `logits_to_keep` reads."""
    from lm_eval_contrans.transplant import steer

    sequences, ending_lengths = [], []
    for row in rows:
        context = tokenizer(row["prompt"])["input_ids"]
        for ending in (row["positive"], row["negative"]):
            full = tokenizer(row["prompt"] + ending)["input_ids"]
            sequences.append(full)
            ending_lengths.append(len(full) - len(context))
    width, kept = max(map(len, sequences)), max(ending_lengths) + 1  # only those positions reach the 262k-word head
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    with torch.no_grad(), steer(model, layer or 0, vector if vector is not None else torch.zeros(640), alpha):
        logits = model(ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                       logits_to_keep=kept).logits.log_softmax(-1)
    # the logits kept at index kept - 1 - n + i predict the i-th of a row's n ending tokens
    scores = [sum(logits[index, kept - 1 - n + i, sequence[len(sequence) - n + i]].item() for i in range(n))
              for index, (sequence, n) in enumerate(zip(sequences, ending_lengths))]
    return torch.tensor(scores[0::2]) - torch.tensor(scores[1::2])


def test_transplanted_sentiment_moves_gemma_and_a_random_vector_does_not(artifact):
    from lm_eval_contrans.loading import load_model

    transplant, _ = artifact
    model, tokenizer = load_model(TARGET, device="cpu")
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines()[:12]]
    layer, vector = transplant.target_layer, transplant.steering_vector()  # alpha 1 in residual units
    base = _margins(model, tokenizer, rows)
    plus = _margins(model, tokenizer, rows, layer, vector, 1.0)
    minus = _margins(model, tokenizer, rows, layer, vector, -1.0)
    random_vector = torch.randn(640, generator=torch.Generator().manual_seed(0))
    random_vector *= vector.norm() / random_vector.norm()
    random = _margins(model, tokenizer, rows, layer, random_vector, 1.0)
    assert plus.mean() > base.mean() + 1.0 > minus.mean() + 2.0
    # the transplant pushes (nearly) every prompt the same way; an equal-norm random vector
    # disrupts the model (|shift| is large) but does not push it towards positive
    assert (plus > base).float().mean() >= 0.9 and (minus < base).float().mean() >= 0.9
    assert (plus - base).mean() > (random - base).mean() + 2.0


def test_lm_eval_cli_on_the_packaged_pair(artifact, tmp_path):
    _, path = artifact
    output = tmp_path / "out"
    command = [str(Path(sys.executable).parent / "lm_eval"), "--model", "contrans", "--model_args",
               f"target={TARGET},vector={path},alpha=2", "--tasks", "contrans_sentiment", "--limit", "6",
               "--device", "cpu", "--batch_size", "6", "--output_path", str(output)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(sorted(output.rglob("results_*.json"))[-1].read_text())
    assert results["config"]["contrans"]["target_layer"] == 14
    # the same six prompts, unsteered (in process): the base Gemma already prefers the positive endings
    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    base = evaluate(f"pretrained={pretrained_path(parse_model_spec(TARGET, 'target'))}", ["contrans_sentiment"], limit=6)
    base_margin = base["results"]["contrans_sentiment"]["margin,none"]
    assert results["results"]["contrans_sentiment"]["margin,none"] > base_margin + 2.5 > 2.5
