"""The read-only tokenizer cache: one tokenizer per model and state of its files, shared by every caller that
only reads how texts split, and released before a model loads its own."""

from __future__ import annotations

import functools
import gc
from dataclasses import replace
from pathlib import Path

from lm_eval_contrans.loading.gguf_files import pretrained_path
from lm_eval_contrans.loading.hub import hub_commit
from lm_eval_contrans.loading.memory import return_freed_memory_to_the_os
from lm_eval_contrans.loading.remote_code import remote_code_explained
from lm_eval_contrans.loading.specs import ModelSpec, parse_model_spec


def read_only_tokenizer(spec: ModelSpec):
    """The model's tokenizer, for reading how it splits texts: loaded once per process and state of its
    folder's tokenizer files (parsing Gemma 3's 262k-token vocabulary takes ~1.5 s, most of a cached
    build). Shared between callers, so it must not be changed; `load_model` gives each model its own."""
    if spec.tokenizer is not None:  # HFLM's tokenizer=, read as HFLM does: at the model's revision
        tokenizer = parse_model_spec(spec.tokenizer, "tokenizer")
        return read_only_tokenizer(replace(tokenizer, trust_remote_code=spec.trust_remote_code,
                                           revision=tokenizer.revision or (spec.revision if tokenizer.on_hub else None)))
    folder = pretrained_path(spec)
    files = Path(folder).glob("*token*") if Path(folder).is_dir() else ()
    files_state = tuple(sorted((file.name, file.stat().st_mtime_ns, file.stat().st_size) for file in files))
    with remote_code_explained(spec):
        return _tokenizer(folder, files_state, tuple(sorted(spec.load_kwargs.items())), hub_commit(spec))


def release_read_only_tokenizers() -> None:
    """Drop the tokenizers `read_only_tokenizer` keeps, before a model loads with its own copy: Gemma 3's
    takes 330 MiB, and two copies beside a loading model set a bfloat16 build's peak memory."""
    _tokenizer.cache_clear()
    gc.collect()
    return_freed_memory_to_the_os()


@functools.lru_cache(maxsize=8)
def _tokenizer(folder: str, files_state: tuple, load_kwargs: tuple, commit: str | None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, **dict(load_kwargs))
