"""Encoding speed and quality side by side: PyTorch (fp32, bf16) vs ONNX Runtime (fp32, int8[, fp16]).

    python bench/encode.py --bundle runs/bundles/minilm        # exports the bundle first if it is missing

Each variant runs in its own process (clean peak RSS) on the same machine, one after the other: it encodes every
SciFact document (title + text, truncated to 256 tokens) -> docs/s and dense nDCG@10 on the test queries, then
measures queries at batch 1 (latency p50/p95) and batch 64 (queries/s). Writes bench/results/encode.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import SCIFACT, write_results

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
VARIANTS = ["torch-fp32", "torch-bf16", "ort-fp32", "ort-int8", "ort-fp16"]


def child(variant: str, bundle: Path, data: Path, threads: int | None) -> dict:
    import numpy as np
    import torch

    from genq_search.backends.embedded import EmbeddedBackend
    from genq_search.data import load_collection, read_queries
    from genq_search.encoders import SentenceTransformerEncoder
    from genq_search.evaluate import evaluate
    from genq_search.export import OnnxEncoder
    from genq_search.passages import Passage, document_text

    if threads:
        torch.set_num_threads(threads)
    if variant.startswith("torch"):
        encoder = SentenceTransformerEncoder(MODEL, device="cpu")
        if variant == "torch-bf16":
            encoder.model = encoder.model.to(torch.bfloat16)
    else:
        encoder = OnnxEncoder(bundle, variant=variant.removeprefix("ort-"), provider="cpu", threads=threads)
    collection = load_collection(data)
    ids = list(collection.corpus)
    texts = [document_text(collection.corpus[d]) for d in ids]
    encoder.encode_passages(texts[:32], progress=False)  # warm-up
    start = time.perf_counter()
    with torch.inference_mode():
        vectors = encoder.encode_passages(texts, batch_size=64, progress=True)
    encode_s = time.perf_counter() - start
    vectors = vectors.astype(np.float32)
    backend = EmbeddedBackend()
    backend.index({d: collection.corpus[d] for d in ids}, [Passage(d, d, "") for d in ids], vectors)
    qids = list(collection.queries)
    results = backend.vector_search(qids, encoder.encode_queries([collection.queries[q] for q in qids]).astype(np.float32), 100)
    metrics = evaluate(collection.qrels, results, ["ndcg@10", "recall@100"])
    queries = list(read_queries(data / "queries.jsonl").values())[:300]
    latencies = []
    for text in queries[:200]:
        t0 = time.perf_counter()
        encoder.encode_queries([text], batch_size=1)
        latencies.append(1000 * (time.perf_counter() - t0))
    t0 = time.perf_counter()
    encoder.encode_queries(queries, batch_size=64)
    batch_qps = len(queries) / (time.perf_counter() - t0)
    q = statistics.quantiles(latencies, n=100)
    return {
        "docs_per_s": len(texts) / encode_s, "encode_s": encode_s, "metrics": metrics,
        "query_latency_ms_batch1": {"p50": q[49], "p95": q[94]}, "queries_per_s_batch64": batch_qps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("runs/bundles/minilm"))
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.bundle, args.data, args.threads)))
        return
    started = time.perf_counter()
    if not (args.bundle / "manifest.json").is_file():
        from genq_search.export import export_bundle

        export_bundle(MODEL, args.bundle, profile="all")
    measured = {}
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--child", variant, "--bundle", str(args.bundle), "--data", str(args.data)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{variant}: failed\n{proc.stderr[-1500:]}")
            continue
        measured[variant] = json.loads(line.removeprefix("RESULT "))
        m = measured[variant]
        print(f"{variant:>11}: {m['docs_per_s']:6.1f} docs/s  nDCG@10 {100 * m['metrics']['ndcg@10']:.2f}  "
              f"q-latency p50 {m['query_latency_ms_batch1']['p50']:.1f} ms  {m['queries_per_s_batch64']:.0f} q/s  "
              f"RSS {m['peak_rss_mb']:.0f} MB", flush=True)
    base = measured.get("torch-fp32", {}).get("docs_per_s")
    print("\n| variant | docs/s | × torch-fp32 | nDCG@10 | Recall@100 | query p50 ms (b=1) | p95 ms | queries/s (b=64) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, m in measured.items():
        ratio = f"{m['docs_per_s'] / base:.2f}" if base else "-"
        print(f"| {variant} | {m['docs_per_s']:.1f} | {ratio} | {100 * m['metrics']['ndcg@10']:.2f} | "
              f"{100 * m['metrics']['recall@100']:.2f} | {m['query_latency_ms_batch1']['p50']:.1f} | "
              f"{m['query_latency_ms_batch1']['p95']:.1f} | {m['queries_per_s_batch64']:.0f} | {m['peak_rss_mb']:.0f} |")
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    path = write_results("encode", {
        "dataset": "scifact", "split": "test", "wall_s": time.perf_counter() - started,
        "runs": [{"name": f"dense-zeroshot-{v}", "backend": "embedded", "model": MODEL, "metrics": m["metrics"]} for v, m in measured.items()],
        "throughput": {"encode_docs_per_s": {v: m["docs_per_s"] for v, m in measured.items()},
                       "queries_per_s_batch64": {v: m["queries_per_s_batch64"] for v, m in measured.items()},
                       "ratio_vs_torch_fp32": {v: m["docs_per_s"] / base for v, m in measured.items()} if base else {}},
        "latency_ms": {f"query-encode-{v}": m["query_latency_ms_batch1"] for v, m in measured.items()},
        "peak_rss_mb": {v: m["peak_rss_mb"] for v, m in measured.items()},
        "parity": {v: e["parity"] for v, e in manifest["variants"].items()},
        "notes": ("All 5,183 SciFact documents (title + text, truncated to 256 tokens, batch 64, length-sorted), one "
                  "process per variant, run one after another on the same machine. torch = sentence-transformers "
                  "on CPU; ort = ONNX Runtime CPU provider on the exported bundle (fp32 with ORT transformer fusions; "
                  "int8 = dynamic per-channel quantisation of MatMul/Attention; fp16 shown for completeness, it is the "
                  "GPU variant). nDCG@10 is dense-only with one truncated passage per document."),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
