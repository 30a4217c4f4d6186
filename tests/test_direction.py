"""The steering direction: what every engine adds, applied by itself, with repeng-like arithmetic; a vector
made for the target by another tool is a direction and nothing more (no map, no R² it does not have)."""

from __future__ import annotations

import pytest
import torch

from lm_eval_contrans.direction import Direction
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.lm_eval_model import ConTransLM
from lm_eval_contrans.steering import steer

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
