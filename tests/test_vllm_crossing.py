"""What crosses into vLLM's processes and what the plugin does there, without vLLM: the bank's file, what a
request may ask of it, each token's coefficients, the hook on the block outputs vLLM's layers return, and the
checks a worker makes before steering."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lm_eval_contrans.direction import Direction, added_by_block
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.vllm.crossing import Bank, BankEntry, bank_entry, engine_entry, read_entry
from lm_eval_contrans.vllm.plugin import (
    BANK, COEFFICIENTS, _add_steering, attach_steering, steer_loaded_model, steering_report, token_coefficients,
)
from lm_eval_contrans.vllm.request_steering import CANONICAL_KEY, RequestSteering, default_steering, steering_of

FACTS = dict(model_type="llama", hidden_size=32, num_layers=4)


def test_what_each_block_adds_sums_directions_on_one_block_and_leaves_alpha_zero_out():
    first, second, third = torch.randn(32), torch.randn(32), torch.randn(32)
    directions = [Direction("a", 2, first), Direction("b", 2, second), Direction("c", 3, third)]
    steering = added_by_block(directions, [2.0, -0.5, 0.0])
    assert list(steering) == [2]  # block 3's alpha is 0: that block is not touched
    torch.testing.assert_close(steering[2], 2.0 * first - 0.5 * second)
    assert added_by_block(directions, [0.0, 0.0, 0.0]) == {}


def _directions():
    generator = torch.Generator().manual_seed(0)
    return [Direction("honesty", 1, torch.randn(32, generator=generator), "residual", 10.0),
            Direction("toxicity", 3, torch.randn(32, generator=generator), "residual", 20.0),
            Direction("happy", 2, torch.randn(32, generator=generator)),  # a ported vector's two blocks: one concept
            Direction("happy", 3, torch.randn(32, generator=generator))]


def test_the_bank_file_is_named_by_its_content_and_written_the_same_way_each_time(tmp_path, monkeypatch):
    """vLLM hashes `additional_config` into its compile-cache key: one bank, one file name, in any process."""
    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    directions = _directions()
    entries = [bank_entry(directions, [1.0, 0.0, 2.0, 2.0], "all", FACTS) for _ in range(3)]
    script = ("import sys, torch; from lm_eval_contrans.vllm.crossing import Bank, engine_entry; import json; "
              "bank = Bank.from_json(json.loads(sys.argv[1])); vectors = [torch.tensor(v) for v in json.loads(sys.argv[2])]; "
              "print(engine_entry(bank, vectors)['sha256'])")
    vectors = [d.steering_vector().tolist() for d in directions]
    other_process = subprocess.run([sys.executable, "-c", script, json.dumps(entries[0]["bank"]), json.dumps(vectors)],
                                   capture_output=True, text=True, check=True,
                                   env={**__import__("os").environ, "CONTRANS_CACHE": str(tmp_path)}).stdout.split()[-1]
    assert {entry["sha256"] for entry in entries} == {other_process}
    bank, stacked = read_entry(entries[0])
    assert bank.concepts == ["honesty", "toxicity", "happy"]
    assert [entry.default_alpha for entry in bank.entries] == [1.0, 0.0, 2.0, 2.0]
    assert (bank.hidden_size, bank.num_layers, bank.positions) == (32, 4, "all")
    torch.testing.assert_close(stacked[0], directions[0].steering_vector())  # alpha 1 in residual units
    assert float(stacked[0].norm()) == pytest.approx(0.1 * 10.0)
    # the push limit of check_push: 1000 x the residual norm over what alpha 1 adds; none without a norm
    assert bank.entries[0].most_alpha == pytest.approx(1000 * 10.0 / 1.0)
    assert math.isinf(bank.entries[2].most_alpha) and entries[0]["bank"]["entries"][2]["most_alpha"] is None


def test_a_bank_file_changed_after_the_engine_was_configured_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    entry = bank_entry(_directions(), [1.0] * 4, "all", FACTS)
    with open(entry["steering"], "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\0\0\0\0")
    with pytest.raises(RuntimeError, match="not the one this engine was configured with"):
        read_entry(entry)
    other = bank_entry(_directions(), [1.0] * 4, "prompt", FACTS)  # a sound file under another engine's index
    with pytest.raises(RuntimeError, match="is not the engine's"):
        read_entry({**other, "bank": entry["bank"]})


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_steering_never_crosses(value, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    vector = torch.ones(32)
    vector[5] = value
    bank = Bank((BankEntry("x", 0, "raw", 1.0, math.inf),), "all", "llama", 32, 4)
    with pytest.raises(ValueError, match="non-finite"):
        engine_entry(bank, [vector])


def _bank() -> Bank:
    return Bank((BankEntry("honesty", 1, "residual", 1.0, 50.0), BankEntry("toxicity", 3, "residual", 0.0, 50.0),
                 BankEntry("happy", 2, "raw", 0.0, math.inf), BankEntry("happy", 3, "raw", 0.0, math.inf)),
                "all", "llama", 32, 4)


def test_a_request_that_names_no_steering_gets_the_engines_default():
    for extra_args in (None, {}, {"session_id": "abc"}):  # vLLM's own keys are left alone
        assert steering_of(_bank(), extra_args) == RequestSteering((1.0, 0.0, 0.0, 0.0), "all")


def test_a_request_picks_concepts_alphas_and_positions_as_the_model_args_do():
    bank = _bank()
    assert steering_of(bank, {"concept": "toxicity", "alpha": -2}) == RequestSteering((0.0, -2.0, 0.0, 0.0), "all")
    # a ported concept's blocks get one alpha; one alpha each as a+b, or a list
    assert steering_of(bank, {"concept": "happy+honesty", "alpha": "3+0.5"}).alphas == (0.5, 0.0, 3.0, 3.0)
    assert steering_of(bank, {"concept": ["happy", "honesty"], "alpha": [3, 0.5]}).alphas == (0.5, 0.0, 3.0, 3.0)
    assert steering_of(bank, {"alpha": 2}).alphas == (2.0, 2.0, 2.0, 2.0)  # every concept of the bank
    assert steering_of(bank, {"positions": "prompt"}) == RequestSteering((1.0, 1.0, 1.0, 1.0), "prompt")
    assert steering_of(bank, {"concept": "honesty", "alpha": 0}).alphas == (0.0,) * 4


@pytest.mark.parametrize("extra_args, message", [
    ({"concept": "sadness"}, "vllm_xargs.concept: 'sadness' is not loaded in this engine; it steers with: honesty, "
                             "toxicity, happy"),
    ({"concept": "honesty+honesty"}, "vllm_xargs.concept: a concept named twice"),
    ({"concept": 3}, "vllm_xargs.concept: expected concept names"),
    ({"alpha": "nan"}, "vllm_xargs.alpha: must be finite"),
    ({"alpha": "inf"}, "vllm_xargs.alpha: must be finite"),
    ({"alpha": True}, "vllm_xargs.alpha: expected a number"),
    ({"alpha": "lots"}, "vllm_xargs.alpha: expected a number"),
    ({"alpha": "1+2"}, "vllm_xargs.alpha: 2 values"),
    ({"concept": "honesty", "alpha": 51}, "vllm_xargs.alpha: 51 for honesty is past the push limit: at most 50"),
    ({"positions": "generate"}, "vllm_xargs.positions: expected one of all, prompt, generated"),
    ({"alpah": 2}, "vllm_xargs: unknown key 'alpah'; did you mean alpha?"),
    ({"contrans_alpha": 2}, "vllm_xargs: unknown key 'contrans_alpha'"),
    ({CANONICAL_KEY: {"alphas": [9, 9, 9, 9], "positions": "all"}}, "vllm_xargs: unknown key '_contrans_steering'"),
    ({"concept": "x" * 10_000_000}, "vllm_xargs.concept: a value of 10000000 characters"),
])
def test_what_a_request_cannot_be_given_is_refused_in_one_line(extra_args, message):
    with pytest.raises(ConTransError) as refused:
        steering_of(_bank(), extra_args)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 400


def test_a_steering_reaches_the_workers_and_the_prefix_cache_key_without_touching_the_callers_arguments():
    callers = {"session_id": "s"}
    request = SimpleNamespace(sampling_params=SimpleNamespace(extra_args=callers), cache_salt=None)
    steering = steering_of(_bank(), {"alpha": 2})
    attach_steering(request, steering)
    assert callers == {"session_id": "s"}  # one SamplingParams may serve many prompts
    assert RequestSteering.from_canonical(request.sampling_params.extra_args[CANONICAL_KEY]) == steering
    salts = {steering.salt(), default_steering(_bank()).salt(), steering_of(_bank(), {"alpha": 0}).salt(),
             steering_of(_bank(), {"alpha": 2, "positions": "prompt"}).salt()}
    assert request.cache_salt == steering.salt() and len(salts) == 4
    salted = SimpleNamespace(sampling_params=SimpleNamespace(extra_args=None), cache_salt="user")
    attach_steering(salted, steering)
    assert salted.cache_salt == f"user|{steering.salt()}"  # the user's own salt is kept


def test_each_token_gets_its_requests_coefficients_as_a_prompt_or_a_generated_token():
    """Three requests in one step (vLLM's chunked prefill): a prompt's second chunk, a decoding step, and a prompt
    read whole; positions = tokens computed before + index, a prompt token before the prompt's length."""
    rows = [RequestSteering((1.0, 2.0), "prompt").coefficient_rows(),
            RequestSteering((3.0, 0.0), "generated").coefficient_rows(),
            RequestSteering((-1.0, 0.5), "all").coefficient_rows()]
    coefficients = token_coefficients(rows, scheduled=np.array([3, 1, 2]), computed=np.array([4, 9, 0]),
                                      prompt_lengths=np.array([6, 7, 2]))
    # request 0: positions 4, 5 (prompt), 6 (generated); request 1: position 9 (generated); request 2: 0, 1
    expected = [[1, 2], [1, 2], [0, 0], [3, 0], [-1, 0.5], [-1, 0.5]]
    np.testing.assert_array_equal(coefficients, np.array(expected, dtype=np.float32))


def test_the_hook_adds_each_tokens_coefficients_times_the_bank():
    layer = torch.nn.Linear(4, 4)
    bank = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, -1.0]])
    layer.register_buffer(BANK, bank, persistent=False)
    layer.register_buffer(COEFFICIENTS, torch.zeros(8, 2), persistent=False)  # more rows than the step's tokens
    layer.contrans_coefficients[:2] = torch.tensor([[2.0, 0.0], [0.0, -3.0]])
    hidden, residual = torch.zeros(2, 4), torch.full((2, 4), 7.0)
    steered_hidden, kept_residual = _add_steering(layer, (), (hidden, residual))
    # vLLM's next block adds the two: the residual stream moves by each token's share once
    torch.testing.assert_close(steered_hidden, torch.stack([2.0 * bank[0], -3.0 * bank[1]]))
    assert kept_residual is residual
    torch.testing.assert_close(_add_steering(layer, (), hidden), steered_hidden)
    half = _add_steering(layer, (), hidden.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16  # added in the states' dtype, computed in float32 as the HF path's
    with pytest.raises(TypeError, match="cannot steer vLLM's Linear: it returns a dict"):
        _add_steering(layer, (), {"hidden": hidden})


def _model_config(model, dtype=torch.float32):
    """What a vLLM worker knows of the model it holds (its ModelConfig), for a loaded HF model."""
    return SimpleNamespace(hf_config=model.config, hf_text_config=model.config, dtype=dtype, model="tiny")


def test_the_plugin_steers_the_loaded_model_as_the_hf_path_does(tiny_llama_dir, tmp_path, monkeypatch):
    """Every token's coefficient at alpha: the HF hook's output; rows written for a longer step are zeroed after."""
    from conftest import load

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    model, _ = load(tiny_llama_dir)
    width, blocks = model.config.hidden_size, model.config.num_hidden_layers
    direction = Direction("x", 2, torch.randn(width))
    ids = torch.tensor([[2, 5, 6, 7, 8]])
    with torch.no_grad(), direction.apply(model, alpha=1.5):
        expected = model(ids).logits
    with torch.no_grad():
        unsteered = model(ids).logits
    entry = bank_entry([direction], [0.0], "all", dict(model_type="llama", hidden_size=width, num_layers=blocks))
    steered = steer_loaded_model(model, entry, _model_config(model), most_tokens=16)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, unsteered)  # coefficients start at zero
        steered.write(np.full((9, 1), 7.0, dtype=np.float32))  # a longer step first
        steered.write(np.full((5, 1), 1.5, dtype=np.float32))
        assert not model.model.layers[2].contrans_coefficients[5:].any()
        torch.testing.assert_close(model(ids).logits, expected)
    worker = SimpleNamespace(model_runner=SimpleNamespace(get_model=lambda: model),
                             vllm_config=SimpleNamespace(model_config=_model_config(model)))
    assert steering_report(worker) == {2: [pytest.approx(float(direction.vector.norm()))]}


@pytest.mark.parametrize("wrong", ["hidden_size", "num_layers"])
def test_a_bank_for_another_shape_is_refused_in_the_worker(wrong, tiny_llama_dir, tmp_path, monkeypatch):
    from conftest import load

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    model, _ = load(tiny_llama_dir)
    facts = dict(model_type="llama", hidden_size=model.config.hidden_size, num_layers=model.config.num_hidden_layers)
    facts[wrong] += 1
    entry = bank_entry([Direction("x", 0, torch.ones(facts["hidden_size"]))], [1.0], "all", facts)
    with pytest.raises(RuntimeError, match=f"made for {'hidden size' if wrong == 'hidden_size' else '5 blocks'}"):
        steer_loaded_model(model, entry, _model_config(model), most_tokens=16)


def test_an_untested_vllm_release_is_named_and_refused():
    from lm_eval_contrans.vllm.internals import check_vllm_version, tested_versions

    check_vllm_version("0.32.0+cpu")
    for version in ("0.10.1", "0.33.0", "1.0.0", "nightly"):
        with pytest.raises(ConTransError, match=f"^vllm: lm-eval-contrans steers vLLM {tested_versions()} .*"
                                                f"this is vLLM {version}"):
            check_vllm_version(version)


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


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_port_that_is_no_port_is_refused_before_any_work(port):
    from lm_eval_contrans.vllm.checks import check_serve_arguments
    from lm_eval_contrans.vllm.serve import _option

    with pytest.raises(ConTransError, match=f"^port: '{port}': a port is a whole number from 1 to 65535"):
        check_serve_arguments(SimpleNamespace(name="tiny"), ["--port", port], _option)
