"""'Wraps any Hugging Face causal LM', kept true by test: a tiny random model of each decoder family
in tests/model_families.py (attention, mixture-of-experts, multimodal loaded for text, state-space and
hybrid), as the target (build -> steer -> lm-eval on a shipped multiple-choice task) and as the source."""

from __future__ import annotations

import pytest
import torch

from conftest import _byte_bpe_tokenizer
from model_families import FAMILIES, save_tiny_model
from lm_eval_contrans.blocks import decoder_blocks
from lm_eval_contrans.transplant import continues_a_cache, steer

@pytest.fixture(scope="module")
def shared_tokenizer():
    return _byte_bpe_tokenizer()


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()


@pytest.fixture
def family_dir(request, shared_tokenizer, tmp_path):
    return save_tiny_model(request.param, shared_tokenizer, tmp_path / request.param)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family_dir", sorted(FAMILIES), indirect=True)
def test_family_as_target(family_dir, tiny_gpt2_dir, small_inputs, task_manager):
    import lm_eval

    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    concept, anchors = small_inputs
    lm = ConTransLM(source=str(tiny_gpt2_dir), target=str(family_dir), concept=concept, anchors=anchors, alpha=8.0,
                    device="cpu", batch_size=4)
    transplant = lm.transplant
    assert transplant.target_num_layers == len(decoder_blocks(lm.model)) == 2
    assert torch.isfinite(transplant.vector).all() and transplant.vector.norm() > 0

    ids = torch.tensor([[5, 17, 33, 60, 101, 7]])
    plain = _logits(lm.model, ids)
    with steer(lm.model, transplant.target_layer, transplant.steering_vector(), alpha=0.0):
        assert torch.equal(_logits(lm.model, ids), plain)
    with lm._steering():
        steered = _logits(lm.model, ids)
    assert not torch.allclose(steered, plain)
    assert torch.equal(_logits(lm.model, ids), plain)  # the hook is gone

    # positions=prompt|generated tell a prompt pass from a cached decoding step in this family's generate
    passes, reads_fewer = [], []

    def probe(module, args, kwargs):
        passes.append(continues_a_cache(kwargs))
        tokens = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[-1]
        reads_fewer.append(tokens < ids.shape[-1] + len(reads_fewer))  # a decoding step reads only the new token

    handle = lm.model.register_forward_pre_hook(probe, with_kwargs=True)
    try:
        lm.model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        handle.remove()
    # a family that generates without using a cache re-reads the whole sequence at every pass: prompt passes
    # (OpenAI GPT is handed a cache by generate and leaves it empty)
    assert passes == reads_fewer and reads_fewer[0] is False and len(passes) == 3

    results = lm_eval.simple_evaluate(model=lm, tasks=["contrans_facts"], limit=2, task_manager=task_manager,
                                      log_samples=True)
    samples = results["samples"]["contrans_facts"]
    scores = [[response[0][0] for response in sample["resps"]] for sample in samples]
    assert len(samples) == 2 and all(len(row) == 4 and all(map(torch.isfinite, torch.tensor(row))) for row in scores)
    # lm-eval's accuracy is the argmax of the loglikelihoods our scoring returned
    chosen = [max(range(4), key=row.__getitem__) == sample["target"] for row, sample in zip(scores, samples)]
    assert results["results"]["contrans_facts"]["acc,none"] == sum(chosen) / 2


@pytest.mark.parametrize("family_dir", sorted(FAMILIES), indirect=True)
def test_family_as_source(family_dir, tiny_gpt2_dir, small_inputs):
    from lm_eval_contrans.pipeline import build_transplant

    concept, anchors = small_inputs
    transplant = build_transplant(str(family_dir), str(tiny_gpt2_dir), concept, anchors=anchors, device="cpu")
    assert (transplant.source_num_layers, transplant.source_hidden_size) == (2, 32)
    # the concept vector is the mean over pairs of positive - negative at the last token of the source block,
    # here read one text at a time (no batching, no padding) from the block's own output
    from lm_eval_contrans.activations import block_output_tensor
    from lm_eval_contrans.blocks import decoder_blocks
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.loading import load_model

    model, tokenizer = load_model(str(family_dir), device="cpu")
    pairs = load_concept_set(concept)
    seen = []
    decoder_blocks(model)[transplant.source_layer].register_forward_hook(
        lambda module, args, output: seen.append(block_output_tensor(output)))

    def last_state(text: str) -> torch.Tensor:
        seen.clear()
        with torch.no_grad():
            model(tokenizer(text, return_tensors="pt").input_ids)
        return seen[0][0, -1].double()

    expected = torch.stack([last_state(p) - last_state(n) for p, n in zip(pairs.positives, pairs.negatives)]).mean(0)
    torch.testing.assert_close(transplant.source_vector.double(), expected, rtol=1e-3, atol=1e-4)


REMOTE_CONFIG = '''from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "contrans_tiny_remote"
'''
REMOTE_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
'''


@pytest.fixture
def remote_code_dir(tiny_llama_dir, tmp_path):
    """A model whose code lives in its folder (`auto_map`), as on the hub: transformers runs it only
    with trust_remote_code=True."""
    import json
    import shutil

    folder = shutil.copytree(tiny_llama_dir, tmp_path / "tiny-remote")
    (folder / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_tiny_remote.py").write_text(REMOTE_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="contrans_tiny_remote", architectures=["TinyRemoteForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
                            "AutoModelForCausalLM": "modeling_tiny_remote.TinyRemoteForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_remote_code_model_as_source_and_target_with_trust_remote_code(remote_code_dir, small_inputs):
    """lm-eval's trust_remote_code=True reaches the build's own loads of both models, not only HFLM's."""
    from lm_eval_contrans.errors import ConTransError
    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    concept, anchors = small_inputs
    lm = ConTransLM(source=str(remote_code_dir), target=str(remote_code_dir), trust_remote_code="True", concept=concept,
                    anchors=anchors, device="cpu", batch_size=2)
    assert type(lm.model).__name__ == "TinyRemoteForCausalLM"
    assert lm.transplant.target_model_type == "contrans_tiny_remote" and lm.transplant.heldout_r2 > 0.5
    with pytest.raises(ConTransError, match="^trust_remote_code: .* ships its own model code; to run it, pass"):
        ConTransLM(source=str(remote_code_dir), target=str(remote_code_dir), concept=concept, anchors=anchors,
                   device="cpu", batch_size=2)


@pytest.mark.cli
def test_contrans_build_and_compare_trust_remote_code_when_told(remote_code_dir, small_inputs, task_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    concept, anchors = small_inputs
    command = [str(Path(sys.executable).parent / "contrans"), "build", "--source", str(remote_code_dir), "--target",
               str(remote_code_dir), "--concept", concept, "--anchors", anchors, "--out", str(tmp_path / "t.safetensors")]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=600)
    built = subprocess.run(command + ["--trust-remote-code"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "trust_remote_code: " in refused.stderr and "Traceback" not in refused.stderr
    assert built.returncode == 0, built.stderr[-3000:]
    assert "contrans_tiny_remote" in subprocess.run([command[0], "inspect", str(tmp_path / "t.safetensors")],
                                                    capture_output=True, text=True).stdout

    compare = subprocess.run(
        [command[0], "compare", "--source", str(remote_code_dir), "--target", str(remote_code_dir), "--concept", concept,
         "--anchors", anchors, "--tasks", "contrans_tiny_choice", "--include_path", str(task_dir), "--alphas", "1",
         "--limit", "2", "--device", "cpu", "--out", str(tmp_path / "compare"), "--trust-remote-code"],
        capture_output=True, text=True, timeout=600)
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert "target's own vector α=1" in compare.stdout and "source" in compare.stdout  # every row ran its model code
