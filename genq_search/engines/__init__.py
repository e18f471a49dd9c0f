"""Engines: the embedded backend and the clusters (OpenSearch, Elasticsearch) behind one interface (``base.py``).

``connect(cfg)`` returns the ``Cluster`` at ``cfg.url``: the engine ``cfg.engine`` names, or (``auto``, or
``embedded`` when a stage reads a live index) the one the node says it runs.
"""

from __future__ import annotations

import json
import logging
import warnings

from genq_search.config import BackendConfig, Engine
from genq_search.engines.base import Cluster, ClusterBackend
from genq_search.errors import GenqError

logger = logging.getLogger(__name__)
_WARNED_UNVERIFIED: set[str] = set()


def detect_engine(cfg: BackendConfig) -> Engine:
    """Which engine answers at ``cfg.url``: Elasticsearch marks every response with ``X-Elastic-Product``, OpenSearch
    names itself in ``GET /``'s ``version.distribution``. urllib3 (under both clients) with the configured auth and TLS."""
    import urllib3

    headers = urllib3.make_headers(basic_auth=f"{cfg.username}:{cfg.password or ''}") if cfg.username else {}
    pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED" if cfg.verify_certs else "CERT_NONE",
                               ca_certs=str(cfg.ca_certs) if cfg.ca_certs else None,
                               timeout=urllib3.Timeout(total=min(cfg.timeout_s, 30.0)), retries=False)
    try:
        with warnings.catch_warnings():  # --no-verify-certs: connect() has warned once already
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            response = pool.request("GET", cfg.url.rstrip("/") + "/", headers=headers)
    except urllib3.exceptions.SSLError as exc:
        hint = "; does it serve plain HTTP? (use http://)" if "WRONG_VERSION_NUMBER" in str(exc) else \
            ": pass --ca-certs FILE with the CA that signed it (or --no-verify-certs to skip the check)"
        raise GenqError(f"TLS error at {cfg.url} while connecting{hint}") from None
    except urllib3.exceptions.HTTPError as exc:
        reason = type(getattr(exc, "reason", None) or exc).__name__
        hint = ("the server closed the connection without a response: does it serve HTTPS? (use https://)"
                if cfg.url.startswith("http://") and "RemoteDisconnected" in str(exc) else "is it running?")
        raise GenqError(f"cannot reach a cluster at {cfg.url} ({reason}); {hint}") from None
    if response.headers.get("X-Elastic-Product") == "Elasticsearch":
        return Engine.ELASTICSEARCH
    if response.status == 401:
        if cfg.username:
            raise GenqError(f"authentication failed at {cfg.url} for user '{cfg.username}' while connecting: check "
                            "--username/--password (or GENQ_SEARCH_USERNAME/GENQ_SEARCH_PASSWORD)")
        raise GenqError(f"authentication required at {cfg.url} while connecting: pass --username/--password "
                        "(or GENQ_SEARCH_USERNAME/GENQ_SEARCH_PASSWORD)")
    try:
        distribution = json.loads(response.data).get("version", {}).get("distribution")
    except (ValueError, AttributeError):
        distribution = None
    if distribution == "opensearch":
        return Engine.OPENSEARCH
    raise GenqError(f"the server at {cfg.url} is neither OpenSearch nor Elasticsearch (HTTP {response.status} on GET /); "
                    "set backend.engine (--backend) if it is one of them behind a proxy")


def connect(cfg: BackendConfig) -> Cluster:
    """The cluster at ``cfg.url`` (checked with a first request), as ``cfg.engine`` names it or as detected."""
    if cfg.ca_certs and not cfg.ca_certs.is_file():
        raise GenqError(f"CA certificate file {cfg.ca_certs} (--ca-certs) not found")
    if cfg.url.startswith("https://") and not cfg.verify_certs and cfg.url not in _WARNED_UNVERIFIED:
        _WARNED_UNVERIFIED.add(cfg.url)
        logger.warning("TLS certificate verification is off (--no-verify-certs): the connection to %s is encrypted "
                       "but the server is not authenticated", cfg.url)
    if cfg.engine not in (Engine.OPENSEARCH, Engine.ELASTICSEARCH):
        return _connect(cfg, detect_engine(cfg))
    try:
        return _connect(cfg, cfg.engine)
    except GenqError as error:  # a node of the other engine fails that engine's client: say so when it is
        try:
            other = detect_engine(cfg)
        except GenqError:
            raise error from None
        if other is cfg.engine:
            raise
        raise GenqError(f"the node at {cfg.url} runs {other.value}, not {cfg.engine.value} (backend.engine, --backend): "
                        "name the engine it runs, or auto") from None


def _connect(cfg: BackendConfig, engine: Engine) -> Cluster:
    if engine is Engine.ELASTICSEARCH:
        from genq_search.engines.elasticsearch import connect as connect_elasticsearch

        return connect_elasticsearch(cfg)
    from genq_search.engines.opensearch import connect as connect_opensearch

    return connect_opensearch(cfg)


def cluster_backend(cfg: BackendConfig, index: str) -> ClusterBackend:
    """The tool's own search index ``index`` on the cluster at ``cfg.url``."""
    return ClusterBackend(connect(cfg), index)
