"""Concept-set and anchor-corpus files: shipped content and validation of user files."""

from __future__ import annotations

import json

import pytest

from lm_eval_contrans.anchors import load_anchor_texts
from lm_eval_contrans.concepts import load_concept_set, shipped_concepts
from lm_eval_contrans.errors import ConTransError


def test_shipped_sentiment_set_is_paired_and_large_enough():
    concept = load_concept_set("sentiment")
    assert "sentiment" in shipped_concepts()
    assert len(concept) >= 100 and len(concept.positives) == len(concept.negatives)
    assert len(set(concept.positives)) == len(concept) and not set(concept.positives) & set(concept.negatives)
    assert concept.instruction and len(concept.pairs_hash) == 64


def test_yaml_and_jsonl_files_load_and_hash_by_content(tmp_path):
    pairs = [{"positive": "good day", "negative": "bad day"}, {"positive": "kind words", "negative": "cruel words"}]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(pair) for pair in pairs) + "\n\n")
    yaml_file = tmp_path / "other.yaml"
    yaml_file.write_text("name: mood\npairs:\n" + "".join(
        f"  - positive: {p['positive']}\n    negative: {p['negative']}\n" for p in pairs))
    from_jsonl, from_yaml = load_concept_set(str(jsonl)), load_concept_set(yaml_file)
    assert from_jsonl.name == "mine" and from_yaml.name == "mood"
    assert from_jsonl.positives == ("good day", "kind words")
    assert from_jsonl.pairs_hash == from_yaml.pairs_hash


def test_pairs_written_by_other_tools_load(tmp_path):
    """A JSON list of pairs (as a repeng dataset is saved), and CSV/TSV with named columns in any order."""
    pairs = [{"positive": "good day, all told", "negative": "bad day"}, {"positive": "kind words", "negative": "cruel words"}]
    (tmp_path / "repeng.json").write_text(json.dumps(pairs))
    (tmp_path / "sheet.csv").write_text('id,negative,positive\n1,bad day,"good day, all told"\n2,cruel words,kind words\n')
    (tmp_path / "sheet.tsv").write_text("positive\tnegative\ngood day, all told\tbad day\nkind words\tcruel words\n")
    loaded = [load_concept_set(str(tmp_path / name)) for name in ("repeng.json", "sheet.csv", "sheet.tsv")]
    assert [concept.positives for concept in loaded] == [("good day, all told", "kind words")] * 3
    assert len({concept.pairs_hash for concept in loaded}) == 1 and loaded[1].name == "sheet"


def test_pairs_saved_by_a_spreadsheet_or_a_windows_editor_load(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark and ends lines with CRLF; a header typed by hand
    may be capitalised; a file name may be upper-case. Before, the mark made the first column
    '\ufeffpositive' and the file was refused naming a column that looked right."""
    expected = load_concept_set(str(_write_pairs(tmp_path / "plain.jsonl")))
    mark = b"\xef\xbb\xbf"
    (tmp_path / "excel.csv").write_bytes(mark + b'Positive,Negative \r\n"good day, all told",bad day\r\nkind words,cruel words\r\n')
    (tmp_path / "NOTEPAD.JSONL").write_bytes(mark + (tmp_path / "plain.jsonl").read_bytes().replace(b"\n", b"\r\n"))
    (tmp_path / "unicode_text.tsv").write_text("Positive\tNegative\r\ngood day, all told\tbad day\r\nkind words\tcruel words\r\n",
                                               encoding="utf-16")  # Excel's "Unicode Text": UTF-16 with its mark
    for name in ("excel.csv", "NOTEPAD.JSONL", "unicode_text.tsv"):
        loaded = load_concept_set(str(tmp_path / name))
        assert (loaded.positives, loaded.negatives, loaded.pairs_hash) == (expected.positives, expected.negatives, expected.pairs_hash)


def _write_pairs(path):
    pairs = [{"positive": "good day, all told", "negative": "bad day"}, {"positive": "kind words", "negative": "cruel words"}]
    path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    return path


@pytest.mark.parametrize("content, suffix, message", [
    ("pairs: []\n", ".yaml", "has no pairs"),
    ("", ".jsonl", "has no pairs"),
    ("name: x\n", ".yaml", "must be a list of pairs or a mapping with a 'pairs' list"),
    ("positive,negativ\na,b\n", ".csv", "the header row must name the columns 'positive' and 'negative'"),
    ('positive,negative\na,""\n', ".csv", "pair 1: missing or empty 'negative'"),
    ("pairs:\n  - positive: only one side\n", ".yaml", "pair 1: missing or empty 'negative'"),
    ("pairs:\n  - positive: a\n    negative: '  '\n", ".yaml", "pair 1: missing or empty 'negative'"),
    ("pairs:\n  - {positive: a, negative: b, extra: c}\n", ".yaml", "expected exactly the keys"),
    ("pairs: [unclosed\n", ".yaml", "is not valid YAML or JSON"),
    ("positive,negative\ncaf\xe9,bar\n".encode("latin-1"), ".csv", r"is not UTF-8 text \(at byte offset 21: b'\\xe9'\); save it as UTF-8"),
    ('{"positive": "a", "negative": "b"}\n{"positive": "a"\n', ".jsonl", "line 2: not valid JSON"),
    ('{"positive": "a", "negative": 3}\n', ".jsonl", r"pair 1: the 'negative' text is 3 \(int\), not a string; quote it"),
])
def test_malformed_concept_files_are_refused(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(ConTransError, match=f"^concept: .*{message}"):
        load_concept_set(str(path))


def test_unknown_concept_lists_the_shipped_ones():
    with pytest.raises(ConTransError, match="unknown concept 'kindness'.*Shipped concepts: .*sentiment"):
        load_concept_set("kindness")


def test_default_anchor_corpus_is_big_enough_and_user_files_load(tmp_path):
    texts, name = load_anchor_texts(None)
    assert name == "default" and len(texts) >= 2 * 640 and len(set(texts)) == len(texts)
    txt = tmp_path / "a.txt"
    txt.write_text("one text\n\n  two text  \n")
    assert load_anchor_texts(str(txt))[0] == ["one text", "two text"]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "alpha"}\n{"text": "beta"}\n')
    assert load_anchor_texts(str(jsonl))[0] == ["alpha", "beta"]
    jsonl.write_text('{"body": "alpha"}\n')
    with pytest.raises(ConTransError, match="^anchors: .*line 1: expected an object with a 'text' string"):
        load_anchor_texts(str(jsonl))
    with pytest.raises(ConTransError, match="^anchors: anchor corpus not found"):
        load_anchor_texts(str(tmp_path / "missing.txt"))
    mark = "\ufeff"  # a byte-order mark, as Windows editors save UTF-8, is not part of the first text
    (tmp_path / "windows.txt").write_text(mark + "one text\r\ntwo text\r\n", encoding="utf-8")
    (tmp_path / "WINDOWS.JSONL").write_text(mark + '{"text": "alpha"}\r\n{"text": "beta"}\r\n', encoding="utf-8")
    assert load_anchor_texts(str(tmp_path / "windows.txt"))[0] == ["one text", "two text"]
    assert load_anchor_texts(str(tmp_path / "WINDOWS.JSONL"))[0] == ["alpha", "beta"]
    # written by other tools: the same texts from a JSON list (of texts or of records) and a sheet's text column
    (tmp_path / "list.json").write_text(json.dumps(["alpha", "beta"]))
    (tmp_path / "records.json").write_text(json.dumps([{"text": "alpha", "id": 1}, {"text": "beta", "id": 2}], indent=2))
    (tmp_path / "sheet.csv").write_text('id,Text\n1,alpha\n2,"beta"\n')
    for name in ("list.json", "records.json", "sheet.csv"):
        assert load_anchor_texts(str(tmp_path / name))[0] == ["alpha", "beta"], name
    (tmp_path / "bad.json").write_text('{"text": "alpha"}')
    with pytest.raises(ConTransError, match="^anchors: .*expected a JSON list of texts"):
        load_anchor_texts(str(tmp_path / "bad.json"))
    (tmp_path / "bad.csv").write_text("sentence\nalpha\n")
    with pytest.raises(ConTransError, match=r"^anchors: .*must name a 'text' column \(found \['sentence'\]\)"):
        load_anchor_texts(str(tmp_path / "bad.csv"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ConTransError, match="^anchors: .* holds no texts"):
        load_anchor_texts(str(tmp_path / "empty.txt"))
