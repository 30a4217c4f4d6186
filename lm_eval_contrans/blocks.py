"""Finding a causal LM's decoder blocks and turning layer arguments into block indices.

Layer i is the output of decoder block i (Hugging Face `hidden_states[i + 1]`), before the final
norm.
"""

from __future__ import annotations

from torch import nn

from lm_eval_contrans.errors import ConTransError

# Attribute paths of the decoder-block list in the Hugging Face architectures we know of.
BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen, Gemma, Phi-3, OLMo, ...
    "model.language_model.layers",  # Gemma 3 / multimodal wrappers
    "language_model.model.layers",
    "transformer.h",  # GPT-2, GPT-J, GPT-Neo, Falcon, Bloom
    "gpt_neox.layers",  # Pythia, GPT-NeoX
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "transformer.layers",
    "model.transformer.h",
    "backbone.layers",  # Mamba-style
)


def _unwrap(model: nn.Module) -> nn.Module:
    # PEFT and DDP wrappers keep the Hugging Face model one or two attributes down.
    for _ in range(3):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            break
    return model


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The ordered decoder blocks of `model`; a clear error naming the paths tried if none."""
    root = _unwrap(model)
    for path in BLOCK_PATHS:
        module: object = root
        for attribute in path.split("."):
            module = getattr(module, attribute, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
    raise ConTransError(
        "model",
        f"cannot find the decoder blocks of {type(root).__name__}; tried the module paths "
        f"{', '.join(BLOCK_PATHS)}. Open an issue with the architecture name.",
    )


def resolve_layer(spec: int | float | str | None, num_layers: int, argument: str) -> int:
    """Turn a layer argument into a block index in [0, num_layers).

    An int is an index (negative counts from the end); a float in [0, 1] is a fraction of depth
    (0.75 -> round(0.75 * num_layers), the paper's choice); None means 0.75.
    """
    if spec is None:
        spec = 0.75
    if isinstance(spec, str):
        text = spec.strip()
        try:
            spec = int(text)
        except ValueError:
            try:
                spec = float(text)
            except ValueError:
                raise ConTransError(
                    argument, f"expected a block index or a depth fraction such as 0.75, got {text!r}"
                ) from None
    if isinstance(spec, bool):
        raise ConTransError(argument, f"expected a block index or a depth fraction, got {spec!r}")
    if isinstance(spec, float):
        if not 0.0 <= spec <= 1.0:
            raise ConTransError(
                argument, f"a fractional layer must lie in [0, 1] (fraction of depth), got {spec}"
            )
        return min(round(spec * num_layers), num_layers - 1)
    index = int(spec)
    resolved = index + num_layers if index < 0 else index
    if not 0 <= resolved < num_layers:
        raise ConTransError(
            argument, f"layer {index} is out of range for a model with {num_layers} decoder blocks"
        )
    return resolved
