"""Exporting a transplant for use outside this tool.

- `steered`: the `.pt` file that lm-eval's own `--model steered` reads
  (`{hookpoint: {"steering_vector", "steering_coefficient", "action", "bias", "head_index"}}`),
  with hookpoint the steered block's name under the model's `base_model`.
- `gguf`: a llama.cpp control vector (`--control-vector-scaled file.gguf <alpha>`): tensor
  `direction.<block>` holding the vector that alpha multiplies (`Transplant.steering_vector`), metadata `controlvector.model_hint` and
  `controlvector.layer_count`, written with the `gguf` package. The block index is ours (0-based
  output of decoder block i); llama.cpp adds `direction.i` after block i and has no slot for block 0.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lm_eval_contrans.direction import Direction, added_by_block
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import ModelSpec, parse_model_spec
from lm_eval_contrans.provenance import Steering, Transplant, directions_of

FORMATS = ("steered", "gguf")


def steered_hookpoint(target: str | ModelSpec, layer: int) -> str:
    """The block's module name under `model.base_model`, from an empty (meta) copy of the model."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from lm_eval_contrans.blocks import decoder_blocks
    from lm_eval_contrans.pipeline.depth import load_config

    spec = parse_model_spec(target, "target")
    config = load_config(spec)  # at the target's revision
    if config is None:
        raise ConTransError("target", f"cannot read the config of {spec.name}, which names the blocks' hookpoints")
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    block = decoder_blocks(model)[layer]
    for name, module in model.base_model.named_modules():
        if module is block:
            return name
    raise ConTransError("format", f"block {layer} is not under the model's base_model; cannot name a hookpoint")


def _listed(transplants: Steering | list[Steering]) -> list[Steering]:
    return [transplants] if isinstance(transplants, (Transplant, Direction)) else list(transplants)


def _by_block(transplants: Steering | list[Steering]) -> dict[int, torch.Tensor]:
    """What alpha 1 adds at each target block; several transplants or directions at one block (a ported
    multi-block vector sent to one block, or several concepts) add up, as they do when steering."""
    directions = directions_of(_listed(transplants))
    return added_by_block(directions, [1.0] * len(directions))


def _model_hint(transplants: Steering | list[Steering]) -> str:
    """llama.cpp's check of the model a control vector is for: the target's model type where a transplant
    records it, else a direction's origin (another tool's file names its own hint)."""
    for item in _listed(transplants):
        hint = item.target_model_type if isinstance(item, Transplant) else item.origin.get("model_hint")
        if hint:
            return str(hint).removesuffix("_text")
    raise ConTransError("format", "these directions record no model type for llama.cpp's controlvector.model_hint; "
                                  "export a transplant built for the target")


def export_steered(transplants: Steering | list[Steering], path: str | Path, target: str | ModelSpec,
                   alpha: float = 1.0) -> Path:
    """lm-eval's `--model steered` file for `target` (a model name as everywhere, or a ModelSpec)."""
    config = {steered_hookpoint(target, block): {"steering_vector": vector.clone(),
                                                        "steering_coefficient": float(alpha), "action": "add",
                                                        "bias": None, "head_index": None}
              for block, vector in _by_block(transplants).items()}
    torch.save(config, path)  # lm-eval's steered model reads a pickled .pt; it is its format, not ours
    return Path(path)


def export_gguf(transplants: Steering | list[Steering], path: str | Path) -> Path:
    import gguf

    blocks = _by_block(transplants)
    if 0 in blocks:
        at_zero = [direction.name for direction in directions_of(_listed(transplants)) if direction.block == 0]
        raise ConTransError("format", f"llama.cpp control vectors cannot steer block 0, where {', '.join(at_zero)} lands; "
                                      "rebuild (or port) with target_layer >= 1")
    hint = _model_hint(transplants)
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", hint)
    writer.add_uint32("controlvector.layer_count", len(blocks))
    for block, vector in blocks.items():
        writer.add_tensor(f"direction.{block}", vector.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def read_gguf_control_vector(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a control-vector GGUF, read back with the gguf package."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    metadata = {}
    for name, field in reader.fields.items():
        if name.startswith("controlvector.") or name == "general.architecture":
            value = field.parts[field.data[0]]
            metadata[name] = bytes(value).decode() if field.types[0] == gguf.GGUFValueType.STRING else value.item()
    tensors = {tensor.name: torch.from_numpy(tensor.data.copy()) for tensor in reader.tensors}
    return metadata, tensors
