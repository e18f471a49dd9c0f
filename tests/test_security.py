"""The tool against a secured cluster on every engine (TLS, basic auth), started by ``scripts/opensearch-local.sh
start --secure`` (security plugin, demo certificates) and ``scripts/elasticsearch-local.sh start --secure`` (x-pack
security, the script's own CA): wrong or missing credentials, a user without write permission, an untrusted
certificate, verification off, and the CA given. Every failure is one ``error:`` line, exit 1, nothing written."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import Result
from conftest import bulk_load, new_name
from typer.testing import CliRunner

from genq_search.config import BackendConfig

pytestmark = pytest.mark.integration

NO_ENV_CREDENTIALS = {f"{prefix}_{key}": None for prefix in ("OPENSEARCH", "GENQ_SEARCH") for key in ("USERNAME", "PASSWORD", "URL")}


def cli(*args: Any, env: dict[str, str | None] | None = None) -> Result:
    from genq_search.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={**NO_ENV_CREDENTIALS, **(env or {})})


def one_error(result: Result) -> str:
    """The single ``error:`` line of a failed command (exit 1): the last line, no traceback, no logged request failures."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.exit_code == 1, result.output
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert not any(word in result.output for word in ("Traceback", " WARNING ", " ERROR ")), result.output
    return errors[0]


def admin(cfg: BackendConfig) -> Any:
    from conftest import client_of as connect

    return connect(cfg)


@contextmanager
def restricted_user(cfg: BackendConfig) -> Iterator[tuple[str, str]]:
    """A user whose role may read every index but write none, removed afterwards (OpenSearch: the security REST API);
    yields (username, password)."""
    client = admin(cfg)
    name, password = f"genq-test-{uuid.uuid4().hex[:8]}", f"Pw-{uuid.uuid4().hex[:12]}-X9!"
    if cfg.engine == "elasticsearch":  # the node's file-realm reader (scripts/elasticsearch-local.sh start --secure)
        reader = os.environ.get("ELASTICSEARCH_SECURE_READER")
        if not reader:
            pytest.skip("ELASTICSEARCH_SECURE_READER is not set (scripts/elasticsearch-local.sh env --secure exports it)")
        yield reader, os.environ["ELASTICSEARCH_SECURE_READER_PASSWORD"]
        return
    api = "/_plugins/_security/api"
    role = {"cluster_permissions": ["cluster_monitor", "cluster_composite_ops_ro"], "index_permissions": READ_ONLY}
    client.transport.perform_request("PUT", f"{api}/roles/{name}", body=role)
    try:
        client.transport.perform_request("PUT", f"{api}/internalusers/{name}", body={"password": password})
        client.transport.perform_request("PUT", f"{api}/rolesmapping/{name}", body={"users": [name]})
        yield name, password
    finally:
        for kind in ("rolesmapping", "internalusers", "roles"):
            client.transport.perform_request("DELETE", f"{api}/{kind}/{name}", params={"ignore": 404})


READ_ONLY = [{"index_patterns": ["*"], "allowed_actions": ["read", "indices_monitor", "indices:admin/get",
                                                           "indices:admin/mappings/get", "indices:admin/aliases/get"]}]


def make_source(cfg: BackendConfig, name: str, beir_dir: Path) -> int:
    """A plain index holding the BEIR folder's documents (2 shards); returns their number (the tool's bulk retries the
    writes the drill node's tiny write queue rejects)."""
    client = admin(cfg)
    client.indices.create(index=name, body={"settings": {"index": {"number_of_shards": 2, "number_of_replicas": 0}}})
    docs = [json.loads(line) for line in (beir_dir / "corpus.jsonl").open()]
    bulk_load(cfg, ({"_index": name, "_id": d["_id"], "_source": {"title": d["title"], "text": d["text"]}} for d in docs))
    return len(docs)


@pytest.mark.parametrize(("username", "password", "expected"), [
    ("{admin}", "wrong-password", "authentication failed at {url} for user '{admin}' while connecting"),
    ("nobody-{id}", "Some-pass-1!", "authentication failed at {url} for user 'nobody-{id}' while connecting"),
    (None, None, "authentication required at {url} while connecting: pass --username/--password"),
], ids=["wrong-password", "unknown-user", "no-credentials"])
def test_bad_credentials_are_one_line_and_write_nothing(secure_cfg: BackendConfig, secure_names: list[str], beir_dir: Path,
                                                        tmp_path: Path, username: str | None, password: str | None,
                                                        expected: str) -> None:
    index, user_id = new_name(secure_names), uuid.uuid4().hex[:6]
    env = {"GENQ_SEARCH_USERNAME": username.format(id=user_id, admin=secure_cfg.username), "GENQ_SEARCH_PASSWORD": password} if username else {}
    result = cli("index", "--backend", secure_cfg.engine.value, "--url", secure_cfg.url, "--ca-certs", secure_cfg.ca_certs,
                 "--index", index, "--corpus", beir_dir, "--run-dir", tmp_path, env=env)
    assert one_error(result).startswith(f"error: {expected.format(url=secure_cfg.url, id=user_id, admin=secure_cfg.username)}")
    assert not admin(secure_cfg).indices.exists(index=index)


def test_user_without_write_permission_is_refused_before_anything_is_written(
        secure_cfg: BackendConfig, secure_names: list[str], beir_dir: Path, tiny_bi_encoder: Path, tmp_path: Path) -> None:
    client = admin(secure_cfg)
    source, target, alias = new_name(secure_names, "src"), new_name(secure_names), new_name(secure_names, "live")
    documents = make_source(secure_cfg, source, beir_dir)
    connection = ["--url", secure_cfg.url, "--ca-certs", secure_cfg.ca_certs]
    with restricted_user(secure_cfg) as (user, password):
        as_reader = [*connection, "--username", user, "--password", password]
        line = one_error(cli("index", "--backend", secure_cfg.engine.value, *as_reader, "--index", target, "--corpus", beir_dir,
                             "--run-dir", tmp_path / "index"))
        assert line.startswith(f"error: not allowed at {secure_cfg.url} while creating index '{target}': user '{user}' "
                               "lacks the needed permissions (") and "indices:admin/create" in line
        assert not client.indices.exists(index=target)
        line = one_error(cli("reindex", source, "--alias", alias, "--model", tiny_bi_encoder, *as_reader,
                             "--run-dir", tmp_path / "reindex"))
        assert line.startswith(f"error: not allowed at {secure_cfg.url} while creating '{alias}-v1': user '{user}'")
        assert not client.indices.exists(index=f"{alias}-v1") and not client.indices.exists_alias(name=alias)
        assert client.count(index=source)["count"] == documents
        assert "passages" not in client.get(index=source, id="d1")["_source"]  # the source is untouched
        # reading is allowed: the user evaluates on an index the administrator built
        as_admin = [*connection, "--username", secure_cfg.username, "--password", secure_cfg.password]
        args = ["compare", "--backend", secure_cfg.engine.value, "--index", target, "--corpus", beir_dir, "--model", f"tiny={tiny_bi_encoder}",
                "--mode", "bm25", "--mode", "dense"]
        built = cli(*args, *as_admin, "--run-dir", tmp_path / "admin")
        assert built.exit_code == 0, built.output
        read = cli(*args, *as_reader, "--run-dir", tmp_path / "reader")
        assert read.exit_code == 0, read.output
    metrics = {who: {r["name"]: r["metrics"] for r in json.loads((tmp_path / who / "compare" / "metrics.json").read_text())["runs"]}
               for who in ("admin", "reader")}
    assert metrics["reader"] == metrics["admin"]


def test_untrusted_certificate_with_verification_on_is_one_line(secure_cfg: BackendConfig, secure_names: list[str],
                                                                beir_dir: Path, tmp_path: Path) -> None:
    index = new_name(secure_names)
    result = cli("index", "--backend", secure_cfg.engine.value, "--url", secure_cfg.url, "--verify-certs", "--username",
                 secure_cfg.username, "--password", secure_cfg.password, "--index", index, "--corpus", beir_dir, "--run-dir", tmp_path)
    assert one_error(result) == (
        f"error: TLS certificate of {secure_cfg.url} not trusted while connecting (unable to get local issuer "
        "certificate): pass --ca-certs FILE with the CA that signed it (or --no-verify-certs to skip the check)")
    assert not admin(secure_cfg).indices.exists(index=index)
    line = one_error(cli("index", "--backend", secure_cfg.engine.value, "--url", secure_cfg.url.replace("https://", "http://"),
                         "--index", index, "--corpus", beir_dir, "--run-dir", tmp_path))
    assert "does it serve HTTPS? (use https://)" in line
    line = one_error(cli("index", "--backend", secure_cfg.engine.value, "--url", secure_cfg.url, "--ca-certs", tmp_path / "missing.pem",
                         "--index", index, "--corpus", beir_dir, "--run-dir", tmp_path))
    assert line == f"error: CA certificate file {tmp_path / 'missing.pem'} (--ca-certs) not found"


def test_verification_off_warns_once_and_works(secure_cfg: BackendConfig, secure_names: list[str], beir_dir: Path,
                                               tiny_bi_encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genq_search import (
        engines as opensearch,  # where the once-per-URL warning is kept
    )

    monkeypatch.setattr(opensearch, "_WARNED_UNVERIFIED", set())
    index = new_name(secure_names)
    result = cli("compare", "--backend", secure_cfg.engine.value, "--url", secure_cfg.url, "--no-verify-certs", "--index", index,
                 "--corpus", beir_dir, "--model", f"tiny={tiny_bi_encoder}", "--mode", "bm25", "--mode", "dense",
                 "--run-dir", tmp_path, env={"GENQ_SEARCH_USERNAME": secure_cfg.username, "GENQ_SEARCH_PASSWORD": secure_cfg.password})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum("verification is off" in line for line in lines) == 1, result.output  # once, although it connects several times
    assert not [line for line in lines if "InsecureRequestWarning" in line or "urllib3" in line], result.output
    assert f"TLS certificate verification is off (--no-verify-certs): the connection to {secure_cfg.url} is encrypted " \
           "but the server is not authenticated" in result.output
    assert admin(secure_cfg).count(index=index)["count"] == 6


def test_with_the_ca_every_path_works(secure_cfg: BackendConfig, secure_names: list[str], beir_dir: Path,
                                      tiny_bi_encoder: Path, tiny_t5: Path, tmp_path: Path) -> None:
    client = admin(secure_cfg)
    connection = ["--url", secure_cfg.url, "--ca-certs", secure_cfg.ca_certs]
    env = {"OPENSEARCH_USERNAME": secure_cfg.username, "OPENSEARCH_PASSWORD": secure_cfg.password}
    index, source, alias = new_name(secure_names), new_name(secure_names, "src"), new_name(secure_names, "live")
    result = cli("index", "--backend", secure_cfg.engine.value, *connection, "--index", index, "--corpus", beir_dir,
                 "--model", tiny_bi_encoder, "--run-dir", tmp_path / "index", env=env)
    assert result.exit_code == 0, result.output
    assert client.count(index=index)["count"] == 6 and client.get(index=index, id="d1")["_source"]["passages"]
    result = cli("compare", "--backend", secure_cfg.engine.value, *connection, "--index", index, "--corpus", beir_dir,
                 "--model", f"tiny={tiny_bi_encoder}", "--mode", "bm25", "--mode", "hybrid-rrf", "--run-dir", tmp_path / "compare", env=env)
    assert result.exit_code == 0, result.output
    runs = {r["name"]: r for r in json.loads((tmp_path / "compare" / "compare" / "metrics.json").read_text())["runs"]}
    assert runs["bm25"]["backend"] == secure_cfg.engine.value and runs["bm25"]["metrics"]["ndcg@10"] > 0.5
    documents = make_source(secure_cfg, source, beir_dir)
    result = cli("reindex", source, "--alias", alias, "--model", tiny_bi_encoder, *connection, "--run-dir", tmp_path / "reindex", env=env)
    assert result.exit_code == 0, result.output
    assert sorted(client.indices.get_alias(name=alias)) == [f"{alias}-v1"]
    assert client.count(index=alias)["count"] == documents
    # a stage reading a live index: opensearchs:// (elasticsearchs://) with the same connection flags
    config = tmp_path / "generate.toml"
    config.write_text(f'run_dir = "{tmp_path / "run"}"\n[generate]\ngenerator = "{tiny_t5}"\nqueries_per_passage = "1"\n'
                      "max_new_tokens = 8\nmin_query_words = 1\ndev_queries = 0\n")
    host = urlsplit(secure_cfg.url).netloc
    result = cli("generate", "--config", config, "--corpus", f"{secure_cfg.engine.value}s://{host}/{source}", *connection, "--device", "cpu", env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "generate" / "gen-queries.jsonl").is_file()
