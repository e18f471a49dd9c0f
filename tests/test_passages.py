from pathlib import Path

import pytest
from transformers import AutoTokenizer

from genq_search.passages import max_passage, split_documents


def test_split_windows_overlap_and_respect_the_budget(wordpiece_tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    words = " ".join(f"token{i}" for i in range(200))
    corpus = {"long": {"title": "Title", "text": words}, "short": {"title": "", "text": "a short document"}}
    passages = split_documents(corpus, tokenizer, max_tokens=32, stride=8)
    short = [p for p in passages if p.doc_id == "short"]
    assert [p.id for p in short] == ["short"] and short[0].text == "a short document"
    long = [p for p in passages if p.doc_id == "long"]
    assert len(long) > 3 and [p.id for p in long][:2] == ["long#0", "long#1"]
    budget = 32 - tokenizer.num_special_tokens_to_add()
    for p in long:
        body = p.text.removeprefix("Title ") if p.id != "long#0" else p.text
        assert len(tokenizer(body, add_special_tokens=False)["input_ids"]) <= budget
    assert long[1].text.startswith("Title ")  # later passages keep the title
    # consecutive windows share text (the overlap), and together they cover the whole document
    first_words, second_words = long[0].text.split(), long[1].text.split()[1:]
    assert set(first_words) & set(second_words)
    covered = {w for p in long for w in p.text.split()}
    assert {f"token{i}" for i in range(200)} <= covered


def test_no_split_keeps_one_passage_per_document() -> None:
    passages = split_documents({"d": {"title": "T", "text": "body"}}, None, 0, 0)
    assert [(p.id, p.text) for p in passages] == [("d", "T body")]


def test_stride_must_be_smaller_than_length(wordpiece_tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    with pytest.raises(ValueError, match="stride"):
        split_documents({"d": {"title": "", "text": "x"}}, tokenizer, 16, 16)


def test_max_passage_scores_documents_by_their_best_passage() -> None:
    hits = {"q": {"a#0": 0.2, "a#1": 0.9, "b": 0.5, "c#0": 0.1}}
    mapping = {"a#0": "a", "a#1": "a", "b": "b", "c#0": "c"}
    assert max_passage(hits, mapping, k=2) == {"q": {"a": 0.9, "b": 0.5}}
