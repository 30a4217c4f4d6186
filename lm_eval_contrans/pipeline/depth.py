"""Depth geometry: block counts, relative depth, and the candidate blocks of the `auto` layer choices."""

from __future__ import annotations

from torch import nn

from lm_eval_contrans.blocks import configured_layer_count, decoder_blocks, parse_layer, resolve_layer
from lm_eval_contrans.loading import ModelSpec, pretrained_path

SOURCE_LAYER_BAND = 0.15  # source_layer=auto tries blocks within this relative depth of the target's
TARGET_LAYER_RANGE = (0.4, 0.85)  # target_layer=auto tries the blocks in this range of relative depth


def model_layer_count(model: nn.Module) -> int:
    return len(decoder_blocks(model))


def load_config(spec: ModelSpec):
    """The model's Hugging Face config (no weights), or None where there is none to read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(pretrained_path(spec), **spec.load_kwargs)
    except Exception:
        return None


def config_layer_count(spec: ModelSpec) -> int | None:
    """Decoder-block count from the config alone (no weights), or None if it does not say."""
    config = load_config(spec)
    return None if config is None else configured_layer_count(config)


def config_facts(spec: ModelSpec) -> dict:
    """Block count, hidden size and model type from the config alone (None where it does not say)."""
    config = load_config(spec)
    if config is None:
        return {"num_layers": None, "hidden_size": None, "model_type": None}
    text = getattr(config, "text_config", None) or config
    return {"num_layers": configured_layer_count(config), "hidden_size": configured_hidden_size(config),
            "model_type": str(getattr(text, "model_type", None) or getattr(config, "model_type", "")) or None}


def configured_hidden_size(config) -> int | None:
    """The width of the residual stream a config states (for multimodal models, its text model's)."""
    text = getattr(config, "text_config", None) or config
    return next((getattr(text, name) for name in ("hidden_size", "n_embd", "d_model")
                 if isinstance(getattr(text, name, None), int)), None)


def residual_width(model: nn.Module) -> int:
    """The width of what the decoder blocks output, which a steering vector must have: the config's
    hidden size, which is not always the embeddings' (OPT-350m projects 512-wide embeddings into
    1024-wide blocks); the embeddings' where the config does not say."""
    return configured_hidden_size(getattr(model, "config", None)) or model.get_input_embeddings().embedding_dim


def model_type_of(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return str(getattr(config, "model_type", type(model_or_config).__name__))


def relative_depth(index: int, num_layers: int) -> float:
    """Where block `index` of `num_layers` sits: index / num_layers, the one meaning of a depth fraction
    (`resolve_layer` takes fraction f to block round(f × num_layers), so block i at i / n goes back to
    block i). The automatic sweeps and a port's landing block read depth this way."""
    return index / max(1, num_layers)


def depth_of(layer, num_layers: int) -> float:
    """The depth a layer argument names: a fraction as given (not the depth of the block it rounds to, so
    a port given 0.75 lands where a build given 0.75 does), a block index at its relative depth."""
    block = resolve_layer(layer, num_layers, "source_layer")  # refuses what is neither, or out of range
    given = parse_layer(layer, "source_layer")
    return given if isinstance(given, float) else relative_depth(block, num_layers)


def is_auto(layer) -> bool:
    return isinstance(layer, str) and layer.strip() == "auto"


def target_block(layer, num_layers: int) -> int:
    return resolve_layer(layer, num_layers, "target_layer")


def source_layer_candidates(num_layers: int, target_depth: float | None) -> list[int]:
    """Source blocks whose relative depth lies within SOURCE_LAYER_BAND of the target block's (in a
    shallow model, at least the neighbouring blocks)."""
    if target_depth is None:
        target_depth = 0.75
    band = max(SOURCE_LAYER_BAND, 1 / max(1, num_layers))
    candidates = [index for index in range(num_layers)
                  if abs(relative_depth(index, num_layers) - target_depth) <= band + 1e-9]
    return candidates or [resolve_layer(float(target_depth), num_layers, "source_layer")]


def target_layer_candidates(num_layers: int) -> list[int]:
    """Target blocks that target_layer=auto scores: relative depth within TARGET_LAYER_RANGE, and
    the fixed default's block (0.75) and the one before it in any case, so a shallow model still gets a choice."""
    low, high = TARGET_LAYER_RANGE
    candidates = {index for index in range(num_layers) if low - 1e-9 <= relative_depth(index, num_layers) <= high + 1e-9}
    default = resolve_layer(0.75, num_layers, "target_layer")
    return sorted(candidates | {default, max(0, default - 1)})


def source_blocks(layer, num_layers: int, target_depths: list[float | None]) -> list[int]:
    """The source blocks a layer argument asks for: "auto" gives the candidates around each target
    depth; a list gives those blocks; anything else the one block it names."""
    if isinstance(layer, (list, tuple)):
        return sorted({resolve_layer(value, num_layers, "source_layer") for value in layer})
    if is_auto(layer):
        return sorted({index for depth in target_depths for index in source_layer_candidates(num_layers, depth)})
    return [resolve_layer(layer, num_layers, "source_layer")]
