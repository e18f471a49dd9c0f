"""Session fixtures: tiny random models built on the fly (no network), sample data, OpenSearch URL."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "pydocs"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sample_texts(limit: int = 400) -> list[str]:
    rows = [json.loads(line) for line in (SAMPLE / "corpus.jsonl").open()][:limit]
    return [f"{r['title']} {r['text']}" for r in rows] + [json.loads(l)["text"] for l in (SAMPLE / "queries.jsonl").open()]


@pytest.fixture(scope="session")
def wordpiece_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT WordPiece tokenizer trained on the sample corpus (vocabulary ~2K)."""
    from tokenizers import (
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertTokenizerFast

    out = tmp_path_factory.mktemp("wordpiece")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(sample_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=128)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bi_encoder(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer_dir: Path) -> Path:
    """A random 2-layer BERT with mean pooling + normalisation saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    hf_dir = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = st_models.Transformer(str(hf_dir), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, st_models.Pooling(32, "mean"), st_models.Normalize()])
    out = tmp_path_factory.mktemp("tiny-bi-encoder")
    model.save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bi_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bi-encoder exported once for the session: every variant and both ecosystem layouts (copy it to change it)."""
    from genq_search.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(str(tiny_bi_encoder), out, profile="all", sample_texts=sample_texts(60))
    return out


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    """A 6-document BEIR folder with 3 judged queries."""
    docs = [
        ("d1", "Cats", "Cats are small domesticated carnivorous mammals that purr."),
        ("d2", "Dogs", "Dogs are loyal companions and were domesticated from wolves."),
        ("d3", "Python", "Python is a programming language with dynamic typing."),
        ("d4", "", "Rust is a systems programming language focused on memory safety."),
        ("d5", "Tea", "Green tea is made from unoxidised leaves of Camellia sinensis."),
        ("d6", "Coffee", "Coffee is brewed from roasted beans and contains caffeine. " * 30),
    ]
    (tmp_path / "qrels").mkdir()
    with (tmp_path / "corpus.jsonl").open("w") as f:
        for doc_id, title, text in docs:
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    queries = [("q1", "which animal purrs"), ("q2", "memory safe programming language"), ("q3", "caffeine drink")]
    with (tmp_path / "queries.jsonl").open("w") as f:
        for qid, text in queries:
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td4\t1\nq3\td6\t1\n")
    return tmp_path


ENGINES = {"opensearch": "OPENSEARCH_URL", "elasticsearch": "ELASTICSEARCH_URL"}  # engine -> its test node's URL


def engine_cfg(engine: str):
    from genq_search.config import BackendConfig

    url = os.environ.get(ENGINES[engine])
    if not url:
        pytest.skip(f"{ENGINES[engine]} is not set (scripts/test.sh starts a local {engine} node)")
    return BackendConfig(engine=engine, url=url, replicas=0, ef_search=512)


@pytest.fixture(scope="session", params=list(ENGINES))
def cfg(request: pytest.FixtureRequest):
    """Connection settings of a test cluster: the same test on every engine (OPENSEARCH_URL, ELASTICSEARCH_URL;
    scripts/test.sh starts local nodes)."""
    return engine_cfg(request.param)


@pytest.fixture(scope="session")
def opensearch_cfg():
    """The OpenSearch test node alone (for OpenSearch features: ML Commons, neural-search pipelines)."""
    return engine_cfg("opensearch")


def bulk_load(cfg, actions) -> None:
    """Write documents into a test cluster (its engine's bulk helper), then refresh."""
    from genq_search.engines import connect

    cluster = connect(cfg)
    actions = list(actions)
    _, failures, _ = cluster.bulk(actions, "loading test documents", progress=False)
    assert not failures, failures[:3]
    cluster.refresh(sorted({a["_index"] for a in actions}))


CLIENTS: dict[str, object] = {}  # one connection per test cluster and user for the session


def client_of(cfg):
    """The engine client of a test cluster, for tests that set up or inspect indices directly."""
    from genq_search.engines import connect

    key = cfg.model_dump_json()
    if key not in CLIENTS:
        CLIENTS[key] = connect(cfg).client
    return CLIENTS[key]


SECURE = {"opensearch": "OPENSEARCH_SECURE", "elasticsearch": "ELASTICSEARCH_SECURE"}  # engine -> its env prefix


@pytest.fixture(scope="session", params=list(SECURE))
def secure_cfg(request: pytest.FixtureRequest):
    """Admin connection to a secured node (TLS, basic auth, a tiny write queue), on every engine:
    scripts/opensearch-local.sh / elasticsearch-local.sh start --secure (scripts/test.sh starts them and exports
    <ENGINE>_SECURE_URL, _CA, _USERNAME, _PASSWORD)."""
    from genq_search.config import BackendConfig

    prefix = SECURE[request.param]
    url = os.environ.get(f"{prefix}_URL")
    if not url:
        pytest.skip(f"{prefix}_URL is not set (scripts/{request.param}-local.sh start --secure; scripts/test.sh starts it)")
    return BackendConfig(engine=request.param, url=url, ca_certs=os.environ.get(f"{prefix}_CA"), replicas=0,
                         username=os.environ.get(f"{prefix}_USERNAME"), password=os.environ.get(f"{prefix}_PASSWORD"))


def fresh_names(cfg):
    """Index names a test creates, deleted (with their aliases and versions) after it."""
    created: list[str] = []
    yield created
    client = client_of(cfg)
    for name in created:
        client.indices.put_settings(index=f"{name}*", body={"index": {"blocks.write": None}}, ignore_unavailable=True,
                                    allow_no_indices=True, expand_wildcards="all")
        found = client.indices.get(index=f"{name}*", ignore_unavailable=True, allow_no_indices=True, expand_wildcards="all")
        for index in list(getattr(found, "body", found)):  # by name: Elasticsearch refuses wildcard deletes by default
            client.indices.delete(index=index, ignore_unavailable=True)


@pytest.fixture
def names(cfg):
    """Fresh index names on the test cluster, deleted after the test."""
    yield from fresh_names(cfg)


@pytest.fixture
def secure_names(secure_cfg):
    """Fresh index names on the secured drill node, deleted after the test."""
    yield from fresh_names(secure_cfg)


def new_name(names: list[str], prefix: str = "t") -> str:
    import uuid

    name = f"genq-test-{prefix}-{uuid.uuid4().hex[:8]}"
    names.append(name)
    return name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


def tiny_model(factory: pytest.TempPathFactory, tokenizer_dir: Path, name: str, build) -> Path:
    """Save ``build(tokenizer)`` (a random transformers model, seed 0) with the WordPiece tokenizer into a new folder."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = factory.mktemp(name)
    build(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer_dir: Path) -> Path:
    """A random 1-layer T5 (doc2query shape)."""
    from transformers import T5Config, T5ForConditionalGeneration

    return tiny_model(tmp_path_factory, wordpiece_tokenizer_dir, "tiny-t5", lambda tok: T5ForConditionalGeneration(T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id, decoder_start_token_id=tok.pad_token_id)))


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer_dir: Path) -> Path:
    """A random 2-layer Llama-shaped causal LM ([SEP] as end of sequence)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(tok):
        tok.eos_token = "[SEP]"
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id))

    return tiny_model(tmp_path_factory, wordpiece_tokenizer_dir, "tiny-llama", build)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer_dir: Path) -> Path:
    """A random 2-layer BERT with a 1-logit classification head (cross-encoder shape)."""
    from transformers import BertConfig, BertForSequenceClassification

    return tiny_model(tmp_path_factory, wordpiece_tokenizer_dir, "tiny-cross-encoder", lambda tok: BertForSequenceClassification(
        BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=128, num_labels=1)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local two-node Ray cluster (``ray start --head`` and ``ray start --address``, one CPU each), torn down with
    ``ray stop --force``; its address."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'genq-search[ray]'")
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not on PATH (pip install 'genq-search[ray]')")
    temp = tempfile.mkdtemp(prefix="genq-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    # no token authentication on this throw-away cluster (Ray >= 2.5x turns it on where ~/.ray/auth_token exists, e.g.
    # after a `ray.init()` on this machine): the nodes and the test process (the driver) agree on that
    auth = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    before = {k: os.environ.get(k) for k in auth}

    def restore() -> None:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    os.environ.update(auth)
    env = dict(os.environ)
    address = f"127.0.0.1:{free_port()}"
    common = ["--num-cpus", "1", "--disable-usage-stats", "--object-store-memory", str(200 * 2**20)]
    try:
        subprocess.run([ray_cli, "start", "--head", "--port", address.split(":")[1], "--node-ip-address", "127.0.0.1",
                        "--temp-dir", temp, "--include-dashboard", "false", *common],
                       check=True, env=env, capture_output=True, timeout=180)
        subprocess.run([ray_cli, "start", "--address", address, "--node-ip-address", "127.0.0.1", *common],
                       check=True, env=env, capture_output=True, timeout=180)
    except subprocess.CalledProcessError as exc:
        subprocess.run([ray_cli, "stop", "--force"], check=False, capture_output=True, env=env)
        shutil.rmtree(temp, ignore_errors=True)
        restore()
        pytest.fail(f"could not start the local Ray cluster: {exc.stderr.decode()[-1500:]}")
    try:
        yield address
    finally:
        subprocess.run([ray_cli, "stop", "--force"], check=False, capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
        restore()
