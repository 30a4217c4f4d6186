"""What crosses into vLLM's processes and what the plugin does there, without vLLM: the steering file, the
hook on the block outputs vLLM's layers return, and the checks a worker makes before steering."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from lm_eval_contrans.direction import Direction, added_by_block
from lm_eval_contrans.vllm.crossing import engine_entry, read_entry
from lm_eval_contrans.vllm.plugin import BUFFER, _add_steering, steer_loaded_model, steering_report

FACTS = dict(model_type="llama", hidden_size=32, num_layers=4)


def test_what_each_block_adds_sums_directions_on_one_block_and_leaves_alpha_zero_out():
    first, second, third = torch.randn(32), torch.randn(32), torch.randn(32)
    directions = [Direction("a", 2, first), Direction("b", 2, second), Direction("c", 3, third)]
    steering = added_by_block(directions, [2.0, -0.5, 0.0])
    assert list(steering) == [2]  # block 3's alpha is 0: that block is not touched
    torch.testing.assert_close(steering[2], 2.0 * first - 0.5 * second)
    assert added_by_block(directions, [0.0, 0.0, 0.0]) == {}


def test_the_steering_file_is_named_by_its_content_and_written_the_same_way_each_time(tmp_path, monkeypatch):
    """vLLM hashes `additional_config` into its compile-cache key: one steering, one file name, in any process."""
    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    steering = {1: torch.randn(32), 3: torch.randn(32)}
    entries = [engine_entry(steering, describe="x", **FACTS) for _ in range(3)]
    script = ("import json, sys, torch; from lm_eval_contrans.vllm.crossing import engine_entry; "
              "steering = {int(k): torch.tensor(v) for k, v in json.loads(sys.argv[1]).items()}; "
              "print(engine_entry(steering, describe='x', model_type='llama', hidden_size=32, num_layers=4)['sha256'])")
    vectors = {str(block): vector.tolist() for block, vector in steering.items()}
    other_process = subprocess.run([sys.executable, "-c", script, __import__("json").dumps(vectors)],
                                   capture_output=True, text=True, check=True).stdout.split()[-1]
    assert {entry["sha256"] for entry in entries} == {other_process}
    read, metadata = read_entry(entries[0])
    assert sorted(read) == [1, 3] and torch.equal(read[3], steering[3].float())
    assert (metadata["hidden_size"], metadata["num_layers"], metadata["describe"]) == (32, 4, "x")
    assert entries[0]["blocks"] == {"1": round(float(steering[1].norm()), 6), "3": round(float(steering[3].norm()), 6)}


def test_a_steering_file_changed_after_the_engine_was_configured_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    entry = engine_entry({0: torch.ones(32)}, describe="x", **FACTS)
    with open(entry["steering"], "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\0\0\0\0")
    with pytest.raises(RuntimeError, match="not the one this engine was configured with"):
        read_entry(entry)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_steering_never_crosses(value, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    vector = torch.ones(32)
    vector[5] = value
    with pytest.raises(ValueError, match="non-finite"):
        engine_entry({0: vector}, describe="x", **FACTS)


def test_the_hook_adds_to_the_hidden_states_of_a_tuple_and_to_a_plain_tensor():
    layer = torch.nn.Linear(4, 4)
    layer.register_buffer(BUFFER, torch.tensor([1.0, 2.0, 3.0, 4.0]), persistent=False)
    hidden, residual = torch.zeros(2, 4), torch.full((2, 4), 7.0)
    steered_hidden, kept_residual = _add_steering(layer, (), (hidden, residual))
    # vLLM's next block adds the two: the residual stream moves by the vector once
    torch.testing.assert_close(steered_hidden + kept_residual, hidden + residual + getattr(layer, BUFFER))
    assert kept_residual is residual
    torch.testing.assert_close(_add_steering(layer, (), hidden), hidden + getattr(layer, BUFFER))
    with pytest.raises(TypeError, match="cannot steer vLLM's Linear: it returns a dict"):
        _add_steering(layer, (), {"hidden": hidden})


def _model_config(model, dtype=torch.float32):
    """What a vLLM worker knows of the model it holds (its ModelConfig), for a loaded HF model."""
    return SimpleNamespace(hf_config=model.config, hf_text_config=model.config, dtype=dtype, model="tiny")


def test_the_plugin_steers_the_loaded_model_as_the_hf_path_does(tiny_llama_dir, tmp_path, monkeypatch):
    from conftest import load
    from lm_eval_contrans.steering import steer

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    model, _ = load(tiny_llama_dir)
    vector = torch.randn(model.config.hidden_size)
    ids = torch.tensor([[2, 5, 6, 7, 8]])
    with torch.no_grad(), steer(model, 2, vector, alpha=1.5):
        expected = model(ids).logits
    entry = engine_entry({2: 1.5 * vector}, describe="x", model_type="llama", hidden_size=model.config.hidden_size,
                         num_layers=model.config.num_hidden_layers)
    assert steer_loaded_model(model, entry, _model_config(model)) == [2]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected)
    worker = SimpleNamespace(model_runner=SimpleNamespace(get_model=lambda: model),
                             vllm_config=SimpleNamespace(model_config=_model_config(model)))
    assert steering_report(worker) == pytest.approx({2: float((1.5 * vector).norm())})


@pytest.mark.parametrize("wrong", ["hidden_size", "num_layers"])
def test_a_steering_file_for_another_shape_is_refused_in_the_worker(wrong, tiny_llama_dir, tmp_path, monkeypatch):
    from conftest import load

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    model, _ = load(tiny_llama_dir)
    facts = dict(model_type="llama", hidden_size=model.config.hidden_size, num_layers=model.config.num_hidden_layers)
    facts[wrong] += 1
    vector = torch.ones(facts["hidden_size"])
    entry = engine_entry({0: vector}, describe="x", **facts)
    with pytest.raises(RuntimeError, match=f"made for {'hidden size' if wrong == 'hidden_size' else '5 blocks'}"):
        steer_loaded_model(model, entry, _model_config(model))


@pytest.mark.parametrize("broken", [[1.0, float("inf"), 2.0], [0.0, 0.0, 0.0]])
def test_broken_final_states_are_flagged_for_the_driver(broken):
    """vLLM scores NaN logits, and those of an overflow an RMS norm zeroed, as a uniform distribution; the worker
    flags them, the driver asks (collective_rpc)."""
    from lm_eval_contrans.vllm.plugin import _watch_logits, non_finite_report

    class Model(torch.nn.Module):
        def compute_logits(self, hidden):
            return hidden * 2

    model = Model()
    _watch_logits(model)
    worker = SimpleNamespace(model_runner=SimpleNamespace(get_model=lambda: model))
    states = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.compute_logits(states), states * 2)
    model.compute_logits(torch.empty(0, 3))  # a batch with no position to score
    assert non_finite_report(worker) is False
    model.compute_logits(torch.cat([states, torch.tensor([broken])]))  # the hidden states it is given
    model.compute_logits(states)  # a later sound batch does not clear it
    assert non_finite_report(worker) is True
