"""Reliability drills, counted: crashes at random points, live writes, peak memory, and the bad-input, auth/TLS and
rejected-write test modules.

    scripts/opensearch-local.sh start        # (and `start --secure` for the auth/TLS and 429 modules)
    python bench/reliability.py [--fast] [--url http://127.0.0.1:9200] [--launcher fork|exec] [--seed 7]

1. Crash drill: `genq-search reindex --freeze-writes` of a synthetic index (2 shards, a custom analyser; short,
   long, title-only and text-less documents; tiny random bi-encoder) SIGKILLed at seeded random points and resumed
   each time (drills.reindex_drill).
2. The same with a writer thread adding, updating and deleting source documents while the attempts run.
3. The adapt stages `generate`, `mine`, `label`, `train` (GPL, tiny models, small BEIR folder), each killed at random
   points and rerun; artifacts compared with an uninterrupted run (drills.adapt_drill).
4. Peak RSS of a fresh `genq-search reindex` process for 10K and 100K synthetic documents (drills.rss_drill).
5. pytest on tests/test_bad_input.py, tests/test_security.py, tests/test_rejections.py (whichever exist): cases
   passed / failed / skipped per module from the junit XML, and the `rejections_retried.*` properties they record.
6. Bad-value cases counted (`validation`): those generated from the config models and the CLI
   (tests/test_validation_generated.py) and the hand-written catalogue (tests/test_bad_input.py).
`--fast` runs small versions of 1-4 (CI size). Writes bench/results/reliability.json (shared/bench/SCHEMA.md + `drills`);
`--validation-only` just updates its `validation` counts (the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import drills
from common import RESULTS, commit, write_results

MODULES = {"bad_input": "tests/test_bad_input.py", "auth_tls": "tests/test_security.py", "rejections": "tests/test_rejections.py"}
FULL = {"kill_docs": 5000, "kills": 24, "live_docs": 3000, "live_kills": 10, "writes": 300, "adapt_kills": 5,
        "rss_sizes": [10_000, 100_000]}
FAST = {"kill_docs": 500, "kills": 5, "live_docs": 800, "live_kills": 3, "writes": 60, "adapt_kills": 2,
        "rss_sizes": [2_000, 10_000]}


def cpu_flags() -> list[str]:
    """The SIMD flags of the CPU that matter for encoding speed (AVX2, AVX-512 variants, AMX, FMA)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma", "f16c")))
    return []


def junit_counts(xml_path: Path) -> tuple[dict[str, dict[str, int]], dict[str, float]]:
    """Per test module: passed / failed / skipped / errors; and every numeric property recorded (test-suite and
    test-case properties, summed by name)."""
    modules: dict[str, dict[str, int]] = {}
    properties: dict[str, float] = {}
    root = ET.parse(xml_path).getroot()
    for prop in root.iter("property"):
        try:
            properties[prop.get("name", "")] = properties.get(prop.get("name", ""), 0) + float(prop.get("value", ""))
        except ValueError:
            continue
    for case in root.iter("testcase"):
        module = (case.get("classname") or "").split(".")[-1] or "?"
        if module.startswith("Test"):  # a class inside the module
            module = (case.get("classname") or "").split(".")[-2]
        counts = modules.setdefault(module, {"passed": 0, "failed": 0, "skipped": 0, "errors": 0})
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        counts[{"failure": "failed", "error": "errors"}.get(outcome, outcome)] += 1
    return modules, properties


def secure_node_env() -> dict[str, str]:
    """``OPENSEARCH_SECURE_*`` of the secured drill node when it runs (``scripts/opensearch-local.sh env --secure``),
    unless they are set already; nothing is started."""
    script = drills.ROOT / "scripts" / "opensearch-local.sh"
    if os.environ.get("OPENSEARCH_SECURE_URL") or not script.is_file():
        return {}
    try:
        if subprocess.run([script, "status", "--secure"], capture_output=True, timeout=60, check=False).returncode:
            return {}
        lines = subprocess.run([script, "env", "--secure"], capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    env = {}
    for line in lines.splitlines():
        words = shlex.split(line)
        if words[:1] == ["export"]:
            env.update(word.split("=", 1) for word in words[1:] if "=" in word)
    return env


def run_test_modules(url: str, work: Path) -> dict[str, Any]:
    """pytest on the bad-input, security and rejection modules that exist; counts from the junit XML."""
    present = {key: path for key, path in MODULES.items() if (drills.ROOT / path).is_file()}
    out: dict[str, Any] = {"missing_modules": sorted(set(MODULES.values()) - set(present.values()))}
    if not present:
        return out
    xml = work / "junit.xml"
    started = time.perf_counter()
    secure = secure_node_env()
    out["secure_node"] = secure.get("OPENSEARCH_SECURE_URL", os.environ.get("OPENSEARCH_SECURE_URL"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                           *present.values()], cwd=drills.ROOT, env={**os.environ, **secure, "OPENSEARCH_URL": url},
                          capture_output=True, text=True, check=False)
    out["pytest_rc"], out["pytest_s"] = proc.returncode, round(time.perf_counter() - started, 1)
    out["pytest_tail"] = proc.stdout[-1500:]
    if not xml.is_file():
        return out
    modules, properties = junit_counts(xml)
    out["modules"], out["properties"] = modules, properties
    for key, path in present.items():
        counts = modules.get(Path(path).stem, {"passed": 0, "failed": 0, "skipped": 0, "errors": 0})
        out[key] = {"cases": sum(counts.values()), **counts}
    return out


def validation_counts() -> dict[str, Any]:
    """How many bad values the generated test tries (and how many of those need a non-root user) and how many cases the
    hand-written catalogue holds; both lists are built from the code at import."""
    import datetime as dt

    sys.path.insert(0, str(drills.ROOT / "tests"))
    import test_bad_input
    import test_validation_generated as generated

    return {"generated_cases": len(generated.CASES), "generated_needing_non_root": sum(c.locked for c in generated.CASES.values()),
            "catalogue_cases": len(test_bad_input.CASES), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": commit()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("OPENSEARCH_URL", "http://127.0.0.1:9200"))
    parser.add_argument("--fast", action="store_true", help="small drills (CI size): 5 kills on 500 documents, RSS at 2K/10K")
    parser.add_argument("--launcher", choices=["fork", "exec"], default="fork",
                        help="fork: CLI children of a pre-imported zygote (10 s of imports saved per attempt); exec: a "
                             "fresh interpreter per attempt. The RSS drill always uses exec.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-tests", action="store_true", help="do not run the bad-input / security / rejection modules")
    parser.add_argument("--validation-only", action="store_true", help="only count the bad-value cases into the results file")
    args = parser.parse_args()
    if args.validation_only:
        path = RESULTS / "reliability.json"
        results = json.loads(path.read_text()) if path.is_file() else {"benchmark": "reliability"}
        results["validation"] = validation_counts()
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"validation: {results['validation']} -> {path}")
        return
    size = FAST if args.fast else FULL
    started = time.perf_counter()
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="genq-reliability-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        models = drills.build_tiny_models(work / "models")
        stages["tiny_models_s"] = time.perf_counter() - t0
        with drills.launcher(args.launcher, work / "zygote.log") as launch:
            t0 = time.perf_counter()
            kill = drills.reindex_drill(args.url, launch, models["bi"], work / "kill", docs=size["kill_docs"],
                                        kills=size["kills"], seed=args.seed)
            stages["crash_drill_s"] = time.perf_counter() - t0
            print(f"crash drill: {kill['kills']} kills on {kill['documents']} documents, {kill['documents_lost']} lost, "
                  f"passed={kill['passed']} ({kill['kills_by_phase']})", flush=True)
            t0 = time.perf_counter()
            live = drills.reindex_drill(args.url, launch, models["bi"], work / "live", docs=size["live_docs"],
                                        kills=size["live_kills"], seed=args.seed + 1, writes=size["writes"])
            stages["live_writes_drill_s"] = time.perf_counter() - t0
            print(f"live writes: {live['writes_total']} writes ({live['writes']}), {live['kills']} kills, "
                  f"{live['writes_lost']} writes lost, {live['documents_lost']} documents lost, passed={live['passed']}", flush=True)
            t0 = time.perf_counter()
            adapt = drills.adapt_drill(launch, models, work / "adapt", kills_per_stage=size["adapt_kills"], seed=args.seed + 2)
            stages["adapt_drill_s"] = time.perf_counter() - t0
            print(f"adapt stages: {adapt['kills']} kills, identical "
                  f"{ {s: v.get('identical', v.get('max_weight_difference')) for s, v in adapt['stages'].items()} }, "
                  f"passed={adapt['passed']}", flush=True)
        t0 = time.perf_counter()
        rss = drills.rss_drill(args.url, models["bi"], work / "rss", sizes=size["rss_sizes"], seed=args.seed)
        stages["rss_drill_s"] = time.perf_counter() - t0
        tests: dict[str, Any] = {"skipped": True}
        if not args.skip_tests:
            t0 = time.perf_counter()
            tests = run_test_modules(args.url, work)
            stages["test_modules_s"] = time.perf_counter() - t0
    peak = {int(n): r["peak_rss_mb"] for n, r in rss["runs"].items()}
    largest, smallest = max(peak), min(peak)
    props = {k: v for k, v in tests.get("properties", {}).items() if k.startswith("rejections_retried")}
    rejections = tests.get("rejections") or {}
    drill_summary = {
        "kills": kill["kills"] + live["kills"], "kills_lost_documents": kill["documents_lost"] + live["documents_lost"],
        "reindex_kills": kill["kills"], "reindex_kill_phases": kill["kills_by_phase"],
        "live_writes": live["writes_total"], "live_writes_lost": live["writes_lost"], "live_writes_kills": live["kills"],
        "adapt_kills": adapt["kills"],
        "adapt_artifacts_identical": all(s.get("identical", s.get("max_weight_difference") == 0.0) for s in adapt["stages"].values()),
        "half_written_artifacts": kill["state_file_half_written"] + live["state_file_half_written"] + adapt["half_written"],
        "incomplete_checkpoints_dropped_on_resume": sum(s["incomplete_checkpoints_after_kills"] for s in adapt["stages"].values()),
        "temp_files_left": len(kill["temp_files"]) + len(live["temp_files"]) + len(adapt["temp_files"]),
        "alias_moved_once": kill["alias_moved_once"] and live["alias_moved_once"],
        "source_unchanged": kill["source_unchanged"],
        "drills_passed": kill["passed"] and live["passed"] and adapt["passed"],
        f"peak_rss_mb_{smallest // 1000}k_docs": peak[smallest], f"peak_rss_mb_{largest // 1000}k_docs": peak[largest],
        "peak_rss_mb_per_10k_docs": peak.get(10_000), "peak_rss_mb_per_100k_docs": peak.get(100_000),
        "rss_dry_run_mb": max(r["dry_run_rss_mb"] for r in rss["runs"].values()),
        # recorded by the rejection tests that ran (they end with exactly the source's documents, or fail)
        "rejections_seen": int(sum(props.values())) if props else None, "rejections_by_command": props or None,
        "rejections_lost_documents": 0 if props and rejections.get("failed") == rejections.get("errors") == 0 else None,
    }
    for key in ("bad_input", "auth_tls"):
        counts = tests.get(key)
        drill_summary[f"{key}_cases"] = counts["cases"] if counts else None
        drill_summary[f"{key}_passed"] = counts["passed"] if counts else None
        drill_summary[f"{key}_skipped"] = counts["skipped"] if counts else None
    drill_summary["rejection_cases"], drill_summary["rejection_passed"] = rejections.get("cases"), rejections.get("passed")
    path = write_results("reliability", {
        "dataset": "synthetic", "fast": args.fast, "cpu_flags": cpu_flags(), "wall_s": round(time.perf_counter() - started, 1),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "drills": drill_summary, "validation": validation_counts(),
        "details": {"crash": kill, "live_writes": live, "adapt": adapt, "rss": rss, "test_modules": tests},
        "notes": ("Synthetic documents (6-24 pseudo-words; every 97th ~400 words, every 53rd without text or title, every "
                  "7th title-less, every 11th title-only) in a 2-shard index; tiny random 2-layer BERT bi-encoder (32-d) "
                  f"built at start; reindex with --freeze-writes --read-batch 100; {args.launcher} launcher (RSS: exec). "
                  "Kill points (seeded): reindex, half spread over the copy (uniform over the first 2/(kills left + 1) of "
                  "the batches left, watched in the state file), half in the tail after the copy (catch-up, freeze, "
                  "verification, switch: uniform over 75% of an uninterrupted reference run's tail); adapt stages, spread "
                  "over their chunks / checkpoints the same way. 'lost' counts "
                  "missing, extra and differing documents against the source after the last run. Peak RSS: ru_maxrss "
                  "of the reindex process (wait4), read_batch 1000."),
    })
    print(f"wrote {path}")
    if not drill_summary["drills_passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
