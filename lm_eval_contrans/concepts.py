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
import unicodedata
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


def visible_text(text: str) -> str:
    """A text as a reader sees it: NFKC-normalised (compatibility forms folded: "ﬁ" is "fi"), format characters
    (Unicode category Cf: zero-width spaces and joiners, bidi marks, soft hyphens) removed, and stripped. Two
    texts that differ only otherwise differ in nothing a concept can be read from."""
    normal = unicodedata.normalize("NFKC", text)
    return "".join(character for character in normal if unicodedata.category(character) != "Cf").strip()


def _warn_if_degenerate(path: Path, pairs: list[tuple[str, str]]) -> None:
    pairs = [(visible_text(positive), visible_text(negative)) for positive, negative in pairs]
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
    path = concept_path(concept)
    if path is None:
        raise unknown_concept(concept)
    header, pairs = _read_pairs(path)
    if not isinstance(pairs, list) or not pairs:
        raise ConTransError(ARGUMENT, f"{path} has no pairs")
    checked = [_checked_pair(path, number, pair) for number, pair in enumerate(pairs, start=1)]
    positives, negatives = [positive for positive, _ in checked], [negative for _, negative in checked]
    _warn_if_degenerate(path, checked)
    return ConceptSet(
        name=str(header.get("name") or path.stem),
        positives=tuple(positives),
        negatives=tuple(negatives),
        description=str(header.get("description") or ""),
        instruction=str(header.get("instruction") or ""),
        source=str(path),
    )


def concept_path(concept: str | Path) -> Path | None:
    """The file a concept names: a shipped set's, or a concept-set file that exists; None for neither."""
    shipped = shipped_concepts()
    if isinstance(concept, str) and concept in shipped:
        return shipped[concept]
    path = Path(concept).expanduser()
    return path if path.is_file() else None


def unknown_concept(concept: str | Path, given: str | None = None) -> ConTransError:
    """The error for a name that is neither a shipped set nor a file; `given`: the whole `a+b` it was split from."""
    known = ", ".join(sorted(shipped_concepts())) or "(none installed)"
    split = (f" ('+' splits concepts: {given!r} was read as {' and '.join(repr(part) for part in split_concepts(given))}; "
             "a file whose name holds '+' is read whole where it exists)" if given is not None else "")
    return ConTransError(ARGUMENT, f"unknown concept {str(concept)!r}: not a shipped concept set and not a file. "
                                   f"Shipped concepts: {known}{split}")


def split_concepts(concepts: str) -> list[str]:
    """`a+b` as the concepts it names: split at each '+', except where parts joined by '+' name a file that
    exists (`/data/a+b.jsonl`, or `a+b.jsonl+honesty`), which is one concept; the longest such join wins."""
    parts = concepts.split("+")
    names, start = [], 0
    while start < len(parts):
        end = next((end for end in range(len(parts), start + 1, -1)
                    if concept_path("+".join(parts[start:end]).strip()) is not None), start + 1)
        names.append("+".join(parts[start:end]).strip())
        start = end
    return names


def _checked_pair(path: Path, number: int, pair) -> tuple[str, str]:
    """(positive, negative) of one pair of a file, refused naming the file and the pair where it is not two
    texts that differ in what a reader sees."""
    if not isinstance(pair, dict) or set(pair) - {"positive", "negative"}:
        raise ConTransError(ARGUMENT, f"{path}, pair {number}: expected exactly the keys 'positive' and 'negative'")
    for side in ("positive", "negative"):
        value = pair.get(side)
        if value is not None and not isinstance(value, str):  # YAML and JSON read 3 or yes unquoted as non-texts
            raise ConTransError(ARGUMENT, f"{path}, pair {number}: the '{side}' text is {repr(value)[:60]} "
                                          f"({type(value).__name__}), not a string; quote it in the file")
        if value is None or not value.strip():
            raise ConTransError(ARGUMENT, f"{path}, pair {number}: missing or empty '{side}' text (sets must be paired)")
    if pair["positive"].strip() == pair["negative"].strip():
        raise ConTransError(ARGUMENT, f"{path}, pair {number}: the positive and negative texts are the same, "
                                      "so the pair says nothing about the concept")
    if visible_text(pair["positive"]) == visible_text(pair["negative"]):
        unseen = sorted({f"U+{ord(c):04X}" for c in pair["positive"] + pair["negative"]
                         if unicodedata.category(c) == "Cf" or unicodedata.normalize("NFKC", c) != c})
        raise ConTransError(ARGUMENT, f"{path}, pair {number}: the positive and negative texts differ only in "
                                      f"invisible or compatibility characters ({', '.join(unseen) or 'Unicode forms'}), so the pair "
                                      "says nothing about the concept")
    return pair["positive"], pair["negative"]
