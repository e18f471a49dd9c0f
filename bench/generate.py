"""Query generation throughput and quality, one process per variant, side by side in one run.

    python bench/generate.py [--documents 200] [--slow-documents 40] [--batch-size 8] [--baseline-batch-size 4] [--variants ...]
    python bench/generate.py --documents 64 --batch-sizes 4 8 16 32 64      # llama.cpp throughput by documents per call

Variants (Gemma-3 270M Q4_K_M GGUF from the offline package, the few-shot prompt of `generate`, 3 queries per
document, documents truncated to 256 tokens, sampling top-p 0.95 / top-k 25, --batch-size documents per call, the
`generate` default 8):
- `transformers-prompt-copies`: the generator as it was before this benchmark: `generate(num_return_sequences=3)`,
  which copies each prompt three times before the forward pass (fp32, GGUF de-quantised by transformers);
- `transformers`: one prefill per document, its KV cache repeated for the three samples (`CausalGenerator`);
- `llama.cpp`: `LlamaCppGenerator` (llama-cpp-python; few-shot prefix evaluated once, one prefill per document, the
  queries of the batch's documents decoded together).
The transformers variants are slow on this CPU, so they run on the first `--slow-documents` of the random sample
and llama.cpp runs on those and on all `--documents`; ratios compare the same documents. Quality: share of
candidates kept by clean-up, and share of kept queries whose source all-MiniLM-L6-v2 ranks in its top 10 over the
whole corpus (round-trip filter). Writes bench/results/generate.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from common import SCIFACT, write_results

SETTINGS = {"generator": "google/gemma-3-270m", "max_input_tokens": 256, "max_new_tokens": 64, "device": "cpu"}


def child(variant: str, ids_file: Path, out: Path, batch_size: int) -> None:
    """Generate for the documents in ``ids_file`` with one variant; write the raw candidates and the seconds."""
    import torch

    from genq_search.config import GenerateConfig
    from genq_search.data import load_collection
    from genq_search.generate import CausalGenerator, LlamaCppGenerator, _sampling
    from genq_search.models import resolve_model
    from genq_search.passages import document_text

    corpus = load_collection(SCIFACT, with_qrels=False).corpus
    ids = json.loads(ids_file.read_text())
    cfg = GenerateConfig(**SETTINGS, batch_size=batch_size, runtime="llama.cpp" if variant == "llama.cpp" else "transformers")
    path = resolve_model(cfg.generator)
    generator = LlamaCppGenerator(path, cfg) if variant == "llama.cpp" else CausalGenerator(path, cfg)
    if variant == "transformers-prompt-copies":
        def copies(documents: list[str], per_document: int, seed: int) -> list[list[str]]:
            torch.manual_seed(seed)
            prompts = [generator.template.replace("{document}", generator._truncate(d)) for d in documents]
            inputs = generator.tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
            with torch.inference_mode():
                result = generator.model.generate(**inputs, num_return_sequences=per_document, pad_token_id=generator.tokenizer.pad_token_id,
                                                  **generator.stop, **_sampling(cfg))
            texts = [t.split("\n")[0] for t in generator.tokenizer.batch_decode(result[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]
            return [texts[i * per_document : (i + 1) * per_document] for i in range(len(documents))]

        generator.generate = copies  # type: ignore[method-assign]
    started = time.perf_counter()
    rows = []
    for start in range(0, len(ids), cfg.batch_size):
        batch = ids[start : start + cfg.batch_size]
        for doc_id, queries in zip(batch, generator.generate([document_text(corpus[d]) for d in batch], 3, cfg.seed + start), strict=True):
            rows.append({"doc_id": doc_id, "candidates": queries})
        print(f"{variant}: {start + len(batch)}/{len(ids)} documents, {time.perf_counter() - started:.0f} s", flush=True)
    out.write_text(json.dumps({"seconds": time.perf_counter() - started, "rows": rows}))


def quality(rows: list[dict], corpus: dict, encoder, backend) -> dict[str, float]:
    from genq_search.config import GenerateConfig
    from genq_search.generate import CleanStats, clean_queries

    cfg, stats = GenerateConfig(**SETTINGS), CleanStats()
    kept = [(row["doc_id"], q) for row in rows for q in clean_queries(row["candidates"], cfg, stats)]
    qids = [str(i) for i in range(len(kept))]
    hits = backend.vector_search(qids, encoder.encode_queries([q for _, q in kept]), 10)
    round_trip = sum(doc in hits[qid] for qid, (doc, _) in zip(qids, kept, strict=True))
    total = sum(len(row["candidates"]) for row in rows)
    return {"candidates": total, "kept_after_clean_up": len(kept) / total, "round_trip_kept": round_trip / max(len(kept), 1),
            "dropped": stats.dropped}


def run_child(variant: str, ids_file: Path, out: Path, batch_size: int) -> dict:
    """``child`` in a process of its own (one model loaded per variant); its output."""
    subprocess.run([sys.executable, __file__, "--batch-size", str(batch_size), "--child", variant, str(ids_file), str(out)], check=True)
    return json.loads(out.read_text())


def batch_sweep(args: argparse.Namespace, sample: list[str], started: float) -> None:
    """llama.cpp documents/s at each ``--batch-sizes`` (documents per call), one process each, on the same documents."""
    ids_file = args.work_dir / "ids-sweep.json"
    ids_file.write_text(json.dumps(sample))
    docs_per_s = {}
    for batch in args.batch_sizes:
        result = run_child("llama.cpp", ids_file, args.work_dir / f"llama.cpp-batch-{batch}.json", batch)
        docs_per_s[str(batch)] = len(sample) / result["seconds"]
        print(f"batch {batch}: {docs_per_s[str(batch)]:.3f} docs/s", flush=True)
    path = write_results("generate_batch_sizes", {
        "dataset": "scifact", "wall_s": time.perf_counter() - started, "throughput": {"generate_docs_per_s_by_batch_size": docs_per_s},
        "notes": (f"{len(sample)} random SciFact documents (seed 42), llama.cpp runtime, Gemma-3 270M Q4_K_M, 3 queries per "
                  "document, 256-token documents; one process per batch size, one after the other. Up to 16 documents "
                  "(LLAMA_IN_FLIGHT) decode together; larger batches refill finished documents' slots."),
    })
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--slow-documents", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--baseline-batch-size", type=int, help="batch of the baseline (default --batch-size): its best, if another")
    parser.add_argument("--variants", nargs="+", default=["transformers-prompt-copies", "transformers", "llama.cpp"])
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="instead: llama.cpp throughput at each batch size on the --documents sample (generate_batch_sizes.json)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-generate"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]), args.batch_size)
        return
    from genq_search.data import load_collection
    from genq_search.encoders import encode_passages_cached, load_encoder
    from genq_search.engines.embedded import EmbeddedBackend
    from genq_search.passages import split_documents

    started = time.perf_counter()
    corpus = load_collection(SCIFACT, with_qrels=False).corpus
    sample = random.Random(42).sample(sorted(corpus), args.documents)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.batch_sizes:
        batch_sweep(args, sample, started)
        return
    sets = {"all": sample, "slow": sample[: args.slow_documents]}
    for name, ids in sets.items():
        (args.work_dir / f"ids-{name}.json").write_text(json.dumps(ids))
    outputs: dict[str, dict] = {}
    for variant in args.variants:
        for name in (["slow", "all"] if variant == "llama.cpp" else ["slow"]):
            key = f"{variant}@{name}"
            out = args.work_dir / f"{variant}-{name}.json"
            batch = args.baseline_batch_size if variant == "transformers-prompt-copies" and args.baseline_batch_size else args.batch_size
            outputs[key] = run_child(variant, args.work_dir / f"ids-{name}.json", out, batch)
    encoder = load_encoder("sentence-transformers/all-MiniLM-L6-v2", "cpu")
    passages = split_documents(corpus, encoder.tokenizer, encoder.max_seq_length, 32)
    backend = EmbeddedBackend()
    backend.index(corpus, passages, encode_passages_cached(encoder, [p.text for p in passages], args.work_dir / "embeddings"))
    docs_per_s, queries_per_s, rates = {}, {}, {}
    for key, result in outputs.items():
        n = len(result["rows"])
        docs_per_s[key] = n / result["seconds"]
        queries_per_s[key] = 3 * n / result["seconds"]
        rates[key] = quality(result["rows"], corpus, encoder, backend)
        print(f"{key:>36}: {docs_per_s[key]:.3f} docs/s, {queries_per_s[key]:.2f} queries/s, kept {100 * rates[key]['kept_after_clean_up']:.1f}%, "
              f"round-trip {100 * rates[key]['round_trip_kept']:.1f}%")
    baseline = docs_per_s.get("transformers-prompt-copies@slow")
    speedup = {k: v / baseline for k, v in docs_per_s.items() if baseline and k.endswith("@slow")}
    samples = {k: [{"doc_id": r["doc_id"], "queries": r["candidates"]} for r in v["rows"][:3]] for k, v in outputs.items()}
    path = write_results("generate", {
        "dataset": "scifact", "wall_s": time.perf_counter() - started,
        "throughput": {"generate_docs_per_s": docs_per_s, "generate_queries_per_s": queries_per_s,
                       "speedup_vs_baseline_same_documents": speedup},
        "quality": rates, "samples": samples,
        "notes": (f"{args.documents} random SciFact documents (seed 42); '@slow' = the first {args.slow_documents} of them, run by "
                  "every variant; '@all' = all of them (llama.cpp only). Gemma-3 270M Q4_K_M, 3 queries per document, 256-token "
                  f"documents, {args.batch_size} documents per call (baseline: {args.baseline_batch_size or args.batch_size}), one process per variant, one after the other on the same machine. "
                  "round_trip_kept: share of the kept queries whose source all-MiniLM-L6-v2 ranks in its top 10 over all "
                  "5,183 documents."),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
