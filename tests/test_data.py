import json
from pathlib import Path

import pytest

from genq_search.data import (
    atomic_write,
    iter_documents,
    load_collection,
    mark_stage_complete,
    read_corpus,
    read_qrels,
    read_queries,
    stage_is_complete,
)
from genq_search.errors import GenqError, InputError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_load_collection_reads_beir_folder(beir_dir: Path) -> None:
    collection = load_collection(beir_dir)
    assert len(collection.corpus) == 6
    assert collection.corpus["d4"]["title"] == ""
    assert collection.queries == {"q1": "which animal purrs", "q2": "memory safe programming language", "q3": "caffeine drink"}
    assert collection.qrels["q2"] == {"d4": 1}


def test_custom_fields_and_numeric_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.jsonl", json.dumps({"id": 7, "headline": "H", "body": "B text"}) + "\n")
    assert read_corpus(path, "id", "headline", ["body"]) == {"7": {"title": "H", "text": "B text"}}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', r"docs.jsonl:2: malformed JSON"),
        ('{"text": "x"}\n', r"docs.jsonl:1: field '_id': missing"),
        ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', r"docs.jsonl:2: field '_id': duplicate id 'a'"),
        ('{"_id": "a", "text": "   "}\n', r"docs.jsonl:1: field 'text': is empty"),
        ('{"_id": "a", "text": ["x"]}\n', r"docs.jsonl:1: field 'text': expected a string, got list"),
        ('[1, 2]\n', r"docs.jsonl:1: expected a JSON object"),
        ("\n\n", r"docs.jsonl: no documents"),
    ],
)
def test_corpus_errors_name_file_line_and_field(tmp_path: Path, content: str, expected: str) -> None:
    path = write(tmp_path / "docs.jsonl", content)
    with pytest.raises(InputError, match=expected):
        read_corpus(path)


def test_documents_stream_lazily(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.jsonl", '{"_id": "a", "text": "x"}\nnot json\n')
    stream = iter_documents(path)
    assert next(stream).id == "a"  # the bad line is only reached when read
    with pytest.raises(InputError, match=":2:"):
        next(stream)


def test_duplicate_query_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "queries.jsonl", '{"_id": "q", "text": "a"}\n{"_id": "q", "text": "b"}\n')
    with pytest.raises(InputError, match="queries.jsonl:2: field '_id': duplicate id 'q'"):
        read_queries(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("qid\tdocid\tscore\nq\td\t1\n", "test.tsv:1: expected the header"),
        ("query-id\tcorpus-id\tscore\nq\td\n", "test.tsv:2: expected 3 tab-separated columns, got 2"),
        ("query-id\tcorpus-id\tscore\nq\td\thigh\n", "test.tsv:2: field 'score': score 'high' is not an integer"),
    ],
)
def test_qrels_errors(tmp_path: Path, content: str, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        read_qrels(write(tmp_path / "test.tsv", content))


def test_qrels_pointing_at_unknown_documents(beir_dir: Path) -> None:
    with (beir_dir / "qrels" / "test.tsv").open("a") as f:
        f.write("q1\tmissing-doc\t1\n")
    with pytest.raises(InputError, match=r"query 'q1' judges unknown document id\(s\) \['missing-doc'\]"):
        load_collection(beir_dir)


def test_missing_folder_and_split(beir_dir: Path) -> None:
    with pytest.raises(GenqError, match="not a directory"):
        load_collection(beir_dir / "nope")
    with pytest.raises(GenqError, match="train.tsv: file not found"):
        load_collection(beir_dir, split="train")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.txt"
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []
    with atomic_write(target) as handle:
        handle.write("whole")
    assert target.read_text() == "whole"


def test_stage_manifest_tracks_settings(tmp_path: Path) -> None:
    assert not stage_is_complete(tmp_path, "abc")
    mark_stage_complete(tmp_path, "abc", {"n": 1})
    assert stage_is_complete(tmp_path, "abc")
    assert not stage_is_complete(tmp_path, "changed-settings")


def test_bom_crlf_and_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"_id": "a", "text": "caf\xc3\xa9"}\r\n{"_id": "b", "text": "two"}\r\n')
    assert read_corpus(path) == {"a": {"title": "", "text": "café"}, "b": {"title": "", "text": "two"}}
    path.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"corpus.jsonl:2: not valid UTF-8: byte 0xe9 at byte offset 52 of the file"):
        read_corpus(path)


def test_qrels_in_trec_form_and_with_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "qrels.tsv"
    path.write_text("q1 0 d1 1\nq1 0 d2 0\nq2 Q0 d3 2\n")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    path.write_bytes(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n")
    assert read_qrels(path) == {"q1": {"d1": 1}}
    path.write_text("qid,doc,rel\nq1,d1,1\n")
    with pytest.raises(InputError, match="qrels.tsv:1: expected the header 'query-id<TAB>corpus-id<TAB>score'"):
        read_qrels(path)
