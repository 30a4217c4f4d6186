"""Concept sets: paired positive / negative texts that define a concept in the source model.

A concept set is a YAML file::

    name: sentiment
    description: Positive (+) versus negative (-) evaluative tone.
    instruction: Respond in a warm, positive tone.   # optional, for the prompt baseline
    pairs:
      - positive: "The soup was rich and comforting."
        negative: "The soup was bland and disappointing."

or a JSONL file with one `{"positive": ..., "negative": ...}` object per line; pairs written by other
tools read too: a JSON (or YAML) list of such objects, and a CSV or TSV file with `positive` and
`negative` columns. Adding the concept vector with alpha > 0 moves the target towards the *positive* side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.tasks_path import shipped_dir
from lm_eval_contrans.textfiles import jsonl_records, read_user_text, table_rows

logger = logging.getLogger(__name__)
# fewer pairs than this: the mean difference carries much of what the few pairs differ in besides the concept
FEW_PAIRS = 5

ARGUMENT = "concept"


@dataclass(frozen=True)
class ConceptSet:
    name: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    description: str = ""
    instruction: str = ""
    source: str = field(default="", compare=False)

    def __len__(self) -> int:
        return len(self.positives)

    @property
    def pairs_hash(self) -> str:
        """sha256 of the pairs alone (not the name), so renaming a file keeps cache hits."""
        text = json.dumps([list(self.positives), list(self.negatives)], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def split(self, fraction: float, seed: int = 0) -> tuple[ConceptSet, ConceptSet]:
        """(training pairs, held-out pairs): a seeded share `fraction` of the pairs held out."""
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        held = set(order[: max(1, round(fraction * len(self)))])

        def subset(keep, suffix):
            indices = [index for index in range(len(self)) if keep(index)]
            return replace(self, name=f"{self.name} ({suffix})", positives=tuple(self.positives[i] for i in indices),
                           negatives=tuple(self.negatives[i] for i in indices))

        return subset(lambda index: index not in held, "training"), subset(lambda index: index in held, "held out")


def shipped_concepts() -> dict[str, Path]:
    folder = shipped_dir("concept_sets")
    if not folder.is_dir():
        return {}
    return {
        path.stem: path for path in sorted(folder.iterdir()) if path.suffix in {".yaml", ".yml", ".jsonl"}
    }


def _read_pairs(path: Path) -> tuple[dict, list]:
    text = read_user_text(path, ARGUMENT)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return {}, [record for _, record in jsonl_records(path, text, ARGUMENT)]
    if suffix in (".csv", ".tsv"):
        return {}, table_rows(path, text, ("positive", "negative"), ARGUMENT)
    try:
        document = yaml.safe_load(text)  # JSON is read as YAML
    except yaml.YAMLError as error:
        raise ConTransError(ARGUMENT, f"{path} is not valid YAML or JSON: {error}") from None
    if isinstance(document, list):  # a bare list of pairs
        return {}, document
    if not isinstance(document, dict) or "pairs" not in document:
        raise ConTransError(ARGUMENT, f"{path} must be a list of pairs or a mapping with a 'pairs' list")
    return document, document["pairs"]


def _warn_if_degenerate(path: Path, pairs: list[tuple[str, str]]) -> None:
    repeated = len(pairs) - len(set(pairs))
    if repeated:
        logger.warning("concept: %s: %d of its %d pairs repeat an earlier pair (they weigh more in the mean "
                       "difference)", path, repeated, len(pairs))
    if len(set(pairs)) < FEW_PAIRS:
        logger.warning("concept: %s has %d distinct pair(s): the concept vector will also carry whatever else "
                       "they differ in; %d or more are better", path, len(set(pairs)), FEW_PAIRS)


def load_concept_set(concept: str | Path) -> ConceptSet:
    """A shipped concept set by name, or a concept-set file by path, validated.

    Args:
        concept: a shipped name (`contrans concepts` lists them) or a .yaml/.json/.jsonl/.csv/.tsv file.

    Returns:
        The ConceptSet: its name, positive and negative texts, and the sha256 of its pairs.

    Raises:
        ConTransError: an unknown name, an unreadable file, a malformed pair, a pair whose two sides are
            the same.
    """
    shipped = shipped_concepts()
    if isinstance(concept, str) and concept in shipped:
        path = shipped[concept]
    else:
        path = Path(concept).expanduser()
        if not path.is_file():
            known = ", ".join(sorted(shipped)) or "(none installed)"
            raise ConTransError(
                ARGUMENT,
                f"unknown concept {str(concept)!r}: not a shipped concept set and not a file. "
                f"Shipped concepts: {known}",
            )
    header, pairs = _read_pairs(path)
    if not isinstance(pairs, list) or not pairs:
        raise ConTransError(ARGUMENT, f"{path} has no pairs")
    positives, negatives = [], []
    for number, pair in enumerate(pairs, start=1):
        if not isinstance(pair, dict) or set(pair) - {"positive", "negative"}:
            raise ConTransError(
                ARGUMENT, f"{path}, pair {number}: expected exactly the keys 'positive' and 'negative'"
            )
        for side in ("positive", "negative"):
            value = pair.get(side)
            if not isinstance(value, str) or not value.strip():
                raise ConTransError(
                    ARGUMENT, f"{path}, pair {number}: missing or empty '{side}' text (sets must be paired)"
                )
        if pair["positive"].strip() == pair["negative"].strip():
            raise ConTransError(ARGUMENT, f"{path}, pair {number}: the positive and negative texts are the same, "
                                          "so the pair says nothing about the concept")
        positives.append(pair["positive"])
        negatives.append(pair["negative"])
    _warn_if_degenerate(path, list(zip(positives, negatives)))
    return ConceptSet(
        name=str(header.get("name") or path.stem),
        positives=tuple(positives),
        negatives=tuple(negatives),
        description=str(header.get("description") or ""),
        instruction=str(header.get("instruction") or ""),
        source=str(path),
    )
