"""In-process backend: BM25 (rank_bm25) over documents, exact inner-product search over passage vectors (torch; GPU if present).

Persisted to a directory (``index.json``, ``passages.jsonl``, ``vectors.npy``, ``bm25.pkl``) and reloadable.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from genq_search.data import Corpus, Queries, Results, atomic_write, write_json
from genq_search.encoders import pick_device
from genq_search.engines.base import SearchBackend
from genq_search.errors import GenqError
from genq_search.passages import Passage, document_text, max_passage

logger = logging.getLogger(__name__)

SCORE_CHUNK_ROWS = 65_536  # passage vectors read (and moved to the device) at a time
SCORE_BLOCK_FLOATS = 1 << 26  # scores computed at once (256 MiB of float32): bounds exact search memory


class RegexTokenizer:
    """Lowercased regex tokens (default ``\\w+``); picklable, so it persists with the BM25 state."""

    def __init__(self, pattern: str = r"\w+", lowercase: bool = True):
        self.pattern, self.lowercase = pattern, lowercase
        self._regex = re.compile(pattern)

    def __call__(self, text: str) -> list[str]:
        return self._regex.findall(text.lower() if self.lowercase else text)

    def __getstate__(self) -> dict[str, object]:
        return {"pattern": self.pattern, "lowercase": self.lowercase}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(**state)  # type: ignore[misc]


class EmbeddedBackend(SearchBackend):
    name = "embedded"

    def __init__(self, token_pattern: str = r"\w+", k1: float | None = None, b: float = 0.75):
        self.tokenizer = RegexTokenizer(token_pattern)
        self.k1, self.b = 1.5 if k1 is None else k1, b
        self.doc_ids: list[str] = []
        self.bm25: object | None = None
        self.passage_ids: list[str] = []
        self.passage_doc: list[str] = []
        self.vectors: np.ndarray | None = None

    # -- indexing ----------------------------------------------------------------------------------------
    def index(self, corpus: Corpus, passages: Sequence[Passage], vectors: np.ndarray | None) -> None:
        from rank_bm25 import BM25Okapi

        self.doc_ids = list(corpus)
        tokenized = [self.tokenizer(document_text(corpus[d])) for d in tqdm(self.doc_ids, desc="BM25 tokenise", leave=False)]
        self.bm25 = BM25Okapi(tokenized, k1=self.k1, b=self.b)
        self.passage_ids = [p.id for p in passages]
        self.passage_doc = [p.doc_id for p in passages]
        if vectors is not None:
            if len(vectors) != len(passages):
                raise GenqError(f"{len(vectors)} vectors for {len(passages)} passages")
            self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def count(self) -> int:
        return len(self.doc_ids)

    # -- search ------------------------------------------------------------------------------------------
    def lexical_search(self, queries: Queries, k: int) -> Results:
        if self.bm25 is None:
            raise GenqError("the embedded index has no BM25 state: index documents first")
        results: Results = {}
        for qid, text in tqdm(queries.items(), desc="BM25 search", leave=False, disable=len(queries) < 50):
            scores = self.bm25.get_scores(self.tokenizer(text))  # type: ignore[attr-defined]
            top = _top_k(scores, k)
            results[qid] = {self.doc_ids[i]: float(scores[i]) for i in top}
        return results

    def vector_search(self, query_ids: Sequence[str], query_vectors: np.ndarray, k: int) -> Results:
        if self.vectors is None:
            raise GenqError("the embedded index has no vectors: index it with an encoder first")
        if query_vectors.shape[1] != self.vectors.shape[1]:
            raise GenqError(
                f"query vectors have dimension {query_vectors.shape[1]} but the index holds {self.vectors.shape[1]}"
                " (was it built with another model?)"
            )
        depth = min(len(self.passage_ids), k * self._passages_per_doc())
        best_scores, best_rows = exact_top_k(query_vectors.astype(np.float32), self.vectors, depth)
        hits = {
            qid: {self.passage_ids[r]: float(s) for r, s in zip(rows, scores, strict=True)}
            for qid, rows, scores in zip(query_ids, best_rows, best_scores, strict=True)
        }
        return max_passage(hits, dict(zip(self.passage_ids, self.passage_doc, strict=True)), k)

    def _passages_per_doc(self) -> int:
        return min(8, max(1, -(-len(self.passage_ids) // max(1, len(set(self.passage_doc))))) * 2)

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, directory: Path, info: dict[str, object] | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_write(directory / "bm25.pkl", "wb") as handle:
            pickle.dump({"bm25": self.bm25, "doc_ids": self.doc_ids, "tokenizer": self.tokenizer}, handle)
        with atomic_write(directory / "passages.jsonl") as handle:
            for pid, doc_id in zip(self.passage_ids, self.passage_doc, strict=True):
                handle.write(json.dumps({"id": pid, "doc_id": doc_id}, ensure_ascii=False) + "\n")
        if self.vectors is not None:
            with atomic_write(directory / "vectors.npy", "wb") as handle:
                np.save(handle, self.vectors)
        manifest = {
            "backend": self.name,
            "documents": len(self.doc_ids),
            "passages": len(self.passage_ids),
            "dim": None if self.vectors is None else int(self.vectors.shape[1]),
            "bm25": {"k1": self.k1, "b": self.b, "token_pattern": self.tokenizer.pattern},
            **(info or {}),
        }
        write_json(directory / "index.json", manifest)

    @classmethod
    def load(cls, directory: Path) -> EmbeddedBackend:
        directory = Path(directory)
        manifest_path = directory / "index.json"
        if not manifest_path.is_file():
            raise GenqError(f"{directory}: not an embedded index (no index.json)")
        manifest = json.loads(manifest_path.read_text())
        backend = cls(manifest["bm25"]["token_pattern"], manifest["bm25"]["k1"], manifest["bm25"]["b"])
        with (directory / "bm25.pkl").open("rb") as handle:
            state = pickle.load(handle)  # our own artifact, written by save()
        backend.bm25, backend.doc_ids, backend.tokenizer = state["bm25"], state["doc_ids"], state["tokenizer"]
        rows = [json.loads(line) for line in (directory / "passages.jsonl").open(encoding="utf-8")]
        backend.passage_ids = [r["id"] for r in rows]
        backend.passage_doc = [r["doc_id"] for r in rows]
        if (directory / "vectors.npy").is_file():
            backend.vectors = np.load(directory / "vectors.npy", mmap_mode="r")
        return backend


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first (ties broken by index for determinism)."""
    k = min(k, len(scores))
    candidates = np.argpartition(-scores, k - 1)[:k]
    return candidates[np.lexsort((candidates, -scores[candidates]))]


def exact_top_k(queries: np.ndarray, matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of each query against all rows, best first (ties by row index).

    torch's BLAS product and ``topk`` on the GPU when one is present, else on the CPU. Memory stays bounded whatever
    the corpus and query counts: ``matrix`` (possibly a memory map) is read in chunks of ``SCORE_CHUNK_ROWS`` rows and
    the queries in blocks, so at most ``SCORE_BLOCK_FLOATS`` scores exist at once; a running top-``k`` per query is
    merged with each chunk's."""
    import torch

    device = torch.device(pick_device())
    n_queries, k = len(queries), min(k, len(matrix))
    if k == 0 or n_queries == 0:
        return np.zeros((n_queries, 0), dtype=np.float32), np.zeros((n_queries, 0), dtype=np.int64)
    query_t = torch.from_numpy(np.array(queries, dtype=np.float32)).to(device)
    best_scores = torch.full((n_queries, 0), -torch.inf, device=device)
    best_rows = torch.zeros((n_queries, 0), dtype=torch.int64, device=device)
    with torch.inference_mode():
        for start in range(0, len(matrix), SCORE_CHUNK_ROWS):
            chunk = torch.from_numpy(np.array(matrix[start : start + SCORE_CHUNK_ROWS], dtype=np.float32)).to(device)
            block = max(1, SCORE_BLOCK_FLOATS // len(chunk))
            merged_scores, merged_rows = [], []
            for q in range(0, n_queries, block):
                top_scores, top_rows = torch.topk(query_t[q : q + block] @ chunk.T, min(k, len(chunk)), dim=1)
                scores = torch.cat([best_scores[q : q + block], top_scores], dim=1)
                rows = torch.cat([best_rows[q : q + block], top_rows + start], dim=1)
                keep_scores, keep = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                merged_scores.append(keep_scores)
                merged_rows.append(torch.gather(rows, 1, keep))
            best_scores, best_rows = torch.cat(merged_scores), torch.cat(merged_rows)
    scores_np, rows_np = best_scores.cpu().numpy(), best_rows.cpu().numpy()
    order = np.lexsort((rows_np, -scores_np), axis=1)
    return np.take_along_axis(scores_np, order, axis=1), np.take_along_axis(rows_np, order, axis=1)
