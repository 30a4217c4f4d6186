"""The default recipe's parts: dense anchors across tokenizers, the fits, the layer sweep, the alpha unit."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import load
from lm_eval_contrans.activations import last_token_states, token_states
from lm_eval_contrans.reformulate import fit_linear_map, heldout_split
from lm_eval_contrans.anchors import matched_token_pairs, tokenize_with_ends
from lm_eval_contrans.pipeline import REFERENCE, build_transplant, make_recipe
from lm_eval_contrans.pipeline.depth import source_layer_candidates, target_layer_candidates
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.transplant import ALPHA_UNIT_FRACTION, unit_vector

TEXTS = ["The river runs past the old mill.", "A quiet street, two shops and a bakery!", "Numbers: 1234 and 56."]


def test_token_ends_pair_tokens_that_end_at_the_same_character(tiny_llama_dir, tiny_gpt2_dir):
    (_, llama_tokenizer), (_, gpt2_tokenizer) = load(tiny_llama_dir), load(tiny_gpt2_dir)
    llama_ids, llama_ends = tokenize_with_ends(llama_tokenizer, TEXTS)
    gpt2_ids, gpt2_ends = tokenize_with_ends(gpt2_tokenizer, TEXTS)
    source_index, target_index = matched_token_pairs(llama_ends, gpt2_ends)
    flat_llama = [end for ends in llama_ends for end in ends]
    flat_gpt2 = [end for ends in gpt2_ends for end in ends]
    assert len(source_index) == len(target_index) > len(TEXTS)  # more than the last tokens
    assert all(flat_llama[s] == flat_gpt2[t] >= 0 for s, t in zip(source_index, target_index))
    # every text's final token is among the pairs: both end at the text's last character
    for number, text in enumerate(TEXTS):
        assert len(text) in llama_ends[number] and len(text) in gpt2_ends[number]
    assert sum(1 for s in source_index if flat_llama[s] == len(TEXTS[0])) == 1
    # the BOS token covers no text and is never paired
    if llama_tokenizer.bos_token_id is not None and llama_ids[0][0] == llama_tokenizer.bos_token_id:
        assert llama_ends[0][0] == -1 and 0 not in source_index


def test_matched_pairs_keep_the_last_of_several_tokens_ending_at_one_character():
    source_index, target_index = matched_token_pairs([[3, 3, 7], [-1, 2]], [[3, 7], [2]])
    assert source_index == [1, 2, 4] and target_index == [0, 1, 2]


def test_token_states_are_every_real_token_in_text_order(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    ids, _ = tokenize_with_ends(tokenizer, TEXTS)
    states = token_states(model, tokenizer, ids, [1], batch_size=2)[1]
    assert states.shape[0] == sum(len(row) for row in ids)
    last_rows = torch.cumsum(torch.tensor([len(row) for row in ids]), 0) - 1
    torch.testing.assert_close(states[last_rows], last_token_states(model, tokenizer, TEXTS, [1])[1], atol=1e-5, rtol=1e-4)
    assert states.dtype == torch.float32


def test_a_bfloat16_models_token_states_are_kept_exactly_and_read_back_as_float32(tiny_model_dir):
    """Dense anchors over nine blocks run to gigabytes for a large model: in bfloat16 they are held in
    bfloat16 (no value changes) and every reader gets float32."""
    from lm_eval_contrans.cache import fill_entries
    from lm_eval_contrans.pipeline.states import StatesOnDisk

    model, tokenizer = load(tiny_model_dir)
    model = model.to(torch.bfloat16)
    ids, _ = tokenize_with_ends(tokenizer, TEXTS)
    states = token_states(model, tokenizer, ids, [1], batch_size=2)[1]
    assert states.dtype == torch.bfloat16
    last_rows = torch.cumsum(torch.tensor([len(row) for row in ids]), 0) - 1
    upcast = last_token_states(model, tokenizer, TEXTS, [1], batch_size=2)[1]  # float32 of the same values
    assert upcast.dtype == torch.float32 and torch.equal(states[last_rows].float(), upcast)
    key = {"test": "bfloat16 states", "model": str(tiny_model_dir)}
    fill_entries({1: ("anchor_states", key)}, lambda missing: {1: states})
    read = StatesOnDisk({1: key})[1]
    assert read.dtype == torch.float32 and torch.equal(read, states.float())


def test_centring_removes_an_offset_that_a_no_bias_fit_cannot_carry():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(400, 6, generator=generator)
    weight = torch.randn(6, 5, generator=generator)
    target = source @ weight + 50.0  # a large shared offset, as in Gemma's residual stream
    plain = fit_linear_map(source, target, center=False)
    centred = fit_linear_map(source, target, center=True)
    assert centred.heldout_r2 > 0.999 > plain.heldout_r2
    difference = source[0] - source[1]
    torch.testing.assert_close(centred.transplant(difference), difference @ weight, atol=1e-3, rtol=1e-3)


def test_the_final_map_is_fitted_on_every_row_and_ridge_auto_refits_at_its_choice():
    generator = torch.Generator().manual_seed(3)
    source = torch.randn(3000, 12, generator=generator) + 4.0  # many rows: the sums path, not the row solver
    target = source @ torch.randn(12, 7, generator=generator) + torch.randn(3000, 7, generator=generator) - 9.0
    centred = fit_linear_map(source, target, center=True)
    x, y = source.double() - source.double().mean(0), target.double() - target.double().mean(0)
    torch.testing.assert_close(centred.weight.double(), torch.linalg.lstsq(x, y).solution, atol=1e-5, rtol=1e-5)
    chosen = fit_linear_map(source, target, ridge="auto", center=True)
    again = fit_linear_map(source, target, ridge=chosen.ridge, center=True)
    torch.testing.assert_close(chosen.weight, again.weight)
    assert chosen.heldout_r2 == again.heldout_r2


def test_heldout_split_keeps_the_rows_of_a_text_together():
    groups = torch.arange(50).repeat_interleave(4)
    train, test = heldout_split(groups)
    assert set(groups[train].tolist()).isdisjoint(groups[test].tolist())
    assert len(set(groups[test].tolist())) == 10


def test_ridge_auto_and_procrustes_fit_and_report():
    generator = torch.Generator().manual_seed(2)
    source = torch.randn(300, 8, generator=generator)
    rotation = torch.linalg.qr(torch.randn(8, 8, generator=generator))[0]
    target = source @ rotation
    auto = fit_linear_map(source, target, ridge="auto", center=True)
    assert auto.method == "ridge" and auto.ridge > 0 and auto.heldout_r2 > 0.99
    procrustes = fit_linear_map(source, target, method="procrustes", center=True)
    assert procrustes.heldout_r2 > 0.99
    torch.testing.assert_close(procrustes.weight, rotation, atol=0.05, rtol=0.05)
    with pytest.raises(ConTransError, match="^ridge: applies to map=lstsq"):
        fit_linear_map(source, target, method="procrustes", ridge=0.1)
    with pytest.raises(ConTransError, match="^map: expected one of"):
        fit_linear_map(source, target, method="cca")


def test_recipes_and_their_overrides():
    assert make_recipe() == make_recipe("default") and make_recipe("default").anchor_tokens == "dense"
    reference = make_recipe("reference")
    assert reference == REFERENCE and (reference.anchor_tokens, reference.center, reference.alpha_unit) == ("last", False, "raw")
    assert make_recipe("reference", center="true").center is True
    with pytest.raises(ConTransError, match="^recipe: expected one of default, reference"):
        make_recipe("paper")
    with pytest.raises(ConTransError, match="^anchor_tokens: expected one of"):
        make_recipe(anchor_tokens="first")
    with pytest.raises(ConTransError, match="^center: expected true or false"):
        make_recipe(center="maybe")


def test_source_layer_candidates_surround_the_target_depth():
    # the packaged pair: Gemma's default block 14 of 18 sits at depth 14 / 18; SmolLM2's blocks 19-27 of 30 lie within 0.15
    assert source_layer_candidates(30, 14 / 18) == list(range(19, 28))
    # a shallow model gets at least the neighbouring blocks (one block's depth, 1 / n, either side)
    assert source_layer_candidates(4, 0.5) == [1, 2, 3] and source_layer_candidates(4, 0.75) == [2, 3]
    assert target_layer_candidates(18) == list(range(8, 16))


def test_alpha_unit_residual_scales_to_the_residual_norm():
    vector = torch.tensor([3.0, 4.0])
    assert unit_vector(vector, "raw", 10.0) is vector
    scaled = unit_vector(vector, "residual", 10.0)
    assert float(scaled.norm()) == pytest.approx(ALPHA_UNIT_FRACTION * 10.0)
    assert float(torch.nn.functional.cosine_similarity(scaled, vector, dim=0)) == pytest.approx(1.0)
    with pytest.raises(ConTransError, match="^alpha_unit: "):
        unit_vector(vector, "residual", 0.0)


def test_default_build_picks_the_source_block_by_heldout_r2(tiny_llama_dir, tiny_gpt2_dir):
    transplant = build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", device="cpu")
    sweep = {int(layer): r2 for layer, r2 in transplant.extra["source_layer_sweep"].items()}
    assert len(sweep) > 1 and transplant.source_layer == max(sweep, key=sweep.get)
    assert transplant.heldout_r2 == pytest.approx(sweep[transplant.source_layer], abs=1e-4)
    assert transplant.anchor_tokens == "dense" and transplant.residual_norm > 0
    reference = build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", recipe="reference", device="cpu")
    assert reference.extra == {} and reference.anchor_tokens == "last" and reference.alpha_unit == "raw"
    assert reference.source_layer == 3  # 0.75 of 4 blocks


def test_chunked_normal_equations_equal_a_direct_least_squares_fit(monkeypatch):
    import lm_eval_contrans.reformulate as reformulate

    generator = torch.Generator().manual_seed(3)
    source = torch.randn(500, 6, generator=generator) + 3.0
    target = source @ torch.randn(6, 4, generator=generator) + 0.1 * torch.randn(500, 4, generator=generator) - 7.0
    whole = fit_linear_map(source, target, center=True)
    monkeypatch.setattr(reformulate, "CHUNK_ROWS", 7)  # many chunks, a ragged last one
    chunked = fit_linear_map(source, target, center=True)
    x, y = source.double() - source.double().mean(0), target.double() - target.double().mean(0)
    direct = torch.linalg.lstsq(x, y).solution.float()
    torch.testing.assert_close(chunked.weight, direct, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(whole.weight, chunked.weight, atol=1e-5, rtol=1e-5)
    assert chunked.heldout_r2 == pytest.approx(whole.heldout_r2, abs=1e-9)


def test_concept_split_is_seeded_disjoint_and_complete():
    from lm_eval_contrans.concepts import load_concept_set

    concept = load_concept_set("sentiment")
    training, held_out = concept.split(0.2)
    assert len(held_out) == round(0.2 * len(concept)) and len(training) + len(held_out) == len(concept)
    assert set(training.positives).isdisjoint(held_out.positives)
    assert set(training.positives) | set(held_out.positives) == set(concept.positives)
    assert concept.split(0.2)[1].pairs_hash == held_out.pairs_hash != concept.split(0.2, seed=1)[1].pairs_hash


def test_target_layer_auto_scores_the_candidate_blocks_on_held_out_pairs(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.pipeline.depth import target_layer_candidates
    from lm_eval_contrans.pipeline.fit import paired_indices
    from lm_eval_contrans.pipeline.states import StateRequest, record_concept_states, target_anchor_states
    from lm_eval_contrans.pipeline.target_layer import VALIDATION_FRACTION
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.loading import parse_model_spec

    transplant = build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", target_layer="auto", device="cpu")
    sweep = transplant.extra["target_layer_sweep"]
    blocks = transplant.target_num_layers
    assert [int(block) for block in sweep] == target_layer_candidates(blocks) and len(sweep) > 1
    assert str(transplant.target_layer) == max(sweep, key=lambda block: sweep[block]["score"])
    # the chosen block's score, recomputed from its definition: the target's own held-out concept
    # vector along the direction transplanted from the training pairs, over the anchors' spread on it
    block = transplant.target_layer
    training, held_out = load_concept_set("sentiment").split(VALIDATION_FRACTION)
    training_file = tmp_path / "training.jsonl"
    training_file.write_text("".join(json.dumps({"positive": p, "negative": n}) + "\n"
                                     for p, n in zip(training.positives, training.negatives)))
    direction = build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), str(training_file), target_layer=block,
                                 device="cpu").vector.double()
    direction /= direction.norm()
    anchors, _ = load_anchor_texts(None)
    own = record_concept_states(str(tiny_gpt2_dir), [StateRequest(held_out, block)], anchor_texts=anchors,
                                anchor_tokens="dense")[0].concept_vector.double()
    source = record_concept_states(str(tiny_llama_dir), [StateRequest(training, "auto", (block / (blocks - 1),))],
                                   anchor_texts=anchors, anchor_tokens="dense")[0]
    target = target_anchor_states(parse_model_spec(str(tiny_gpt2_dir), "target"), anchors, block, num_layers=blocks,
                                  model_type="", dtype="float32", device="cpu", anchor_tokens="dense")
    rows = paired_indices(source, target)[1]
    spread = (target.anchor_states[rows].double() @ direction).std()
    assert sweep[str(block)]["score"] == pytest.approx(float(own @ direction / spread), abs=1e-3)


def test_target_layer_auto_needs_enough_pairs_to_hold_some_out(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps({"positive": f"good {i}", "negative": f"bad {i}"}) + "\n" for i in range(4)))
    with pytest.raises(ConTransError, match="^target_layer: auto holds out concept pairs"):
        build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), str(few), target_layer="auto", device="cpu")
