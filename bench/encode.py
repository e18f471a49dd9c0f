"""Encoding speed and quality side by side: PyTorch (fp32, bf16) vs ONNX Runtime (fp32, int8[, fp16]) vs OpenVINO
(fp32, bf16, static int8).

    python bench/encode.py --bundle runs/bundles/minilm        # exports the bundle first if it lacks a variant

The bundle is exported with the `all` profile, its parity sample (and openvino-int8's calibration set) the first 256
SciFact documents. Each variant runs in its own process (clean peak RSS) on the same machine, one after the other: it
encodes every SciFact document (title + text, truncated to 256 tokens) -> docs/s, mean cosine to PyTorch fp32's
vectors and dense nDCG@10 on the test queries, then measures queries at batch 1 (latency p50/p95) and batch 64
(queries/s). Writes bench/results/encode.json.

    python bench/encode.py --device cuda --batch-size 256      # on a GPU machine: its figures go to "gpu_run"

On a GPU the variants are ``st-fp32``/``st-fp16`` (sentence-transformers' own ``encode`` loop, the baseline),
``torch-fp32``/``torch-fp16``/``torch-bf16`` (this project's GPU loop: tokenised ahead in a thread, no per-batch
synchronisation) and ``ort-fp32``/``ort-fp16`` (ONNX Runtime's CUDA provider, IOBinding, fp16 checked on the GPU at load;
recorded as skipped where onnxruntime has no CUDA provider). ``tokenize`` measures the tokenizer alone (the ceiling).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, SCIFACT, commit, machine, peak_rss_mb, write_results

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
VARIANTS = ["torch-fp32", "torch-bf16", "ort-fp32", "ort-int8", "ort-fp16", "openvino-fp32", "openvino-bf16", "openvino-int8"]
GPU_VARIANTS = ["tokenize", "st-fp32", "st-fp16", "torch-fp32", "torch-fp16", "torch-bf16", "ort-fp32", "ort-fp16"]


class _LibraryEncode:
    """sentence-transformers' own ``encode`` loop on the encoder's model (the GPU baseline)."""

    def __init__(self, encoder):
        self.encoder = encoder

    def encode_passages(self, texts, batch_size=64, progress=True):
        return self.encoder.model.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True,
                                         normalize_embeddings=True)

    encode_queries = encode_passages


class _TokenizeOnly:
    """The tokenizer alone, batch by batch as the encoders call it: the docs/s no encoder can pass."""

    def __init__(self, tokenizer, max_length):
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode_passages(self, texts, batch_size=64, progress=True):
        import numpy as np

        for start in range(0, len(texts), batch_size):
            self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return np.zeros((len(texts), 1), dtype=np.float32)


def child(variant: str, bundle: Path, data: Path, threads: int | None, vectors_out: Path, device: str = "cpu",
          batch_size: int = 64) -> dict:
    import numpy as np
    import torch

    from genq_search.data import load_collection, read_queries
    from genq_search.encoders import SentenceTransformerEncoder
    from genq_search.engines.embedded import EmbeddedBackend
    from genq_search.evaluate import evaluate
    from genq_search.onnx_encoder import OnnxEncoder
    from genq_search.passages import Passage, document_text

    if threads:
        torch.set_num_threads(threads)
    dtypes = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
    kind, _, precision = variant.partition("-")
    if kind in {"torch", "st", "tokenize"}:
        encoder = SentenceTransformerEncoder(MODEL, device=device, dtype=dtypes.get(precision, "float32"))
        if kind == "st":
            encoder = _LibraryEncode(encoder)
        elif kind == "tokenize":
            encoder = _TokenizeOnly(encoder.tokenizer, encoder.max_seq_length)
    else:
        encoder = OnnxEncoder(bundle, variant=variant.removeprefix("ort-"), provider="cpu" if device == "cpu" else "cuda", threads=threads)
    collection = load_collection(data)
    ids = list(collection.corpus)
    texts = [document_text(collection.corpus[d]) for d in ids]
    encoder.encode_passages(texts[:32], progress=False)  # warm-up
    start = time.perf_counter()
    with torch.inference_mode():
        vectors = encoder.encode_passages(texts, batch_size=batch_size, progress=True)
    encode_s = time.perf_counter() - start
    if kind == "tokenize":
        return {"docs_per_s": len(texts) / encode_s, "encode_s": encode_s}
    vectors = vectors.astype(np.float32)
    np.save(vectors_out, vectors)
    # batch dependence: the first 200 documents encoded one per call (an ingest pipeline) vs in the batches above
    alone = np.vstack([encoder.encode_passages([t], batch_size=1, progress=False) for t in texts[:200]]).astype(np.float32)
    alone_cosine = (alone * vectors[:200]).sum(1) / np.linalg.norm(alone, axis=1) / np.linalg.norm(vectors[:200], axis=1)
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
        "alone_vs_batched_cosine": {"mean": float(alone_cosine.mean()), "min": float(alone_cosine.min())},
        "peak_rss_mb": peak_rss_mb(), **({"device_parity": encoder.device_parity} if getattr(encoder, "device_parity", None) else {}),
    }


def write_gpu_run(args: argparse.Namespace, measured: dict, skipped: dict, wall_s: float) -> Path:
    """Record a GPU run under ``gpu_run`` in encode.json, the CPU record left as it is (or start the file)."""
    import onnxruntime
    import torch

    path = RESULTS / "encode.json"
    record = json.loads(path.read_text()) if path.is_file() else {"benchmark": "encode"}
    record["gpu_run"] = {
        "machine": machine(torch.cuda.get_device_name() if torch.cuda.is_available() else None), "commit": commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "wall_s": wall_s, "torch": torch.__version__,
        "ort_providers_on_device": onnxruntime.get_available_providers(), "batch_size": args.batch_size,
        "throughput": {"encode_docs_per_s": {v: m["docs_per_s"] for v, m in measured.items()}},
        "latency_ms": {f"query-encode-{v}": m["query_latency_ms_batch1"] for v, m in measured.items() if "query_latency_ms_batch1" in m},
        "metrics": {v: m["metrics"] for v, m in measured.items() if "metrics" in m},
        "cosine_to_torch_fp32": {v: m["cosine_to_torch_fp32"] for v, m in measured.items() if "cosine_to_torch_fp32" in m},
        "device_parity": {v: m["device_parity"] for v, m in measured.items() if "device_parity" in m},
        "skipped": skipped,
        "notes": ("st-* = sentence-transformers' encode loop (the baseline); torch-* = this project's GPU loop (next batches "
                  "tokenised in a thread, pinned-memory copies, one synchronisation at the end); ort-* = ONNX Runtime's "
                  "CUDA provider with IOBinding; tokenize = the tokenizer alone. All SciFact documents truncated to 256 "
                  f"tokens, batch {args.batch_size}, one process per variant."),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("runs/bundles/minilm"))
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--variants", nargs="+", default=None, help="default: every CPU variant, or every GPU one with --device cuda")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine (its figures go to encode.json's gpu_run)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.variants = args.variants or (VARIANTS if args.device == "cpu" else GPU_VARIANTS)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.bundle, args.data, args.threads, args.vectors, args.device, args.batch_size)))
        return
    started = time.perf_counter()
    import numpy as np

    from genq_search.data import load_collection
    from genq_search.encoders import row_cosines
    from genq_search.export import export_bundle
    from genq_search.passages import document_text

    manifest_path = args.bundle / "manifest.json"
    wanted = {v.removeprefix("ort-") for v in args.variants if v.startswith(("ort-", "openvino-"))}
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if wanted and (manifest is None or wanted - set(manifest["variants"]) - set(manifest.get("left_out", {}))):
        corpus = load_collection(args.data).corpus
        export_bundle(MODEL, args.bundle, profile="all", overwrite=True, formats=(),
                      sample_texts=[document_text(corpus[d]) for d in list(corpus)[:256]])
    measured, skipped, vectors_dir = {}, {}, Path(tempfile.mkdtemp(prefix="encode-bench-"))
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--child", variant, "--bundle", str(args.bundle), "--data", str(args.data),
               "--vectors", str(vectors_dir / f"{variant}.npy"), "--device", args.device, "--batch-size", str(args.batch_size)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            skipped[variant] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
            print(f"{variant}: failed\n{proc.stderr[-1500:]}")
            continue
        measured[variant] = json.loads(line.removeprefix("RESULT "))
        m = measured[variant]
        if "metrics" not in m:  # the tokenizer alone
            print(f"{variant:>11}: {m['docs_per_s']:6.1f} docs/s", flush=True)
            continue
        print(f"{variant:>11}: {m['docs_per_s']:6.1f} docs/s  nDCG@10 {100 * m['metrics']['ndcg@10']:.2f}  "
              f"q-latency p50 {m['query_latency_ms_batch1']['p50']:.1f} ms  {m['queries_per_s_batch64']:.0f} q/s  "
              f"RSS {m['peak_rss_mb']:.0f} MB", flush=True)
    base = measured.get("torch-fp32", {}).get("docs_per_s")
    if (vectors_dir / "torch-fp32.npy").is_file():
        reference = np.load(vectors_dir / "torch-fp32.npy")
        for variant, m in measured.items():
            if (vectors_dir / f"{variant}.npy").is_file():
                cosine = row_cosines(np.load(vectors_dir / f"{variant}.npy"), reference)
                m["cosine_to_torch_fp32"] = {"mean": float(cosine.mean()), "min": float(cosine.min())}
    encoded = {v: m for v, m in measured.items() if "metrics" in m}
    print("\n| variant | docs/s | × torch-fp32 | nDCG@10 | Recall@100 | mean cosine to torch-fp32 | query p50 ms (b=1) | p95 ms "
          "| queries/s (b=64) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant, m in encoded.items():
        ratio = f"{m['docs_per_s'] / base:.2f}" if base else "-"
        cosine = f"{m['cosine_to_torch_fp32']['mean']:.5f}" if "cosine_to_torch_fp32" in m else "-"
        print(f"| {variant} | {m['docs_per_s']:.1f} | {ratio} | {100 * m['metrics']['ndcg@10']:.2f} | "
              f"{100 * m['metrics']['recall@100']:.2f} | {cosine} | {m['query_latency_ms_batch1']['p50']:.1f} | "
              f"{m['query_latency_ms_batch1']['p95']:.1f} | {m['queries_per_s_batch64']:.0f} | {m['peak_rss_mb']:.0f} |")
    if args.device != "cpu":
        print(f"wrote {write_gpu_run(args, measured, skipped, time.perf_counter() - started)}")
        return
    manifest = json.loads(manifest_path.read_text())
    previous = RESULTS / "encode.json"  # a GPU run recorded through the device tool is kept until measured again
    before = json.loads(previous.read_text()) if previous.is_file() else {}
    gpu_run = before.get("gpu_run")
    # runs on other CPUs are kept (machines differ between sessions: ratios compare only within one run)
    cpu = machine()["cpu"]
    earlier = [r for r in before.get("earlier_cpu_runs", []) if r["machine"]["cpu"] != cpu]
    if before and before["machine"]["cpu"] != cpu:
        earlier.append({k: before[k] for k in ("machine", "date", "commit", "throughput", "latency_ms", "cosine_to_torch_fp32")})
    path = write_results("encode", {
        **({"gpu_run": gpu_run} if gpu_run else {}),
        **({"earlier_cpu_runs": earlier} if earlier else {}),
        "dataset": "scifact", "split": "test", "wall_s": time.perf_counter() - started,
        "runs": [{"name": f"dense-zeroshot-{v}", "backend": "embedded", "model": MODEL, "metrics": m["metrics"]} for v, m in measured.items()],
        "throughput": {"encode_docs_per_s": {v: m["docs_per_s"] for v, m in measured.items()},
                       "queries_per_s_batch64": {v: m["queries_per_s_batch64"] for v, m in measured.items()},
                       "ratio_vs_torch_fp32": {v: m["docs_per_s"] / base for v, m in measured.items()} if base else {}},
        "latency_ms": {f"query-encode-{v}": m["query_latency_ms_batch1"] for v, m in measured.items()},
        "peak_rss_mb": {v: m["peak_rss_mb"] for v, m in measured.items()},
        "cosine_to_torch_fp32": {v: m["cosine_to_torch_fp32"] for v, m in measured.items() if "cosine_to_torch_fp32" in m},
        "alone_vs_batched_cosine": {v: m["alone_vs_batched_cosine"] for v, m in measured.items()},
        "parity": {v: e["parity"] for v, e in manifest["variants"].items()},
        "notes": ("All 5,183 SciFact documents (title + text, truncated to 256 tokens, batch 64, length-sorted), one "
                  "process per variant, run one after another on the same machine. torch = sentence-transformers "
                  "on CPU; ort = ONNX Runtime CPU provider on the exported bundle (fp32 with ORT transformer fusions; "
                  "int8 = dynamic per-channel quantisation of MatMul/Attention; fp16 shown for completeness, it is the "
                  "GPU variant); openvino = OpenVINO CPU plugin on the bundle's IR (fp32; bf16 = the fp32 IR at bf16 "
                  "inference precision; int8 = NNCF static quantisation calibrated on the first 256 SciFact documents). "
                  "nDCG@10 is dense-only with one truncated passage per document."),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
