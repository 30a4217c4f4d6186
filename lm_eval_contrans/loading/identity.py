"""A model's identity in cache keys: what names its weights (and its adapter's and tokenizer's)."""

from __future__ import annotations

import os
from pathlib import Path

from lm_eval_contrans.loading.gguf_files import DEQUANTIZED_FORMAT, gguf_identity, gguf_path
from lm_eval_contrans.loading.hub import hub_commit
from lm_eval_contrans.loading.specs import ModelSpec, parse_model_spec


def model_identity(spec: ModelSpec) -> dict:
    """Fields that identify a model's weights for cache keys (no weight hashing, but for a GGUF file, which
    is named by its content)."""
    identity: dict = ({"gguf": gguf_identity(gguf_path(spec)), "dequantized": DEQUANTIZED_FORMAT}
                      if spec.gguf_file is not None
                      else {"name": spec.pretrained, "gguf_file": None})
    if spec.block_path:  # other blocks, other states
        identity["block_path"] = spec.block_path
    local = Path(spec.pretrained)
    if spec.gguf_file is None and spec.on_hub:
        identity.update(revision=spec.revision, commit=hub_commit(spec))
    elif spec.gguf_file is None and local.is_dir():
        identity["name"] = str(local.resolve())
        identity["files"] = sorted(
            (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
            for entry in os.scandir(local)
            if entry.is_file()
        )
    if spec.adapter is not None:  # other weights, other states
        kind, name = spec.adapter
        identity[kind] = model_identity(parse_model_spec(name, kind))
    if spec.tokenizer is not None:  # other tokens, other states
        identity["tokenizer"] = model_identity(parse_model_spec(spec.tokenizer, "tokenizer"))
    return identity
