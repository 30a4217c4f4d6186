"""Export to lm-eval's `steered` format and to llama.cpp GGUF control vectors; position control."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from conftest import load
from lm_eval_contrans.artifact import save_transplant
from lm_eval_contrans.pipeline import build_transplant
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.export import export_gguf, export_steered, read_gguf_control_vector
from lm_eval_contrans.hf.lm_eval_model import ConTransLM
from lm_eval_contrans.transplant import steer

PAIRS = [("The hotel room", " was lovely."), ("The concert", " was terrible."), ("Rice", " and barley.")]


@pytest.fixture(scope="module")
def artifact(tiny_llama_dir, tiny_gpt2_dir, tmp_path_factory):
    transplant = build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", device="cpu")
    path = tmp_path_factory.mktemp("export") / "t.safetensors"
    save_transplant(transplant, path)
    return transplant, path


def loglikelihoods(lm):
    return torch.tensor([ll for ll, _ in lm.loglikelihood(
        [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)], disable_tqdm=True)])


def test_steered_export_gives_the_same_loglikelihoods_as_contrans(artifact, tiny_gpt2_dir, tmp_path):
    from lm_eval.models.hf_steered import SteeredModel

    transplant, path = artifact
    pt = export_steered(transplant, tmp_path / "steer.pt", str(tiny_gpt2_dir), alpha=3.0)
    theirs = SteeredModel(pretrained=str(tiny_gpt2_dir), steer_path=str(pt), device="cpu", batch_size=4)
    ours = ConTransLM(target=str(tiny_gpt2_dir), vector=str(path), alpha=3.0, device="cpu", batch_size=4)
    torch.testing.assert_close(loglikelihoods(theirs), loglikelihoods(ours), atol=1e-5, rtol=1e-6)
    assert list(torch.load(pt, weights_only=False)) == [f"h.{transplant.target_layer}"]
    # the exported file read back as vector= steers as lm-eval's steered model does: its vector times its coefficient
    read_back = ConTransLM(target=str(tiny_gpt2_dir), vector=str(pt), alpha=1.0, device="cpu", batch_size=4)
    torch.testing.assert_close(loglikelihoods(read_back), loglikelihoods(theirs), atol=1e-5, rtol=1e-6)


def test_gguf_export_reads_back(artifact, tmp_path):
    transplant, _ = artifact
    metadata, tensors = read_gguf_control_vector(export_gguf(transplant, tmp_path / "cv.gguf"))
    assert metadata["general.architecture"] == "controlvector"
    assert metadata["controlvector.model_hint"] == "gpt2" and metadata["controlvector.layer_count"] == 1
    assert list(tensors) == [f"direction.{transplant.target_layer}"]
    torch.testing.assert_close(tensors[f"direction.{transplant.target_layer}"], transplant.steering_vector())


def test_gguf_export_refuses_block_zero(artifact, tmp_path):
    transplant, _ = artifact
    with pytest.raises(ConTransError, match=f"cannot steer block 0, where {transplant.concept} lands"):
        export_gguf(transplant.with_steering(target_layer=0), tmp_path / "cv.gguf")


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_positions_are_read_from_the_input_not_counted(tiny_llama_dir, positions):
    """Two generations inside one steering context are steered as two in their own contexts: which
    passes are steered depends on each pass's input (a prompt, or a step extending a KV cache)."""
    model, tokenizer = load(tiny_llama_dir)
    prompts = [tokenizer(text, return_tensors="pt")["input_ids"] for text in ("The hotel room was", "We walked along")]
    vector = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 5

    def generate(ids):
        return model.generate(ids, max_new_tokens=5, do_sample=False)[0].tolist()

    separately = []
    for ids in prompts:
        with steer(model, 2, vector, 4.0, positions):
            separately.append(generate(ids))
    with steer(model, 2, vector, 4.0, positions):
        together = [generate(ids) for ids in prompts]
    assert together == separately
    assert separately != [generate(ids) for ids in prompts]  # the steer changed something


def test_a_decoding_step_driven_by_hand_counts_as_generated(tiny_llama_dir):
    from transformers import DynamicCache

    model, tokenizer = load(tiny_llama_dir)
    ids = tokenizer("The hotel room was", return_tensors="pt")["input_ids"]
    vector = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 5

    def prompt_then_step(positions=None):
        cache = DynamicCache()
        with torch.no_grad(), (steer(model, 2, vector, 4.0, positions) if positions else torch.no_grad()):
            first = model(ids, past_key_values=cache, use_cache=True).logits
        with torch.no_grad(), (steer(model, 2, vector, 4.0, positions) if positions else torch.no_grad()):
            step = model(ids[:, -1:], past_key_values=cache, use_cache=True).logits  # a new context, a cached step
        return first, step

    plain_first, _ = prompt_then_step()
    generated_first, generated_step = prompt_then_step("generated")
    prompt_first, prompt_step = prompt_then_step("prompt")
    assert torch.equal(generated_first, plain_first)  # the prompt pass of "generated" is not steered
    assert not torch.equal(prompt_first, plain_first)
    # the cached step: steered under "generated" (though it is the first pass in its context), not under "prompt"
    _, plain_step_after_plain = prompt_then_step()
    assert not torch.allclose(generated_step, plain_step_after_plain)
    cache = DynamicCache()
    with torch.no_grad():
        with steer(model, 2, vector, 4.0, "all"):
            model(ids, past_key_values=cache, use_cache=True)
        unsteered_step = model(ids[:, -1:], past_key_values=cache, use_cache=True).logits
    assert torch.equal(prompt_step, unsteered_step)


def test_positions_in_generation_and_loglikelihood(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir)
    ids = tokenizer("The hotel room was", return_tensors="pt")["input_ids"]
    vector = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 5

    def generate(positions=None):
        if positions is None:
            return model.generate(ids, max_new_tokens=6, do_sample=False)[0].tolist()
        with steer(model, 2, vector, 4.0, positions):
            return model.generate(ids, max_new_tokens=6, do_sample=False)[0].tolist()

    plain, everywhere, generated_only, prompt_only = generate(), generate("all"), generate("generated"), generate("prompt")
    assert everywhere != plain
    start = ids.shape[1]
    assert generated_only[start] == plain[start]  # the first new token comes from the unsteered prompt pass
    assert prompt_only[start] == everywhere[start]  # ... and from the steered one
    with torch.no_grad():
        plain_logits = model(ids).logits
        with steer(model, 2, vector, 4.0, "generated"):  # a loglikelihood call is one prompt pass
            assert torch.equal(model(ids).logits, plain_logits)
        with steer(model, 2, vector, 4.0, "prompt"):
            assert not torch.equal(model(ids).logits, plain_logits)
    with pytest.raises(ConTransError, match="^positions: "):
        with steer(model, 2, vector, 1.0, "middle"):
            pass


def test_steering_a_model_split_by_a_device_map(tiny_llama_dir, tmp_path):
    """Blocks dispatched by accelerate (here half offloaded to disk) are steered like plain ones."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = load(tiny_llama_dir)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                  "model.layers.2": "disk", "model.layers.3": "disk", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    split = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, device_map=device_map,
                                                 offload_folder=str(tmp_path / "offload"), dtype=torch.float32)
    assert getattr(split, "hf_device_map", {}).get("model.layers.2") == "disk"
    ids = tokenizer("The hotel room was lovely.", return_tensors="pt")["input_ids"]
    vector = torch.randn(32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        with steer(model, 2, vector, 3.0):
            expected = model(ids).logits
        with steer(split, 2, vector, 3.0):
            got = split(ids).logits
        plain = split(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, got, atol=1e-3)
