"""`genq-search upgrade` and stages that read a live index, end to end on a real OpenSearch with tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE, new_name
from typer.testing import CliRunner

from genq_search.config import BackendConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def live_index(cfg: BackendConfig, name: str, limit: int | None = None) -> list[str]:
    """The sample collection as a user's index (its own mapping, ``_id`` = the BEIR id); returns the ids."""
    from conftest import bulk_load
    from conftest import client_of as connect

    from genq_search.data import iter_documents

    client = connect(cfg)
    client.indices.create(index=name, body={"settings": {"number_of_shards": 2, "number_of_replicas": 0},
                                            "mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"},
                                                                        "views": {"type": "integer"}}}})
    docs = list(iter_documents(SAMPLE / "corpus.jsonl"))[:limit]
    bulk_load(cfg, ({"_index": name, "_id": d.id, "_source": {"title": d.title, "text": d.text, "views": i}}
                    for i, d in enumerate(docs)))
    return [d.id for d in docs]


def write_config(path: Path, run_dir: Path, url: str, index: str, tiny_t5: Path, tiny_bi_encoder: Path, extra: str = "") -> Path:
    path.write_text(f"""
run_dir = "{run_dir}"
[corpus]
path = "opensearch://{url.split('://')[1]}/{index}"
read_batch = 100
[generate]
generator = "{tiny_t5}"
queries_per_passage = "2"
max_passages = 24
batch_size = 8
chunk_size = 8
max_new_tokens = 8
min_query_words = 1
dev_queries = 40
dev_max_overlap = 1.0
[train]
base_model = "{tiny_bi_encoder}"
batch_size = 8
max_seq_length = 48
[compare]
modes = ["bm25", "dense", "hybrid-minmax"]
min_dev_queries = 5
[reindex]
verify_sample = 20
{extra}
""")
    return path


def test_adapt_and_compare_straight_from_an_index(cfg: BackendConfig, names: list[str], tiny_t5: Path, tiny_bi_encoder: Path,
                                                 tmp_path: Path) -> None:
    from genq_search.cli import app

    index = new_name(names, "docs")
    live_index(cfg, index)
    labels = f'queries = "{SAMPLE / "queries.jsonl"}"\nqrels = "{SAMPLE / "qrels" / "test.tsv"}"\n'
    config = write_config(tmp_path / "run.toml", tmp_path / "run", cfg.url, index, tiny_t5, tiny_bi_encoder)
    config.write_text(config.read_text().replace("read_batch = 100\n", "read_batch = 100\n" + labels))
    result = CliRunner().invoke(app, ["adapt", "--config", str(config), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = {r["name"]: r["metrics"]["ndcg@10"] for r in json.loads((tmp_path / "run" / "compare" / "metrics.json").read_text())["runs"]}
    assert metrics["bm25"] > 0.5 and {"dense-zeroshot", "dense-genq"} <= set(metrics)  # labelled queries scored on the index's docs
    stamp = (tmp_path / "run" / "generate" / "manifest.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["adapt", "--config", str(config), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "run" / "generate" / "manifest.json").stat().st_mtime_ns == stamp  # unchanged index: stage skipped


def _upgrade(config: Path, *extra: str) -> Any:
    from genq_search.cli import app

    return CliRunner().invoke(app, ["upgrade", "--config", str(config), "--device", "cpu", *extra])


def test_upgrade_end_to_end_switches_the_alias(cfg: BackendConfig, names: list[str], tiny_t5: Path, tiny_bi_encoder: Path,
                                              tmp_path: Path) -> None:
    from conftest import client_of as connect

    source, alias = new_name(names, "src"), new_name(names, "live")
    ids = live_index(cfg, source, 120)
    client = connect(cfg)
    client.indices.update_aliases(body={"actions": [{"add": {"index": source, "alias": alias}}]})
    config = write_config(tmp_path / "up.toml", tmp_path / "run", cfg.url, alias, tiny_t5, tiny_bi_encoder,
                          "[gate]\nmargin = -1.0\n")  # tiny random models: let any adapted model through
    plan = _upgrade(config, "--dry-run")
    assert plan.exit_code == 0, plan.output
    assert f"{alias}: {source} -> {alias}-v<N>" in plan.output and "generate to run" in plan.output
    assert not list(tmp_path.glob("run/generate/manifest.json"))  # a dry run does nothing
    result = _upgrade(config)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "upgrade" / "report.json").read_text())
    assert report["deployed"] and report["gate"]["passed"]
    assert sorted(client.indices.get_alias(name=alias)) == [f"{alias}-v1"] == [report["index_after"]]
    assert report["alias_move"]["from"] == [source] and report["reindex"]["verified_ids"] == 120
    hits = client.search(index=alias, body={"size": 200, "query": {"match_all": {}}})["hits"]["hits"]
    assert sorted(h["_id"] for h in hits) == sorted(ids) and all(h["_source"]["passages"] for h in hits)
    # the retrieval the synthetic dev set chose (it depends on the CPU's arithmetic with these random models) is the
    # one deployed: BM25's query where it ranks with BM25, the bundle's vector where it ranks with dense
    # (a fusion the engine cannot run on the server is a knn body plus the lexical one under "also")
    printed = json.dumps([report["query_body"]["body"], report["query_body"].get("also")])
    method = report["search"]["method"]
    assert ('"<user query>"' in printed) == (method != "dense") and ("<embedding of the user query" in printed) == (method != "bm25")
    assert (tmp_path / "run" / "upgrade" / "report.md").is_file()
    assert (tmp_path / "run" / "bundle" / "manifest.json").is_file()
    # the deployed query body works as printed, with a query vector from the bundle; so do the bodies of the other
    # retrievals the dev set could have chosen (which one it chooses depends on the CPU's arithmetic with random models)
    from genq_search.config import RunConfig
    from genq_search.engines import connect as connect_cluster
    from genq_search.fusion import Retrieval
    from genq_search.onnx_encoder import OnnxEncoder
    from genq_search.upgrade import query_body

    vector = OnnxEncoder(tmp_path / "run" / "bundle", provider="cpu").encode_queries(["regular expression"])[0].tolist()
    run_cfg, cluster = RunConfig.load(config), connect_cluster(cfg)
    others = [query_body(cluster, run_cfg, alias, Retrieval(m, 0.5 if m == "minmax" else None)) for m in ("bm25", "dense", "minmax")]
    for deployable in [report["query_body"], *others]:
        _, _, path = deployable["path"].partition("?")
        params = dict(p.split("=") for p in path.split("&")) if path else {}
        for printed_body in filter(None, [deployable["body"], deployable.get("also")]):
            body = json.loads(json.dumps(printed_body).replace('"<user query>"', '"regular expression"'))
            _put_vector(body, vector)
            assert client.search(index=alias, body=body, params=params)["hits"]["hits"], deployable
    assert client.count(index=source)["count"] == 120 and "passages" not in client.get(index=source, id=ids[0])["_source"]


def _put_vector(node: Any, vector: list[float]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("vector", "query_vector"):  # OpenSearch's knn query, Elasticsearch's knn section
                node[key] = vector
            else:
                _put_vector(value, vector)
    elif isinstance(node, list):
        for item in node:
            _put_vector(item, vector)


def test_upgrade_whose_gate_fails_leaves_the_alias_untouched(cfg: BackendConfig, names: list[str], tiny_t5: Path,
                                                            tiny_bi_encoder: Path, tmp_path: Path) -> None:
    from conftest import client_of as connect

    source, alias = new_name(names, "src"), new_name(names, "live")
    live_index(cfg, source, 80)
    client = connect(cfg)
    client.indices.update_aliases(body={"actions": [{"add": {"index": source, "alias": alias}}]})
    config = write_config(tmp_path / "up.toml", tmp_path / "run", cfg.url, alias, tiny_t5, tiny_bi_encoder,
                          "[gate]\nmargin = 1.0\n")  # a gain of 100 nDCG points: no model passes
    result = _upgrade(config)
    assert result.exit_code == 1
    assert "not deployed" in result.output and f"alias '{alias}' left on {source}" in result.output
    assert sorted(client.indices.get_alias(name=alias)) == [source]
    assert not client.indices.exists(index=f"{alias}-v1")
    report = json.loads((tmp_path / "run" / "upgrade" / "report.json").read_text())
    assert report["deployed"] is False and report["gate"]["passed"] is False


def test_a_tuned_fusion_the_cluster_cannot_run_deploys_the_best_one_it_can(opensearch_cfg: BackendConfig) -> None:
    """z-score normalisation exists in neural-search from 3.0 only: on an older node `upgrade` deploys the best
    other hybrid of the dev-set grid (here rrf-30, not the lower-scoring min-max settings), and says which. The
    cluster's detected fusions agree with what it really runs (a pipeline created, or refused)."""
    from genq_search.config import CompareConfig
    from genq_search.engines.opensearch import connect
    from genq_search.errors import GenqError
    from genq_search.fusion import FusionMethod, Retrieval
    from genq_search.upgrade import deployable_fusion

    cluster = connect(opensearch_cfg)
    tuned = {"method": "zscore", "lexical_weight": 0.4, "rrf_k": None,
             "grid": {"zscore-0.4": 0.50, "zscore-0.3": 0.49, "rrf-30": 0.45, "minmax-0.4": 0.44, "dense": 0.40}}
    params = Retrieval.from_dict(tuned)
    try:
        cluster.ensure_hybrid_pipeline(FusionMethod.ZSCORE, (0.4, 0.6), 60)
        runs_zscore = True
    except GenqError:
        runs_zscore = False
    assert (FusionMethod.ZSCORE in cluster.server_fusions()) == runs_zscore
    deployed = deployable_fusion(cluster, params, tuned, CompareConfig())
    if runs_zscore:
        assert deployed == params
    else:
        assert deployed == Retrieval("rrf", rrf_k=30)
    minmax = Retrieval("minmax", 0.5)
    assert deployable_fusion(cluster, minmax, None, CompareConfig()) == minmax
    body = cluster.query_body("live", {"match": {"text": "q"}}, minmax)
    assert body["path"] == "/live/_search?search_pipeline=genq-hybrid-min_max-0.5-0.5"
