"""Helpers shared by the benchmark scripts: machine facts and the results file format (shared/bench/SCHEMA.md)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
SCIFACT = Path(os.environ.get("GENQ_SCIFACT", Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "scifact"))


# the CPU flags that decide which fast paths run (int8 dot products, bf16, AMX): recorded with every result
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")


def machine(gpu: str | None = None) -> dict[str, Any]:
    facts: dict[str, str] = {}  # the first core's "model name" and "flags"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            facts.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu, flags = facts.get("model name") or platform.processor() or "unknown", set(facts.get("flags", "").split())
    memory_gb = None
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "gpu": gpu,
            "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def peak_rss_mb() -> float:
    """This process's peak resident memory since its exec (VmHWM; getrusage's maxrss also counts the parent's image
    a subprocess was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_results(name: str, payload: dict[str, Any], gpu: str | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "machine": machine(gpu),
        "commit": commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def print_table(rows: list[dict[str, Any]], metrics: list[str]) -> None:
    print("| run | backend | " + " | ".join(metrics) + " |")
    print("|---|---|" + "---|" * len(metrics))
    for row in rows:
        cells = " | ".join(f"{100 * row['metrics'][m]:.1f}" for m in metrics)
        print(f"| {row['name']} | {row['backend']} | {cells} |")


def versus_zeroshot(comparison: Any, metric: str = "ndcg@10") -> dict[str, dict[str, Any]]:
    """Each adapted run against the zero-shot run of the same mode: delta, paired t-test p-value, wins/losses."""
    from genq_search.evaluate import paired_p_value

    out: dict[str, dict[str, Any]] = {}
    for name, scores in comparison.scores.items():
        mode = next((m for m in ("dense", "hybrid-rrf", "hybrid-minmax", "hybrid-zscore") if name.startswith(m + "-")), None)
        if mode is None or name == f"{mode}-zeroshot" or f"{mode}-zeroshot" not in comparison.scores:
            continue
        a, b = comparison.scores[f"{mode}-zeroshot"][metric], scores[metric]
        deltas = [b[q] - a[q] for q in a.keys() & b.keys()]
        out[name] = {"vs": f"{mode}-zeroshot", "delta": sum(deltas) / len(deltas), "p_value": paired_p_value(a, b),
                     "wins": sum(d > 1e-9 for d in deltas), "losses": sum(d < -1e-9 for d in deltas)}
    return out
