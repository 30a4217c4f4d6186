"""What crosses into vLLM's processes: per steered block, the vector added to its output.

The vector is already in the model's units: alpha times each direction's steering vector, summed
where several land on one block (`direction.added_by_block`). It is written once to a content-addressed file in the cache, and
the engine's `additional_config` names that file and its sha256. vLLM passes `additional_config` to
every process it starts (tensor-parallel workers, the replicas lm-eval starts for data parallel, the
server's engine) and hashes it into its compile-cache key, so a steered engine never reuses the
graphs compiled for an unsteered one, nor the reverse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

PLUGIN_NAME = "contrans"  # its `vllm.general_plugins` entry point (pyproject.toml)
CONFIG_KEY = "contrans"  # vllm_config.additional_config[CONFIG_KEY] = {"steering": path, "sha256": digest, ...}
FORMAT = "lm_eval_contrans.vllm_steering/1"
METADATA_KEY = "lm_eval_contrans"


def engine_entry(steering: dict[int, torch.Tensor], *, model_type: str, hidden_size: int, num_layers: int,
                 describe: str) -> dict:
    """Write the steering file (once per content) and return the `additional_config` entry naming it."""
    from safetensors.torch import save_file

    from lm_eval_contrans.cache import cache_root, publish

    for block, vector in steering.items():
        if vector.shape != (hidden_size,) or not bool(torch.isfinite(vector).all()):
            raise ValueError(f"steering for block {block}: shape {tuple(vector.shape)} or non-finite values")
    tensors = {f"block.{block}": vector.detach().float().cpu().contiguous() for block, vector in steering.items()}
    # one metadata key: safetensors writes several in its hash map's (random) order, and the file is named by its bytes
    facts = {"format": FORMAT, "model_type": model_type, "hidden_size": hidden_size, "num_layers": num_layers,
             "describe": describe}
    metadata = {METADATA_KEY: json.dumps(facts, sort_keys=True)}
    folder = cache_root() / "vllm-steering"
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".steering.", dir=folder)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        digest = hashlib.sha256(Path(temporary).read_bytes()).hexdigest()
        final = folder / f"{digest[:24]}.safetensors"
        publish(temporary, final)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return {"steering": str(final), "sha256": digest,
            "blocks": {str(block): round(float(vector.norm()), 6) for block, vector in steering.items()}}


def read_entry(entry: dict) -> tuple[dict[int, torch.Tensor], dict]:
    """(block -> vector, the file's metadata), after checking the file is the one the engine was configured with."""
    from safetensors import safe_open
    from safetensors.torch import load

    path = Path(entry["steering"])
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise RuntimeError(f"contrans: the steering file {path} is not the one this engine was configured with "
                           "(its sha256 differs)")
    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}"))
    if metadata.get("format") != FORMAT:
        raise RuntimeError(f"contrans: {path} is not a steering file of format {FORMAT}")
    return {int(name.split(".", 1)[1]): tensor for name, tensor in load(data).items()}, metadata


def allow_plugin() -> None:
    """vLLM loads only the plugins that VLLM_PLUGINS names, where it is set: name ours too (the processes
    vLLM starts inherit it)."""
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN_NAME not in [name.strip() for name in allowed.split(",")]:
        os.environ["VLLM_PLUGINS"] = ",".join(filter(None, [allowed, PLUGIN_NAME]))
        logging.getLogger(__name__).info("VLLM_PLUGINS=%s (the steering plugin added)", os.environ["VLLM_PLUGINS"])


def describe(directions: list, alphas: list[float]) -> str:
    """One JSON line naming what is steered (recorded in the file, logged by each worker)."""
    return json.dumps([{"concept": d.name, "block": d.block, "alpha": alpha, "alpha_unit": d.alpha_unit}
                       for d, alpha in zip(directions, alphas)])
