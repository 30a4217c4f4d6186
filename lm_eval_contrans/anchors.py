"""The anchor corpus: neutral texts run through both models to fit the source-to-target map.

The shipped default (`data/neutral_anchors.txt`, 2,397 texts) was made for this project by
`scripts/make_anchor_corpus.py`: prose sampled from the packaged SmolLM2-135M-Instruct on requests
of ours across many genres and topics. A user may pass their own instead, e.g. the WikiSplit
sentences that the reference implementation uses: a `.jsonl` file (objects with a "text" field), a
`.json` list (of texts, or of such objects), a `.csv` / `.tsv` file with a `text` column, or any other
text file, one text per line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.textfiles import jsonl_records, read_user_text, table_rows

logger = logging.getLogger(__name__)

ARGUMENT = "anchors"
DEFAULT_ANCHORS = Path(__file__).resolve().parent / "data" / "neutral_anchors.txt"


def load_anchor_texts(anchors: str | Path | None = None) -> tuple[list[str], str]:
    """The anchor texts: the shipped corpus, or a file (formats: the module docstring).

    Args:
        anchors: a file, or None / "" / "default" for the shipped corpus.

    Returns:
        (texts, name): the texts in file order, and the name an artifact records.

    Raises:
        ConTransError: the file is missing, unreadable, malformed, or holds one repeated text.
    """
    path = DEFAULT_ANCHORS if anchors in (None, "", "default") else Path(anchors).expanduser()
    if not path.is_file():
        raise ConTransError(ARGUMENT, f"anchor corpus not found: {anchors}")
    text = read_user_text(path, ARGUMENT)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        texts = []
        for number, record in jsonl_records(path, text, ARGUMENT):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ConTransError(ARGUMENT, f"{path}, line {number}: expected an object with a 'text' string")
            texts.append(record["text"])
    elif suffix == ".json":  # read line by line, a JSON file would put its brackets and quotes into the texts
        texts = _json_texts(path, text)
    elif suffix in (".csv", ".tsv"):
        texts = [row["text"] for row in table_rows(path, text, ("text",), ARGUMENT)]
    else:
        texts = text.splitlines()
    texts = [text.strip() for text in texts if text.strip()]
    if not texts:
        raise ConTransError(ARGUMENT, f"{path} holds no texts")
    distinct = len(set(texts))
    if distinct < 2:
        raise ConTransError(ARGUMENT, f"{path}: every text is the same; a map needs anchor texts that differ")
    if distinct < len(texts):
        logger.warning("anchors: %d of the %d texts in %s repeat an earlier one: the held-out R^2 is then partly "
                       "measured on texts the map was fitted on, and overstates it", len(texts) - distinct,
                       len(texts), path)
    name = "default" if path == DEFAULT_ANCHORS else str(anchors)
    return texts, name


def _json_texts(path: Path, text: str) -> list[str]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConTransError(ARGUMENT, f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(document, list) or not all(
            isinstance(item, str) or (isinstance(item, dict) and isinstance(item.get("text"), str)) for item in document):
        raise ConTransError(ARGUMENT, f"{path}: expected a JSON list of texts, or of objects with a 'text' string")
    return [item if isinstance(item, str) else item["text"] for item in document]


def anchors_hash(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


ANCHOR_TOKENS = ("dense", "last")


def check_anchor_tokens(value: str) -> str:
    if value not in ANCHOR_TOKENS:
        raise ConTransError("anchor_tokens", f"expected one of {', '.join(ANCHOR_TOKENS)}, got {value!r}")
    return value


def tokenize_with_ends(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each text and, per token, the character offset where it ends in the text
    (-1 for tokens that cover no text, such as BOS): the key that pairs tokens across tokenizers."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConTransError(
            "anchor_tokens",
            f"anchor_tokens=dense pairs tokens by character offsets, which needs a fast (Rust) tokenizer; "
            f"{type(tokenizer).__name__} is not one. Use anchor_tokens=last.",
        )
    encoded = tokenizer(list(texts), add_special_tokens=True, return_offsets_mapping=True)
    ends = [[end if end > start else -1 for start, end in offsets] for offsets in encoded["offset_mapping"]]
    return [list(ids) for ids in encoded["input_ids"]], ends


def matched_token_pairs(source_ends: list[list[int]], target_ends: list[list[int]]) -> tuple[list[int], list[int]]:
    """Flat token indices (into the texts' tokens laid end to end) of source and target tokens
    that end at the same character of the same text. Where several tokens of one model end at the
    same character (pieces of one multi-byte character), the last of them stands for the span."""
    if len(source_ends) != len(target_ends):
        raise ValueError("source and target must tokenize the same anchor texts")
    source_index, target_index = [], []
    source_start = target_start = 0
    for source_text, target_text in zip(source_ends, target_ends):
        source_at = {end: source_start + position for position, end in enumerate(source_text) if end >= 0}
        target_at = {end: target_start + position for position, end in enumerate(target_text) if end >= 0}
        for end in sorted(source_at.keys() & target_at.keys()):
            source_index.append(source_at[end])
            target_index.append(target_at[end])
        source_start += len(source_text)
        target_start += len(target_text)
    return source_index, target_index
