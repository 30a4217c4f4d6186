"""Inside vLLM's processes: the steering added to the target's decoder blocks as the model loads.

vLLM loads its `vllm.general_plugins` entry points in every process that runs the model (the
engine core, tensor-parallel workers, the replicas lm-eval starts for data parallel), so `register`
runs in each. It wraps the worker's `load_model`: where the engine's `additional_config` carries our
entry (crossing.py), each steered block of the loaded model gets a buffer holding what to add and a
forward hook adding it. Installed before vLLM compiles or warms the model up, the hook is traced into
the compiled graph, so compiled and eager modes steer alike.

vLLM's blocks return `(hidden_states, residual)` with the residual stream their sum (the next block's
fused add-and-norm adds them), or the stream itself: either way the vector is added to the first.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

BUFFER = "contrans_steering"
REPORT_METHOD = "contrans_steering_report"
NON_FINITE_METHOD = "contrans_non_finite_report"
NON_FINITE_FLAG = "contrans_non_finite_logits"


def register() -> None:
    """The `vllm.general_plugins` entry point: wrap the worker's `load_model` once per process."""
    from vllm.v1.worker.gpu_worker import Worker

    if getattr(Worker.load_model, "_steers", False):
        return
    load_model = Worker.load_model

    def load_model_then_steer(self, *args, **kwargs):
        load_model(self, *args, **kwargs)
        from lm_eval_contrans.vllm.crossing import CONFIG_KEY

        entry = (self.vllm_config.additional_config or {}).get(CONFIG_KEY)
        if entry:
            steer_loaded_model(self.model_runner.get_model(), entry, self.vllm_config.model_config)

    load_model_then_steer._steers = True
    Worker.load_model = load_model_then_steer
    setattr(Worker, REPORT_METHOD, steering_report)  # what the driver asks each worker (collective_rpc)
    setattr(Worker, NON_FINITE_METHOD, non_finite_report)


def steering_report(worker) -> dict[int, float]:
    """Block -> norm of the vector that block adds, in this worker's model (what the driver checks)."""
    from lm_eval_contrans.blocks import decoder_blocks_of

    blocks = decoder_blocks_of(worker.model_runner.get_model(), worker.vllm_config.model_config.hf_config)
    return {index: float(getattr(layer, BUFFER).float().norm()) for index, layer in enumerate(blocks)
            if hasattr(layer, BUFFER)}


def non_finite_report(worker) -> bool:
    """Whether a steered model's final states were ever NaN, inf or constant at a position in this worker (what
    the driver cannot tell from the log-probabilities and texts vLLM returns)."""
    return bool(getattr(worker.model_runner.get_model(), NON_FINITE_FLAG, False))


def _watch_logits(model: nn.Module) -> None:
    """Flag broken outputs: non-finite, or constant at a position (`steering.broken_outputs`, as the HF path
    stops on). `compute_logits` runs outside the compiled graph, so a check there is possible in every mode; the
    driver reads the flag after each batch of requests. What is checked is the final hidden states it is given,
    where a steered pass that overflowed shows: a 640-wide row instead of a 262,144-wide row of logits (Gemma's
    vocabulary), a 400th of the work on every prompt position and decoding step."""
    from lm_eval_contrans.steering import broken_outputs

    compute_logits = model.compute_logits

    def checked(hidden_states, *args, **kwargs):
        logits = compute_logits(hidden_states, *args, **kwargs)
        if (not getattr(model, NON_FINITE_FLAG, False) and isinstance(hidden_states, torch.Tensor)
                and hidden_states.numel() and broken_outputs(hidden_states)):
            setattr(model, NON_FINITE_FLAG, True)
        return logits

    model.compute_logits = checked


def _add_steering(module: nn.Module, args, output):
    steering = getattr(module, BUFFER)
    if isinstance(output, torch.Tensor):
        return output + steering
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (output[0] + steering, *output[1:])
    raise TypeError(f"contrans: cannot steer vLLM's {type(module).__name__}: it returns a {type(output).__name__}, "
                    "not the hidden states or a (hidden_states, residual) tuple")


def steer_loaded_model(model: nn.Module, entry: dict, model_config) -> list[int]:
    """Add the entry's steering to `model`'s blocks; returns the blocks steered in this process (a
    pipeline-parallel stage holds only some)."""
    from lm_eval_contrans.blocks import decoder_blocks_of
    from lm_eval_contrans.vllm.crossing import read_entry

    steering, metadata = read_entry(entry)
    hf_config = model_config.hf_text_config
    if int(metadata["hidden_size"]) != hf_config.hidden_size:
        raise RuntimeError(f"contrans: the steering was made for hidden size {metadata['hidden_size']}; "
                           f"{model_config.model} has {hf_config.hidden_size}")
    blocks = decoder_blocks_of(model, model_config.hf_config)
    if len(blocks) != int(metadata["num_layers"]):
        raise RuntimeError(f"contrans: the steering was made for {metadata['num_layers']} blocks; "
                           f"{type(model).__name__} has {len(blocks)}")
    steered = []
    for block, vector in sorted(steering.items()):
        layer = blocks[block]
        if next(layer.parameters(), None) is None:  # a pipeline stage that does not hold this block
            continue
        device = next(layer.parameters()).device
        layer.register_buffer(BUFFER, vector.to(device=device, dtype=model_config.dtype), persistent=False)
        layer.register_forward_hook(_add_steering)
        steered.append(block)
    if hasattr(model, "compute_logits"):
        _watch_logits(model)
    logging.getLogger("vllm.contrans").info("contrans: steering %s at block(s) %s: %s", type(model).__name__, steered,
                               metadata.get("describe", ""))
    return steered
