"""``genq-search upgrade``: one command from a live index to an adapted, verified hybrid index.

read the index -> adapt (GenQ / GPL / TSDAE+GPL, every stage resumable) -> gate (label-free dev set, and labels
when given) -> export the ONNX bundle -> hybrid search pipeline -> reindex into ``<alias>-v<N>`` with catch-up and
verification -> alias switch. The live alias moves only when the gate passed and the reindex verified; otherwise
it stays where it was and the report says why. Report: ``<run_dir>/upgrade/report.md`` and ``report.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from genq_search.config import CompareConfig, RunConfig
from genq_search.data import fingerprint, read_manifest, stage_is_complete, write_json
from genq_search.errors import GenqError
from genq_search.fusion import Retrieval

logger = logging.getLogger(__name__)

STAGES = {"genq": ["generate", "train"], "gpl": ["generate", "mine", "label", "train-gpl"],
          "tsdae+gpl": ["generate", "pretrain-tsdae", "mine", "label", "train-gpl"]}


def plan_upgrade(cfg: RunConfig) -> dict[str, Any]:
    """What ``upgrade`` will do: source size, stages to run or reuse, target index and alias move."""
    from genq_search.engines import connect

    if not cfg.corpus.source_index:
        raise GenqError("upgrade works on a live index: --corpus opensearch://HOST:9200/NAME or elasticsearch://HOST:9200/NAME "
                        "(or [corpus] source_index = NAME)")
    cluster = connect(cfg.backend)
    source = cfg.corpus.source_index
    indices = cluster.resolve(source)
    alias = cfg.reindex.alias or (source if cluster.is_alias(source) else None)
    if alias is None:
        raise GenqError(f"'{source}' is an index, not an alias: pass --alias NAME for the alias your application "
                        "will search (the index keeps its name and is never modified)")
    if cluster.exists(alias) and not cluster.is_alias(alias):
        raise GenqError(f"cannot create alias '{alias}': an index with that name exists; choose another --alias")
    _, identity = cluster.checkpoints(indices)
    stages = {name: ("done earlier: reused if its settings are unchanged" if (cfg.run_dir / name / "manifest.json").is_file()
                     else "to run") for name in STAGES[cfg.method]}
    current = cluster.alias_indices(alias)
    existing = cluster.matching(f"{alias}-v*")
    return {"engine": {"name": cluster.engine, "version": cluster.version}, "source": source, "source_indices": indices, "documents": sum(v["docs"] for v in identity.values()),
            "alias": alias, "alias_now": current, "existing_versions": sorted(existing), "method": cfg.method,
            "stages": stages, "freeze_writes": cfg.reindex.freeze_writes, "run_dir": str(cfg.run_dir)}


def describe_plan(plan: dict[str, Any]) -> str:
    lines = [f"source      {plan['source']} -> {', '.join(plan['source_indices'])} ({plan['documents']} documents; only read)",
             f"adapt       {plan['method']}: " + "; ".join(f"{k} {v}" for k, v in plan["stages"].items()),
             "gate        the adapted model must beat the zero-shot one (label-free dev set, labels when given)",
             "export      ONNX bundle of the adapted model (parity-checked)",
             f"reindex     {plan['source']} -> {plan['alias']}-v<N> with passage vectors, catch-up of live writes"
             + (", writes blocked for the final catch-up" if plan["freeze_writes"] else ""),
             (f"alias       {plan['alias']}: {', '.join(plan['alias_now']) or '(new alias)'} -> {plan['alias']}-v<N>, "
              "only if the gate passed and the reindex verified")]
    return "\n".join(lines)


def run_upgrade(cfg: RunConfig, dry_run: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """The whole upgrade; returns the report (also written to ``<run_dir>/upgrade/report.{md,json}``)."""
    from genq_search.pipeline import run_adapt

    plan = plan_upgrade(cfg)
    if dry_run:
        return {"plan": plan}
    started, stages_s = time.perf_counter(), {}
    out_dir = cfg.run_dir / "upgrade"
    comparison, summary = run_adapt(cfg, overwrite=overwrite)
    stages_s["adapt"] = time.perf_counter() - started
    label = cfg.method.replace("+", "-")
    gate = summary.get("gate") or {"passed": False, "reason": "no gate verdict was produced"}
    report: dict[str, Any] = {"plan": plan, "comparison": comparison.markdown(), "runs": summary.get("runs", {}),
                              "label_free": summary.get("label_free"), "agreement": summary.get("agreement"),
                              "gate": gate, "tuned_fusion": (summary.get("tuned_fusion") or {}).get(label),
                              "index_before": plan["alias_now"], "stages_s": stages_s}
    if not gate.get("passed"):
        report["deployed"] = False
        _write_report(out_dir, report)
        raise GenqError(f"not deployed: {gate.get('reason')}; alias '{plan['alias']}' left on "
                        f"{', '.join(plan['alias_now']) or '(nothing)'}; report: {out_dir / 'report.md'}")
    model = summary["adapt"]["train"]["model"]
    start = time.perf_counter()
    bundle = export_for_upgrade(cfg, model, read_manifest(Path(model).parent)["settings_hash"])
    stages_s["export"] = time.perf_counter() - start
    report.update(_deploy(cfg, plan, bundle, report["tuned_fusion"], stages_s))
    report["deployed"] = True
    report["stages_s"]["total"] = time.perf_counter() - started
    _write_report(out_dir, report)
    return report


def export_for_upgrade(cfg: RunConfig, model: str, model_hash: str) -> Path:
    """The adapted model's ONNX bundle in ``<run_dir>/bundle``; reused while the model and profile are unchanged."""
    from genq_search.export import export_bundle
    from genq_search.passages import document_text
    from genq_search.pipeline import load_run_collection

    bundle, stage = cfg.run_dir / "bundle", cfg.run_dir / "upgrade" / "export"
    settings = fingerprint([model_hash, cfg.upgrade.export_profile])
    if stage_is_complete(stage, settings) and (bundle / "manifest.json").is_file():
        logger.info("export: bundle %s is up to date, skipping", bundle)
        return bundle
    corpus = load_run_collection(cfg, with_qrels=False).corpus
    sample = [document_text(corpus[d]) for d in sorted(corpus)[:256]]
    export_bundle(model, bundle, cfg.upgrade.export_profile, sample, overwrite=True)
    write_json(stage / "manifest.json", {"settings_hash": settings, "bundle": str(bundle)})
    return bundle


def _deploy(cfg: RunConfig, plan: dict[str, Any], bundle: Path, tuned: dict[str, Any] | None,
            stages_s: dict[str, float]) -> dict[str, Any]:
    """Reindex (catch-up, verification, alias switch) and the query body for the application (with the search
    pipeline it names, where the cluster fuses on the server)."""
    from genq_search.engines import connect
    from genq_search.index import ReindexResult, run_reindex
    from genq_search.onnx_encoder import OnnxEncoder

    retrieval = Retrieval.from_dict(tuned) if tuned else Retrieval("minmax", 0.5)
    cluster = connect(cfg.backend)
    if retrieval.fusion is not None:
        retrieval = deployable_fusion(cluster, retrieval, tuned, cfg.compare)
    start = time.perf_counter()
    encoder = OnnxEncoder(bundle, provider="cpu" if cfg.encoder.device == "cpu" else "auto")
    result = run_reindex(cfg.backend, cfg.corpus, cfg.reindex.model_copy(update={"alias": plan["alias"]}), plan["source"],
                         encoder, cfg.run_dir, encode_batch=cfg.reindex.encode_batch or cfg.encoder.batch_size)
    assert isinstance(result, ReindexResult)
    stages_s["reindex"] = time.perf_counter() - start
    state = result.state
    body = query_body(cluster, cfg, state.alias, retrieval)
    pipeline_id = body["path"].partition("search_pipeline=")[2] or None
    return {
        "bundle": str(bundle), "index_after": state.target, "alias": state.alias,
        "alias_move": {"from": result.previous, "to": state.target, "switch_s": result.alias_switch_s},
        "search_pipeline": pipeline_id, "search": {**retrieval.as_dict(), "setting": retrieval.name},
        "reindex": {"source_documents": state.documents, "copied": state.copied, "caught_up": state.caught_up,
                    "deleted_caught_up": state.deleted, "verified_ids": result.verified_ids, "without_text": state.without_text,
                    "changed_after_switch": result.changed_after_switch, "rejections_retried": state.rejections_retried,
                    "docs_per_s": result.docs_per_s,
                    "sample_seed": result.sample_seed, "stages_s": result.stages_s},
        "query_body": body,
    }


def deployable_fusion(cluster: Any, retrieval: Retrieval, tuned: dict[str, Any] | None, compare: CompareConfig) -> Retrieval:
    """``retrieval`` when the cluster fuses its method on the server (or fuses nothing on the server: the application
    then fuses on the client); otherwise the best hybrid of the dev-set grid whose method it runs (z-score
    normalisation, say, needs neural-search 3.0), with a warning naming it."""
    from genq_search.labelfree import fusion_grid

    runs = cluster.server_fusions()
    if not runs or retrieval.fusion in runs:
        return retrieval
    scores = (tuned or {}).get("grid") or {}
    ranked = sorted((s for s in fusion_grid(compare) if s.fusion is not None and s.name in scores), key=lambda s: -scores[s.name])
    for candidate in ranked:
        if candidate.fusion in runs:
            logger.warning("%s %s cannot run the %s fusion on the server: deploying %s instead, the best fusion on the dev "
                           "set that it runs", cluster.label, cluster.version, retrieval.name, candidate.name)
            return candidate
    logger.warning("no server-side fusion of the dev-set grid runs on %s %s: the application fuses on the client",
                   cluster.label, cluster.version)
    return retrieval


def query_body(cluster: Any, cfg: RunConfig, alias: str, retrieval: Retrieval) -> dict[str, Any]:
    """A ready-to-paste search request for the application (the query vector comes from the bundle), with the tool's
    one lexical query over the configured fields."""
    from genq_search.engines.base import lexical_query

    fields = [*([cfg.corpus.title_field] if cfg.corpus.title_field else []), *cfg.corpus.text_fields]
    lexical = lexical_query("<user query>", fields, cfg.corpus.title_field, cfg.backend.title_boost)
    return cluster.query_body(alias, lexical, retrieval)


def _write_report(out_dir: Path, report: dict[str, Any]) -> None:
    from genq_search.data import atomic_write
    from genq_search.report import write_upgrade_html

    write_json(out_dir / "report.json", report)
    plan = report["plan"]
    lines = [f"# Upgrade of `{plan['source']}`", "",
             f"- documents: {plan['documents']} ({', '.join(plan['source_indices'])})",
             f"- method: {plan['method']}",
             f"- gate: {'passed' if report['gate'].get('passed') else 'FAILED'} — {report['gate'].get('reason', '')}",
             f"- tuned fusion: {json.dumps(report.get('tuned_fusion'))}", ""]
    if report.get("deployed"):
        move = report["alias_move"]
        rx = report["reindex"]
        lines += [f"- alias `{report['alias']}`: {', '.join(move['from']) or '(new)'} -> `{move['to']}` ({move['switch_s'] * 1000:.0f} ms)",
                  f"- index before: {', '.join(report['index_before']) or '(none)'}; after: `{report['index_after']}`",
                  (f"- documents: {rx['copied']} copied, {rx['caught_up']} caught up, {rx['deleted_caught_up']} deletions "
                   f"caught up, {rx['verified_ids']} ids verified, {rx['without_text']} without text (no vectors), "
                   f"{rx['changed_after_switch']} changed after the switch"),
                  f"- search pipeline: {report['search_pipeline'] or '(none)'}", "", "## Query for your application", "",
                  f"`{report['query_body']['method']} {report['query_body']['path']}`", "", "```json",
                  json.dumps(report["query_body"]["body"], indent=2), "```", "",
                  *([f"Fusion: {report['query_body']['fusion']}", ""] if report["query_body"].get("fusion") else [])]
        if plan.get("engine", {}).get("name", "opensearch") == "opensearch":
            lines += ["## Let the cluster embed queries and new documents", "",
                      ("Serve the bundle and register it (remote models for `neural` queries, and an ingest pipeline "
                       "that writes the same passage vectors for documents indexed through the alias from now on):"),
                      "", "```bash", f"genq-search serve --bundle {report['bundle']} --host 0.0.0.0 --port 8080",
                      (f"genq-search register --bundle {report['bundle']} --endpoint http://<this-host>:8080 "
                       f"--attach-to {report['alias']} --configure-cluster"), "```", ""]
    else:
        lines += [f"**Not deployed**: the alias stays on {', '.join(report['index_before']) or '(nothing)'}.", ""]
    lines += ["## Comparison", "", report["comparison"], ""]
    with atomic_write(out_dir / "report.md") as handle:
        handle.write("\n".join(lines))
    write_upgrade_html(out_dir, report, out_dir.parent / "compare")  # report.html beside report.md

