"""What crosses into vLLM's processes: a bank of directions, each with the alpha a request gets by default.

The bank holds every direction an engine may be asked for, at alpha 1 in the model's units (each direction's
steering vector); how much of each a token gets is not in it but written by each worker before each step,
from the token's request (request_steering.py, plugin.py). The bank is written once to a content-addressed
file in the cache, and the engine's `additional_config` names that file, its sha256 and the bank's index
(names, blocks, default alphas, push limits). vLLM passes `additional_config` to every process it starts
(tensor-parallel workers, the replicas lm-eval starts for data parallel, the server's engine and front end)
and hashes it into its compile-cache key, so a steered engine never reuses the graphs compiled for an
unsteered one, nor the reverse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

PLUGIN_NAME = "contrans"  # its `vllm.general_plugins` entry point (pyproject.toml)
CONFIG_KEY = "contrans"  # vllm_config.additional_config[CONFIG_KEY] = {"steering": path, "sha256": ..., "bank": ...}
FORMAT = "lm_eval_contrans.vllm_bank/2"
METADATA_KEY = "lm_eval_contrans"


@dataclass(frozen=True)
class BankEntry:
    """One direction of the bank.

    Args:
        name: the concept it belongs to; a request names concepts (a ported vector's blocks share one).
        block: the decoder block whose output it is added to.
        alpha_unit: the unit of alpha, as for the direction.
        default_alpha: what a request that names no steering gets.
        most_alpha: the largest |alpha| a request may ask (`transplant_args.push_limit`; inf: no limit recorded).
    """

    name: str
    block: int
    alpha_unit: str
    default_alpha: float
    most_alpha: float


@dataclass(frozen=True)
class Bank:
    """The index of a bank: its entries in the order of the file's vectors, the default positions, and the
    facts of the model it was made for. It travels in `additional_config`, so the front end checks a request
    without reading the vectors."""

    entries: tuple[BankEntry, ...]
    positions: str
    model_type: str
    hidden_size: int
    num_layers: int

    @classmethod
    def of(cls, directions: list, alphas: list[float], positions: str, facts: dict) -> Bank:
        """The bank of `directions` (`direction.Direction`s checked for the target), each at its default alpha."""
        from lm_eval_contrans.transplant_args import push_limit

        entries = tuple(BankEntry(d.name, d.block, d.alpha_unit, float(alpha), push_limit(d))
                        for d, alpha in zip(directions, alphas, strict=True))
        return cls(entries, positions, str(facts["model_type"]), int(facts["hidden_size"]), int(facts["num_layers"]))

    @property
    def concepts(self) -> list[str]:
        """The concept names a request may ask for, in bank order."""
        return list(dict.fromkeys(entry.name for entry in self.entries))

    def to_json(self) -> dict:
        """JSON-safe (an infinite limit is written as None)."""
        entries = [{**asdict(entry), "most_alpha": entry.most_alpha if math.isfinite(entry.most_alpha) else None}
                   for entry in self.entries]
        return {"entries": entries, "positions": self.positions, "model_type": self.model_type,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers}

    @classmethod
    def from_json(cls, data: dict) -> Bank:
        entries = tuple(BankEntry(**{**entry, "most_alpha": math.inf if entry["most_alpha"] is None
                                     else float(entry["most_alpha"])}) for entry in data["entries"])
        return cls(entries, data["positions"], data["model_type"], int(data["hidden_size"]), int(data["num_layers"]))


def engine_entry(bank: Bank, vectors: list[torch.Tensor]) -> dict:
    """Write the bank's file (once per content) and return the `additional_config` entry naming it.

    Args:
        bank: the index.
        vectors: one per entry, the direction's steering vector (what alpha 1 adds), the model's width.
    """
    from safetensors.torch import save_file

    from lm_eval_contrans.cache import cache_root, publish

    if len(vectors) != len(bank.entries):
        raise ValueError(f"{len(vectors)} vectors for {len(bank.entries)} bank entries")
    for entry, vector in zip(bank.entries, vectors):
        if vector.shape != (bank.hidden_size,) or not bool(torch.isfinite(vector).all()):
            raise ValueError(f"steering for {entry.name} at block {entry.block}: shape {tuple(vector.shape)} or "
                             "non-finite values")
    tensors = {f"direction.{index}": vector.detach().float().cpu().contiguous() for index, vector in enumerate(vectors)}
    # one metadata key: safetensors writes several in its hash map's (random) order, and the file is named by its bytes
    metadata = {METADATA_KEY: json.dumps({"format": FORMAT, **bank.to_json()}, sort_keys=True)}
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
    return {"steering": str(final), "sha256": digest, "bank": bank.to_json()}


def bank_entry(directions: list, alphas: list[float], positions: str, facts: dict) -> dict:
    """The `additional_config` entry of an engine steered by `directions` (checked for its target: `facts`),
    each at its default alpha, at `positions` by default."""
    return engine_entry(Bank.of(directions, alphas, positions, facts), [d.steering_vector() for d in directions])


def bank_of(entry: dict) -> Bank:
    """The bank's index from an `additional_config` entry (no file read)."""
    return Bank.from_json(entry["bank"])


def read_entry(entry: dict) -> tuple[Bank, torch.Tensor]:
    """(the bank, its vectors stacked: entries x width), after checking the file is the one the engine was
    configured with, and that its index is the entry's."""
    from safetensors import safe_open
    from safetensors.torch import load

    path = Path(entry["steering"])
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise RuntimeError(f"contrans: the steering file {path} is not the one this engine was configured with "
                           "(its sha256 differs)")
    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}"))
    if metadata.pop("format", None) != FORMAT:
        raise RuntimeError(f"contrans: {path} is not a steering file of format {FORMAT}")
    bank = Bank.from_json(metadata)
    if bank != bank_of(entry):
        raise RuntimeError(f"contrans: the index of {path} is not the engine's")
    tensors = load(data)
    return bank, torch.stack([tensors[f"direction.{index}"] for index in range(len(bank.entries))])


def allow_plugin() -> None:
    """vLLM loads only the plugins that VLLM_PLUGINS names, where it is set: name ours too (the processes
    vLLM starts inherit it)."""
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN_NAME not in [name.strip() for name in allowed.split(",")]:
        os.environ["VLLM_PLUGINS"] = ",".join(filter(None, [allowed, PLUGIN_NAME]))
        logging.getLogger(__name__).info("VLLM_PLUGINS=%s (the steering plugin added)", os.environ["VLLM_PLUGINS"])
