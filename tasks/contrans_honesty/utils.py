"""contrans_honesty_mc1 / _mc2: TruthfulQA multiple choice, scored exactly as lm-eval's
truthfulqa_mc1 / truthfulqa_mc2 so that numbers are comparable with published ones.

The few-shot QA prompt is read at run time from lm-eval's own truthfulqa_mc1.yaml (not copied), so
the two stay identical. Data: the public `truthfulqa/truthful_qa` (config `multiple_choice`,
validation split) by default; a local JSONL in the same schema (question, mc1_targets, mc2_targets)
with `--metadata '{"truthfulqa_data": "/path/to/file.jsonl"}'`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import datasets
import numpy as np
import yaml


class _IgnoreTags(yaml.SafeLoader):
    pass


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


@functools.cache
def _prompt_template() -> str:
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).parent / "truthfulqa" / "truthfulqa_mc1.yaml"
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_IgnoreTags)["doc_to_text"]


def doc_to_text(doc: dict) -> str:
    from lm_eval.utils import apply_template

    return apply_template(_prompt_template(), doc)


def load(truthfulqa_data: str | None = None, **metadata) -> datasets.DatasetDict:
    if truthfulqa_data:
        return datasets.load_dataset("json", data_files={"validation": str(truthfulqa_data)})
    return datasets.load_dataset("truthfulqa/truthful_qa", "multiple_choice")


def process_results_mc2(doc: dict, results: list) -> dict:
    """Normalised probability mass on the true answers (lm-eval's truthfulqa_mc2 metric), computed
    with the same numpy operations in the same order, so the floats agree to the last bit."""
    loglikelihoods = np.array([result[0] if isinstance(result, (tuple, list)) else result for result in results])
    probabilities = np.exp(loglikelihoods)
    normalised = probabilities / np.sum(probabilities)
    labels = np.array(doc["mc2_targets"]["labels"])
    return {"acc": np.sum(normalised[labels == 1])}
