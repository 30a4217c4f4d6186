"""contrans_sentiment: does the model prefer the positive verdict after a neutral review opening?

Data: prompts written for this project (sentiment_prompts.jsonl beside this file); override with
`--metadata '{"sentiment_data": "/path/to/file.jsonl"}'` (same fields: prompt, positive, negative).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

DEFAULT_DATA = Path(__file__).resolve().parent / "sentiment_prompts.jsonl"


def load(sentiment_data: str | None = None, **metadata) -> datasets.DatasetDict:
    path = Path(sentiment_data) if sentiment_data else DEFAULT_DATA
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _loglikelihood(result) -> float:
    return float(result[0] if isinstance(result, (tuple, list)) else result)


def process_results(doc: dict, results: list) -> dict:
    positive, negative = (_loglikelihood(result) for result in results[:2])
    positive_bytes, negative_bytes = len(doc["positive"].encode()), len(doc["negative"].encode())
    return {
        "acc": float(positive > negative),
        # the verdict words differ in length: compare per-byte log-likelihoods, as lm-eval's acc_norm does
        "acc_norm": float(positive / positive_bytes > negative / negative_bytes),
        "margin": positive - negative,
    }
