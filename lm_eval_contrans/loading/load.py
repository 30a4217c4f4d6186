"""`load_model`: a model and its own tokenizer, ready for inference."""

from __future__ import annotations

import torch

from lm_eval_contrans.blocks import use_block_path
from lm_eval_contrans.loading.adapters import with_adapter
from lm_eval_contrans.loading.devices import default_device, resolve_dtype
from lm_eval_contrans.loading.gguf_files import pretrained_path
from lm_eval_contrans.loading.remote_code import remote_code_explained
from lm_eval_contrans.loading.specs import ModelSpec, parse_model_spec


def load_model(
    spec: str | ModelSpec,
    *,
    argument: str = "model",
    dtype: str | torch.dtype | None = "float32",
    device: str | None = None,
    **from_pretrained_kwargs,
):
    """Load a model and its tokenizer for inference.

    Args:
        spec: a hub id (`org/name@revision`), a folder, a .gguf file, a GGUF file in a hub repository
            (`org/name/file.gguf`), or `packaged:<name>`; or a ModelSpec.
        argument: the argument that named it, for errors.
        dtype: "float32", "bfloat16", "auto", a torch dtype, ...
        device: where to put it (None: CUDA if there is one, else the CPU).
        **from_pretrained_kwargs: passed to `AutoModelForCausalLM.from_pretrained`.

    Returns:
        (model, tokenizer), the model in eval mode on `device`.

    Raises:
        ConTransError: the model cannot be found or read, named with the reason.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(spec, str):
        spec = parse_model_spec(spec, argument)
    folder = pretrained_path(spec)
    with remote_code_explained(spec):
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer or folder, **spec.load_kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=resolve_dtype(dtype), **spec.load_kwargs, **from_pretrained_kwargs
        )
    if spec.adapter is not None:
        model = with_adapter(model, *spec.adapter)
    model.to(device or default_device())
    model.eval()
    if spec.block_path:
        use_block_path(model, spec.block_path, "source_block_path" if argument == "source" else "block_path")
    return model, tokenizer
