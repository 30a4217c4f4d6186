"""Inside vLLM's processes: a bank of directions in the target's blocks, and each token's share of them.

vLLM loads its `vllm.general_plugins` entry points in every process it starts (the front end, the engine
core, tensor-parallel workers, the replicas lm-eval starts for data parallel), so `register` runs in each:

- In a worker, after the model loads and before vLLM compiles or warms it up, each block that a direction of
  the engine's bank (crossing.py) steers gets two buffers, the bank's vectors at that block and a
  coefficient per token and vector, and a forward hook adding `coefficients[:n] @ bank` to its output. The
  hook is traced into the compiled graph; the buffers keep their addresses, so the compiled graphs (and CUDA
  graphs) read whatever the worker writes into them. Before each step the worker writes each scheduled
  token's coefficients from its request's steering and from whether the token is a prompt or a generated one;
  rows past the step's tokens (a CUDA graph's padding) stay zero.
- In the front end, each request's steering is read from its `extra_args` once (request_steering.py),
  refused there if it cannot be honoured, handed to the workers in a canonical form, and hashed into the
  request's prefix-cache salt.

vLLM's blocks return `(hidden_states, residual)` with the residual stream their sum (the next block's
fused add-and-norm adds them), or the stream itself: either way the steering is added to the first. The
vLLM internals this relies on are listed in internals.py.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

BANK = "contrans_bank"
COEFFICIENTS = "contrans_coefficients"
REPORT_METHOD = "contrans_steering_report"
NON_FINITE_METHOD = "contrans_non_finite_report"
NON_FINITE_FLAG = "contrans_non_finite_logits"
SERVER_VARIABLE = "CONTRANS_SERVE_PID"  # set by `contrans serve`: the processes vLLM starts end with the server
logger = logging.getLogger("vllm.contrans")


def register() -> None:
    """The `vllm.general_plugins` entry point: wrap the worker's `load_model` and the front end's request
    processing, once per process."""
    from lm_eval_contrans.errors import ConTransError
    from lm_eval_contrans.vllm.internals import check_vllm_version

    try:
        check_vllm_version()
    except ConTransError as untested:  # vLLM without us; our engines refuse to start with this line
        logger.warning("contrans: the steering plugin is not loaded: %s", untested)
        return
    _end_with_the_server()
    _steer_workers()
    _check_requests()


def _end_with_the_server() -> None:
    """In a process `contrans serve`'s vLLM started (its engine core, each worker): end when the process that
    started it ends, even by `kill -9`, which gives vLLM no chance to stop them (they would go on holding the
    model's memory). Linux's parent-death signal; SIGTERM lets vLLM shut down as on Ctrl-C."""
    import ctypes
    import os
    import signal
    import sys

    server = os.environ.get(SERVER_VARIABLE)
    if not server or str(os.getpid()) == server or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent ended before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def _steer_workers() -> None:
    from vllm.v1.worker.gpu_worker import Worker

    if getattr(Worker.load_model, "_steers", False):
        return
    load_model = Worker.load_model

    def load_model_then_steer(self, *args, **kwargs):
        load_model(self, *args, **kwargs)
        from lm_eval_contrans.vllm.crossing import CONFIG_KEY

        entry = (self.vllm_config.additional_config or {}).get(CONFIG_KEY)
        if entry:
            steered = steer_loaded_model(self.model_runner.get_model(), entry, self.vllm_config.model_config,
                                         _most_tokens(self.vllm_config))
            write_coefficients_each_step(self.model_runner, steered)

    load_model_then_steer._steers = True
    Worker.load_model = load_model_then_steer
    setattr(Worker, REPORT_METHOD, steering_report)  # what the driver asks each worker (collective_rpc)
    setattr(Worker, NON_FINITE_METHOD, non_finite_report)


def _check_requests() -> None:
    from vllm.v1.engine.input_processor import InputProcessor

    if getattr(InputProcessor.process_inputs, "_steers", False):
        return
    process_inputs = InputProcessor.process_inputs

    def process_with_steering(self, request_id, prompt, params, *args, **kwargs):
        from vllm import SamplingParams

        from lm_eval_contrans.vllm.crossing import CONFIG_KEY, bank_of

        entry = (self.vllm_config.additional_config or {}).get(CONFIG_KEY)
        if not entry or not isinstance(params, SamplingParams):  # an unsteered engine, or a pooling request
            return process_inputs(self, request_id, prompt, params, *args, **kwargs)
        steering = checked_request_steering(bank_of(entry), params.extra_args)
        request = process_inputs(self, request_id, prompt, params, *args, **kwargs)
        attach_steering(request, steering)
        return request

    process_with_steering._steers = True
    InputProcessor.process_inputs = process_with_steering


def checked_request_steering(bank, extra_args):
    """The request's steering, or vLLM's validation error (an HTTP 400 in the server) naming what is wrong."""
    from vllm.exceptions import VLLMValidationError

    from lm_eval_contrans.errors import ConTransError
    from lm_eval_contrans.vllm.request_steering import steering_of

    try:
        return steering_of(bank, extra_args)
    except ConTransError as error:
        raise VLLMValidationError(str(error), parameter=error.argument) from None


def attach_steering(request, steering) -> None:
    """Hand the request's steering to the workers and salt its prefix-cache key with it. The request's
    sampling params are the front end's copy, whose `extra_args` dict may still be the caller's: replaced,
    not changed."""
    from lm_eval_contrans.vllm.request_steering import CANONICAL_KEY

    params = request.sampling_params
    params.extra_args = {**(params.extra_args or {}), CANONICAL_KEY: steering.canonical()}
    request.cache_salt = f"{request.cache_salt}|{steering.salt()}" if request.cache_salt else steering.salt()


def _most_tokens(vllm_config) -> int:
    """The most tokens one forward pass holds: a step's tokens, or a (padded) CUDA graph's."""
    most = int(vllm_config.scheduler_config.max_num_batched_tokens)
    captured = getattr(vllm_config.compilation_config, "max_cudagraph_capture_size", None) or 0
    return max(most, int(captured))


def steering_report(worker) -> dict[int, list[float]]:
    """Block -> norms of the bank's vectors at that block, in this worker's model (what the driver checks)."""
    from lm_eval_contrans.blocks import decoder_blocks_of

    blocks = decoder_blocks_of(worker.model_runner.get_model(), worker.vllm_config.model_config.hf_config)
    return {index: [float(norm) for norm in getattr(layer, BANK).norm(dim=-1)] for index, layer in enumerate(blocks)
            if hasattr(layer, BANK)}


def non_finite_report(worker) -> bool:
    """Whether a steered model's final states were ever NaN, inf or constant at a position in this worker (what
    the driver cannot tell from the log-probabilities and texts vLLM returns)."""
    return bool(getattr(worker.model_runner.get_model(), NON_FINITE_FLAG, False))


def _watch_logits(model: nn.Module) -> None:
    """Flag broken outputs: non-finite, or constant at a position (`transplant.broken_outputs`, as the HF path
    stops on). `compute_logits` runs outside the compiled graph, so a check there is possible in every mode; the
    driver reads the flag after each batch of requests. What is checked is the final hidden states it is given,
    where a steered pass that overflowed shows: a 640-wide row instead of a 262,144-wide row of logits (Gemma's
    vocabulary), a 400th of the work on every prompt position and decoding step."""
    from lm_eval_contrans.transplant import broken_outputs

    compute_logits = model.compute_logits

    def checked(hidden_states, *args, **kwargs):
        logits = compute_logits(hidden_states, *args, **kwargs)
        if (not getattr(model, NON_FINITE_FLAG, False) and isinstance(hidden_states, torch.Tensor)
                and hidden_states.numel() and broken_outputs(hidden_states)):
            setattr(model, NON_FINITE_FLAG, True)
        return logits

    model.compute_logits = checked


def _add_steering(module: nn.Module, args, output):
    """What each steered block adds: each token's coefficients times the bank's vectors at this block, in float32
    and then in the states' dtype (as the HF path adds alpha times a vector)."""
    hidden = output if isinstance(output, torch.Tensor) else output[0] if isinstance(output, tuple) and output else None
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"contrans: cannot steer vLLM's {type(module).__name__}: it returns a {type(output).__name__}, "
                        "not the hidden states or a (hidden_states, residual) tuple")
    added = (getattr(module, COEFFICIENTS)[: hidden.shape[-2]] @ getattr(module, BANK)).to(hidden.dtype)
    return hidden + added if isinstance(output, torch.Tensor) else (output[0] + added, *output[1:])


class SteeredBlocks:
    """The blocks a worker steers, with the bank entries (columns of a step's coefficients) each holds."""

    def __init__(self, bank, layers: list[nn.Module], columns: list[list[int]]) -> None:
        self.bank, self.layers, self.columns = bank, layers, columns
        self._written = 0  # rows written last step: past a smaller step's rows, they are zeroed

    def write(self, coefficients: np.ndarray) -> None:
        """Each scheduled token's coefficients (tokens x bank entries) into every steered block's buffer."""
        rows = len(coefficients)
        for layer, columns in zip(self.layers, self.columns):
            buffer = getattr(layer, COEFFICIENTS)
            buffer[:rows].copy_(torch.from_numpy(np.ascontiguousarray(coefficients[:, columns])))
            if self._written > rows:
                buffer[rows:self._written].zero_()
        self._written = rows


def steer_loaded_model(model: nn.Module, entry: dict, model_config, most_tokens: int) -> SteeredBlocks:
    """Add the entry's bank to `model`'s blocks, every coefficient zero until written; returns the blocks steered
    in this process (a pipeline-parallel stage holds only some)."""
    from lm_eval_contrans.blocks import decoder_blocks_of
    from lm_eval_contrans.vllm.crossing import read_entry

    bank, vectors = read_entry(entry)
    hf_config = model_config.hf_text_config
    if bank.hidden_size != hf_config.hidden_size:
        raise RuntimeError(f"contrans: the steering was made for hidden size {bank.hidden_size}; "
                           f"{model_config.model} has {hf_config.hidden_size}")
    blocks = decoder_blocks_of(model, model_config.hf_config)
    if len(blocks) != bank.num_layers:
        raise RuntimeError(f"contrans: the steering was made for {bank.num_layers} blocks; "
                           f"{type(model).__name__} has {len(blocks)}")
    steered = SteeredBlocks(bank, [], [])
    for block in sorted({entry.block for entry in bank.entries}):
        layer = blocks[block]
        if next(layer.parameters(), None) is None:  # a pipeline stage that does not hold this block
            continue
        device = next(layer.parameters()).device
        columns = [index for index, entry in enumerate(bank.entries) if entry.block == block]
        layer.register_buffer(BANK, vectors[columns].to(device=device, dtype=torch.float32), persistent=False)
        layer.register_buffer(COEFFICIENTS, torch.zeros(most_tokens, len(columns), device=device), persistent=False)
        layer.register_forward_hook(_add_steering)
        steered.layers.append(layer)
        steered.columns.append(columns)
    if hasattr(model, "compute_logits"):
        _watch_logits(model)
    logger.info("contrans: steering %s at block(s) %s with a bank of %s", type(model).__name__,
                sorted({entry.block for entry in bank.entries}), ", ".join(bank.concepts))
    return steered


def token_coefficients(rows: list[tuple[list[float], list[float]]], scheduled: np.ndarray, computed: np.ndarray,
                       prompt_lengths: np.ndarray) -> np.ndarray:
    """Each scheduled token's coefficients, in vLLM's token order (requests in batch order, each request's
    tokens in order).

    Args:
        rows: per request, (what its prompt tokens get, what its generated tokens get).
        scheduled: tokens scheduled per request this step.
        computed: tokens each request had computed before this step (a token's position is that plus its index).
        prompt_lengths: each request's prompt length: a token at a position before it is a prompt token.
    """
    requests = np.repeat(np.arange(len(scheduled)), scheduled)
    starts = np.cumsum(scheduled) - scheduled
    positions = computed[requests] + (np.arange(len(requests)) - starts[requests])
    prompt_rows = np.asarray([row[0] for row in rows], dtype=np.float32)
    generated_rows = np.asarray([row[1] for row in rows], dtype=np.float32)
    is_prompt = (positions < prompt_lengths[requests])[:, None]
    return np.where(is_prompt, prompt_rows[requests], generated_rows[requests])


def write_coefficients_each_step(runner, steered: SteeredBlocks) -> None:
    """Before each step's inputs are prepared (the batch's order settled), write each scheduled token's
    coefficients from its request's steering, parsed once per request."""
    from lm_eval_contrans.vllm.request_steering import CANONICAL_KEY, RequestSteering, default_steering

    prepare_inputs = runner._prepare_inputs
    default = default_steering(steered.bank).coefficient_rows()
    rows_of: dict[str, tuple[list[float], list[float]]] = {}

    def rows(request_id: str):
        if request_id not in rows_of:
            params = getattr(runner.requests.get(request_id), "sampling_params", None)
            canonical = (getattr(params, "extra_args", None) or {}).get(CANONICAL_KEY)
            rows_of[request_id] = default if canonical is None else \
                RequestSteering.from_canonical(canonical).coefficient_rows()
        return rows_of[request_id]

    def prepare_inputs_with_steering(scheduler_output, num_scheduled_tokens, *args, **kwargs):
        for request_id in scheduler_output.finished_req_ids:
            rows_of.pop(request_id, None)
        batch = runner.input_batch
        count = batch.num_reqs
        steered.write(token_coefficients([rows(request_id) for request_id in batch.req_ids[:count]],
                                         np.asarray(num_scheduled_tokens[:count]), batch.num_computed_tokens_cpu[:count],
                                         batch.num_prompt_tokens[:count]))
        return prepare_inputs(scheduler_output, num_scheduled_tokens, *args, **kwargs)

    runner._prepare_inputs = prepare_inputs_with_steering
