"""BEIR reading, atomic writes and stage manifests; every kind of bad input is in test_bad_input.py."""

import json
from pathlib import Path

import pytest

from genq_search.data import (
    atomic_write,
    iter_documents,
    load_collection,
    mark_stage_complete,
    read_corpus,
    stage_is_complete,
)
from genq_search.errors import InputError


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


def test_documents_stream_lazily(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.jsonl", '{"_id": "a", "text": "x"}\nnot json\n')
    stream = iter_documents(path)
    assert next(stream).id == "a"  # the bad line is only reached when read
    with pytest.raises(InputError, match=":2:"):
        next(stream)


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
