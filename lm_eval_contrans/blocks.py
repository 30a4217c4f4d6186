"""Finding a causal LM's decoder blocks and turning layer arguments into block indices.

Layer i is the output of decoder block i (Hugging Face `hidden_states[i + 1]`), before the final
norm.
"""

from __future__ import annotations

import weakref

from torch import nn

from lm_eval_contrans.errors import ConTransError

_LAYER_COUNT_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# Paths found or given, per model object: discovery walks every module, and steering asks for
# the blocks around each forward pass.
_BLOCK_PATHS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


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


def configured_layer_count(config) -> int | None:
    """The decoder-block count a Hugging Face config states (for multimodal models, its text model's)."""
    for candidate in (getattr(config, "text_config", None), getattr(config, "language_config", None), config):
        for field in _LAYER_COUNT_FIELDS:
            value = getattr(candidate, field, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def use_block_path(model: nn.Module, path: str, argument: str = "block_path") -> nn.ModuleList:
    """Take the decoder blocks of `model` from the module at `path` (e.g. `transformer.blocks`), for
    architectures that discovery gets wrong; later `decoder_blocks(model)` calls return them."""
    root = _unwrap(model)
    try:
        module = root.get_submodule(path)
    except AttributeError:
        raise ConTransError(argument, f"{type(root).__name__} has no module {path!r}") from None
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        raise ConTransError(argument, f"{path!r} in {type(root).__name__} is a {type(module).__name__}, "
                                      "not a non-empty ModuleList of decoder blocks")
    _BLOCK_PATHS[root] = path
    return module


def _discover_block_path(root: nn.Module, config=None) -> str:
    """The ModuleList of decoder blocks: as long as the config's layer count, and (to tell the text
    blocks from a vision tower's or a list of experts) the one nearest the input embeddings."""
    lists = [(name, module) for name, module in root.named_modules()
             if name and isinstance(module, nn.ModuleList) and len(module) > 0]
    count = configured_layer_count(config if config is not None else getattr(root, "config", None))
    if count is not None:
        lists = [(name, module) for name, module in lists if len(module) == count]
    if not lists:
        said = f"of length {count} (the config's layer count)" if count is not None else "of modules"
        raise ConTransError("model", f"cannot find the decoder blocks of {type(root).__name__}: it has no ModuleList "
                                     f"{said}. Name them with block_path=<module path>, e.g. block_path=model.layers")
    embeddings_name = ""
    try:
        embeddings = root.get_input_embeddings()
        embeddings_name = next((name for name, module in root.named_modules() if module is embeddings), "")
    except (AttributeError, NotImplementedError):
        pass

    def shared_prefix(name: str) -> int:
        ours, theirs = name.split("."), embeddings_name.split(".")
        common = 0
        while common < min(len(ours), len(theirs)) and ours[common] == theirs[common]:
            common += 1
        return common

    # nearest the embeddings first, then the shallowest path, then model order
    return min(enumerate(lists), key=lambda item: (-shared_prefix(item[1][0]), item[1][0].count("."), item[0]))[1][0]


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The ordered decoder blocks of `model`, found once per model (or as set by `use_block_path`)."""
    root = _unwrap(model)
    path = _BLOCK_PATHS.get(root)
    if path is None:
        path = _BLOCK_PATHS[root] = _discover_block_path(root)
    return root.get_submodule(path)


def decoder_blocks_of(model: nn.Module, config) -> nn.ModuleList:
    """The decoder blocks of a model that does not carry its Hugging Face config (vLLM's), found with it."""
    root = _unwrap(model)
    path = _BLOCK_PATHS.get(root)
    if path is None:
        path = _BLOCK_PATHS[root] = _discover_block_path(root, config)
    return root.get_submodule(path)


def block_path(model: nn.Module) -> str:
    """The module path of `model`'s decoder blocks, e.g. `model.layers` (what `decoder_blocks` returns)."""
    decoder_blocks(model)
    return _BLOCK_PATHS[_unwrap(model)]


def parse_layer(spec: int | float | str | None, argument: str) -> int | float:
    """A layer argument as a block index (int) or a depth fraction (float), before any model is known:
    text is read as an int, else a float; a whole float below 0 or above 1 is an index; None means 0.75."""
    if spec is None:
        return 0.75
    if isinstance(spec, str):
        text = spec.strip()
        try:
            return int(text)
        except ValueError:
            try:
                spec = float(text)
            except ValueError:
                raise ConTransError(
                    argument, f"expected a block index or a depth fraction such as 0.75, got {text!r}"
                ) from None
    if isinstance(spec, bool):
        raise ConTransError(argument, f"expected a block index or a depth fraction, got {spec!r}")
    if isinstance(spec, float) and spec.is_integer() and (spec < 0 or spec > 1):
        # lm-eval's command line hands `target_layer=-1` over as -1.0 ("-1".isnumeric() is false there): a whole
        # number outside the fractions' [0, 1] can only mean a block index (1.0 stays the fraction: the last block)
        return int(spec)
    return spec


def resolve_layer(spec: int | float | str | None, num_layers: int, argument: str) -> int:
    """Turn a layer argument into a block index in [0, num_layers).

    An int is an index (negative counts from the end), and so is a whole float outside [0, 1] (lm-eval's
    command line hands `-1` over as -1.0); a float in [0, 1] is a fraction of depth
    (0.75 -> round(0.75 * num_layers), the paper's choice; block i sits at depth i / num_layers, which
    the automatic sweeps and ports read too: `pipeline.depth.relative_depth`); None means 0.75.
    """
    spec = parse_layer(spec, argument)
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
