"""Transplant: add alpha * vector to the output of one decoder block (every position, or the prompt's
or the generated tokens').

The hook lives only inside the `steer` context manager and is removed on every exit path,
exceptions included. The vector is moved to the block output's own device and dtype, so sharded
(`device_map`) and half-precision models work.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from lm_eval_contrans.activations import block_output_tensor
from lm_eval_contrans.blocks import decoder_blocks
from lm_eval_contrans.errors import ConTransError

logger = logging.getLogger(__name__)


def check_alpha(alpha, *, text: bool = True) -> float:
    """Alpha as a finite float. `text=True` where alpha may come as text (a model arg, one part of `1.5+2`);
    from Python (`Direction.apply`, `steer`) only a number is one: "2" there is a slip, not a strength. A bool
    is never one (float(True) would steer at 1)."""
    if isinstance(alpha, bool) or (not text and isinstance(alpha, (str, bytes))):
        raise ConTransError("alpha", f"expected a number, got {alpha!r}")
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ConTransError("alpha", f"expected a number, got {alpha!r}") from None
    if not math.isfinite(value):
        raise ConTransError("alpha", f"must be finite, got {alpha!r}")
    return value


POSITIONS = ("all", "prompt", "generated")
ALPHA_UNITS = ("residual", "raw")
# alpha_unit=residual: alpha 1 adds a vector of this fraction of the steered block's median
# residual-state norm (measured on the anchors), whatever the concept or model; see docs/RESULTS.md.
ALPHA_UNIT_FRACTION = 0.1


def check_alpha_unit(unit: str) -> str:
    if unit not in ALPHA_UNITS:
        raise ConTransError("alpha_unit", f"expected one of {', '.join(ALPHA_UNITS)}, got {unit!r}")
    return unit


def unit_vector(vector: torch.Tensor, alpha_unit: str, residual_norm: float) -> torch.Tensor:
    """The vector that alpha multiplies: as transplanted ("raw"), or rescaled so that alpha 1 has
    norm ALPHA_UNIT_FRACTION * residual_norm ("residual"), which means the same for every concept."""
    check_alpha_unit(alpha_unit)
    if alpha_unit == "raw":
        return vector
    norm = vector.double().norm()
    if not (residual_norm > 0 and norm > 0):
        raise ConTransError("alpha_unit", "alpha_unit=residual needs a non-zero vector and a recorded residual norm; "
                                          "this artifact has none (rebuild it, or use alpha_unit=raw)")
    return (vector.double() * (ALPHA_UNIT_FRACTION * residual_norm / norm)).to(vector.dtype)


def check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise ConTransError("positions", f"expected one of {', '.join(POSITIONS)}, got {positions!r}")
    return positions


CACHE_ARGUMENTS = ("cache", "past_key_values", "cache_params")


def continues_a_cache(kwargs: dict) -> bool:
    """Whether a model's forward pass extends a KV cache (a decoding step of `generate`) rather than
    reading a prompt: its cache positions start after 0, or the cache it is given already holds state."""
    position = kwargs.get("cache_position")
    if isinstance(position, torch.Tensor) and position.numel():
        return int(position.reshape(-1)[0]) > 0
    # transformers 5.x calls the cache `cache` (earlier `past_key_values`); Mamba-style models `cache_params`
    past = next((kwargs[name] for name in CACHE_ARGUMENTS if kwargs.get(name) is not None), None)
    if past is None:
        return False
    try:
        return int(past.get_seq_length()) > 0
    except (AttributeError, ValueError, TypeError):  # a state-space cache has no length, only a state
        pass
    if callable(getattr(past, "has_previous_state", None)):
        return bool(past.has_previous_state())
    try:  # the legacy tuple of (key, value) per layer
        return past[0][0].shape[-2] > 0
    except (TypeError, IndexError, AttributeError):
        return True


@functools.cache
def _warn_no_cache(model_class: str, positions: str) -> None:
    logger.warning("positions=%s tells prompt passes from cached decoding steps, but %s generates without a KV "
                   "cache: each of its passes re-reads the whole sequence and counts as a prompt pass", positions,
                   model_class)


def add_vector_hook(vector: torch.Tensor, steer_this_pass=lambda: True):
    """A forward hook that adds `vector` to a block's hidden-state output when `steer_this_pass()`."""
    cache: dict[tuple, torch.Tensor] = {}

    def hook(module: nn.Module, inputs, output):
        if not steer_this_pass():
            return output
        hidden = block_output_tensor(output)
        key = (hidden.device, hidden.dtype)
        if key not in cache:
            cache[key] = vector.to(device=hidden.device, dtype=hidden.dtype)
        steered = hidden + cache[key]
        if isinstance(output, tuple):
            return (steered, *output[1:])
        return [steered, *output[1:]] if isinstance(output, list) else steered  # OpenAI GPT's blocks return lists

    return hook


@contextmanager
def steer(model: nn.Module, layer: int, vector: torch.Tensor, alpha: float = 1.0,
          positions: str = "all") -> Iterator[None]:
    """A context manager: within it, block `layer` of `model` outputs (its output + alpha * vector);
    the hook is removed on every way out.

    Args:
        model: a causal LM whose decoder blocks are found (`blocks.decoder_blocks`).
        layer: the 0-based block whose output is steered.
        vector: 1-D, the block's output width; moved to the block's device and dtype in each pass.
        alpha: the multiplier; 0 leaves the forward pass bit for bit as it was.
        positions: "all" (the paper), "prompt" (passes that read input: the prompt of `generate`, the
            whole input of a scoring call) or "generated" (the one-token decoding steps that extend a KV
            cache). Which one a pass is comes from the pass's own input, not from how often the caller
            entered this block.

    Yields:
        Nothing; the model is steered until the block exits.

    Raises:
        ConTransError: alpha is not a finite number, or positions is not one of the three.
        ValueError: the vector is not 1-D.
    """
    alpha = check_alpha(alpha, text=False)
    positions = check_positions(positions)
    blocks = decoder_blocks(model)
    if vector.ndim != 1:
        raise ValueError(f"steering vector must be 1-D, got shape {tuple(vector.shape)}")
    if alpha == 0.0:
        yield  # nothing to add: keep the forward pass bit-for-bit the unhooked one
        return
    with ExitStack() as hooks:
        steer_this_pass = lambda: True  # noqa: E731
        if positions != "all":
            decoding = [False]

            def read_the_input(module, args, kwargs):
                decoding[0] = continues_a_cache(kwargs)
                if kwargs.get("use_cache") and not any(kwargs.get(name) is not None for name in CACHE_ARGUMENTS):
                    _warn_no_cache(type(model).__name__, positions)

            hooks.callback(model.register_forward_pre_hook(read_the_input, with_kwargs=True).remove)
            steer_this_pass = (lambda: decoding[0]) if positions == "generated" else (lambda: not decoding[0])
        hooks.callback(blocks[layer].register_forward_hook(add_vector_hook(alpha * vector.detach(), steer_this_pass)).remove)
        yield


def broken_outputs(states: torch.Tensor) -> bool:
    """Whether a position's final states (or logits) are non-finite, or the same in every dimension: a steer
    whose sum overflows float range gives NaN in some models and, through an RMS norm (x / inf), an all-zero
    state in others, whose scores are a uniform distribution. No model gives a constant row unsteered."""
    if not bool(torch.isfinite(states).all()):
        return True
    return states.shape[-1] > 1 and bool((states.amax(dim=-1) == states.amin(dim=-1)).any())


def not_finite(steered: str) -> ConTransError:
    """The error of a steered pass whose outputs are broken (`broken_outputs`), naming what steered it."""
    return ConTransError("alpha", f"the steered model's outputs are not finite (NaN or inf), or constant at a "
                                  f"position, with {steered}: lower alpha")


@contextmanager
def stop_if_not_finite(model: nn.Module, steered: Callable[[], str]) -> Iterator[None]:
    """Within the block, a forward pass of `model` whose final hidden states hold NaN or inf stops with an error
    naming `steered()` (what steers, at which block and alpha; said only then), instead of scores computed from them.

    The output layer's input is checked, not its output: a state that turns non-finite stays so through the final
    norm, and reading every logit (262,144 a position for Gemma 3) cost 10 % of a loglikelihood evaluation on a CPU
    (bench/perf/eval_overhead.py). A pass in which the output layer is not called as a module (a model that
    multiplies by its embedding matrix itself) gets its logits checked instead.
    """
    def check(states: torch.Tensor) -> None:
        if broken_outputs(states):
            raise not_finite(steered())

    with watch_final_states(model, check):
        yield


@contextmanager
def watch_final_states(model: nn.Module, check: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Within the block, `check` is given each forward pass's input of the output layer (or, where the output layer
    is not called as a module, its logits): what `stop_if_not_finite` checks, and the lanes of a shared pass
    (lanes.py) check each lane's rows of."""
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    head_called = [False]

    def start_pass(module: nn.Module, args) -> None:
        head_called[0] = False

    def check_head_input(module: nn.Module, args) -> None:
        head_called[0] = True
        if args and isinstance(args[0], torch.Tensor):
            check(args[0])

    def check_logits_unless_checked(module: nn.Module, inputs, output) -> None:
        logits = getattr(output, "logits", None)
        if not head_called[0] and isinstance(logits, torch.Tensor):
            check(logits)

    with ExitStack() as hooks:
        hooks.callback(model.register_forward_pre_hook(start_pass).remove)
        if isinstance(head, nn.Module):
            hooks.callback(head.register_forward_pre_hook(check_head_input).remove)
        hooks.callback(model.register_forward_hook(check_logits_unless_checked).remove)
        yield
