from pathlib import Path

import numpy as np
import pytest

from genq_search.data import load_collection
from genq_search.engines.embedded import EmbeddedBackend, exact_top_k
from genq_search.errors import GenqError
from genq_search.passages import Passage


def random_index(n_docs: int = 50, dim: int = 8, seed: int = 0) -> tuple[EmbeddedBackend, np.ndarray, list[Passage]]:
    rng = np.random.default_rng(seed)
    corpus = {f"d{i}": {"title": "", "text": f"document number {i} word{i % 7}"} for i in range(n_docs)}
    passages = [Passage(f"d{i}#{j}", f"d{i}", "x") for i in range(n_docs) for j in range(2)]
    vectors = rng.normal(size=(len(passages), dim)).astype(np.float32)
    backend = EmbeddedBackend()
    backend.index(corpus, passages, vectors)
    return backend, vectors, passages


def test_exact_top_k_matches_brute_force_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from genq_search.engines import embedded

    monkeypatch.setattr(embedded, "SCORE_CHUNK_ROWS", 7)  # force many chunks (one shorter than k)...
    monkeypatch.setattr(embedded, "SCORE_BLOCK_FLOATS", 14)  # ...and blocks of two queries
    rng = np.random.default_rng(1)
    matrix, queries = rng.normal(size=(53, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    scores, rows = exact_top_k(queries, matrix, 10)
    brute = np.argsort(-(queries @ matrix.T), axis=1)[:, :10]
    np.testing.assert_array_equal(rows, brute)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ matrix.T, brute, axis=1), rtol=1e-5)
    assert exact_top_k(queries, matrix[:3], 10)[1].shape == (5, 3)  # k above the row count: every row
    assert exact_top_k(queries, matrix[:0], 10)[1].shape == (5, 0)


def test_exact_top_k_breaks_ties_by_row() -> None:
    matrix = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    _, rows = exact_top_k(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), matrix, 3)
    assert rows.tolist() == [[1, 3, 4], [0, 2, 4]]


def test_vector_search_is_max_passage_and_exact() -> None:
    backend, vectors, passages = random_index()
    query = np.random.default_rng(5).normal(size=(1, vectors.shape[1])).astype(np.float32)
    results = backend.vector_search(["q"], query, k=5)["q"]
    per_doc: dict[str, float] = {}
    for p, s in zip(passages, (vectors @ query[0]).tolist(), strict=True):
        per_doc[p.doc_id] = max(per_doc.get(p.doc_id, -np.inf), s)
    expected = sorted(per_doc.items(), key=lambda x: -x[1])[:5]
    assert list(results) == [d for d, _ in expected]
    assert list(results.values()) == pytest.approx([s for _, s in expected], rel=1e-5)


def test_bm25_finds_the_matching_document(beir_dir: Path) -> None:
    collection = load_collection(beir_dir)
    backend = EmbeddedBackend()
    backend.index(collection.corpus, [], None)
    results = backend.lexical_search({"q": "memory safety rust"}, k=3)
    assert next(iter(results["q"])) == "d4"
    assert len(results["q"]) == 3


def test_persistence_round_trip(tmp_path: Path) -> None:
    backend, vectors, _ = random_index()
    backend.save(tmp_path / "idx", {"model": "m"})
    loaded = EmbeddedBackend.load(tmp_path / "idx")
    query = vectors[:3] + 0.01
    assert loaded.vector_search(["a", "b", "c"], query, 10) == backend.vector_search(["a", "b", "c"], query, 10)
    assert loaded.lexical_search({"q": "word3 number"}, 5) == backend.lexical_search({"q": "word3 number"}, 5)
    assert loaded.count() == 50


def test_wrong_dimension_and_missing_index_are_clear_errors(tmp_path: Path) -> None:
    backend, _, _ = random_index(dim=8)
    with pytest.raises(GenqError, match="dimension 4 but the index holds 8"):
        backend.vector_search(["q"], np.ones((1, 4), dtype=np.float32), 3)
    with pytest.raises(GenqError, match="not an embedded index"):
        EmbeddedBackend.load(tmp_path)
    with pytest.raises(GenqError, match="no vectors"):
        EmbeddedBackend().vector_search(["q"], np.ones((1, 4), dtype=np.float32), 3)


def test_bfloat16_encoder_is_close_to_float32_and_cached_apart(tiny_bi_encoder: Path) -> None:
    from genq_search.encoders import load_encoder

    texts = ["json parsing in python", "open a file for reading", "sort a list in place"]
    full = load_encoder(str(tiny_bi_encoder), "cpu")
    half = load_encoder(str(tiny_bi_encoder), "cpu", dtype="bfloat16")
    a, b = full.encode_passages(texts, progress=False), half.encode_passages(texts, progress=False)
    assert b.dtype == np.float32 and a.shape == b.shape
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosines.min() > 0.99 and not np.array_equal(a, b)
    assert full.fingerprint() != half.fingerprint()  # cached embeddings of one are never read as the other's
    with pytest.raises(GenqError, match="unknown encoder dtype"):
        load_encoder(str(tiny_bi_encoder), "cpu", dtype="float8")
    with pytest.raises(GenqError, match="float16 needs a GPU"):
        load_encoder(str(tiny_bi_encoder), "cpu", dtype="float16")


def test_prefetched_keeps_order_and_raises_where_the_failing_item_is() -> None:
    import threading

    from genq_search.encoders import prefetched

    threads = set()

    def square(x: int) -> int:
        threads.add(threading.current_thread().name)
        if x == 7:
            raise ValueError("item 7")
        return x * x

    assert list(prefetched(range(7), square, ahead=3)) == [x * x for x in range(7)]
    assert threads and all(name.startswith("prefetch") for name in threads)  # computed off the calling thread
    seen = []
    with pytest.raises(ValueError, match="item 7"):
        for value in prefetched(range(10), square):
            seen.append(value)  # noqa: PERF402 (the items before the failing one)
    assert seen == [x * x for x in range(7)]


def test_the_gpu_encode_loop_gives_the_library_vectors(tiny_bi_encoder: Path) -> None:
    """The loop a GPU runs (tokenised ahead, vectors kept on the device until the end), run here on the CPU: the vectors
    of sentence-transformers' own encode, in the caller's order, for every batch split."""
    from genq_search.encoders import load_encoder

    texts = [f"document {i} " + "word " * (i * 7 % 23) for i in range(37)] + [""]
    encoder = load_encoder(str(tiny_bi_encoder), "cpu")
    expected = encoder.encode_passages(texts, batch_size=8, progress=False)
    for batch_size in (1, 5, 64):
        got = encoder._encode_on_device(texts, batch_size, progress=False)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=2e-6)
    assert encoder._encode_on_device([], 8, progress=False).shape == (0, encoder.dim)
