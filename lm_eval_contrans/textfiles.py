"""Text files users write for us (concept sets, anchor corpora), read as their editors saved them."""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path

from lm_eval_contrans.errors import ConTransError


def read_user_text(path: Path, argument: str) -> str:
    """The file's text: UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8", Windows editors), or
    UTF-16 with its mark (Excel's "Unicode Text"); anything else is refused naming the file."""
    data = path.read_bytes()
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        offending = data[error.start:error.start + 1]
        raise ConTransError(argument, f"{path} is not UTF-8 text (at byte offset {error.start}: {offending!r}); "
                                      "save it as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as read_text does: CRLF and CR line ends


def table_rows(path: Path, text: str, columns: tuple[str, ...], argument: str) -> list[dict[str, str]]:
    """The rows of a .csv (or, by its suffix, .tsv) file's text as {column: value} for `columns`, the header
    matched without case or surrounding spaces (a header typed in a spreadsheet may read "Positive" or
    "negative "); other columns are ignored, and a missing one is refused naming those found."""
    rows = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    found = {str(name).strip().lower(): name for name in rows.fieldnames or ()}
    if not set(columns) <= set(found):
        wanted = (f"a {columns[0]!r} column" if len(columns) == 1
                  else "the columns " + " and ".join(repr(column) for column in columns))
        raise ConTransError(argument, f"{path}: the header row must name {wanted} (found {rows.fieldnames})")
    return [{column: row[found[column]] or "" for column in columns} for row in rows]


def jsonl_records(path: Path, text: str, argument: str) -> list[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSON Lines text; a line that is not JSON is refused
    naming the file and the line, and so is a file that is one JSON array (a .json file's shape)."""
    refuse_json_array(path, text, argument)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise ConTransError(argument, f"{path}, line {number}: not valid JSON ({error.msg})") from None
    return records


def refuse_json_array(path: Path, text: str, argument: str) -> None:
    """Refuse JSON Lines text that is one JSON array (`[{...}, {...}]`, on one line or many): line by line it
    reads as a list, or as lines that are not JSON, neither of which names what the file is."""
    if not text.lstrip().startswith("["):
        return
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return  # lines that each open with "[", or broken JSON: the line-by-line reading names the line
    if isinstance(document, list):
        raise ConTransError(argument, f"{path} is one JSON array of {len(document)} item(s), not JSON Lines (one "
                                      "JSON object per line); rename it to .json, or write one object per line")
