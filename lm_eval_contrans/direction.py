"""What steers a model: a vector added to the output of one decoder block, and what alpha means for it.

Every engine steers with `Direction`s (`--model contrans`'s hook, vLLM's workers, the exports). A fitted
transplant is a direction with the record of how it was made (`provenance.Transplant`: map, held-out R²,
hashes; `transplant.direction`); another tool's vector made for the target is a direction and nothing
more (`vectors.target_directions`): no map, no R² it does not have.

Directions add, subtract and scale like repeng's control vectors; the result steers, at alpha 1, as the
operands' steering vectors at alpha 1 add up, so it is in raw units.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from lm_eval_contrans.errors import ConTransError


@dataclass(frozen=True, eq=False)
class Direction:
    """A vector added to the output of decoder block `block`, times alpha in `alpha_unit`.

    Args:
        name: what it is, for messages and results (a concept, or `<file>@<block>`).
        block: the 0-based decoder block whose output it is added to.
        vector: 1-D, the width of that block's output.
        alpha_unit: "raw" (alpha multiplies `vector`) or "residual" (alpha 1 adds a fixed share of
            `residual_norm`, whatever the vector's norm).
        residual_norm: the block's median residual norm on the anchors (0: not recorded).
        alpha_share: in residual units, the share of alpha this direction adds (1/N for each of the N
            blocks of one ported vector).
        origin: where it came from, for results (another tool's file: its name, sha256, format).
    """

    name: str
    block: int
    vector: torch.Tensor
    alpha_unit: str = "raw"
    residual_norm: float = 0.0
    alpha_share: float = 1.0
    origin: dict = field(default_factory=dict)

    def steering_vector(self) -> torch.Tensor:
        """What alpha multiplies: in residual units, rescaled to its share of the block's residual norm."""
        from lm_eval_contrans.transplant import unit_vector

        vector = unit_vector(self.vector, self.alpha_unit, self.residual_norm)
        return vector * self.alpha_share if self.alpha_unit == "residual" and self.alpha_share != 1.0 else vector

    def apply(self, model, alpha: float = 1.0, positions: str = "all"):
        """A context manager: within it, `model` adds alpha times this direction at its block::

            with direction.apply(model, alpha=2.0):
                model.generate(...)

        Args:
            model: a Hugging Face causal LM (its decoder blocks are found as for a build).
            alpha: the strength, in `alpha_unit`; 0 leaves the forward pass bit for bit as it was.
            positions: "all", "prompt" (passes that read input) or "generated" (decoding steps).

        Returns:
            The context manager (`transplant.steer`).

        Raises:
            ConTransError: alpha is not a finite number (a bool or a string is refused), or positions is not
                one of the three.
        """
        from lm_eval_contrans.blocks import decoder_blocks
        from lm_eval_contrans.transplant import steer

        block = decoder_blocks(model)[self.block]
        device = next(block.parameters(), self.vector).device
        placed = self.__dict__.setdefault("_placed", {})  # one copy per device: a copy each pass would stall a GPU
        if device not in placed:
            placed[device] = self.steering_vector().to(device)
        return steer(model, self.block, placed[device], alpha, positions)

    def checked_for(self, hidden_size: int, num_layers: int, argument: str = "vector") -> Direction:
        """This direction, if a model of that width and block count can take it, and it can steer (finite, not
        all zeros: as an artifact's vector is checked when read)."""
        check_vector(self.vector, self.name, argument)
        if not 0 <= self.block < num_layers:
            raise ConTransError(argument, f"{self.name}: block {self.block} is not one of the model's {num_layers} blocks")
        if self.vector.shape != (hidden_size,):
            raise ConTransError(argument, f"{self.name}: a vector of shape {tuple(self.vector.shape)} for a model of "
                                          f"hidden size {hidden_size}")
        return self

    def describe(self) -> dict:
        """What results record about it (lm-eval's `config.model_info`)."""
        return {"name": self.name, "block": self.block, "alpha_unit": self.alpha_unit, "residual_norm": self.residual_norm,
                "alpha_share": self.alpha_share, "norm": round(float(self.vector.norm()), 6), **self.origin}

    def summary(self) -> str:
        """What `contrans inspect` prints of it."""
        lines = [f"direction      {self.name}", f"block          {self.block} (width {self.vector.shape[-1]})",
                 f"|vector|       {float(self.vector.norm()):.4g}",
                 f"alpha unit     {self.alpha_unit}" + (f" (median residual norm {self.residual_norm:.4g}"
                                                       + (f", share of alpha {self.alpha_share:.4g}" if self.alpha_share != 1.0 else "")
                                                       + ")" if self.alpha_unit == "residual" else "")]
        return "\n".join(lines + [f"{key:<14} {value}" for key, value in sorted(self.origin.items())])

    def steering_key(self) -> dict:
        """Everything that decides how it steers, and nothing else (not its name or origin): two directions with
        one key steer a model identically at every alpha. An experiment grid keys its rows by it."""
        vector = self.vector.detach().float().cpu().contiguous()
        return {"block": self.block, "alpha_unit": self.alpha_unit, "residual_norm": float(self.residual_norm),
                "alpha_share": float(self.alpha_share), "width": int(vector.shape[-1]),
                "vector": hashlib.sha256(vector.numpy().tobytes()).hexdigest()}

    # arithmetic, as repeng's control vectors: on what alpha 1 adds, so the result is in raw units
    def __add__(self, other: Direction) -> Direction:
        if not isinstance(other, Direction):
            return NotImplemented
        if other.block != self.block:
            raise ConTransError("vector", f"{self.name} steers block {self.block} and {other.name} block {other.block}: "
                                          "directions add only at one block")
        return Direction(f"{self.name}+{other.name}", self.block, self.steering_vector() + other.steering_vector())

    def __mul__(self, factor: float) -> Direction:
        return Direction(f"{factor:g}*{self.name}", self.block, self.steering_vector() * float(factor))

    __rmul__ = __mul__

    def __neg__(self) -> Direction:
        return Direction(f"-{self.name}", self.block, -self.steering_vector())

    def __sub__(self, other: Direction) -> Direction:
        return self + (-other)

    def __truediv__(self, divisor: float) -> Direction:
        return self * (1.0 / divisor)


def added_by_block(directions: list[Direction], alphas: list[float]) -> dict[int, torch.Tensor]:
    """What each block adds: alpha times each direction's steering vector, in float32, summed where several
    land on one block (as their hooks add up when steering); blocks where it all adds to zero are left out,
    so alpha 0 leaves a model as it is."""
    blocks: dict[int, torch.Tensor] = {}
    for direction, alpha in zip(directions, alphas, strict=True):
        if alpha == 0:
            continue
        added = alpha * direction.steering_vector().float()
        blocks[direction.block] = blocks[direction.block] + added if direction.block in blocks else added
    return {block: vector for block, vector in sorted(blocks.items()) if bool(vector.any())}


def check_vector(vector: torch.Tensor, what: str, argument: str) -> torch.Tensor:
    """A steering direction that can steer: finite, and not all zeros (which would steer nothing while
    reporting a steered score)."""
    if not bool(torch.isfinite(vector).all()):
        raise ConTransError(argument, f"{what} holds non-finite values (NaN or inf)")
    if not bool(vector.any()):
        raise ConTransError(argument, f"{what} is all zeros: it would steer nothing")
    return vector


def check_direction(direction: Direction, argument: str, where: str) -> Direction:
    """Refuse a direction that cannot steer as its fields say (read from a file, or about to be written)."""
    check_vector(direction.vector, f"{where}: the vector of {direction.name!r}", argument)
    if direction.vector.ndim != 1:
        raise ConTransError(argument, f"{where}: the vector of {direction.name!r} has shape {tuple(direction.vector.shape)}")
    if not (isinstance(direction.block, int) and not isinstance(direction.block, bool) and direction.block >= 0):
        raise ConTransError(argument, f"{where}: block {direction.block!r} of {direction.name!r} is not a block index")
    from lm_eval_contrans.transplant import check_alpha_unit

    check_alpha_unit(direction.alpha_unit)
    for name in ("residual_norm", "alpha_share"):
        value = getattr(direction, name)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
            raise ConTransError(argument, f"{where}: {name} {value!r} of {direction.name!r} is not a finite, "
                                          "non-negative number")
    return direction
