"""Writes concept_sets/<emotion>.yaml for six emotions and the default evaluation scenarios
tasks/contrans_emotion/scenarios.json (all text written for this project, in emotion_scenarios.py).

Format of the paper's emotion experiment: "Scenario: ...\\nThe emotion of the above scenario is".
Positives: the emotion's first 25 scenarios; each is paired with 4 scenarios of the other emotions
(rotating through them), giving 100 pairs. The remaining 10 scenarios of each emotion are the
evaluation data, so concept sets and evaluation never share a scenario.
Run: python scripts/make_emotion_sets.py
"""

import json
from pathlib import Path

from _concept_file import write_concept_set
from emotion_scenarios import CONCEPT_COUNT, SCENARIOS

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "Scenario: {scenario}\nThe emotion of the above scenario is"
NEGATIVES_PER_POSITIVE = 4


def main() -> None:
    emotions = list(SCENARIOS)
    for emotion in emotions:
        others = [other for other in emotions if other != emotion]
        pairs = []
        for index, scenario in enumerate(SCENARIOS[emotion][:CONCEPT_COUNT]):
            for step in range(NEGATIVES_PER_POSITIVE):
                other = others[(index + step) % len(others)]
                negative = SCENARIOS[other][(index + step) % CONCEPT_COUNT]
                pairs.append({"positive": TEMPLATE.format(scenario=scenario),
                              "negative": TEMPLATE.format(scenario=negative)})
        write_concept_set(
            emotion,
            f"Scenarios evoking {emotion} (+) versus scenarios of the other five emotions (-).",
            f"Respond with a strong sense of {emotion}.",
            pairs,
            "make_emotion_sets.py",
        )
    evaluation = {emotion: SCENARIOS[emotion][CONCEPT_COUNT:] for emotion in emotions}
    out = ROOT / "tasks" / "contrans_emotion" / "scenarios.json"
    out.write_text(json.dumps(evaluation, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote evaluation scenarios to {out}")


if __name__ == "__main__":
    main()
