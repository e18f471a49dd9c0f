"""Split long documents into overlapping token windows and map passage hits back to documents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from genq_search.data import Corpus, Results


@dataclass(frozen=True)
class Passage:
    id: str
    doc_id: str
    text: str


@dataclass(frozen=True)
class PassageWindows:
    """How the index splits documents (tokenizer, window length, stride), to split others the same way; ``key``
    identifies the split in settings hashes without hashing any text."""

    tokenizer: Any
    max_tokens: int
    stride: int
    key: str

    def split(self, corpus: Corpus) -> list[Passage]:
        return split_documents(corpus, self.tokenizer, self.max_tokens, self.stride)


def document_text(doc: dict[str, str]) -> str:
    """The text a document is retrieved by: title and body, as BEIR's dense models see it."""
    return f"{doc.get('title') or ''} {doc['text']}".strip()


def split_documents(corpus: Corpus, tokenizer: Any | None, max_tokens: int, stride: int) -> list[Passage]:
    """Cut each document into windows of at most ``max_tokens`` tokens overlapping by ``stride`` tokens.

    Passage ids are ``<doc_id>`` for single-passage documents and ``<doc_id>#<n>`` otherwise; passages after
    the first are prefixed with the title so each passage keeps its context. ``tokenizer=None`` (or
    ``max_tokens<=0``) keeps one passage per document.
    """
    if tokenizer is None or max_tokens <= 0:
        return [Passage(doc_id, doc_id, document_text(doc)) for doc_id, doc in corpus.items()]
    if stride >= max_tokens:
        raise ValueError(f"passage stride ({stride}) must be smaller than the passage length ({max_tokens})")
    budget = max_tokens - tokenizer.num_special_tokens_to_add()
    passages: list[Passage] = []
    ids = list(corpus)
    for start in tqdm(range(0, len(ids), 512), desc="split passages", unit_scale=512, leave=False, disable=len(ids) < 5000):
        batch = ids[start : start + 512]
        texts = [document_text(corpus[d]) for d in batch]
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        for i, (doc_id, text) in enumerate(zip(batch, texts, strict=True)):
            offsets = encoded["offset_mapping"][i]
            if len(offsets) <= budget:
                passages.append(Passage(doc_id, doc_id, text))
                continue
            title = corpus[doc_id].get("title") or ""
            for n, (first, last) in enumerate(_word_aligned_windows(encoded.word_ids(i), budget, stride)):
                chunk = text[offsets[first][0] : offsets[last][1]]
                if n > 0 and title:
                    chunk = f"{title} {chunk}"
                passages.append(Passage(f"{doc_id}#{n}", doc_id, chunk))
    return passages


def _word_aligned_windows(word_ids: list[int | None], budget: int, stride: int) -> list[tuple[int, int]]:
    """Token windows ``(first, last)`` of at most ``budget`` tokens that never cut a word in two."""
    n = len(word_ids)
    starts_word = [i == 0 or word_ids[i] != word_ids[i - 1] or word_ids[i] is None for i in range(n)]
    windows: list[tuple[int, int]] = []
    first = 0
    while True:
        end = min(first + budget, n)  # exclusive
        if end < n:
            cut = end
            while cut > first + 1 and not starts_word[cut]:
                cut -= 1
            end = cut if cut > first + 1 else end  # a single word longer than the budget is cut anyway
        windows.append((first, end - 1))
        if end >= n:
            return windows
        nxt = max(end - stride, first + 1)
        while nxt < end and not starts_word[nxt]:
            nxt += 1
        first = nxt


def max_passage(hits: dict[str, dict[str, float]], passage_to_doc: dict[str, str], k: int) -> Results:
    """Per query, score each document by its best passage and keep the top ``k`` documents."""
    results: Results = {}
    for qid, scored in hits.items():
        best: dict[str, float] = {}
        for pid, score in scored.items():
            doc_id = passage_to_doc[pid]
            if score > best.get(doc_id, float("-inf")):
                best[doc_id] = score
        results[qid] = dict(sorted(best.items(), key=lambda item: item[1], reverse=True)[:k])
    return results
