"""Transplant: add alpha * vector to the output of one decoder block, at every position.

The hook lives only inside the `steer` context manager and is removed on every exit path,
exceptions included. The vector is moved to the block output's own device and dtype, so sharded
(`device_map`) and half-precision models work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lm_eval_contrans.activations import block_output_tensor
from lm_eval_contrans.blocks import decoder_blocks
from lm_eval_contrans.errors import ConTransError


def check_alpha(alpha) -> float:
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


def add_vector_hook(vector: torch.Tensor, positions: str = "all"):
    """A forward hook that adds `vector` to a block's hidden-state output.

    positions="prompt" steers only the first forward pass in the context (the prompt, or the
    whole input of a loglikelihood call); "generated" only the later, one-token passes of
    generation with a KV cache.
    """
    cache: dict[tuple, torch.Tensor] = {}
    calls = [0]

    def hook(module: nn.Module, inputs, output):
        calls[0] += 1
        if (positions == "prompt" and calls[0] > 1) or (positions == "generated" and calls[0] == 1):
            return output
        hidden = block_output_tensor(output)
        key = (hidden.device, hidden.dtype)
        if key not in cache:
            cache[key] = vector.to(device=hidden.device, dtype=hidden.dtype)
        steered = hidden + cache[key]
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook


@contextmanager
def steer(model: nn.Module, layer: int, vector: torch.Tensor, alpha: float = 1.0,
          positions: str = "all") -> Iterator[None]:
    """Within the block, block `layer` of `model` outputs (its output + alpha * vector).

    `positions`: "all" (the paper), "prompt" or "generated" (see `add_vector_hook`)."""
    alpha = check_alpha(alpha)
    positions = check_positions(positions)
    blocks = decoder_blocks(model)
    if vector.ndim != 1:
        raise ValueError(f"steering vector must be 1-D, got shape {tuple(vector.shape)}")
    if alpha == 0.0:
        yield  # nothing to add: keep the forward pass bit-for-bit the unhooked one
        return
    handle = blocks[layer].register_forward_hook(add_vector_hook(alpha * vector.detach(), positions))
    try:
        yield
    finally:
        handle.remove()
