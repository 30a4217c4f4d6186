"""contrans_emotion_<emotion>: the paper's emotion metric as lm-eval tasks.

Each document is a scenario followed by "The emotion of the above scenario is"; the choices are the
six emotion words. `contrans_emotion_<e>` holds the scenarios of the *other* five emotions with
target <e>: its acc is the steering success (share of scenarios whose top emotion word becomes
<e>). `contrans_emotion_<e>_own` holds <e>'s own scenarios: its acc is plain accuracy.

Data: scenarios written for this project (scenarios.json beside this file, disjoint from the
concept sets); override with `--metadata '{"emotion_data": "/path/scenarios.json"}'`, a JSON object
{emotion: [scenario, ...]} (the layout of the representation-engineering emotion data).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

EMOTIONS = ["happiness", "sadness", "anger", "fear", "disgust", "surprise"]
DEFAULT_DATA = Path(__file__).resolve().parent / "scenarios.json"


def load(emotion: str, own: bool = False, emotion_data: str | None = None, **metadata) -> datasets.DatasetDict:
    scenarios = json.loads(Path(emotion_data or DEFAULT_DATA).read_text(encoding="utf-8"))
    missing = set(EMOTIONS) - set(scenarios)
    if missing:
        raise ValueError(f"emotion_data lacks scenarios for: {', '.join(sorted(missing))}")
    sources = [emotion] if own else [other for other in EMOTIONS if other != emotion]
    # round-robin over the source emotions, so that `--limit N` takes a balanced mix of them
    columns = [scenarios[source] for source in sources]
    rows = [{"scenario": column[index], "emotion": source, "target": EMOTIONS.index(emotion)}
            for index in range(max(map(len, columns)))
            for source, column in zip(sources, columns) if index < len(column)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
