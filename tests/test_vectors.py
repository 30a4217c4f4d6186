"""Steering vectors from other tools: read (GGUF control vectors, lm-eval steered .pt, tensors in
.safetensors/.pt/.npy), ported through the map, or used on the model they were made for."""

from __future__ import annotations

import logging

import numpy
import pytest
import torch

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.hf.lm_eval_model import ConTransLM
from lm_eval_contrans.pipeline import build_transplant, port_vector
from lm_eval_contrans.vectors import read_vector


def write_control_vector(path, directions: dict[int, torch.Tensor], model_hint: str = "llama"):
    """A GGUF laid out as llama.cpp's cvector-generator writes it."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_uint32("controlvector.layer_count", len(directions))
    for block, direction in directions.items():
        writer.add_tensor(f"direction.{block}", direction.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def direct(tiny_llama_dir, tiny_gpt2_dir, small_inputs):
    concept, anchors = small_inputs
    transplant = build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), concept, anchors=anchors, device="cpu")
    return transplant, anchors


def test_our_own_source_vector_as_a_gguf_ports_to_the_direct_build(direct, tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    transplant, anchors = direct
    file = write_control_vector(tmp_path / "ours.gguf", {transplant.source_layer: transplant.source_vector})
    ported, = port_vector(str(tiny_llama_dir), str(tiny_gpt2_dir), str(file), anchors=anchors,
                          target_layer=transplant.target_layer, device="cpu")
    assert (ported.source_layer, ported.target_layer) == (transplant.source_layer, transplant.target_layer)
    torch.testing.assert_close(ported.map_weight, transplant.map_weight, atol=0, rtol=0)
    torch.testing.assert_close(ported.vector, transplant.vector, atol=1e-6, rtol=1e-6)
    assert ported.heldout_r2 == transplant.heldout_r2 and ported.residual_norm == transplant.residual_norm
    assert ported.alpha_share == 1.0  # one block: it steers as the direct build does
    torch.testing.assert_close(ported.steering_vector(), transplant.steering_vector(), atol=1e-4, rtol=1e-5)
    imported = ported.extra["imported"]
    assert imported["file"] == "ours.gguf" and imported["format"] == "gguf" and imported["blocks"] == [transplant.source_layer]
    assert len(imported["sha256"]) == 64 and ported.concept_hash == imported["sha256"] and ported.concept_pairs == 0


def test_every_format_gives_the_same_vector(direct, tmp_path):
    from safetensors.torch import save_file

    transplant, _ = direct
    block, vector = transplant.source_layer, transplant.source_vector
    torch.save({f"model.layers.{block}": {"steering_vector": vector, "steering_coefficient": 2.0, "action": "add",
                                          "bias": None, "head_index": None}}, tmp_path / "steered.pt")
    torch.save(vector, tmp_path / "bare.pt")
    save_file({f"direction.{block}": vector}, str(tmp_path / "named.safetensors"))
    save_file({"vector": vector}, str(tmp_path / "bare.safetensors"))
    numpy.save(tmp_path / "bare.npy", vector.numpy())
    write_control_vector(tmp_path / "cv.gguf", {block: vector})
    formats = {}
    for name in ("steered.pt", "bare.pt", "named.safetensors", "bare.safetensors", "bare.npy", "cv.gguf"):
        read = read_vector(tmp_path / name, source_layer=block if name.startswith("bare") else None)
        expected = vector * 2.0 if name == "steered.pt" else vector  # lm-eval's steered model adds vector x coefficient
        assert read.blocks == [block] and torch.equal(read.directions[block], expected), name
        formats[name] = read.format
    assert formats == {"steered.pt": "steered", "bare.pt": "pt", "named.safetensors": "safetensors",
                       "bare.safetensors": "safetensors", "bare.npy": "npy", "cv.gguf": "gguf"}
    assert read_vector(tmp_path / "steered.pt").coefficients == {block: 2.0}


def test_blocks_are_named_as_every_layer_argument_is(direct, tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    """A negative block counts from the end (steering-vectors' int keys may, as Python's list indices do), and the
    layer given for a bare tensor may be a depth fraction, as for source_layer= everywhere. Before, a fraction
    crashed in int() with a ValueError and a negative block was refused as out of range."""
    transplant, anchors = direct
    block, vector, num_layers = transplant.source_layer, transplant.source_vector, transplant.source_num_layers
    torch.save({block - num_layers: vector}, tmp_path / "layer_activations.pt")  # steering-vectors' dict, saved
    torch.save(vector, tmp_path / "bare.pt")
    for file, layer in (("layer_activations.pt", None), ("bare.pt", block - num_layers), ("bare.pt", str(block / num_layers))):
        checked = read_vector(tmp_path / file, source_layer=layer).checked(vector.shape[0], num_layers, "source_vector")
        assert checked.blocks == [block] and torch.equal(checked.directions[block], vector), (file, layer)
    ported, = port_vector(str(tiny_llama_dir), str(tiny_gpt2_dir), str(tmp_path / "layer_activations.pt"), anchors=anchors,
                          target_layer=transplant.target_layer, device="cpu")
    assert ported.source_layer == block and ported.extra["imported"]["blocks"] == [block]
    torch.testing.assert_close(ported.vector, transplant.vector, atol=1e-6, rtol=1e-6)
    torch.save({block: vector, block - num_layers: vector}, tmp_path / "twice.pt")
    with pytest.raises(ConTransError, match=f"two vectors for block {block}"):
        read_vector(tmp_path / "twice.pt").checked(vector.shape[0], num_layers, "source_vector")


@pytest.mark.parametrize("module, name, advice", [
    ("steering_vectors.steering_vector", "SteeringVector", r"torch.save\(steering_vector.layer_activations, path\)"),
    ("repeng.extract", "ControlVector", r"control_vector.export_gguf\('name.gguf'\)"),
])
def test_another_tools_pickled_vector_object_is_refused_with_how_to_save_it(tmp_path, monkeypatch, module, name, advice):
    """Users of steering-vectors and repeng save the tool's object whole; unpickling it could run code, so the
    error says how that tool writes plain tensors instead."""
    import dataclasses
    import sys
    import types

    vector_class = dataclasses.make_dataclass(name, [("directions", dict)])
    vector_class.__module__ = module
    for depth in range(1, module.count(".") + 2):
        monkeypatch.setitem(sys.modules, ".".join(module.split(".")[:depth]), types.ModuleType(module))
    setattr(sys.modules[module], name, vector_class)
    torch.save(vector_class({3: torch.ones(4)}), tmp_path / "saved.pt")
    with pytest.raises(ConTransError, match=f"^source_vector: .*saved.pt holds a pickled {module}.{name}, which is not "
                                            f"loaded .*; .*{advice}"):
        read_vector(tmp_path / "saved.pt")


def test_a_vector_on_several_blocks_lands_at_the_same_relative_depths(tiny_llama_dir, tiny_gpt2_dir, small_inputs,
                                                                       tmp_path):
    _, anchors = small_inputs
    generator = torch.Generator().manual_seed(0)
    file = write_control_vector(tmp_path / "two.gguf", {1: torch.randn(32, generator=generator),
                                                        3: torch.randn(32, generator=generator)})
    first, last = port_vector(str(tiny_llama_dir), str(tiny_gpt2_dir), str(file), anchors=anchors, device="cpu")
    # llama blocks 1 and 3 of 4 (depth 1/4 and 3/4) -> gpt2's 3 blocks at those depths: round(0.75), round(2.25)
    assert (first.source_layer, first.target_layer) == (1, 1) and (last.source_layer, last.target_layer) == (3, 2)
    assert first.concept == "two@1" and last.concept == "two@3"
    # one vector on two blocks: each adds half of its block's residual unit, so that alpha 1 is, in all, one push
    from lm_eval_contrans.transplant import ALPHA_UNIT_FRACTION

    assert first.alpha_share == last.alpha_share == 0.5
    for transplant in (first, last):
        assert float(transplant.steering_vector().norm()) == pytest.approx(0.5 * ALPHA_UNIT_FRACTION * transplant.residual_norm, rel=1e-5)
    from lm_eval_contrans.artifact import load_transplants, save_transplants

    assert [t.alpha_share for t in load_transplants(save_transplants([first, last], tmp_path / "two.safetensors"))] == [0.5, 0.5]
    one_block = port_vector(str(tiny_llama_dir), str(tiny_gpt2_dir), str(file), anchors=anchors, target_layer=2,
                            device="cpu")
    assert [t.target_layer for t in one_block] == [2, 2]


def test_a_depth_fraction_lands_a_build_and_a_port_on_one_target_block(tiny_llama_dir, tiny_gpt2_dir, small_inputs,
                                                                       tmp_path):
    """Block i of n sits at depth i / n, the inverse of a fraction's round(f × n): a port given 0.5 lands where a
    build given 0.5 does (gpt2's block round(1.5) = 2), and so does the source block that 0.5 names (llama's
    block 2 of 4) given as an index. Read as i / (n - 1), the port landed on block round(2 / 3 × 2) = 1."""
    concept, anchors = small_inputs
    numpy.save(tmp_path / "bare.npy", torch.randn(32, generator=torch.Generator().manual_seed(0)).numpy())
    built = build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), concept, source_layer=0.5, target_layer=0.5,
                             anchors=anchors, device="cpu")
    by_fraction, by_index = (port_vector(str(tiny_llama_dir), str(tiny_gpt2_dir), str(tmp_path / "bare.npy"),
                                         source_layer=layer, anchors=anchors, device="cpu")[0] for layer in ("0.5", 2))
    assert built.source_layer == by_fraction.source_layer == by_index.source_layer == 2
    assert built.target_layer == by_fraction.target_layer == by_index.target_layer == 2


def test_bad_input_gets_one_clear_error_each(tiny_llama_dir, tiny_gpt2_dir, small_inputs, tmp_path, caplog):
    import gguf

    _, anchors = small_inputs

    def port(file, **options):
        return port_vector(str(tiny_llama_dir), str(tiny_gpt2_dir), str(file), anchors=anchors, device="cpu", **options)

    with pytest.raises(ConTransError, match=r"^source_vector: .*wide.gguf: the vector for block 1 has shape \(48,\); "
                                            r"the model's hidden size is 32"):
        port(write_control_vector(tmp_path / "wide.gguf", {1: torch.ones(48)}))
    with pytest.raises(ConTransError, match="^source_vector: .*deep.gguf: layer 7 is out of range for a model with 4 decoder blocks"):
        port(write_control_vector(tmp_path / "deep.gguf", {7: torch.ones(32)}))
    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    writer.add_tensor("token_embd.weight", numpy.ones((4, 4), dtype=numpy.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(ConTransError, match="has no direction.<block> tensors; it is not a control vector"):
        port(tmp_path / "model.gguf")
    torch.save({"layers.1": "not a tensor"}, tmp_path / "strings.pt")
    with pytest.raises(ConTransError, match="entry 'layers.1' is a str, not a tensor"):
        port(tmp_path / "strings.pt")
    for entry, says in (({"action": "clamp"}, "has action 'clamp'"), ({"action": "add", "head_index": 2}, "adds to attention head 2")):
        torch.save({"model.layers.1": {"steering_vector": torch.ones(32), "steering_coefficient": 1.0, **entry}}, tmp_path / "odd.pt")
        with pytest.raises(ConTransError, match=f"entry 'model.layers.1' {says}; only 'add' entries on a block's whole output"):
            port(tmp_path / "odd.pt")
    with pytest.raises(ConTransError, match=r"^target_layer: auto scores blocks with held-out concept pairs, and a vector "
                                            r"made by another tool \(deep\) has none"):
        port(write_control_vector(tmp_path / "deep.gguf", {1: torch.ones(32)}), target_layer="auto")
    torch.save([torch.ones(32)], tmp_path / "list.pt")
    with pytest.raises(ConTransError, match="holds a list; expected a tensor or a dict of tensors"):
        port(tmp_path / "list.pt")
    torch.save({"layers.1": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")  # a pickled object: never unpickled
    with pytest.raises(ConTransError, match="holds a pickled torch.nn.modules.linear.Linear, which is not loaded "
                                            r"\(unpickling it could run code\); save its tensors instead"):
        port(tmp_path / "module.pt")
    (tmp_path / "text.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConTransError, match="text.pt is not a tensor file that loads with weights_only=True: "):
        port(tmp_path / "text.pt")
    torch.save(torch.ones(32), tmp_path / "bare.pt")
    with pytest.raises(ConTransError, match=r"names no block; give source_layer= \(--source-layer\)"):
        port(tmp_path / "bare.pt")
    with pytest.raises(ConTransError, match="^source_vector: steering vector file not found"):
        port(tmp_path / "missing.gguf")
    ours = logging.getLogger("lm_eval_contrans")  # once lm-eval's handlers serve it, it no longer propagates
    ours.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="lm_eval_contrans"):
            port(write_control_vector(tmp_path / "gemma.gguf", {1: torch.ones(32)}, model_hint="gemma3"))
    finally:
        ours.removeHandler(caplog.handler)
    assert "was made for a gemma3 model (controlvector.model_hint); source" in caplog.text


def test_a_vector_made_for_the_target_steers_it_as_it_is(tiny_gpt2_dir, tiny_llama_dir, tmp_path):
    from lm_eval.api.instance import Instance

    from lm_eval_contrans.transplant import steer

    direction = torch.randn(48, generator=torch.Generator().manual_seed(3))
    file = write_control_vector(tmp_path / "for-gpt2.gguf", {1: direction}, model_hint="gpt2")
    lm = ConTransLM(target=str(tiny_gpt2_dir), vector=str(file), alpha=2.0, device="cpu", batch_size=4)
    assert lm.directions[0].alpha_unit == "raw" and lm.directions[0].block == 1
    requests = [Instance("loglikelihood", {}, ("The hotel room was", " clean"), 0)]
    steered = lm.loglikelihood(requests, disable_tqdm=True)[0][0]
    plain = ConTransLM.from_transplants(str(tiny_gpt2_dir), [], device="cpu", batch_size=4)
    with steer(plain.model, 1, direction, 2.0):
        by_hand = plain.loglikelihood(requests, disable_tqdm=True)[0][0]
    assert steered == pytest.approx(by_hand, abs=1e-5) and steered != pytest.approx(
        plain.loglikelihood(requests, disable_tqdm=True)[0][0], abs=1e-3)
    with pytest.raises(ConTransError, match="^vector: .*the vector for block 1 has shape \\(48,\\); the model's hidden size is 32"):
        ConTransLM(target=str(tiny_llama_dir), vector=str(file), device="cpu", batch_size=4)
    numpy.save(tmp_path / "bare.npy", direction.numpy())  # a bare tensor: target_layer= places it, in any of its forms
    for layer, block in (("-2", 1), ("0.5", 2), (1, 1)):
        lm = ConTransLM(target=str(tiny_gpt2_dir), vector=str(tmp_path / "bare.npy"), target_layer=layer, device="cpu", batch_size=4)
        assert lm.directions[0].block == block, layer


def test_source_vector_model_arg_ports_like_the_function(direct, tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    transplant, anchors = direct
    file = write_control_vector(tmp_path / "ours.gguf", {transplant.source_layer: transplant.source_vector})
    lm = ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), source_vector=str(file), anchors=anchors,
                    target_layer=transplant.target_layer, alpha=3.0, device="cpu", batch_size=4)
    torch.testing.assert_close(lm.transplant.vector, transplant.vector, atol=1e-6, rtol=1e-6)
    assert lm.get_model_info()["contrans"]["extra"]["imported"]["file"] == "ours.gguf"


def test_our_gguf_and_steered_exports_steer_like_the_artifact(direct, tiny_gpt2_dir, tmp_path):
    """Exported for llama.cpp or lm-eval's steered model, then read back as vector=: the same steer."""
    from lm_eval.api.instance import Instance

    from lm_eval_contrans.artifact import save_transplant
    from lm_eval_contrans.export import export_gguf, export_steered

    transplant, _ = direct
    artifact = save_transplant(transplant, tmp_path / "built.safetensors")
    export_gguf(transplant, tmp_path / "built.gguf")
    export_steered(transplant, tmp_path / "built.pt", str(tiny_gpt2_dir), alpha=1.0)
    requests = [Instance("loglikelihood", {}, ("The hotel room was", " clean"), 0),
                Instance("loglikelihood", {}, ("We walked along the river", " slowly"), 1)]

    def scores(vector):
        lm = ConTransLM(target=str(tiny_gpt2_dir), vector=str(vector), alpha=3.0, device="cpu", batch_size=4)
        return [score for score, _ in lm.loglikelihood(requests, disable_tqdm=True)]

    expected = scores(artifact)
    assert scores(tmp_path / "built.gguf") == pytest.approx(expected, abs=1e-5)
    assert scores(tmp_path / "built.pt") == pytest.approx(expected, abs=1e-5)


def test_a_ported_multi_block_vector_exports_every_block(tiny_llama_dir, tiny_gpt2_dir, small_inputs, tmp_path):
    from lm_eval.api.instance import Instance

    from lm_eval_contrans.artifact import save_transplants
    from lm_eval_contrans.export import export_gguf, export_steered, read_gguf_control_vector

    _, anchors = small_inputs
    generator = torch.Generator().manual_seed(1)
    file = write_control_vector(tmp_path / "three.gguf", {1: torch.randn(32, generator=generator),
                                                          2: torch.randn(32, generator=generator),
                                                          3: torch.randn(32, generator=generator)})
    ported = port_vector(str(tiny_llama_dir), str(tiny_gpt2_dir), str(file), anchors=anchors, device="cpu")
    assert [t.target_layer for t in ported] == [1, 2, 2]  # depths 1/4, 2/4, 3/4 -> gpt2's blocks round(0.75, 1.5, 2.25)
    _, tensors = read_gguf_control_vector(export_gguf(ported, tmp_path / "out.gguf"))
    assert sorted(tensors) == ["direction.1", "direction.2"]
    torch.testing.assert_close(tensors["direction.2"], ported[1].steering_vector() + ported[2].steering_vector())
    requests = [Instance("loglikelihood", {}, ("The hotel room was", " clean"), 0)]

    def score(vector):
        lm = ConTransLM(target=str(tiny_gpt2_dir), vector=str(vector), alpha=2.0, device="cpu", batch_size=4)
        return lm.loglikelihood(requests, disable_tqdm=True)[0][0]

    artifact = save_transplants(ported, tmp_path / "ported.safetensors")
    export_steered(ported, tmp_path / "out.pt", str(tiny_gpt2_dir))
    assert score(tmp_path / "out.gguf") == pytest.approx(score(artifact), abs=1e-4)
    assert score(tmp_path / "out.pt") == pytest.approx(score(artifact), abs=1e-4)


def test_a_vector_for_the_target_refuses_residual_units_before_loading(tiny_gpt2_dir, tmp_path):
    file = write_control_vector(tmp_path / "for-gpt2.gguf", {1: torch.ones(48)}, model_hint="gpt2")
    with pytest.raises(ConTransError, match="^alpha_unit: a vector made for the target by another tool steers in its own units"):
        ConTransLM(target=str(tiny_gpt2_dir), vector=str(file), alpha_unit="residual", device="cpu")
