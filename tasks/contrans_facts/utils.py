"""contrans_facts: factual completions (facts.jsonl beside this file, made by scripts/make_facts.py).

Override with `--metadata '{"facts_data": "/path/to/file.jsonl"}'` (fields: prompt, choices, answer).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

DEFAULT_DATA = Path(__file__).resolve().parent / "facts.jsonl"


def load(facts_data: str | None = None, **metadata) -> datasets.DatasetDict:
    path = Path(facts_data) if facts_data else DEFAULT_DATA
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
