"""GGUF files: where a spec's file lies, what names it, what its tokenizer asks for, and its weights
de-quantized into the cache.

GGUF files are de-quantized by transformers, which is slow (tens of seconds for a 270M model), so
the de-quantized weights and tokenizer are cached as an ordinary Hugging Face folder, keyed on the
file's content (`gguf_identity`); later loads read that folder.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from lm_eval_contrans.cache import cached_dir, content_key
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading.specs import ModelSpec

logger = logging.getLogger(__name__)


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within the block, each GGUF file's metadata is parsed once. transformers parses it afresh for the
    config, the tokenizer and the weights, and gguf's reader spends ~20 s a time on Gemma 3's
    262k-token vocabulary (bench/perf/gguf_load.py)."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], object] = {}

    class ParsedOnce(original):
        def __new__(cls, path, mode="r"):
            key = (os.fspath(path), mode)
            if key not in readers:
                reader = super().__new__(cls)
                original.__init__(reader, path, mode)
                readers[key] = reader
            return readers[key]

        def __init__(self, *args, **kwargs) -> None:  # parsed in __new__, once
            pass

    gguf.GGUFReader = ParsedOnce
    try:
        yield
    finally:
        gguf.GGUFReader = original


def dequantized_gguf_folder(spec: ModelSpec) -> Path:
    """A cached Hugging Face folder holding the de-quantized weights and tokenizer of a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert spec.gguf_file is not None
    path = gguf_path(spec)
    stat = path.stat()
    key = content_key({**gguf_identity(path), "format": DEQUANTIZED_FORMAT})

    def dequantize(folder: Path) -> None:
        logger.info("de-quantizing %s (%.0f MB) once; later loads "
                    "use the cache at %s", path.name, stat.st_size / 1e6, folder)
        started = time.perf_counter()
        with gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            wants_bos = gguf_adds_bos(path)
        if wants_bos is not None and _adds_bos(tokenizer) != wants_bos:
            # transformers < 5.20 converts some GGUF tokenizers (Gemma's) without the BOS their file asks for,
            # and the model then reads every text from a state it was never trained on
            tokenizer.add_bos_token = wants_bos
        # The weights are already plain float tensors; only the GGUF marker blocks saving them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if wants_bos is not None and _adds_bos(AutoTokenizer.from_pretrained(folder)) != wants_bos:
            raise ConTransError(spec.argument, f"{path.name} asks for add_bos_token={wants_bos}, and this version of "
                                               "transformers converts its tokenizer otherwise: upgrade transformers")
        (folder / "SOURCE_GGUF").write_text(f"{path}\n")
        logger.info("de-quantized %s in %.0f s", path.name, time.perf_counter() - started)

    return cached_dir("gguf", f"{path.stem}-{key}", dequantize, sound=_loadable_folder)


def _loadable_folder(folder: Path) -> bool:
    """Whether a saved model folder still reads: its config parses and each weights file's header and size agree
    (a truncated file fails here, not deep inside a load on every later run)."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
        weights = list(folder.glob("*.safetensors"))
        for file in weights:
            with safe_open(str(file), framework="pt"):
                pass
    except (OSError, ValueError, SafetensorError):
        return False
    return bool(weights)


# The de-quantized folder's layout and what it guarantees; part of every cache key of a GGUF model.
# 3: the tokenizer adds BOS as the file says (`tokenizer.ggml.add_bos_token`).
DEQUANTIZED_FORMAT = 3


def gguf_adds_bos(path: Path) -> bool | None:
    """The file's `tokenizer.ggml.add_bos_token`, or None where it does not say (read once per file's state:
    parsing Gemma 3's header takes ~20 s)."""
    stat = Path(path).stat()
    return _gguf_adds_bos(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _gguf_adds_bos(path: str, size: int, mtime_ns: int) -> bool | None:
    import gguf

    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    return None if field is None else bool(field.parts[field.data[0]][0])


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a").input_ids
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def gguf_identity(path: Path) -> dict:
    """A GGUF file named by its content (its name, size and sha256), wherever it lies: the same file in
    another environment, installed again or found in a hub repository shares the de-quantized folder and
    the recorded states."""
    stat = path.stat()
    return _gguf_identity(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _gguf_identity(path: str, size: int, mtime_ns: int) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return {"file": Path(path).name, "size": size, "sha256": digest.hexdigest()}


def gguf_path(spec: ModelSpec) -> Path:
    """The local GGUF file of a spec; one in a hub repository is downloaded (once: the hub's cache)."""
    assert spec.gguf_file is not None
    if not spec.on_hub:
        return Path(spec.pretrained) / spec.gguf_file
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(spec.pretrained, spec.gguf_file, revision=spec.revision))
    except Exception as error:
        raise ConTransError("model", f"GGUF file not found: {spec.name} is not a local file, and reading it as "
                                     f"{spec.gguf_file} in the hub repository {spec.pretrained} failed: "
                                     f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None


def pretrained_path(spec: ModelSpec) -> str:
    """What `from_pretrained` (or HFLM's `pretrained`) should receive for this spec."""
    if spec.gguf_file is not None:
        return str(dequantized_gguf_folder(spec))
    return spec.pretrained
