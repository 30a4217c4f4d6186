"""Steering vectors made by other tools, read for one model: the input of `contrans port` and of the
`source_vector=` / `vector=` model args.

Formats, by file suffix:

- `.gguf`: a llama.cpp control vector (llama.cpp's `cvector-generator`, repeng's `export_gguf`, our own
  `contrans export --format gguf`): one `direction.<block>` tensor per steered block, added after
  decoder block `<block>` (0-based; llama.cpp has no slot for block 0), and `controlvector.model_hint`.
- `.pt`: lm-eval's `--model steered` file, `{hookpoint: {"steering_vector": tensor, ...}}` (its
  hookpoints name the blocks: `...layers.<block>`; read as that model adds it, the vector times its
  `steering_coefficient`), a dict of tensors by block (steering-vectors' `layer_activations`), or a bare
  tensor; loaded with `weights_only=True`, so no code in the file runs.
- `.safetensors`: one tensor, or `direction.<block>` / `<block>` tensors (one per block).
- `.npy`: one array.

A file that names no block (a bare tensor) needs `source_layer=` (`--source-layer`). Blocks are resolved
against the model as every layer argument is (`ForeignVector.checked`): a negative one counts from the end.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from lm_eval_contrans.blocks import parse_layer
from lm_eval_contrans.direction import Direction, check_vector
from lm_eval_contrans.errors import ConTransError

FORMATS = ("gguf", "steered", "safetensors", "pt", "npy")
UNPLACED = "unplaced"  # read_vector(..., source_layer=UNPLACED) keeps a bare tensor without a block, to describe it
_BLOCK_IN_NAME = re.compile(r"(?:^|[._])(\d+)$")


@dataclass
class ForeignVector:
    """Steering directions for one model, by 0-based decoder block, and where they came from."""

    directions: dict[int, torch.Tensor]
    file: str
    sha256: str
    format: str
    model_hint: str | None = None
    coefficients: dict[int, float] = field(default_factory=dict)  # the file's own scale per block (applied to directions)

    @property
    def name(self) -> str:
        return Path(self.file).stem

    @property
    def blocks(self) -> list[int]:
        return sorted(self.directions)

    def origin(self) -> dict:
        """What an artifact records about the imported file."""
        return {"file": Path(self.file).name, "sha256": self.sha256, "format": self.format, "blocks": self.blocks,
                **({"model_hint": self.model_hint} if self.model_hint else {})}

    def describe(self) -> dict:
        """What `contrans inspect` prints of the file: where it came from, and each block as the file names it
        (before `checked` resolves it against a model) with its width and the norm of what it adds (with the
        file's coefficient, where it has one)."""
        return {**self.origin(), "file": self.file, "blocks": {
            str(block): {"width": int(direction.shape[-1]), "norm": round(float(direction.norm()), 6),
                         **({"coefficient": self.coefficients[block]} if block in self.coefficients else {})}
            for block, direction in sorted(self.directions.items(), key=lambda item: str(item[0]).zfill(6))}}

    def summary(self) -> str:
        described = self.describe()
        lines = [f"steering vector {described['file']}",
                 f"format          {described['format']}" + (f" (model hint {self.model_hint})" if self.model_hint else ""),
                 f"sha256          {described['sha256']}"]
        lines += [f"block {'(none named)' if block == UNPLACED else block:<9} width {entry['width']}, norm {entry['norm']:.4g}"
                  + (f", coefficient {entry['coefficient']:g}" if "coefficient" in entry else "")
                  for block, entry in described["blocks"].items()]
        return "\n".join(lines)

    def checked(self, hidden_size: int, num_layers: int, argument: str) -> ForeignVector:
        """The same vector with its blocks resolved as every layer argument is (a negative index counts from
        the end; the layer given for a bare tensor may also be a depth fraction), refusing a width that is
        not the model's hidden size or a block it does not have."""
        from lm_eval_contrans.blocks import resolve_layer

        directions, coefficients = {}, {}
        for given, direction in self.directions.items():
            if direction.ndim != 1 or direction.shape[0] != hidden_size:
                raise ConTransError(argument, f"{self.file}: the vector for block {given} has shape "
                                              f"{tuple(direction.shape)}; the model's hidden size is {hidden_size}")
            check_vector(direction, f"{self.file}: the vector for block {given}", argument)
            if not math.isfinite(self.coefficients.get(given, 1.0)):
                raise ConTransError(argument, f"{self.file}: the coefficient for block {given} is not finite")
            try:
                block = resolve_layer(given, num_layers, argument)
            except ConTransError as error:
                raise ConTransError(argument, f"{self.file}: {str(error).removeprefix(f'{argument}: ')}") from None
            if block in directions:
                raise ConTransError(argument, f"{self.file}: two vectors for block {block} (one named {given})")
            directions[block] = direction
            if given in self.coefficients:
                coefficients[block] = self.coefficients[given]
        return replace(self, directions=directions, coefficients=coefficients)


@dataclass(frozen=True)
class ImportedDirection:
    """One block of a foreign vector, standing where a build has a concept set: the pipeline takes its
    vector instead of refining one, and records where it came from."""

    vector: ForeignVector
    block: int

    @property
    def name(self) -> str:
        return self.vector.name if len(self.vector.directions) == 1 else f"{self.vector.name}@{self.block}"

    @property
    def pairs_hash(self) -> str:
        return self.vector.sha256

    @property
    def direction(self) -> torch.Tensor:
        return self.vector.directions[self.block]

    def __len__(self) -> int:
        return 0  # no concept pairs: the direction was made elsewhere


def read_vector(path: str | Path, source_layer: int | str | None = None, argument: str = "source_vector") -> ForeignVector:
    """Read a steering vector file made by another tool (formats: the module docstring).

    Args:
        path: a .gguf, .pt, .safetensors or .npy file.
        source_layer: the block a bare tensor (a file that names no block) was made at; for `vector=`,
            a vector made for the target, that is `target_layer`.
        argument: the argument that named the file, for errors.

    Returns:
        A ForeignVector: its directions by block as the file names them (`checked` resolves them
        against a model).

    Raises:
        ConTransError: the file is missing, unreadable, pickled, names no block without `source_layer`,
            or holds no vector."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConTransError(argument, f"steering vector file not found: {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        (directions, hint), kind, coefficients = _from_gguf(path, argument), "gguf", {}
    elif suffix == ".pt":
        directions, coefficients, kind = _from_pt(path, argument)
        hint = None
    elif suffix == ".safetensors":
        directions, coefficients, kind, hint = _from_safetensors(path, argument), {}, "safetensors", None
    elif suffix == ".npy":
        import numpy

        try:
            array = numpy.load(path, allow_pickle=False)
        except ValueError as error:
            raise ConTransError(argument, f"{path} is not a plain .npy array: {error}") from None
        directions, coefficients, kind, hint = {None: torch.from_numpy(array)}, {}, "npy", None
    else:
        raise ConTransError(argument, f"{path}: unknown steering-vector format {suffix or '(no suffix)'}; "
                                      "expected .gguf, .pt, .safetensors or .npy")
    if None in directions:  # a bare tensor: the caller says where it belongs
        if source_layer is None:
            layer_argument = "target_layer=" if argument == "vector" else "source_layer= (--source-layer)"
            raise ConTransError(argument, f"{path} holds one tensor and names no block; give {layer_argument} "
                                          "for the block it was made at")
        if isinstance(source_layer, float):  # lm-eval hands `-1` over as -1.0: the block index it means
            source_layer = parse_layer(source_layer, "target_layer" if argument == "vector" else "source_layer")
        directions = {source_layer: directions[None]}  # resolved against the model by `checked`
    directions = {block: _one_vector(vector, block, path, argument) for block, vector in directions.items()}
    if not directions:
        raise ConTransError(argument, f"{path} holds no steering vector")
    return ForeignVector(directions=directions, file=str(path), sha256=digest, format=kind, model_hint=hint,
                         coefficients=coefficients)


def _one_vector(tensor: torch.Tensor, block, path: Path, argument: str) -> torch.Tensor:
    """A file's tensor as one steering vector (float32, 1-D; a one-row matrix is its row), or refused: integers
    (a quantized or index tensor read as numbers would steer with garbage) and matrices are not vectors."""
    where = f"the tensor for block {block}" if block not in (None, UNPLACED) else "its tensor"
    if not (tensor.is_floating_point()):
        raise ConTransError(argument, f"{path}: {where} holds {str(tensor.dtype).removeprefix('torch.')} values; a "
                                      "steering vector holds floating-point numbers")
    if tensor.ndim == 2 and 1 in tensor.shape:
        tensor = tensor.reshape(-1)
    if tensor.ndim != 1:
        raise ConTransError(argument, f"{path}: {where} has shape {tuple(tensor.shape)}; a steering vector is one "
                                      "row of numbers (1-D), one per block")
    return tensor.detach().float()


def _one_per_block(named: list[tuple[object, int, torch.Tensor]], path: Path, argument: str) -> dict[int, torch.Tensor]:
    """{block: tensor} from (name, block, tensor) triples, refusing two names for one block (`direction.2` and
    `direction.02`), of which a dict would silently keep one."""
    directions, names = {}, {}
    for name, block, tensor in named:
        if block in directions:
            raise ConTransError(argument, f"{path}: {names[block]!r} and {name!r} both name block {block}; keep one")
        directions[block], names[block] = tensor, name
    return directions


def _from_gguf(path: Path, argument: str) -> tuple[dict[int, torch.Tensor], str | None]:
    """(directions by block, the file's model hint), from one read of the file."""
    from lm_eval_contrans.export import read_gguf_control_vector

    try:
        metadata, tensors = read_gguf_control_vector(path)
    except Exception as error:  # gguf raises ValueError, KeyError, struct errors on a foreign file
        raise ConTransError(argument, f"{path} is not a readable GGUF file: {error}") from None
    directions = _one_per_block([(name, int(name.split(".", 1)[1]), tensor) for name, tensor in tensors.items()
                                 if re.fullmatch(r"direction\.\d+", name)], path, argument)
    if not directions:
        raise ConTransError(argument, f"{path} has no direction.<block> tensors; it is not a control vector "
                                      f"(tensors: {', '.join(sorted(tensors)[:5]) or 'none'})")
    hint = metadata.get("controlvector.model_hint")
    return directions, (str(hint) if hint else None)


def _from_pt(path: Path, argument: str) -> tuple[dict, dict, str]:
    import pickle

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        pickled = re.search(r"GLOBAL ([\w.]+)", str(error))
        if pickled is None:
            raise ConTransError(argument, f"{path} is not a tensor file that loads with weights_only=True: "
                                          f"{str(error).splitlines()[0][:200]}") from None
        advice = _SAVE_INSTEAD.get(pickled.group(1).split(".")[0], _SAVE_TENSORS)
        raise ConTransError(argument, f"{path} holds a pickled {pickled.group(1)}, which is not loaded (unpickling it "
                                      f"could run code); {advice}") from None
    if isinstance(loaded, torch.Tensor):
        return {None: loaded}, {}, "pt"
    if not isinstance(loaded, dict) or not loaded:
        raise ConTransError(argument, f"{path} holds a {type(loaded).__name__}; expected a tensor or a dict of "
                                      "tensors (lm-eval's steered format: {hookpoint: {'steering_vector': ...}})")
    named, coefficients = [], {}
    for key, value in loaded.items():
        if isinstance(value, dict) and isinstance(value.get("steering_vector"), torch.Tensor):  # lm-eval steered
            # lm-eval also clamps a projection or adds to one attention head: neither is a vector added to a block's output
            action, head = value.get("action", "add"), value.get("head_index")
            if action != "add" or head is not None:
                what = f"has action {action!r}" if action != "add" else f"adds to attention head {head}"
                raise ConTransError(argument, f"{path}: entry {key!r} {what}; only 'add' entries on a block's whole "
                                              "output are steering vectors we read")
            block = _pt_block(key, path, argument)
            coefficients[block] = float(value.get("steering_coefficient", 1.0))
            # what lm-eval's steered model adds: the vector times its coefficient (whose sign may flip it);
            # checked as a vector first, so that an integer tensor is not made a float by the product
            named.append((key, block, _one_vector(value["steering_vector"], block, path, argument) * coefficients[block]))
        elif isinstance(value, torch.Tensor):
            named.append((key, _pt_block(key, path, argument), value))
        else:
            raise ConTransError(argument, f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor or a "
                                          "steered entry with 'steering_vector'")
    return _one_per_block(named, path, argument), coefficients, "steered" if coefficients else "pt"


_SAVE_TENSORS = "save its tensors instead: one tensor, or a dict of them by 0-based decoder block"
_SAVE_INSTEAD = {  # the object each tool's users save whole, and how to write it as tensors
    "steering_vectors": "save its tensors instead: torch.save(steering_vector.layer_activations, path) (a dict by "
                        "0-based decoder block, as steering-vectors numbers them for its default layer_type)",
    "repeng": "write it as a control vector instead: control_vector.export_gguf('name.gguf')",
}


def _from_safetensors(path: Path, argument: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ConTransError(argument, f"{path} is not a readable safetensors file: {error}") from None
    if len(tensors) == 1 and _BLOCK_IN_NAME.search(next(iter(tensors))) is None:
        return {None: next(iter(tensors.values()))}
    return _one_per_block([(name, _block_of(name, path, argument), tensor) for name, tensor in tensors.items()],
                          path, argument)


def _pt_block(key, path: Path, argument: str) -> int:
    """A dict key's block: an int as it is (steering-vectors' layer numbers; a negative one counts from the
    end, resolved by `ForeignVector.checked`), or the number that ends a name (a hookpoint)."""
    return key if isinstance(key, int) and not isinstance(key, bool) else _block_of(str(key), path, argument)


def _block_of(name: str, path: Path, argument: str) -> int:
    match = _BLOCK_IN_NAME.search(name)
    if match is None:
        raise ConTransError(argument, f"{path}: cannot tell which block {name!r} belongs to; name tensors "
                                      "direction.<block> (or give one tensor and source_layer=)")
    return int(match.group(1))


def target_directions(vector: ForeignVector, *, hidden_size: int, num_layers: int) -> list[Direction]:
    """A foreign vector made for the target itself, as the directions it adds (no map, no R²: it steers as it
    is, in raw units, alpha multiplying the file's vector as llama.cpp's scale does), checked against the target."""
    vector = vector.checked(hidden_size, num_layers, "vector")
    return [Direction(ImportedDirection(vector, block).name, block, vector.directions[block],
                      origin={"imported": vector.origin()})
            for block in vector.blocks]
