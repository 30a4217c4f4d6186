"""The steering direction: what every engine adds, applied by itself, with repeng-like arithmetic; a vector
made for the target by another tool is a direction and nothing more (no map, no R² it does not have)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lm_eval_contrans.direction import Direction
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.hf.lm_eval_model import ConTransLM
from lm_eval_contrans.transplant import steer

from test_vectors import write_control_vector

IDS = torch.tensor([[5, 17, 33, 60]])


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    from lm_eval_contrans.loading import load_model

    return load_model(str(tiny_gpt2_dir), dtype="float32", device="cpu")[0]


def logits(model, *directions_and_alphas) -> torch.Tensor:
    from contextlib import ExitStack

    with torch.no_grad(), ExitStack() as stack:
        for direction, alpha in directions_and_alphas:
            stack.enter_context(direction.apply(model, alpha))
        return model(IDS).logits


def test_a_direction_applies_itself_in_its_alpha_unit(gpt2):
    vector = torch.randn(48, generator=torch.Generator().manual_seed(0))
    raw = Direction("raw", 1, vector)
    residual = Direction("residual", 1, vector, alpha_unit="residual", residual_norm=40.0)
    with torch.no_grad(), steer(gpt2, 1, vector, 2.0):
        by_hand = gpt2(IDS).logits
    torch.testing.assert_close(logits(gpt2, (raw, 2.0)), by_hand, rtol=0, atol=0)
    assert float(residual.steering_vector().norm()) == pytest.approx(0.1 * 40.0)  # alpha 1: a tenth of the norm
    assert not torch.allclose(logits(gpt2, (residual, 2.0)), by_hand)
    torch.testing.assert_close(logits(gpt2, (raw, 0.0)), logits(gpt2), rtol=0, atol=0)


def test_directions_add_and_scale_as_what_they_add(gpt2):
    generator = torch.Generator().manual_seed(1)
    first = Direction("a", 1, torch.randn(48, generator=generator), alpha_unit="residual", residual_norm=30.0)
    second = Direction("b", 1, torch.randn(48, generator=generator))
    total = first + second
    assert (total.name, total.block, total.alpha_unit) == ("a+b", 1, "raw")
    torch.testing.assert_close(total.steering_vector(), first.steering_vector() + second.steering_vector())
    # one direction for two: the same forward pass as both hooks together
    torch.testing.assert_close(logits(gpt2, (total, 1.5)), logits(gpt2, (first, 1.5), (second, 1.5)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((2 * first).steering_vector(), 2 * first.steering_vector())
    torch.testing.assert_close((first * 2).steering_vector(), (first / 0.5).steering_vector())
    torch.testing.assert_close((first - second).steering_vector(), first.steering_vector() - second.steering_vector())
    torch.testing.assert_close((-second).steering_vector(), -second.vector)
    with pytest.raises(ConTransError, match="^vector: a steers block 1 and c block 2: directions add only at one block"):
        first + Direction("c", 2, torch.ones(48))


def test_a_direction_is_checked_against_the_model_it_steers(tiny_gpt2_dir):
    with pytest.raises(ConTransError, match="^vector: wide: a vector of shape \\(32,\\) for a model of hidden size 48"):
        ConTransLM.from_transplants(str(tiny_gpt2_dir), Direction("wide", 1, torch.ones(32)), device="cpu")
    with pytest.raises(ConTransError, match="^vector: deep: block 9 is not one of the model's 3 blocks"):
        ConTransLM.from_transplants(str(tiny_gpt2_dir), Direction("deep", 9, torch.ones(48)), device="cpu")
    lm = ConTransLM.from_transplants(str(tiny_gpt2_dir), [], device="cpu")
    with pytest.raises(ConTransError, match="^vector: nan\\*one holds non-finite values"):  # NaN scaled in
        lm.use_transplants(float("nan") * Direction("one", 1, torch.ones(48)), 1.0)
    with pytest.raises(ConTransError, match="^vector: 0\\*one is all zeros: it would steer nothing"):
        lm.use_transplants(0 * Direction("one", 1, torch.ones(48)), 1.0)


def test_a_vector_made_for_the_target_is_a_direction_with_its_origin_and_no_map(tiny_gpt2_dir, tmp_path):
    file = write_control_vector(tmp_path / "for-gpt2.gguf", {1: torch.ones(48), 2: -torch.ones(48)}, model_hint="gpt2")
    lm = ConTransLM(target=str(tiny_gpt2_dir), vector=str(file), alpha="1+2", device="cpu", batch_size=4)
    assert all(isinstance(given, Direction) for given in lm.transplants) and [d.block for d in lm.directions] == [1, 2]
    info = lm.get_model_info()["contrans"]
    assert [entry["name"] for entry in info["transplants"]] == ["for-gpt2@1", "for-gpt2@2"]
    assert info["transplants"][0]["imported"]["file"] == "for-gpt2.gguf"
    assert not {"heldout_r2", "map_method", "anchors"} & set(info["transplants"][0])  # nothing it does not have
    with pytest.raises(ConTransError, match="^save_vector: .*for-gpt2.gguf was made for the target by another tool: "
                                            "nothing is built from it"):
        ConTransLM(target=str(tiny_gpt2_dir), vector=str(file), save_vector=str(tmp_path / "x.safetensors"), device="cpu")


def _transplant(vector: torch.Tensor, **fields):
    from lm_eval_contrans.artifact import load_transplants

    first = load_transplants(OLD_ARTIFACT)[0]
    return first.with_steering(vector=vector, **fields)


OLD_ARTIFACT = Path(__file__).parent / "data" / "artifact-702b054.safetensors"  # written by main at 702b054


def test_an_artifact_written_by_an_earlier_version_loads_and_writes_back_byte_for_byte(tmp_path):
    from lm_eval_contrans.artifact import load_steering, load_transplants, save_transplants

    first, second = load_transplants(OLD_ARTIFACT)
    assert (first.concept, first.target_layer, first.alpha_unit, first.residual_norm) == ("sentiment", 2, "residual", 10.0)
    assert (second.concept, second.alpha_share, first.alpha_share) == ("honesty", 0.5, 1.0)
    assert first.extra == {"source_layer_sweep": {"2": 0.5}} and first.heldout_r2 == 0.5
    assert load_steering(OLD_ARTIFACT)[1].direction.steering_key() == second.direction.steering_key()
    # a concept build's artifact is what it was: the same bytes, so no bigger
    assert save_transplants([first, second], tmp_path / "again.safetensors").read_bytes() == OLD_ARTIFACT.read_bytes()


def test_controls_are_directions_that_steer_as_the_transplant_would_and_borrow_nothing():
    from lm_eval_contrans.experiments.controls import own_control, random_control

    transplant = _transplant(torch.randn(8, generator=torch.Generator().manual_seed(3)))
    random, own = random_control(transplant, seed=1), own_control(transplant, torch.randn(8))
    for control in (random, own):
        assert isinstance(control, Direction) and not hasattr(control, "heldout_r2") and not hasattr(control, "map_weight")
        # the transplant's block and alpha unit: alpha 1 is the same push (residual units: the same norm)
        assert (control.block, control.alpha_unit, control.residual_norm) == (2, "residual", 10.0)
        assert float(control.steering_vector().norm()) == pytest.approx(float(transplant.steering_vector().norm()), rel=1e-6)
    assert float(random.vector.norm()) == pytest.approx(float(transplant.vector.norm()), rel=1e-6)
    assert random.origin == {"control": "random", "seed": 1, "norm_of": "sentiment"}
    assert own.origin["control"] == "target's own vector" and own.origin["concept_hash"] == transplant.concept_hash
    assert torch.equal(random_control(transplant, seed=1).vector, random.vector)
    assert not torch.equal(random_control(transplant, seed=2).vector, random.vector)


def test_directions_are_saved_read_back_and_steer_from_a_file_as_in_memory(tiny_gpt2_dir, tmp_path):
    from lm_eval.api.instance import Instance

    from lm_eval_contrans.artifact import load_steering, load_transplants, save_steering, save_transplants

    direction = Direction("probe", 1, torch.randn(48, generator=torch.Generator().manual_seed(0)), "raw",
                          origin={"control": "random", "seed": 0})
    path = save_steering([direction, 2 * direction], tmp_path / "directions.safetensors")
    first, second = load_steering(path)
    assert (first.name, first.block, first.origin) == ("probe", 1, {"control": "random", "seed": 0})
    assert torch.equal(first.vector, direction.vector) and torch.equal(second.vector, 2 * direction.vector)
    with pytest.raises(ConTransError, match="holds bare directions"):
        load_transplants(path)
    with pytest.raises(ConTransError, match="^out: bare directions"):
        save_transplants([direction], tmp_path / "x.safetensors")
    with pytest.raises(ConTransError, match="^out: .*non-finite"):
        save_steering([direction * float("nan")], tmp_path / "nan.safetensors")
    with pytest.raises(ConTransError, match="^out: a file holds fitted transplants or bare directions, not both"):
        save_steering([_transplant(torch.ones(8)), direction], tmp_path / "mixed.safetensors")
    with pytest.raises(ConTransError, match="^out: nothing to write"):
        save_steering([], tmp_path / "empty.safetensors")
    assert sorted(item.name for item in tmp_path.iterdir()) == ["directions.safetensors"]  # nothing else written
    requests = [Instance("loglikelihood", {}, ("The hotel room was", " clean"), 0)]

    def score(vector):
        lm = ConTransLM(target=str(tiny_gpt2_dir), vector=vector, alpha=3.0, device="cpu", batch_size=4)
        return lm.loglikelihood(requests, disable_tqdm=True)[0][0]

    from_file, in_memory, first_only = score(str(path)), score([direction, 2 * direction]), score([direction])
    assert from_file == pytest.approx(in_memory, abs=1e-6) and abs(from_file - first_only) > 1e-3


def test_a_grid_keys_a_row_by_what_steers_not_by_how_it_was_made(tmp_path):
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow

    grid = Grid(tmp_path, EvalSettings(tasks=["x"]))
    vector = torch.randn(8, generator=torch.Generator().manual_seed(0))
    transplant = _transplant(vector)

    def key(steering):
        return grid.row_key(GridRow("r", "contrans", "m", steering, 1.0), grid.artifact_path(steering)[1])

    same = key(transplant)
    assert key(replace(transplant, heldout_r2=0.9, extra={"control": "x"})) == same  # another record of its making
    assert key(transplant.direction) == same  # the bare direction it adds
    assert key(grid.artifact_path(transplant)[0]) == same  # the file the grid saved
    assert key(transplant.with_steering(vector=vector * 2)) != same and key(transplant.with_steering(target_layer=1)) != same
    assert key(transplant.with_steering(alpha_unit="raw")) != same and key(transplant.with_steering(alpha_share=0.5)) != same


def test_a_transplants_steering_fields_are_its_directions_and_change_only_by_copy():
    transplant = _transplant(torch.ones(8))
    assert (transplant.target_layer, transplant.concept) == (transplant.direction.block, transplant.direction.name)
    with pytest.raises(AttributeError, match="with_steering"):
        transplant.target_layer = 0  # would leave the direction, which steers, at block 2
    moved = transplant.with_steering(target_layer=1, alpha_share=0.5)
    assert (moved.direction.block, moved.alpha_share, transplant.target_layer) == (1, 0.5, 2)
    assert moved.heldout_r2 == transplant.heldout_r2 and moved.map_weight is transplant.map_weight


def test_contrans_inspect_and_export_read_a_file_of_directions(tiny_gpt2_dir, tmp_path, capsys):
    import json

    from lm_eval_contrans.artifact import save_steering
    from lm_eval_contrans.cli import main
    from lm_eval_contrans.experiments.controls import random_control
    from lm_eval_contrans.export import export_gguf, read_gguf_control_vector

    control = random_control(Direction("sentiment", 2, torch.ones(48), "raw"), seed=0)
    path = save_steering([control], tmp_path / "control.safetensors")
    assert main(["inspect", str(path), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["block"] == 2 and described["control"] == "random" and "heldout_r2" not in described
    assert main(["export", str(path), "--format", "steered", "--out", str(tmp_path / "c.pt")]) == 2
    assert "holds bare directions, which name no model: give --target" in capsys.readouterr().err
    assert main(["export", str(path), "--format", "steered", "--out", str(tmp_path / "c.pt"), "--target",
                 str(tiny_gpt2_dir)]) == 0
    assert main(["export", str(path), "--format", "gguf", "--out", str(tmp_path / "c.gguf")]) == 2
    assert "record no model type" in capsys.readouterr().err  # a control names no model; llama.cpp checks one
    hinted = replace(control, origin={"model_hint": "gpt2"})  # as another tool's file for the target records it
    _, tensors = read_gguf_control_vector(export_gguf([hinted], tmp_path / "h.gguf"))
    torch.testing.assert_close(tensors["direction.2"], control.vector)
