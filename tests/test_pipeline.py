"""Unit tests of each pipeline step on tiny random models."""

from __future__ import annotations

import pytest
import torch

from conftest import load
from lm_eval_contrans.activations import last_token_states
from lm_eval_contrans.reformulate import fit_linear_map
from lm_eval_contrans.blocks import decoder_blocks, resolve_layer
from lm_eval_contrans.concepts import load_concept_set
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.refine import concept_vector
from lm_eval_contrans.transplant import steer


def reference_last_states(model, tokenizer, texts, layer):
    """One text at a time, no padding, through the full model: hidden_states[layer + 1]."""
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            rows.append(model(ids, output_hidden_states=True).hidden_states[layer + 1][0, -1])
    return torch.stack(rows)


# ---------------------------------------------------------------- layers and blocks

def test_resolve_layer_indices_and_fractions():
    assert resolve_layer(None, 30, "x") == 22 and resolve_layer(0.75, 18, "x") == 14
    assert resolve_layer(3, 4, "x") == 3 and resolve_layer(-1, 4, "x") == 3 and resolve_layer("2", 4, "x") == 2
    assert resolve_layer(1.0, 4, "x") == 3 and resolve_layer("0.5", 4, "x") == 2


@pytest.mark.parametrize("bad", [4, -5, 1.5, "deep", True])
def test_resolve_layer_rejects_bad_values_naming_the_argument(bad):
    with pytest.raises(ConTransError, match="^target_layer: "):
        resolve_layer(bad, 4, "target_layer")


# ---------------------------------------------------------------- refine

@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 3, 8, "auto"])
def test_states_match_unpadded_hidden_states(tiny_model_dir, padding_side, batch_size):
    model, tokenizer = load(tiny_model_dir)
    texts = ["The hotel room was lovely.", "A stone church", "The capital of the northern province grew slowly after 1700.",
             "Rice", "Farmers in the river valley have grown barley for several generations."]
    layer = 1
    states = last_token_states(model, tokenizer, texts, [layer], batch_size=batch_size, padding_side=padding_side,
                               token_budget=40)[layer]  # a small budget: "auto" makes several batches
    torch.testing.assert_close(states, reference_last_states(model, tokenizer, texts, layer), atol=2e-5, rtol=1e-4)


def test_refine_is_mean_positive_minus_mean_negative_at_the_chosen_layer(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    concept = load_concept_set("sentiment")
    layer = 1  # not the last block: HF applies the final norm to hidden_states[-1]
    vector = concept_vector(model, tokenizer, concept, layer, batch_size=8)
    positives = reference_last_states(model, tokenizer, concept.positives[:], layer)
    negatives = reference_last_states(model, tokenizer, concept.negatives[:], layer)
    torch.testing.assert_close(vector, positives.mean(0) - negatives.mean(0), atol=2e-5, rtol=1e-4)
    other_layer = concept_vector(model, tokenizer, concept, layer - 1, batch_size=8)
    assert (vector - other_layer).norm() > 0.1 * vector.norm()


def test_recording_stops_before_later_blocks_and_lm_head(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir)
    calls = []
    handles = [model.lm_head.register_forward_hook(lambda *a: calls.append("lm_head")),
               decoder_blocks(model)[3].register_forward_hook(lambda *a: calls.append("block3"))]
    try:
        last_token_states(model, tokenizer, ["a short text", "another one"], [1, 2], batch_size=2)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []


def test_auto_batches_respect_the_token_budget_and_keep_every_text():
    from lm_eval_contrans.activations import _batches

    lengths = [30, 5, 12, 5, 7, 40, 3]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = _batches(order, lengths, "auto", token_budget=40)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 40 for b in batches)
    assert len(batches[-1]) > 1  # short texts share a batch


# ---------------------------------------------------------------- reformulate

def test_fit_recovers_a_known_linear_map():
    generator = torch.Generator().manual_seed(0)
    true_map = torch.randn(20, 30, generator=generator)
    source = torch.randn(400, 20, generator=generator)
    fitted = fit_linear_map(source, source @ true_map)
    torch.testing.assert_close(fitted.weight, true_map, atol=1e-4, rtol=1e-4)
    assert fitted.heldout_r2 > 0.999 and fitted.method == "lstsq"
    noisy = fit_linear_map(source, source @ true_map + 3 * torch.randn(400, 30, generator=generator))
    assert 0.3 < noisy.heldout_r2 < 0.95


def test_ridge_shrinks_and_allows_few_anchors():
    generator = torch.Generator().manual_seed(1)
    source, target = torch.randn(30, 40, generator=generator), torch.randn(30, 8, generator=generator)
    with pytest.raises(ConTransError, match="^anchors: 30 anchor rows are too few .*hidden size 40.*ridge"):
        fit_linear_map(source, target)
    small = fit_linear_map(source, target, ridge=10.0)
    large = fit_linear_map(source, target, ridge=1000.0)
    assert small.method == "ridge" and large.weight.norm() < small.weight.norm()
    with pytest.raises(ConTransError, match="^ridge: "):
        fit_linear_map(source, target, ridge=-1.0)


# ---------------------------------------------------------------- transplant

def _block_output(model, layer, ids):
    captured = {}
    handle = decoder_blocks(model)[layer].register_forward_hook(
        lambda module, inputs, output: captured.__setitem__("out", (output[0] if isinstance(output, tuple) else output).clone()))
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        handle.remove()
    return captured["out"], logits


def test_hook_adds_exactly_alpha_v_at_the_chosen_block_only(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    ids = tokenizer("The coffee here is rich and smooth.", return_tensors="pt")["input_ids"]
    hidden = model.get_input_embeddings().embedding_dim
    vector = torch.randn(hidden, generator=torch.Generator().manual_seed(2))
    layer, alpha = 1, 2.5
    before, plain_logits = _block_output(model, layer, ids)
    previous_before, _ = _block_output(model, layer - 1, ids)
    with steer(model, layer, vector, alpha):
        after, steered_logits = _block_output(model, layer, ids)
        previous_after, _ = _block_output(model, layer - 1, ids)
    torch.testing.assert_close(after - before, (alpha * vector).expand_as(before), atol=1e-5, rtol=0)
    torch.testing.assert_close(previous_after, previous_before)
    assert not torch.allclose(steered_logits, plain_logits)
    _, logits_afterwards = _block_output(model, layer, ids)
    assert torch.equal(logits_afterwards, plain_logits)


def test_hook_is_removed_when_the_body_raises(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir)
    ids = tokenizer("The park is peaceful.", return_tensors="pt")["input_ids"]
    plain = model(ids).logits
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, 2, torch.ones(32), 3.0):
            raise RuntimeError("boom")
    assert torch.equal(model(ids).logits, plain)
    assert all(not block._forward_hooks for block in decoder_blocks(model))


def test_alpha_zero_changes_nothing_and_bad_alpha_is_refused(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir)
    ids = tokenizer("The park is peaceful.", return_tensors="pt")["input_ids"]
    plain = model(ids).logits
    with steer(model, 2, torch.ones(32) * 100, 0.0):
        assert torch.equal(model(ids).logits, plain)
    for bad in (float("nan"), float("inf"), "lots"):
        with pytest.raises(ConTransError, match="^alpha: "):
            with steer(model, 2, torch.ones(32), bad):
                pass


def test_steering_follows_the_block_dtype(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir)
    model = model.to(torch.bfloat16)
    ids = tokenizer("The park is peaceful.", return_tensors="pt")["input_ids"]
    before, _ = _block_output(model, 1, ids)
    with steer(model, 1, torch.ones(32, dtype=torch.float32), 1.0):
        after, _ = _block_output(model, 1, ids)
    assert after.dtype == torch.bfloat16
    torch.testing.assert_close(after.float(), (before + 1.0).float(), atol=0.07, rtol=0.02)


def test_input_device_without_input_embeddings_is_the_first_parameters():
    from lm_eval_contrans.activations import input_device

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))  # no get_input_embeddings
    assert input_device(model) == torch.device("cpu")
    model.to("meta")  # offloaded weights: inputs start on the CPU
    assert input_device(model) == torch.device("cpu")


def test_a_tokenizer_read_for_its_splits_is_loaded_once_until_its_files_change(tiny_llama_dir, tmp_path):
    import json
    import shutil

    from lm_eval_contrans.loading import parse_model_spec, read_only_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    spec = parse_model_spec(str(folder), "model")
    first = read_only_tokenizer(spec)
    assert read_only_tokenizer(spec) is first
    config = folder / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 77}))
    changed = read_only_tokenizer(spec)
    assert changed is not first and changed.model_max_length == 77


def test_states_that_overflow_stop_the_recording_with_the_precision_named(tiny_model_dir):
    """Gemma 3 in float16 overflows (NaN logits on the packaged model); a map fitted on such states
    would carry inf/NaN into the vector and the cache, so recording refuses them."""
    from lm_eval_contrans.activations import block_output_tensor, token_states
    from lm_eval_contrans.anchors import tokenize_with_ends

    model, tokenizer = load(tiny_model_dir)
    texts = ["a short text", "another, longer text than that"]
    assert torch.isfinite(last_token_states(model, tokenizer, texts, [0])[0]).all()

    def overflow(module, inputs, output):
        block_output_tensor(output)[..., 0] = float("inf")  # what float16 does to a large activation

    handle = decoder_blocks(model)[0].register_forward_hook(overflow)
    try:
        with pytest.raises(ConTransError, match=r"block 0 gives non-finite values .* float32.*dtype=bfloat16"):
            last_token_states(model, tokenizer, texts, [0], progress="anchors in source")
        with pytest.raises(ConTransError, match="non-finite"):
            token_states(model, tokenizer, tokenize_with_ends(tokenizer, texts)[0], [0])
    finally:
        handle.remove()


def test_a_port_of_several_blocks_records_the_target_in_one_pass(tiny_llama_dir, tiny_gpt2_dir, small_inputs,
                                                                  tmp_path, monkeypatch):
    """The states of every block a build needs come from one pass over the anchors per model."""
    import lm_eval_contrans.pipeline.states as states
    from lm_eval_contrans.pipeline import port_vector

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path / "cache"))
    _, anchors = small_inputs
    vector = tmp_path / "three-blocks.pt"
    torch.save({block: torch.randn(32, generator=torch.Generator().manual_seed(block)) for block in (0, 1, 3)}, vector)
    passes = []
    record = states.record_anchor_states

    def counted(model, tokenizer, texts, layers, **kwargs):
        passes.append((kwargs["progress"], sorted(layers)))
        return record(model, tokenizer, texts, layers, **kwargs)

    monkeypatch.setattr(states, "record_anchor_states", counted)
    transplants = port_vector(str(tiny_llama_dir), str(tiny_gpt2_dir), str(vector), anchors=anchors, device="cpu")
    target_blocks = sorted({transplant.target_layer for transplant in transplants})
    assert len(transplants) == 3 and len(target_blocks) >= 2
    assert [progress for progress, _ in passes] == ["anchors in source", "anchors in target"]
    assert passes[1][1] == target_blocks
