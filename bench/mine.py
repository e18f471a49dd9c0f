"""Exact top-k search at corpus scale: 10,000 queries against every SciFact passage, the way `mine` and the embedded
backend search, before and after the torch path.

    python bench/mine.py [--queries 10000] [--k 60] [--scale-rows 200000]

SciFact is split into the index's 256-token windows and encoded with all-MiniLM-L6-v2 (bf16, cached under
--cache); the queries are 10,000 seeded stand-ins for generated queries (random 6-16-word spans of random abstracts,
encoded by the same model: generating 10K real queries takes hours on this CPU, and search cost does not depend on
the text). Each implementation runs in its own process (clean peak RSS), one after the other:

- `numpy-chunked`: the previous implementation (kept here as the reference; NumPy product, argpartition over the
  concatenated running top-k and a materialised row-index matrix);
- `torch-exact`: `genq_search.engines.embedded.exact_top_k` (torch product and topk, queries and rows in blocks).

Both must return the same rows. A scaling case (--scale-rows passages: SciFact's vectors repeated with noise, from a
memory map) shows that the torch path's memory does not grow with the query count x corpus size. Writes
bench/results/mine.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, SCIFACT, peak_rss_mb, write_results

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def numpy_chunked(queries, matrix, k, chunk_rows=65_536):  # the implementation before the torch path, verbatim
    import numpy as np

    n_queries = len(queries)
    best_scores = np.full((n_queries, 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((n_queries, 0), dtype=np.int64)
    for start in range(0, len(matrix), chunk_rows):
        chunk = np.asarray(matrix[start : start + chunk_rows], dtype=np.float32)
        scores = np.concatenate([best_scores, queries @ chunk.T], axis=1)
        rows = np.concatenate([best_rows, np.broadcast_to(np.arange(start, start + len(chunk)), (n_queries, len(chunk)))], axis=1)
        keep = min(k, scores.shape[1])
        part = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        best_scores = np.take_along_axis(scores, part, axis=1)
        best_rows = np.take_along_axis(rows, part, axis=1)
    order = np.lexsort((best_rows, -best_scores), axis=1)
    return np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(best_rows, order, axis=1)


def prepare(cache: Path, n_queries: int, scale_rows: int) -> dict:
    """Passage and query vectors (and the scaling matrix) on disk, encoded once."""
    import numpy as np

    from genq_search.data import load_collection
    from genq_search.encoders import SentenceTransformerEncoder
    from genq_search.passages import split_documents

    cache.mkdir(parents=True, exist_ok=True)
    info_file = cache / "info.json"
    cached = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if cached.get("queries") == n_queries and cached.get("scale_rows") == scale_rows:
        return cached
    corpus = load_collection(SCIFACT).corpus
    encoder = SentenceTransformerEncoder(MODEL, device="cpu", dtype="bfloat16")
    passages = split_documents(corpus, encoder.tokenizer, encoder.max_seq_length, 32)
    np.save(cache / "passages.npy", encoder.encode_passages([p.text for p in passages], batch_size=64).astype(np.float32))
    rng = random.Random(0)
    words = [corpus[d]["text"].split() for d in corpus]
    words = [w for w in words if len(w) >= 16]
    texts = []
    for _ in range(n_queries):
        doc = rng.choice(words)
        length = rng.randint(6, 16)
        start = rng.randrange(len(doc) - length + 1)
        texts.append(" ".join(doc[start : start + length]))
    np.save(cache / "queries.npy", encoder.encode_queries(texts, batch_size=256).astype(np.float32))
    base = np.load(cache / "passages.npy")
    big = np.lib.format.open_memmap(cache / "scale.npy", mode="w+", dtype=np.float32, shape=(scale_rows, base.shape[1]))
    noise = np.random.default_rng(0)
    for start in range(0, scale_rows, len(base)):
        rows = min(len(base), scale_rows - start)
        block = base[:rows] + noise.normal(scale=0.05, size=(rows, base.shape[1])).astype(np.float32)
        big[start : start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    big.flush()
    info = {"passages": len(passages), "documents": len(corpus), "queries": n_queries, "scale_rows": scale_rows,
            "dim": int(base.shape[1])}
    info_file.write_text(json.dumps(info))
    return info


def child(implementation: str, matrix_file: Path, queries_file: Path, k: int, rows_out: Path) -> dict:
    import numpy as np
    import torch

    from genq_search.engines.embedded import exact_top_k

    queries = np.load(queries_file)
    matrix = np.load(matrix_file, mmap_mode="r")
    search = numpy_chunked if implementation == "numpy-chunked" else exact_top_k
    search(queries[:100], matrix, k)  # warm-up (BLAS threads, torch init)
    start = time.perf_counter()
    _, rows = search(queries, matrix, k)
    seconds = time.perf_counter() - start
    np.save(rows_out, rows)
    return {"seconds": seconds, "queries_per_s": len(queries) / seconds, "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads(), "rows": int(matrix.shape[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=60, help="depth (mine asks top_k + the positives: 50 + a few)")
    parser.add_argument("--scale-rows", type=int, default=200_000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/genq-bench-mine"))
    parser.add_argument("--child", nargs=4, metavar=("IMPL", "MATRIX", "QUERIES", "ROWS_OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, matrix, queries, rows_out = args.child
        print(json.dumps(child(impl, Path(matrix), Path(queries), args.k, Path(rows_out))))
        return
    import numpy as np

    started = time.perf_counter()
    info = prepare(args.cache, args.queries, args.scale_rows)
    results: dict[str, dict] = {}
    cases = [("scifact", args.cache / "passages.npy", ["numpy-chunked", "torch-exact"]),
             ("scale", args.cache / "scale.npy", ["torch-exact"])]  # numpy-chunked would need ~k+65,536 x 12 bytes per query
    for case, matrix, implementations in cases:
        for impl in implementations:
            out = args.cache / f"rows-{case}-{impl}.npy"
            proc = subprocess.run([sys.executable, __file__, "--k", str(args.k), "--child", impl, str(matrix),
                                   str(args.cache / "queries.npy"), str(out)], capture_output=True, text=True, check=True)
            results[f"{case}/{impl}"] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(case, impl, results[f"{case}/{impl}"], flush=True)
    old, new = np.load(args.cache / "rows-scifact-numpy-chunked.npy"), np.load(args.cache / "rows-scifact-torch-exact.npy")
    same_rows = float((old == new).mean())
    ratio = results["scifact/torch-exact"]["queries_per_s"] / results["scifact/numpy-chunked"]["queries_per_s"]
    path = write_results("mine", {
        "dataset": "scifact", "wall_s": time.perf_counter() - started,
        "throughput": {"search_queries_per_s": {name: r["queries_per_s"] for name, r in results.items()}},
        "mine": {**info, "k": args.k, "results": results, "same_rows_fraction": same_rows, "torch_vs_numpy": ratio},
        "notes": (f"{args.queries} query vectors (spans of SciFact abstracts standing in for generated queries) against "
                  f"{info['passages']} SciFact passage vectors (256-token windows, all-MiniLM-L6-v2), exact inner "
                  f"product top-{args.k}; each implementation in its own process; 'scale' = {info['scale_rows']} rows "
                  "(SciFact's vectors repeated with noise) read from a memory map (its pages count in peak RSS)."),
    })
    print(f"torch-exact {ratio:.2f}x numpy-chunked, same rows {same_rows:.4f}; wrote {path.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
