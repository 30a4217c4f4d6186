"""Artifacts: transplants (`provenance.Transplant`: a direction and how it was made), or bare directions, in one
safetensors file.

No pickle anywhere. A transplant's tensors: `vector` (target hidden size; what is added, before alpha),
`source_vector` (the concept vector in the source) and `map` (source dim x target dim); its metadata (all
strings): models, sizes, layers, concept and anchor hashes, map method and held-out R^2, package version. A bare
direction's: its vector, and its block, alpha unit, residual norm, share and origin. The same inputs give a
byte-identical file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lm_eval_contrans.cache import publish
from lm_eval_contrans.direction import Direction, check_direction
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.provenance import Transplant, check_transplant

FORMAT = "lm_eval_contrans.transplant/1"
METADATA_KEY = "lm_eval_contrans"


def save_transplants(transplants: list[Transplant], path: str | os.PathLike, argument: str = "out") -> Path:
    """Write one or several transplants (several concepts) to one file.

    Args:
        transplants: what to write, in the order `load_transplants` returns them.
        path: the .safetensors file to write (its folder is made).
        argument: the argument that named `path`, for errors.

    Returns:
        The path written.

    Raises:
        ConTransError: none is given, or one cannot steer (non-finite or zero vector, a block out of range).

    Written atomically (temporary file, then rename): a killed write leaves no artifact. Tensors are
    named `<index>.vector`, `<index>.source_vector`, `<index>.map_weight`; the metadata is one key
    holding sorted JSON, because safetensors writes several keys in hash order, which would make
    identical builds differ byte-wise.
    """
    path = Path(path)
    if not transplants:  # a file of nothing would be refused only when read back
        raise ConTransError(argument, f"nothing to write to {path}: no transplant given")
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
    directions = [item for item in steering if isinstance(item, Direction)]
    if not directions:
        return save_transplants(steering, path, argument)
    if len(directions) != len(steering):  # one file holds one kind: a reader gets them back in the order saved
        raise ConTransError(argument, "a file holds fitted transplants or bare directions, not both; save them apart")
    for direction in steering:
        check_direction(direction, argument, str(path))
    tensors = {f"{index}.vector": direction.vector.detach().float().cpu().clone().contiguous()
               for index, direction in enumerate(steering)}
    described = [{"name": d.name, "block": d.block, "alpha_unit": d.alpha_unit, "residual_norm": float(d.residual_norm),
                  "alpha_share": float(d.alpha_share), "origin": d.origin} for d in steering]
    return _write(Path(path), tensors, {"format": FORMAT, "transplants": [], "directions": described})


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
    if METADATA_KEY not in metadata:
        raise ConTransError(argument, f"{path} is not a lm_eval_contrans transplant (no '{METADATA_KEY}' metadata)")
    try:
        document = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:  # the key is there: the file was ours, and was damaged or edited by hand
        raise ConTransError(argument, f"{path}: its '{METADATA_KEY}' metadata is not valid JSON ({error.msg} at "
                                      f"character {error.pos}); the file was damaged or edited") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ConTransError(argument, f"{path} is not a lm_eval_contrans transplant of format {FORMAT!r}")
    if document.get("directions"):
        return _directions_in(document["directions"], tensors, path, argument)
    transplants = []
    try:
        for index, values in enumerate(document["transplants"]):
            transplant = Transplant.from_fields(**{name: tensors[f"{index}.{name}"] for name in Transplant._TENSORS}, **values)
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
    return [check_direction(direction, argument, str(path)) for direction in directions]


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
