"""Document sources: a BEIR folder or a live index/alias on OpenSearch or Elasticsearch. Every stage gets its corpus
from here. A live index is read through the cluster interface (``engines.base.Cluster.scan``: shard by shard in
``_seq_no`` order up to the shards' global checkpoints). Fingerprint of a live source: index UUIDs, document counts
and per-shard max ``_seq_no`` (changes on every write).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from genq_search.config import BackendConfig, CorpusConfig
from genq_search.data import (
    Collection,
    SourceCorpus,
    field_value,
    fingerprint,
    joined_text,
    load_collection,
    read_labels,
)
from genq_search.errors import GenqError

logger = logging.getLogger(__name__)

def load_source_collection(corpus: CorpusConfig, backend: BackendConfig, split: str | None = None,
                           with_qrels: bool = True) -> Collection:
    """The corpus (and labelled queries, when configured) of a BEIR folder or a live index."""
    split = split or corpus.split
    if corpus.source_index is None:
        qrels = corpus.qrels if split == corpus.split else None
        return load_collection(corpus.path, split, corpus.id_field, corpus.title_field, corpus.text_fields,
                               with_qrels=with_qrels, queries_path=corpus.queries, qrels_path=qrels)
    docs = read_index_corpus(corpus, backend)
    if not with_qrels or corpus.queries is None:
        if with_qrels and corpus.qrels is not None:
            raise GenqError("corpus.qrels is set but corpus.queries is not: give both (BEIR queries.jsonl + qrels TSV)")
        return Collection(docs, {}, {})
    if corpus.qrels is None:
        raise GenqError("corpus.queries is set but corpus.qrels is not: give both (BEIR queries.jsonl + qrels TSV)")
    return Collection(docs, *read_labels(docs, corpus.queries, corpus.qrels, live=True))


def index_fingerprint(identity: dict[str, Any], corpus: CorpusConfig) -> str:
    """Cheap identity of a live source: UUIDs, counts, per-shard max ``_seq_no``, and the fields read."""
    return fingerprint(["opensearch", identity, corpus.id_field, corpus.title_field, corpus.text_fields])  # the name kept: same hashes as before


def hit_document(hit: dict[str, Any], corpus: CorpusConfig) -> tuple[str | None, str, str]:
    """``(id, title, text)`` of a search hit under the configured fields (id None when the id field is missing)."""
    source = hit.get("_source") or {}
    doc_id = hit["_id"] if corpus.id_field == "_id" else field_value(source, corpus.id_field)
    title = joined_text(source, [corpus.title_field]) if corpus.title_field else ""
    return (None if doc_id is None else str(doc_id)), title, joined_text(source, corpus.text_fields)


def source_fields(corpus: CorpusConfig) -> list[str]:
    """The ``_source`` paths a stage needs from a live index."""
    fields = [*corpus.text_fields, *([corpus.title_field] if corpus.title_field else [])]
    return fields + ([corpus.id_field] if corpus.id_field != "_id" else [])


def read_index_corpus(corpus: CorpusConfig, backend: BackendConfig) -> SourceCorpus:
    """Stream a live index into a corpus; documents with neither title nor text are counted and left out."""
    from genq_search.engines import connect

    assert corpus.source_index is not None
    cluster = connect(backend)
    indices = cluster.resolve(corpus.source_index)
    upto, identity = cluster.checkpoints(indices)
    total = sum(v["docs"] for v in identity.values())
    docs: dict[str, dict[str, str]] = {}
    without_text, without_id, with_text = 0, 0, 0
    progress = tqdm(total=total, desc=f"read {corpus.source_index}", unit="doc", disable=total < 5000)
    try:
        for _, _, hits in cluster.scan(indices, None, upto, corpus.read_batch, source_fields(corpus)):
            for hit in hits:
                doc_id, title, text = hit_document(hit, corpus)
                if doc_id is None:
                    without_id += 1
                elif text or title:  # a title-only document is retrieved by its title, as in a BEIR file and the reindex
                    if doc_id in docs:
                        raise GenqError(f"index '{corpus.source_index}': duplicate id '{doc_id}' in field '{corpus.id_field}'")
                    docs[doc_id] = {"title": title, "text": text}
                    with_text += bool(text)
                else:
                    without_text += 1
            progress.update(len(hits))
    except GenqError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. the cluster went away mid-read
        raise cluster.explain(exc, f"reading '{corpus.source_index}'") from None
    finally:
        progress.close()
    read = len(docs) + without_text + without_id
    if read and not with_text:  # titles alone everywhere: the text fields are misnamed
        raise GenqError(f"index '{corpus.source_index}': none of its {read} documents has text in "
                        f"{', '.join(corpus.text_fields)} (set corpus.text_fields to the fields that hold the text)")
    if not docs:
        raise GenqError(f"index '{corpus.source_index}' has no documents")
    if without_id:
        raise GenqError(f"index '{corpus.source_index}': {without_id} documents have no '{corpus.id_field}' (corpus.id_field)")
    if without_text:
        logger.warning("index '%s': %d of %d documents have neither a title nor text in %s and are left out", corpus.source_index,
                       without_text, read, ", ".join(corpus.text_fields))
    logger.info("read %d documents from '%s' (%s)", len(docs), corpus.source_index, ", ".join(indices))
    return SourceCorpus(docs, index_fingerprint(identity, corpus))


def describe_source(corpus: CorpusConfig) -> str:
    return f"index '{corpus.source_index}'" if corpus.source_index else str(Path(corpus.path))
