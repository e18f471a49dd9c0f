"""The backend interface: index documents (text + passage vectors), lexical, vector and hybrid search.

All searches return document-level results in BEIR shape (``{qid: {doc_id: score}}``); a backend scores a
document by its best passage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from genq_search.data import Corpus, Queries, Results
from genq_search.fusion import FusionMethod, fuse
from genq_search.passages import Passage


class SearchBackend(ABC):
    name: str
    embeds_queries: bool = False  # True when the search engine embeds query texts itself (dense: ``neural_search``)

    def neural_search(self, queries: Queries, k: int) -> Results:
        """Dense search with the queries embedded by the engine (only where ``embeds_queries``)."""
        raise NotImplementedError(f"the {self.name} backend does not embed queries")

    @abstractmethod
    def index(self, corpus: Corpus, passages: Sequence[Passage], vectors: np.ndarray | None) -> None:
        """Index documents for lexical search and passage vectors (row i belongs to passages[i]) for dense search."""

    @abstractmethod
    def lexical_search(self, queries: Queries, k: int) -> Results:
        """BM25 over title and text."""

    @abstractmethod
    def vector_search(self, query_ids: Sequence[str], query_vectors: np.ndarray, k: int) -> Results:
        """Exact or approximate inner-product search; a document scores as its best passage."""

    @abstractmethod
    def count(self) -> int:
        """Number of indexed documents."""

    def hybrid_search(
        self,
        queries: Queries,
        query_vectors: np.ndarray,
        k: int,
        method: FusionMethod = FusionMethod.RRF,
        weights: tuple[float, float] = (0.5, 0.5),
        rrf_k: int = 60,
        depth: int = 100,
    ) -> Results:
        """Client-side fusion of the top ``depth`` lexical and dense documents (weights: lexical, dense)."""
        lexical = self.lexical_search(queries, depth)
        dense = self.vector_search(list(queries), query_vectors, depth)
        return fuse([lexical, dense], method, list(weights), rrf_k=rrf_k, k=k)
