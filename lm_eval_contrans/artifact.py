"""Transplant artifacts: the transplanted vector and how it was made, in one safetensors file.

No pickle anywhere. Tensors: `vector` (target hidden size; what is added, before alpha),
`source_vector` (the concept vector in the source) and `map` (source dim x target dim). Metadata
(all strings): models, sizes, layers, concept and anchor hashes, map method and held-out R^2,
package version. The same inputs give a byte-identical file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lm_eval_contrans import __version__
from lm_eval_contrans.cache import publish
from lm_eval_contrans.direction import Direction
from lm_eval_contrans.errors import ConTransError

FORMAT = "lm_eval_contrans.transplant/1"
METADATA_KEY = "lm_eval_contrans"


@dataclass
class Transplant:
    vector: torch.Tensor
    source_vector: torch.Tensor
    map_weight: torch.Tensor
    source: str
    target: str
    source_hidden_size: int
    target_hidden_size: int
    source_num_layers: int
    target_num_layers: int
    source_layer: int
    target_layer: int
    target_model_type: str
    concept: str
    concept_hash: str
    concept_pairs: int
    anchors: str
    anchors_hash: str
    anchor_count: int
    map_method: str
    ridge: float
    heldout_r2: float
    anchor_tokens: str = "last"
    center: bool = False
    alpha_unit: str = "raw"
    residual_norm: float = 0.0  # median norm of the target block's anchor states: the alpha unit's scale
    version: str = __version__
    extra: dict = field(default_factory=dict)
    # in residual units, the share of alpha this transplant adds: 1/N for each of the N blocks of one ported vector,
    # so that alpha 1 pushes the target, over all of them, as much as one concept transplant does
    alpha_share: float = 1.0

    _TENSORS = ("vector", "source_vector", "map_weight")

    def metadata(self) -> dict:
        described = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._TENSORS}
        if self.alpha_share == 1.0:  # written only where it matters, so artifacts without a share keep their bytes
            del described["alpha_share"]
        return described

    @property
    def direction(self) -> Direction:
        """What this transplant adds to the target, and where: the direction every engine steers with."""
        key = (self.concept, self.target_layer, self.alpha_unit, self.residual_norm, self.alpha_share)
        made = self.__dict__.get("_direction")
        if made is None or made[0] != key or made[1].vector is not self.vector:  # fields changed since: made anew
            made = key, Direction(self.concept, self.target_layer, self.vector, self.alpha_unit, self.residual_norm,
                                  self.alpha_share)
            self.__dict__["_direction"] = made
        return made[1]

    def steering_vector(self) -> torch.Tensor:
        """What alpha multiplies when steering (`Direction.steering_vector`)."""
        return self.direction.steering_vector()

    def apply(self, model, alpha: float = 1.0, positions: str = "all"):
        """A context manager: within it, `model` (the target) is steered by alpha times this transplant,
        in the transplant's alpha unit, at its target block (`Direction.apply`)::

            with transplant.apply(model, alpha=2.0):
                model.generate(...)
        """
        return self.direction.apply(model, alpha, positions)

    def summary(self) -> str:
        lines = [
            f"concept        {self.concept} ({self.concept_pairs} pairs, sha256 {self.concept_hash[:12]})",
            f"source         {self.source}  layer {self.source_layer} of {self.source_num_layers}, hidden {self.source_hidden_size}",
            f"target         {self.target}  layer {self.target_layer} of {self.target_num_layers}, hidden {self.target_hidden_size} ({self.target_model_type})",
            f"anchors        {self.anchors} ({self.anchor_count} texts, {self.anchor_tokens} tokens, sha256 {self.anchors_hash[:12]})",
            f"map            {self.map_method}" + (f" (ridge {self.ridge:g})" if self.ridge else "")
            + (", centred" if self.center else ", no centring"),
            f"held-out R^2   {self.heldout_r2:.3f}",
            f"|source v|     {self.source_vector.norm():.4g}",
            f"|transplanted| {self.vector.norm():.4g}",
            f"alpha unit     {self.alpha_unit}" + (f" (alpha 1 = norm {self.steering_vector().norm():.4g}; "
                                                   f"median residual norm {self.residual_norm:.4g}"
                                                   + (f"; this block's share of alpha {self.alpha_share:.4g}"
                                                      if self.alpha_share != 1.0 else "") + ")"
                                                   if self.alpha_unit == "residual" else ""),
            f"version        {self.version}",
        ]
        lines += [f"{key:<14} {value}" for key, value in sorted(self.extra.items())]
        return "\n".join(lines)


def check_vector(vector: torch.Tensor, what: str, argument: str) -> torch.Tensor:
    """A steering direction that can steer: finite, and not all zeros (which would steer nothing while
    reporting a steered score)."""
    if not bool(torch.isfinite(vector).all()):
        raise ConTransError(argument, f"{what} holds non-finite values (NaN or inf)")
    if not bool(vector.any()):
        raise ConTransError(argument, f"{what} is all zeros: it would steer nothing")
    return vector


def check_transplant(transplant: Transplant, argument: str, where: str) -> Transplant:
    """Refuse a transplant that cannot steer as its metadata says (read from a file, or about to be written)."""
    for side in ("source", "target"):
        layer, count = getattr(transplant, f"{side}_layer"), getattr(transplant, f"{side}_num_layers")
        if not (isinstance(layer, int) and isinstance(count, int) and 0 <= layer < count):
            raise ConTransError(argument, f"{where}: {side} block {layer!r} is not one of the {count!r} blocks it "
                                          f"names for {transplant.concept!r}")
    _check_direction(transplant.direction, argument, where)
    for name in ("source_vector", "map_weight"):
        if not bool(torch.isfinite(getattr(transplant, name)).all()):
            raise ConTransError(argument, f"{where}: the {name} of {transplant.concept!r} holds non-finite values")
    return transplant


def save_transplants(transplants: list[Transplant], path: str | os.PathLike, argument: str = "out") -> Path:
    """Write one or several transplants (several concepts) to one file.

    Args:
        transplants: what to write, in the order `load_transplants` returns them.
        path: the .safetensors file to write (its folder is made).
        argument: the argument that named `path`, for errors.

    Returns:
        The path written.

    Raises:
        ConTransError: a transplant cannot steer (non-finite or zero vector, a block out of range).

    Written atomically (temporary file, then rename): a killed write leaves no artifact. Tensors are
    named `<index>.vector`, `<index>.source_vector`, `<index>.map_weight`; the metadata is one key
    holding sorted JSON, because safetensors writes several keys in hash order, which would make
    identical builds differ byte-wise.
    """
    path = Path(path)
    if any(isinstance(item, Direction) for item in transplants):
        raise ConTransError(argument, "bare directions (another tool's vector, a control) carry no fitted map to save as "
                                      "transplants; save_steering writes them")
    for transplant in transplants:  # nothing that cannot steer is written
        check_transplant(transplant, argument, str(path))
    # cloned: one transplant listed twice (or two sharing a map) would otherwise hand safetensors shared memory
    tensors = {f"{index}.{name}": getattr(transplant, name).detach().float().cpu().clone().contiguous()
               for index, transplant in enumerate(transplants) for name in Transplant._TENSORS}
    return _write(path, tensors, {"format": FORMAT, "transplants": [t.metadata() for t in transplants]})


def _write(path: Path, tensors: dict, document: dict) -> Path:
    """Write tensors and one sorted-JSON metadata key atomically (a killed write leaves no file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {METADATA_KEY: json.dumps(document, sort_keys=True)}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        publish(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def save_transplant(transplant: Transplant, path: str | os.PathLike) -> Path:
    """Write one transplant as an artifact (see `save_transplants`).

    Args:
        transplant: what to write.
        path: the .safetensors file to write (its folder is made).

    Returns:
        The path written.

    Raises:
        ConTransError: the transplant cannot steer (non-finite or zero vector, a block out of range).
    """
    return save_transplants([transplant], path)


def save_steering(steering: list[Transplant | Direction], path: str | os.PathLike, argument: str = "out") -> Path:
    """Write transplants, or bare directions, to one artifact (`load_steering` reads either back).

    Args:
        steering: fitted transplants (written as `save_transplants` does, with how they were made), or
            directions (their vector, block, alpha unit, residual norm, share and origin; no map, no R²).
        path: the .safetensors file to write (its folder is made).
        argument: the argument that named `path`, for errors.

    Returns:
        The path written.

    Raises:
        ConTransError: transplants and directions mixed in one file, or one that cannot steer.
    """
    steering = list(steering)
    if not all(isinstance(item, Direction) for item in steering):
        return save_transplants(steering, path, argument)
    for direction in steering:
        _check_direction(direction, argument, str(path))
    tensors = {f"{index}.vector": direction.vector.detach().float().cpu().clone().contiguous()
               for index, direction in enumerate(steering)}
    described = [{"name": d.name, "block": d.block, "alpha_unit": d.alpha_unit, "residual_norm": float(d.residual_norm),
                  "alpha_share": float(d.alpha_share), "origin": d.origin} for d in steering]
    return _write(Path(path), tensors, {"format": FORMAT, "transplants": [], "directions": described})


def _check_direction(direction: Direction, argument: str, where: str) -> Direction:
    """Refuse a bare direction that cannot steer as its metadata says."""
    check_vector(direction.vector, f"{where}: the vector of {direction.name!r}", argument)
    if direction.vector.ndim != 1:
        raise ConTransError(argument, f"{where}: the vector of {direction.name!r} has shape {tuple(direction.vector.shape)}")
    if not (isinstance(direction.block, int) and direction.block >= 0):
        raise ConTransError(argument, f"{where}: block {direction.block!r} of {direction.name!r} is not a block index")
    from lm_eval_contrans.steering import check_alpha_unit

    check_alpha_unit(direction.alpha_unit)
    for name in ("residual_norm", "alpha_share"):
        value = getattr(direction, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConTransError(argument, f"{where}: {name} {value!r} of {direction.name!r} is not a finite, "
                                          "non-negative number")
    return direction


def is_transplant_file(path: str | os.PathLike) -> bool:
    """Whether a safetensors file is one of our artifacts (from its header; False for any other file)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return METADATA_KEY in (handle.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False


def load_transplants(path: str | os.PathLike, argument: str = "vector") -> list[Transplant]:
    """The transplants of an artifact (one per concept it holds), checked as they are read.

    Args:
        path: a .safetensors artifact written by `save_transplants` (by this or an earlier version).
        argument: the argument that named it, for errors.

    Returns:
        The transplants, in the order they were saved.

    Raises:
        ConTransError: the file is missing, damaged or not ours, holds a transplant that cannot steer
            (non-finite or zero vector, a block its model does not have), or holds bare directions.
    """
    steering = load_steering(path, argument)
    if not all(isinstance(item, Transplant) for item in steering):
        raise ConTransError(argument, f"{path} holds bare directions (no fitted map, no R²); read it with load_steering")
    return steering


def load_steering(path: str | os.PathLike, argument: str = "vector") -> list[Transplant | Direction]:
    """What an artifact steers with: its transplants, or its bare directions (`save_steering`), checked as read.

    Args:
        path: a .safetensors artifact written by this or an earlier version.
        argument: the argument that named it, for errors.

    Returns:
        Transplants or Directions, in the order they were saved.

    Raises:
        ConTransError: the file is missing, damaged or not ours, or holds something that cannot steer.
    """
    path = Path(path)
    if not path.is_file():
        raise ConTransError(argument, f"artifact not found: {path}")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ConTransError(argument, f"{path} is not a readable safetensors file (truncated or corrupted?): {error}") from None
    try:
        document = json.loads(metadata[METADATA_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ConTransError(argument, f"{path} is not a lm_eval_contrans transplant (no '{METADATA_KEY}' metadata)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ConTransError(argument, f"{path} is not a lm_eval_contrans transplant of format {FORMAT!r}")
    if document.get("directions"):
        return _directions_in(document["directions"], tensors, path, argument)
    transplants = []
    try:
        for index, values in enumerate(document["transplants"]):
            transplant = Transplant(**{name: tensors[f"{index}.{name}"] for name in Transplant._TENSORS}, **values)
            if transplant.vector.shape != (transplant.target_hidden_size,):
                raise ConTransError(argument, f"{path}: vector shape {tuple(transplant.vector.shape)} does not match its metadata")
            transplants.append(check_transplant(transplant, argument, str(path)))
    except (KeyError, TypeError) as error:
        raise ConTransError(argument, f"{path} has incomplete or unreadable metadata: {error}") from None
    if not transplants:
        raise ConTransError(argument, f"{path} holds no transplant")
    return transplants


def _directions_in(described: list, tensors: dict, path: Path, argument: str) -> list[Direction]:
    try:
        directions = [Direction(values["name"], values["block"], tensors[f"{index}.vector"], values["alpha_unit"],
                                values["residual_norm"], values["alpha_share"], dict(values.get("origin") or {}))
                      for index, values in enumerate(described)]
    except (KeyError, TypeError) as error:
        raise ConTransError(argument, f"{path} has incomplete or unreadable metadata: {error}") from None
    return [_check_direction(direction, argument, str(path)) for direction in directions]


def load_transplant(path: str | os.PathLike, argument: str = "vector") -> Transplant:
    """The one transplant of an artifact (see `load_transplants`).

    Args:
        path: a .safetensors artifact holding one concept.
        argument: the argument that named it, for errors.

    Returns:
        The Transplant.

    Raises:
        ConTransError: as `load_transplants`, or the file holds several concepts.
    """
    transplants = load_transplants(path, argument)
    if len(transplants) != 1:
        names = "+".join(t.concept for t in transplants)
        raise ConTransError(argument, f"{path} holds {len(transplants)} concepts ({names}); use load_transplants")
    return transplants[0]


def _short_name(name: str) -> str:
    base = name.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower()
    return base[: -len(".gguf")] if base.endswith(".gguf") else base


def check_against_target(
    transplant: Transplant, *, target: str, hidden_size: int, num_layers: int, model_type: str,
    strict_name: bool = True, argument: str = "vector",
) -> None:
    """Refuse an artifact built for another target, with the reason."""
    problems = []
    if transplant.target_hidden_size != hidden_size:
        problems.append(f"hidden size {transplant.target_hidden_size} != {hidden_size}")
    if transplant.target_num_layers != num_layers:
        problems.append(f"{transplant.target_num_layers} decoder blocks != {num_layers}")
    if transplant.target_model_type != model_type:
        problems.append(f"architecture {transplant.target_model_type} != {model_type}")
    if strict_name and _short_name(transplant.target) != _short_name(target):
        problems.append(f"built for {transplant.target!r}, evaluating {target!r} (pass check_target_name=False if they are the same weights)")
    if problems:
        raise ConTransError(argument, "this artifact was built for another target: " + "; ".join(problems))


def as_dict(transplant: Transplant) -> dict:
    data = asdict(transplant)
    for name in Transplant._TENSORS:
        data.pop(name)
    return data
