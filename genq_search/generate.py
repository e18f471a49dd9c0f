"""Synthetic query generation (GenQ / GPL stage 1): a seq2seq doc2query model or a few-shot causal LM.

Output in BEIR style inside the stage directory: ``gen-queries.jsonl`` and ``gen-qrels/train.tsv`` (query -> source
document) for training, and a synthetic dev set ``dev-queries.jsonl`` + ``dev-qrels/dev.tsv`` generated for documents
set aside from training (chosen by seed) and kept only where the query has a lexical gap to its source (see
``dev_filter``). Work is done in chunks written atomically to ``chunks/`` (``dev/chunks/`` for the dev set); each
batch of a chunk is sampled from a seed derived from ``seed``, the chunk and the batch's position in it, so an
interrupted run resumes where it stopped and, at the same ``batch_size``, gives exactly the output of an
uninterrupted one. ``batch_size`` is kept out of the settings hash on purpose: a run stopped by lack of memory
resumes at a smaller batch without regenerating its finished chunks (the remaining ones then sample differently).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import random
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from genq_search.config import GenerateConfig
from genq_search.data import (
    MANIFEST,
    Corpus,
    Qrels,
    Queries,
    chunk_file,
    corpus_fingerprint,
    fingerprint,
    iter_jsonl,
    mark_stage_complete,
    prepare_chunks,
    read_manifest,
    read_qrels,
    read_queries,
    stage_is_complete,
    write_jsonl,
    write_qrels,
)
from genq_search.encoders import pick_device, usable_cores
from genq_search.errors import GenqError
from genq_search.models import is_gguf, resolve_model
from genq_search.passages import PassageWindows, document_text

logger = logging.getLogger(__name__)

GPL_TOTAL_QUERIES = 250_000
POST_PROCESSING = {"min_query_words", "max_query_words", "filter_top_k", "filter_model", "dev_max_overlap"}
TRAINING_SIDE = {"queries_per_passage", "samples_per_passage", "passage_windows", "max_passages"}  # the dev set is sized apart
RUN_ONLY = {"device", "batch_size", "threads", "ray", "ray_workers"}  # how a run goes, not what it writes: never hashed
OPTIONAL_OFF: dict[str, Any] = {"samples_per_passage": None, "passage_windows": False}
# a runtime whose queries for the same settings changed keeps a new key in the settings hash, so chunks written
# before are regenerated rather than mixed with new ones (llama.cpp: batched sequences and its own sampler)
RUNTIME_KEYS = {"llama.cpp": "llama.cpp/batched"}
LLAMA_IN_FLIGHT = 16  # documents decoded together at most by llama.cpp (3 queries each: ~48 tokens per step; best of 8/16/32)
POSITIVES = "gen-positives.jsonl"  # passage_windows: each query's window, the positive it trains on
DEV_QUERIES_PER_DOCUMENT = 3  # at most: several near-duplicate queries of one document add little to a dev set
DEV_EXPECTED_SURVIVAL = 0.2  # share of dev candidates assumed to pass the lexical-gap filter when sizing the pool
DEV_MAX_SHARE = 0.2  # of the corpus set aside for the dev set, unless max_passages leaves more documents unused
DEV_SEED_OFFSET = 50_021  # dev chunks draw from their own seed stream
STOP_WORDS = frozenset({
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at", "be",
    "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does",
    "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her",
    "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself",
    "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or",
    "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than",
    "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those",
    "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which",
    "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves",
})
WORD = re.compile(r"\w+")
DEV_QUERIES = "dev-queries.jsonl"
DEV_QRELS = "dev-qrels/dev.tsv"
DEFAULT_PROMPT = (
    "Example 1:\nDocument: The Manhattan Project was a research and development undertaking during World War II that "
    "produced the first nuclear weapons.\nRelevant query: who led the development of the first nuclear weapons\n\n"
    "Example 2:\nDocument: Vitamin D helps the body absorb calcium; deficiency can lead to soft, weak bones "
    "(rickets in children, osteomalacia in adults).\nRelevant query: what does vitamin d deficiency cause\n\n"
    "Example 3:\nDocument: {document}\nRelevant query:"
)


def read_positives(generate_dir: Path) -> dict[str, str]:
    """The passage window each query was written for (``passage_windows``; empty when queries are per document)."""
    path = Path(generate_dir) / POSITIVES
    return {row["_id"]: row["text"] for _, row in iter_jsonl(path)} if path.is_file() else {}


def read_generated(generate_dir: Path, corpus: Corpus) -> tuple[Queries, Qrels]:
    """Generated queries and their source documents; a source missing from the corpus is an error naming the query."""
    qrels_path = Path(generate_dir) / "gen-qrels" / "train.tsv"
    queries = read_queries(Path(generate_dir) / "gen-queries.jsonl")
    qrels = read_qrels(qrels_path)
    for qid, judged in qrels.items():
        if qid not in queries:
            raise GenqError(f"{qrels_path}: query '{qid}' is not in gen-queries.jsonl")
        missing = [d for d in judged if d not in corpus]
        if missing:
            raise GenqError(f"{qrels_path}: the positive {missing[0]!r} of query '{qid}' is not in the corpus")
    return queries, qrels


class QueryGenerator(Protocol):
    """``per_document`` queries for each document. Over-generation (``samples_per_passage``) also needs
    ``generate_with_likelihood(documents, per_document, seed) -> [[(query, mean token log-probability), ...], ...]``,
    which the built-in generators have."""

    def generate(self, documents: list[str], per_document: int, seed: int) -> list[list[str]]: ...


def mean_log_likelihood(logp: Any, lengths: list[int]) -> list[float]:
    """Length-normalised log-likelihood: the mean of each row's first ``lengths[row]`` token log-probabilities
    (``logp``: rows x steps); ``-inf`` for a row without tokens."""
    import torch

    steps = logp.shape[1]
    mask = torch.arange(steps, device=logp.device)[None, :] < torch.tensor(lengths, device=logp.device)[:, None]
    total = torch.where(mask, logp, torch.zeros_like(logp)).sum(1)
    count = mask.sum(1)
    return [float(t / c) if c else float("-inf") for t, c in zip(total.tolist(), count.tolist(), strict=True)]


class SampledLogProbs:
    """A transformers logits processor that changes nothing and records, for every row, the log-probability of each
    sampled token under the model's logits (before temperature, top-k and top-p, which generate() applies after
    user processors): called before each sampling step, it learns the previous step's tokens from the input ids.
    Keeps one ``rows x vocab`` step at a time, where ``output_logits`` would keep every step (GBs for a 262K vocab)."""

    def __init__(self) -> None:
        self.previous: Any = None
        self.steps: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), -1)
        return scores

    def logp(self, rows: int) -> Any:
        """rows x recorded steps (the last sampled token is never recorded: no step follows it)."""
        import torch

        return torch.stack(self.steps, 1) if self.steps else torch.zeros((rows, 0))


def _token_ids(value: Any) -> set[int]:
    return set() if value is None else {int(v) for v in value} if isinstance(value, list | tuple) else {int(value)}


def _group(items: list[Any], per_document: int) -> list[list[Any]]:
    return [items[i : i + per_document] for i in range(0, len(items), per_document)]


class _TransformersGenerator:
    """The two transformers generators' public side: ``_generate`` returns every document's samples in order (and
    their likelihoods when asked), grouped here per document."""

    def _generate(self, documents: list[str], per_document: int, seed: int, likelihood: bool) -> tuple[list[str], list[float]]:
        raise NotImplementedError

    def generate(self, documents: list[str], per_document: int, seed: int) -> list[list[str]]:
        return _group(self._generate(documents, per_document, seed, False)[0], per_document)

    def generate_with_likelihood(self, documents: list[str], per_document: int, seed: int) -> list[list[tuple[str, float]]]:
        texts, scores = self._generate(documents, per_document, seed, True)
        return _group(list(zip(texts, scores, strict=True)), per_document)


def _sampling(cfg: GenerateConfig) -> dict[str, Any]:
    return {"do_sample": True, "top_p": cfg.top_p, "top_k": cfg.top_k, "temperature": cfg.temperature,
            "max_new_tokens": cfg.max_new_tokens}


class Seq2SeqGenerator(_TransformersGenerator):
    """doc2query T5/BART (default ``BeIR/query-gen-msmarco-t5-base-v1``)."""

    def __init__(self, path: str, cfg: GenerateConfig):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.cfg, self.device = cfg, pick_device(cfg.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(path).to(self.device).eval()

    def _generate(self, documents: list[str], per_document: int, seed: int, likelihood: bool) -> tuple[list[str], list[float]]:
        import torch

        torch.manual_seed(seed)
        inputs = self.tokenizer(documents, truncation=True, max_length=self.cfg.max_input_tokens, padding=True,
                                return_tensors="pt", return_token_type_ids=False).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, num_return_sequences=per_document, **_sampling(self.cfg),
                                      **({"output_logits": True, "return_dict_in_generate": True} if likelihood else {}))
        sequences = out.sequences if likelihood else out
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        if not likelihood:
            return texts, []
        generated = sequences[:, 1:]  # after the decoder start token; a query ends with its end-of-sequence token
        eos = _token_ids(self.model.generation_config.eos_token_id)
        lengths = [next((i + 1 for i, t in enumerate(row.tolist()) if t in eos), len(row)) for row in generated]
        steps = min(len(out.logits), generated.shape[1])  # T5's vocabulary is small: keeping every step's logits is fine
        logp = torch.stack([torch.log_softmax(out.logits[i].float(), -1).gather(1, generated[:, i : i + 1]).squeeze(1)
                            for i in range(steps)], 1)
        return texts, mean_log_likelihood(logp, lengths)


def load_causal_lm(path: str, device: str) -> tuple[Any, Any]:
    """Tokenizer (left padding) and model of a decoder-only LM from a folder or a ``.gguf`` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    location = Path(path)
    if location.suffix == ".gguf":
        kwargs["gguf_file"], path = location.name, str(location.parent)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()


def prompt_template(cfg: GenerateConfig) -> str:
    """The few-shot prompt of the causal generators (``{document}`` marks where the document goes)."""
    template = cfg.prompt_template or DEFAULT_PROMPT
    if "{document}" not in template:
        raise GenqError("the prompt template must contain '{document}'")
    return template


class CausalGenerator(_TransformersGenerator):
    """InPars-style few-shot prompting of a decoder-only LM (HF id, folder, or a ``.gguf`` file)."""

    def __init__(self, path: str, cfg: GenerateConfig):
        self.cfg, self.device = cfg, pick_device(cfg.device)
        self.tokenizer, self.model = load_causal_lm(path, self.device)
        probe = self.tokenizer.decode(self.tokenizer("a\nb", add_special_tokens=False)["input_ids"])
        self.stop = {"stop_strings": ["\n"], "tokenizer": self.tokenizer} if "\n" in probe else {}  # end at the line break
        self.template = prompt_template(cfg)

    def _generate(self, documents: list[str], per_document: int, seed: int, likelihood: bool) -> tuple[list[str], list[float]]:
        """Sample ``per_document`` queries per document from one prefill of its prompt: the prompt's KV cache is
        computed once and repeated for the samples (``generate(num_return_sequences=n)`` would copy each prompt
        n times before the forward pass and compute it n times)."""
        import torch

        torch.manual_seed(seed)
        truncated = [self._truncate(d) for d in documents]
        prompts = [self.template.replace("{document}", d) for d in truncated]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False).to(self.device)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        from transformers import LogitsProcessorList

        recorder = SampledLogProbs() if likelihood else None
        with torch.inference_mode():
            # positions as generate() derives them from a left-padded mask; the last prompt token is left for
            # generate() to feed, so that its first step samples from the shared state
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            prefix = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                                use_cache=True, logits_to_keep=1)
            cache = prefix.past_key_values
            cache.batch_repeat_interleave(per_document)
            out = self.model.generate(input_ids=ids.repeat_interleave(per_document, 0), past_key_values=cache,
                                      attention_mask=mask.repeat_interleave(per_document, 0),
                                      pad_token_id=self.tokenizer.pad_token_id, **self.stop, **_sampling(self.cfg),
                                      **({"logits_processor": LogitsProcessorList([recorder])} if recorder else {}))
        generated = out[:, ids.shape[1] :]
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        texts = [t.split("\n")[0] for t in texts]  # the query ends at the first line break
        if recorder is None:
            return texts, []
        ends = _token_ids(self.tokenizer.eos_token_id) | _token_ids(self.tokenizer.pad_token_id)
        lengths = [next((i for i, t in enumerate(row.tolist()) if t in ends or "\n" in self.tokenizer.decode([t])), len(row))
                   for row in generated]  # the query's own tokens: up to the line break or the end of sequence
        return texts, mean_log_likelihood(recorder.logp(len(generated)), lengths)

    def _truncate(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=self.cfg.max_input_tokens)["input_ids"]
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class LlamaCppGenerator:
    """A GGUF causal LM through llama.cpp (``llama-cpp-python``, the ``llama`` extra): its quantised CPU kernels, one
    prefill per document, and the queries of many documents decoded together (continuous batching). The few-shot
    part of the template is evaluated once per context, in a sequence of its own; a document's KV cells start from it
    (``llama_memory_seq_cp`` shares cells, copies nothing) and its remainder is evaluated once, then shared by one
    sequence per query. Each step is one llama.cpp batch: the next token of every unfinished query, plus the prompt of
    any document admitted into the slot of a finished one (up to ``LLAMA_IN_FLIGHT`` documents at a time). A step
    reads all the weights (the 262K-token output projection) whatever its size: on a 2-core Xeon 1 token took 22 ms,
    8 tokens 28 ms, 48 tokens 200 ms.

    Sampling is done here (torch, one seeded generator per query) in ``CausalGenerator``'s order and settings:
    temperature, top-k, top-p (no min-p), so the log-probability of each sampled token under the raw logits is at hand
    for ``generate_with_likelihood``. The queries of a call depend on its documents, the seed and the model only (a
    resumed run regenerates whole chunks, so it writes the queries an uninterrupted run writes).
    """

    def __init__(self, path: str, cfg: GenerateConfig, threads: int | None = None):
        import llama_cpp
        from llama_cpp import Llama

        self.cfg, self.threads = cfg, threads or cfg.threads or usable_cores()
        self.template = prompt_template(cfg)
        with _without_amx_buffers():
            self.llm = Llama(model_path=path, n_ctx=64, n_threads=self.threads, verbose=False)  # weights, tokenizer
        prefix = self.template.split("{document}")[0].encode("utf-8")
        self.prefix = self.llm.tokenize(prefix, add_bos=True, special=False)[:-1]  # its last token may merge with the document's
        self.prompt_budget = len(self._tokens(self.template)) + cfg.max_input_tokens + 16
        self.max_sequences = int(llama_cpp.llama_max_parallel_sequences()) - 1  # one sequence holds the prefix
        self.contexts: dict[tuple[int, int], Any] = {}  # by (slots, queries per document), the prefix evaluated

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _text(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="ignore")

    def generate(self, documents: list[str], per_document: int, seed: int) -> list[list[str]]:
        return [[text for text, _ in row] for row in self._generate(documents, per_document, seed)]

    def generate_with_likelihood(self, documents: list[str], per_document: int, seed: int) -> list[list[tuple[str, float]]]:
        return self._generate(documents, per_document, seed)

    def _generate(self, documents: list[str], per_document: int, seed: int) -> list[list[tuple[str, float]]]:
        import numpy as np

        prompts = []
        for document in documents:
            doc = self._text(self._tokens(document)[: self.cfg.max_input_tokens])
            prompts.append(self.llm.tokenize(self.template.replace("{document}", doc).encode("utf-8"), add_bos=True, special=False))
        rngs = [[np.random.default_rng(zlib.crc32(f"{seed}:{i}:{k}".encode())) for k in range(per_document)] for i in range(len(documents))]
        return self._decode(prompts, rngs)

    def _context(self, slots: int, per_document: int) -> Any:
        """A context for ``slots`` documents of ``per_document`` queries, the prefix evaluated in its extra last
        sequence. Unified KV cells, no more than needed: every query attends over all cells up to the highest in use
        (masked), so spare cells would cost time (one stream per sequence measured slower: the prompt is copied)."""
        sequences = slots * per_document
        if (slots, per_document) not in self.contexts:
            import llama_cpp
            from llama_cpp._internals import LlamaContext

            params = llama_cpp.llama_context_default_params()
            params.n_ctx = len(self.prefix) + slots * self.prompt_budget + sequences * (self.cfg.max_new_tokens + 1)
            params.n_batch = params.n_ubatch = 512
            params.n_seq_max, params.kv_unified = sequences + 1, True
            params.n_threads = params.n_threads_batch = self.threads
            context = LlamaContext(model=self.llm._model, params=params, verbose=False)
            self._eval(context, [(t, p, sequences, False) for p, t in enumerate(self.prefix)])
            self.contexts[slots, per_document] = context
        return self.contexts[slots, per_document]

    def _eval(self, context: Any, entries: list[tuple[int, int, int, bool]]) -> Any:
        """Evaluate ``(token, position, sequence, keep logits)`` entries in batches; the logits asked for, one row each
        in order (a view of llama.cpp's buffer, valid until the next evaluation, when one batch held them all)."""
        import llama_cpp
        import numpy as np

        n_vocab, out = self.llm.n_vocab(), []
        for start in range(0, len(entries), 512):
            part = entries[start : start + 512]
            batch = llama_cpp.llama_batch_init(len(part), 0, 1)
            try:
                for j, (token, position, sequence, logits) in enumerate(part):
                    batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = token, position, 1, logits
                    batch.seq_id[j][0] = sequence
                batch.n_tokens = len(part)
                if llama_cpp.llama_decode(context.ctx, batch) != 0:
                    raise GenqError("llama.cpp could not evaluate a batch (context too small?)")
                rows = sum(entry[3] for entry in part)
                if rows:
                    out.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits(context.ctx), shape=(rows, n_vocab)))
            finally:
                llama_cpp.llama_batch_free(batch)
        return out[0] if len(out) == 1 else np.concatenate(out) if out else np.zeros((0, n_vocab), dtype=np.float32)

    def _decode(self, prompts: list[list[int]], rngs: list[list[Any]]) -> list[list[tuple[str, float]]]:
        """The queries of each prompt (one per generator in its ``rngs`` row), continuously batched: up to
        ``LLAMA_IN_FLIGHT`` documents at a time, one llama.cpp batch per step holding the next token of every unfinished
        query and the prompt of any document admitted into a slot freed by a finished one."""
        import llama_cpp

        per_document, length = len(rngs[0]), len(self.prefix)
        slots = max(1, min(len(prompts), LLAMA_IN_FLIGHT, self.max_sequences // per_document))
        context = self._context(slots, per_document)
        memory, vocab = llama_cpp.llama_get_memory(context.ctx), self.llm._model.vocab
        prefix_seq = slots * per_document
        for s in range(prefix_seq):
            llama_cpp.llama_memory_seq_rm(memory, s, -1, -1)
        out: list[list[tuple[int, str, float]]] = [[] for _ in prompts]  # (query number, text, mean log-probability)
        pending = list(range(len(prompts)))[::-1]
        free = list(range(slots))[::-1]
        doc_of: dict[int, int] = {}  # slot -> document
        tokens: dict[int, list[int]] = {}  # sequence -> sampled tokens, while the sequence runs
        logprobs: dict[int, list[float]] = {}
        while pending or tokens:
            entries, admitted = [], []
            for s, sampled in tokens.items():
                slot = s // per_document
                entries.append((sampled[-1], len(prompts[doc_of[slot]]) + len(sampled) - 1, s, True))
            while pending and free:
                slot, d = free.pop(), pending.pop()
                doc_of[slot], first, prompt = d, slot * per_document, prompts[d]
                shared = prompt[:length] == self.prefix  # else the document merged with the prefix's last token
                if shared:
                    llama_cpp.llama_memory_seq_cp(memory, prefix_seq, first, -1, -1)
                entries += [(t, p, first, p == len(prompt) - 1) for p, t in enumerate(prompt) if p >= length or not shared]
                admitted.append(slot)
            logits = self._eval(context, entries)
            for slot in admitted:
                first = slot * per_document
                for s in range(first + 1, first + per_document):
                    llama_cpp.llama_memory_seq_cp(memory, first, s, -1, -1)
            rows = list(tokens)  # logits rows: running sequences first, then one per admitted document
            order = rows + [slot * per_document + k for slot in admitted for k in range(per_document)]
            picks = list(range(len(rows))) + [len(rows) + i for i, _ in enumerate(admitted) for _ in range(per_document)]
            sampled, scores = _sample(logits[picks], [rngs[doc_of[s // per_document]][s % per_document] for s in order], self.cfg)
            for s, token, logprob in zip(order, sampled, scores, strict=True):
                run = tokens.setdefault(s, [])
                run.append(token)
                text = self._text(run)
                ended = "\n" in text or llama_cpp.llama_vocab_is_eog(vocab, token)  # that token is not part of the query
                if ended:
                    text = text.split("\n")[0] if "\n" in text else self._text(run[:-1])
                else:
                    logprobs.setdefault(s, []).append(logprob)
                if ended or len(run) == self.cfg.max_new_tokens:
                    scored = logprobs.pop(s, [])
                    slot = s // per_document
                    out[doc_of[slot]].append((s % per_document, text, sum(scored) / len(scored) if scored else float("-inf")))
                    del tokens[s]
                    llama_cpp.llama_memory_seq_rm(memory, s, -1, -1)
                    if len(out[doc_of[slot]]) == per_document:
                        free.append(slot)
        return [[(text, score) for _, text, score in sorted(row)] for row in out]


def _sample(logits: Any, rngs: list[Any], cfg: GenerateConfig) -> tuple[list[int], list[float]]:
    """One token per row of ``logits`` by temperature, top-k and top-p sampling (transformers' order; row ``i`` draws
    from ``rngs[i]``), and each token's log-probability under the raw logits. torch, all rows at once."""
    import torch

    x = torch.from_numpy(logits)
    if cfg.temperature <= 0:
        tokens = x.argmax(dim=1)
    else:
        k = cfg.top_k if 0 < cfg.top_k < x.shape[1] else x.shape[1]
        values, ids = torch.topk(x, k, dim=1)  # best first; the temperature does not change the order
        probs = torch.softmax(values.double() / cfg.temperature, dim=1)
        keep = (probs.cumsum(dim=1) < cfg.top_p).sum(dim=1, keepdim=True) + 1 if cfg.top_p < 1 else torch.full((len(x), 1), k)
        probs = probs * (torch.arange(k) < keep)
        cumulative = (probs / probs.sum(dim=1, keepdim=True)).cumsum(dim=1)
        draws = torch.tensor([[rng.random()] for rng in rngs], dtype=torch.float64)
        choice = torch.minimum((cumulative <= draws).sum(dim=1, keepdim=True), keep - 1)
        tokens = ids.gather(1, choice).squeeze(1)
    scores = x.gather(1, tokens[:, None]).squeeze(1).double() - torch.logsumexp(x, dim=1).double()
    return tokens.tolist(), scores.tolist()


@contextlib.contextmanager
def _without_amx_buffers() -> Any:
    """Load llama.cpp models without ggml's extra weight buffers where the build uses AMX: the AMX buffer crashes the
    process (SIGSEGV in ``ggml_backend_amx_mul_mat``) at the first batched evaluation of Q4_K weights on some AMX CPUs
    (seen here on a Xeon with AMX_INT8 and Gemma-3 270M Q4_K_M; ggml-org/llama.cpp#20824, closed unfixed). The plain
    CPU kernels run instead. llama-cpp-python has no argument for ``use_extra_bufts``, so the library's default model
    parameters are wrapped while the model loads."""
    import llama_cpp

    if b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info():
        yield
        return
    logger.info("llama.cpp: AMX build, loading without extra weight buffers (ggml-org/llama.cpp#20824)")
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def params() -> Any:
        value = defaults()
        value.use_extra_bufts = False
        return value

    llama_cpp.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = defaults


def generation_runtime(cfg: GenerateConfig) -> str:
    """The runtime that will generate (``auto`` resolved without loading anything); part of the settings hash,
    since two runtimes sample different queries from the same seed."""
    if cfg.runtime not in {"auto", "transformers", "llama.cpp"}:
        raise GenqError(f"unknown generate.runtime '{cfg.runtime}' (transformers, llama.cpp or auto)")
    if cfg.runtime != "auto":
        return cfg.runtime
    gguf = is_gguf(cfg.generator)
    if gguf and pick_device(cfg.device) == "cpu" and importlib.util.find_spec("llama_cpp") is not None:
        return "llama.cpp"
    return "transformers"


def load_generator(cfg: GenerateConfig, threads: int | None = None) -> QueryGenerator:
    """The query generator of ``cfg``; ``threads``: llama.cpp's (default: ``cfg.threads``, else every core this
    process may use)."""
    path = resolve_model(cfg.generator, "query generator")
    if generation_runtime(cfg) == "llama.cpp":
        if not path.endswith(".gguf"):
            raise GenqError(f"generate.runtime = 'llama.cpp' needs a .gguf model file, got '{path}'")
        if importlib.util.find_spec("llama_cpp") is None:
            raise GenqError("generate.runtime = 'llama.cpp' needs llama-cpp-python: pip install 'genq-search[llama]'")
        return LlamaCppGenerator(path, cfg, threads)
    kind = cfg.kind
    if kind == "auto":
        if path.endswith(".gguf"):
            kind = "causal"
        else:
            from transformers import AutoConfig

            kind = "seq2seq" if AutoConfig.from_pretrained(path).is_encoder_decoder else "causal"
    if kind not in {"seq2seq", "causal"}:
        raise GenqError(f"unknown generator kind '{cfg.kind}' (seq2seq, causal or auto)")
    return Seq2SeqGenerator(path, cfg) if kind == "seq2seq" else CausalGenerator(path, cfg)


def plan_documents(corpus: Corpus, cfg: GenerateConfig, exclude: frozenset[str] = frozenset()) -> tuple[list[str], int]:
    """Training documents to generate for (never one in ``exclude``) and queries per document (GPL rule for
    ``auto``), reproducible for a seed."""
    ids = sorted(d for d in corpus if d not in exclude)
    if cfg.queries_per_passage == "auto":
        per_document = max(3, math.ceil(GPL_TOTAL_QUERIES / len(ids)))
        if 3 * len(ids) > GPL_TOTAL_QUERIES:
            ids = sorted(random.Random(cfg.seed).sample(ids, GPL_TOTAL_QUERIES // 3))
    else:
        try:
            per_document = int(cfg.queries_per_passage)
        except ValueError:
            raise GenqError(f"queries_per_passage must be an integer or 'auto', got {cfg.queries_per_passage!r}") from None
        if per_document < 1:
            raise GenqError("queries_per_passage must be at least 1")
    if cfg.max_passages is not None and len(ids) > cfg.max_passages:
        ids = sorted(random.Random(cfg.seed).sample(ids, cfg.max_passages))
    return ids, per_document


def plan_dev_documents(corpus: Corpus, cfg: GenerateConfig) -> tuple[list[str], int]:
    """Documents set aside for the dev set, in generation order (a permutation seeded by ``seed``), and queries per
    dev document. The pool holds enough documents for ``dev_queries`` if a fifth of the candidates pass the filter,
    capped at a fifth of the corpus unless ``max_passages`` leaves more documents out of training anyway; it is
    excluded from training whether or not generation reaches all of it."""
    if cfg.dev_queries == 0:
        return [], 0
    train_ids, per_document = plan_documents(corpus, cfg)
    per_dev = min(per_document, DEV_QUERIES_PER_DOCUMENT)
    wanted = math.ceil(cfg.dev_queries / per_dev / DEV_EXPECTED_SURVIVAL)
    room = max(int(len(corpus) * DEV_MAX_SHARE), len(corpus) - len(train_ids))
    order = sorted(corpus)
    random.Random(f"dev:{cfg.seed}").shuffle(order)
    return order[: min(wanted, room)], per_dev


def lexical_overlap(query: str, document: str) -> float | None:
    """Share of the query's distinct content words that occur in the document (None when it has none).

    Words are lower-cased ``\\w+`` tokens, what BM25 matches on (no stemming); stop words are left out.
    """
    words = {w for w in WORD.findall(query.lower()) if w not in STOP_WORDS}
    if not words:
        return None
    return len(words & set(WORD.findall(document.lower()))) / len(words)


def dev_filter(query: str, document: str, max_overlap: float) -> tuple[str | None, float | None]:
    """Lexical-gap filter of the dev set: ``(reason dropped or None, overlap)``.

    Generated queries are known-item queries that copy their source's words, so on them BM25 looks stronger than on
    real queries, and a dev set of raw generations picks too much lexical weight (fusions 1.5 and 6.5 nDCG@10 below
    the best on MS MARCO and DBpedia subsets, collections measured outside this repository). Keeping queries of which
    at most 35-50% of the words occur in the source brought the pick within 0.8 of the best on three collections. The filter uses no model,
    neither the bi-encoders it will judge nor BM25's own ranking (which would select against BM25), and it keeps a
    query only if it shares at least one content word with its source, so BM25 always has something to match and
    off-topic generations go. Default cap 0.5: at most half of the content words are in the source (0.4 kept 0.66
    queries per generated document on SciFact, 0.5 kept 1.09 and, with ``labelfree.choose_fusion`` leaning away from
    lexical weight, decided as well: bench/results/labelfree_robust.json).
    """
    overlap = lexical_overlap(query, document)
    if overlap is None:
        return "no_content_word", None
    if overlap == 0:
        return "no_shared_word", overlap
    if overlap > max_overlap:
        return "lexical_overlap", overlap
    return None, overlap


@dataclass
class CleanStats:
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"empty": 0, "too_short": 0, "too_long": 0, "duplicate": 0, "degenerate": 0})


def round_trip_filter(generated: list[tuple[str, str, str]], corpus: Corpus, cfg: GenerateConfig, cache_dir: Path,
                      stats: CleanStats) -> list[tuple[str, str, str]]:
    """Keep a query only if its source document ranks in the top ``filter_top_k`` for it under ``filter_model``
    (round-trip consistency, Alberti et al. 2019; Promptagator)."""
    from genq_search.encoders import encode_passages_cached, load_encoder
    from genq_search.engines.embedded import EmbeddedBackend
    from genq_search.passages import split_documents

    encoder = load_encoder(cfg.filter_model, cfg.device)
    passages = split_documents(corpus, encoder.tokenizer, encoder.max_seq_length, 32)
    backend = EmbeddedBackend()
    backend.index(corpus, passages, encode_passages_cached(encoder, [p.text for p in passages], cache_dir))
    qids = [qid for qid, _, _ in generated]
    hits = backend.vector_search(qids, encoder.encode_queries([q for _, q, _ in generated], progress=True), cfg.filter_top_k or 1)
    kept = [row for row in generated if row[2] in hits[row[0]]]
    stats.dropped["round_trip"] = len(generated) - len(kept)
    stats.kept = len(kept)
    return kept


def most_likely(row: dict[str, Any], cfg: GenerateConfig, stats: CleanStats, keep: int) -> list[str]:
    """The cleaned queries of an over-generated row (``samples_per_passage``), best ``keep`` by the generator's
    length-normalised log-likelihood (Liang et al. 2020); the others are counted as dropped for ``likelihood``."""
    likelihood = {}
    for raw, score in zip(row["candidates"], row["log_likelihood"], strict=True):
        likelihood.setdefault(raw, float("-inf") if score is None else score)
    originals: list[str] = []
    cleaned = clean_queries(row["candidates"], cfg, stats, originals)
    ranked = sorted(range(len(cleaned)), key=lambda i: -likelihood[originals[i]])[:keep]
    dropped = len(cleaned) - len(ranked)
    stats.kept -= dropped
    stats.dropped["likelihood"] = stats.dropped.get("likelihood", 0) + dropped
    return [cleaned[i] for i in sorted(ranked)]


def clean_queries(candidates: list[str], cfg: GenerateConfig, stats: CleanStats, originals: list[str] | None = None) -> list[str]:
    """Strip, drop empty / too short / too long / degenerate (repetitive) and duplicate queries of one document
    (``originals`` receives the raw candidate of each kept query)."""
    kept: list[str] = []
    seen: set[str] = set()
    for raw in candidates:
        query = " ".join(raw.replace("Relevant query:", "").split()).strip(" \"'")
        words = query.split()
        reason = None
        if not query:
            reason = "empty"
        elif len(words) < cfg.min_query_words:
            reason = "too_short"
        elif len(words) > cfg.max_query_words:
            reason = "too_long"
        elif len(words) >= 4 and len({w.lower() for w in words}) / len(words) < 0.5:
            reason = "degenerate"
        elif re.sub(r"\W+", " ", query.lower()).strip() in seen:
            reason = "duplicate"
        if reason:
            stats.dropped[reason] += 1
            continue
        seen.add(re.sub(r"\W+", " ", query.lower()).strip())
        kept.append(query)
        if originals is not None:
            originals.append(raw)
        stats.kept += 1
    return kept


class _LazyGenerator:
    """Loads the query generator on first use, so a run whose chunks all exist never loads it."""

    def __init__(self, cfg: GenerateConfig, generator: QueryGenerator | None):
        self.cfg, self.generator = cfg, generator

    def generate(self, documents: list[str], per_document: int, seed: int, likelihood: bool = False) -> list[list[Any]]:
        self.generator = self.generator or load_generator(self.cfg)
        if likelihood and not hasattr(self.generator, "generate_with_likelihood"):
            raise GenqError(f"generate.samples_per_passage needs a generator that scores its queries; "
                            f"{type(self.generator).__name__} does not")
        return _generate_with_oom_retry(self.generator, documents, per_document, seed, likelihood)


@dataclass(frozen=True)
class Unit:
    """What one prompt is written for: a document, or one passage window of it (``passage_windows``)."""

    doc_id: str
    text: str
    passage: str | None = None


def chunk_rows(generator: _LazyGenerator, units: list[Unit], per_document: int, seed: int, batch_size: int,
               likelihood: bool = False, progress: Any = None) -> list[dict[str, Any]]:
    """The rows of one chunk: each batch sampled from ``seed`` (the chunk's) plus its position in the chunk, so they
    depend on ``batch_size`` too, and on nothing of the process that runs them."""
    rows = []
    for start in range(0, len(units), batch_size):
        batch = units[start : start + batch_size]
        outputs = generator.generate([u.text for u in batch], per_document, seed + start, likelihood)
        for unit, queries in zip(batch, outputs, strict=True):
            row: dict[str, Any] = {"doc_id": unit.doc_id, **({"passage": unit.passage} if unit.passage else {})}
            if likelihood:
                row["candidates"] = [q for q, _ in queries]
                row["log_likelihood"] = [score if math.isfinite(score) else None for _, score in queries]
            else:
                row["candidates"] = queries
            rows.append(row)
        if progress is not None:
            progress.update(len(batch))
    return rows


def chunk_seed(seed: int, n: int) -> int:
    return seed + n * 100_003


def _ensure_chunks(generator: _LazyGenerator, chunk_dir: Path, chunks: list[list[Unit]], per_document: int, seed: int,
                   batch_size: int, progress: Any, likelihood: bool = False) -> Iterator[tuple[int, bool]]:
    """``(n, generated now)`` for every chunk in order, generating those whose file is missing (on the Ray cluster
    ``generate.ray`` when set: same rows, the driver writes them). A caller that stops early leaves later chunks
    unwritten or, on Ray, written: the same rows either way."""
    missing = [n for n in range(len(chunks)) if not chunk_file(chunk_dir, n).is_file()]
    todo = set(missing)
    if generator.cfg.ray and missing:
        from genq_search.distributed import generate_on_ray

        yield from generate_on_ray(generator.cfg, chunk_dir, chunks, missing, per_document, seed, batch_size,
                                   progress, likelihood)
        return
    for n, units in enumerate(chunks):
        if n in todo:
            write_jsonl(chunk_file(chunk_dir, n), chunk_rows(generator, units, per_document, chunk_seed(seed, n),
                                                              batch_size, likelihood, progress))
        else:
            progress.update(len(units))
        yield n, n in todo


def _generate_dev_set(cfg: GenerateConfig, corpus: Corpus, stage_dir: Path, pool: list[str], per_dev: int, shaping: list[Any],
                      generator: _LazyGenerator, overwrite: bool) -> tuple[list[tuple[str, str, str, float]], dict[str, Any]]:
    """Dev queries ``(qid, query, doc_id, overlap)`` for the first documents of ``pool``: chunk by chunk until
    ``dev_queries`` pass clean-up and the lexical-gap filter (the stopping point depends on the chunks' contents
    only, so a resumed run stops where an uninterrupted one does)."""
    chunk_dir = prepare_chunks(stage_dir / "dev", fingerprint([*shaping, pool, per_dev, "dev"]), cfg.model_dump(mode="json"), overwrite)
    chunks = [pool[i : i + cfg.chunk_size] for i in range(0, len(pool), cfg.chunk_size)]
    stats = CleanStats()
    stats.dropped.update({"no_content_word": 0, "no_shared_word": 0, "lexical_overlap": 0})
    kept: list[tuple[str, str, str, float]] = []
    documents = without_query = generated = 0
    units = [[Unit(d, document_text(corpus[d])) for d in doc_ids] for doc_ids in chunks]
    with tqdm(total=len(pool), desc="generate dev queries", unit="doc") as progress, \
            contextlib.closing(_ensure_chunks(generator, chunk_dir, units, per_dev, cfg.seed + DEV_SEED_OFFSET, cfg.batch_size,
                                   progress)) as made:
        for n, fresh in made:
            generated += len(chunks[n]) * fresh
            for line in chunk_file(chunk_dir, n).read_text(encoding="utf-8").splitlines():
                if len(kept) >= cfg.dev_queries:
                    break
                row = json.loads(line)
                text, before = document_text(corpus[row["doc_id"]]), len(kept)
                for i, query in enumerate(clean_queries(row["candidates"], cfg, stats)):
                    reason, overlap = dev_filter(query, text, cfg.dev_max_overlap)
                    if reason:
                        stats.dropped[reason] += 1
                    else:
                        kept.append((f"dev-{row['doc_id']}-{i}", query, row["doc_id"], overlap or 0.0))
                documents += 1
                without_query += len(kept) == before
            if len(kept) >= cfg.dev_queries:
                break
    kept = kept[: cfg.dev_queries]
    summary = {"queries": len(kept), "target": cfg.dev_queries, "documents": documents, "set_aside_documents": len(pool),
               "documents_without_query": without_query, "queries_per_document": per_dev,
               "max_overlap": cfg.dev_max_overlap, "dropped": stats.dropped, "generated_documents": generated}
    if not kept:
        raise GenqError(f"no dev query passed clean-up and the lexical-gap filter ({stats.dropped}) for "
                        f"{documents} documents: raise generate.dev_max_overlap (now {cfg.dev_max_overlap}), check the "
                        "generator, or set generate.dev_queries = 0")
    if len(kept) < cfg.dev_queries:
        logger.warning("dev set: %d of the %d queries asked for (all %d set-aside documents used); raise "
                       "generate.dev_max_overlap or generate.dev_queries for more", len(kept), cfg.dev_queries, len(pool))
    return kept, summary


def _hashed(cfg: GenerateConfig, exclude: set[str]) -> dict[str, Any]:
    """The settings that shape the output, without options left at their off default (added later: runs written
    before them are still recognised as finished)."""
    off = {name for name, default in OPTIONAL_OFF.items() if getattr(cfg, name) == default}
    return cfg.hashed(exclude | off)


def run_generate(cfg: GenerateConfig, corpus: Corpus, stage_dir: Path, generator: QueryGenerator | None = None,
                 overwrite: bool = False, windows: PassageWindows | None = None) -> dict[str, Any]:
    """Generate training queries (and the dev set) for the corpus into ``stage_dir``; finished chunks are reused on a
    rerun. Nothing is written to the output files before every query is in hand; the manifest is written last.
    ``windows``: how the index splits documents (``passage_windows``; see ``pipeline.generation_windows``)."""
    stage_dir = Path(stage_dir)
    if cfg.passage_windows and windows is None:
        raise GenqError("generate.passage_windows needs the index's passage windows (run it through `genq-search generate` or `adapt`)")
    corpus_hash = corpus_fingerprint(corpus)
    runtime = generation_runtime(cfg)
    source = [RUNTIME_KEYS.get(runtime, runtime), corpus_hash, *([windows.key] if cfg.passage_windows and windows else [])]
    settings = fingerprint([_hashed(cfg, RUN_ONLY), *source])
    if stage_is_complete(stage_dir, settings) and not overwrite:
        logger.info("generate: complete in %s, skipping", stage_dir)
        return read_manifest(stage_dir)
    (stage_dir / MANIFEST).unlink(missing_ok=True)  # outputs of other settings are not complete from here on
    dev_pool, per_dev = plan_dev_documents(corpus, cfg)
    ids, per_document = plan_documents(corpus, cfg, exclude=frozenset(dev_pool))
    samples = cfg.samples_per_passage or per_document
    if samples < per_document:
        raise GenqError(f"generate.samples_per_passage ({samples}) must be at least queries_per_passage ({per_document})")
    # chunks hold raw generations: clean-up and filter settings may change without regenerating them; the dev set's
    # chunks depend on its own documents and sampling only, so training-side options do not regenerate it
    shaping = [_hashed(cfg, POST_PROCESSING | RUN_ONLY), *source]
    dev_shaping = [cfg.hashed(POST_PROCESSING | TRAINING_SIDE | RUN_ONLY), source[0], corpus_hash]
    lazy = _LazyGenerator(cfg, generator)
    started = time.perf_counter()
    dev: list[tuple[str, str, str, float]] = []
    dev_summary: dict[str, Any] | None = None
    if dev_pool:
        dev, dev_summary = _generate_dev_set(cfg, corpus, stage_dir, dev_pool, per_dev, dev_shaping, lazy, overwrite)
    elif cfg.dev_queries:
        logger.warning("the corpus is too small to set documents aside for a dev set")
    chunk_dir = prepare_chunks(stage_dir, fingerprint(shaping), cfg.model_dump(mode="json"), overwrite)
    split = windows.split({d: corpus[d] for d in ids}) if cfg.passage_windows and windows else []
    units = [Unit(w.doc_id, w.text, w.id) for w in split] if split else [Unit(d, document_text(corpus[d])) for d in ids]
    chunks = [units[i : i + cfg.chunk_size] for i in range(0, len(units), cfg.chunk_size)]
    generated_units = 0
    with tqdm(total=len(units), desc="generate queries", unit="passage" if cfg.passage_windows else "doc") as progress:
        for n, fresh in _ensure_chunks(lazy, chunk_dir, chunks, samples, cfg.seed, cfg.batch_size, progress,
                                       likelihood=bool(cfg.samples_per_passage)):
            generated_units += len(chunks[n]) * fresh
    seconds = time.perf_counter() - started
    stats = CleanStats()
    generated: list[tuple[str, str, str]] = []  # (qid, query, doc_id)
    positives: dict[str, str] = {}  # qid -> the passage window it was written for (passage_windows)
    window_text = {w.id: w.text for w in split}
    for n in range(len(chunks)):
        for line in chunk_file(chunk_dir, n).open(encoding="utf-8"):
            row = json.loads(line)
            kept = most_likely(row, cfg, stats, per_document) if cfg.samples_per_passage else clean_queries(row["candidates"], cfg, stats)
            unit = row.get("passage", row["doc_id"])
            for i, query in enumerate(kept):
                generated.append((f"genq-{unit}-{i}", query, row["doc_id"]))
                if "passage" in row:
                    positives[f"genq-{unit}-{i}"] = row["passage"]
    seen_ids: set[str] = set()
    for qid, _, _ in generated:  # e.g. a document whose id looks like another's window id ('doc#1')
        if qid in seen_ids:
            raise GenqError(f"two generated queries would share the id '{qid}': rename the document whose id ends in '#<n>'")
        seen_ids.add(qid)
    if cfg.filter_top_k:
        generated = round_trip_filter(generated, corpus, cfg, stage_dir.parent / "embeddings", stats)
    if not generated:
        raise GenqError(f"no query survived clean-up ({stats.dropped}); check the generator and the length bounds")
    without_query = len(ids) - len({doc_id for _, _, doc_id in generated})
    if without_query:
        logger.info("no training query survived for %d of %d documents (%s)", without_query, len(ids), stats.dropped)
    write_jsonl(stage_dir / "gen-queries.jsonl", ({"_id": qid, "text": query} for qid, query, _ in generated))
    write_qrels(stage_dir / "gen-qrels" / "train.tsv", {qid: {doc_id: 1} for qid, _, doc_id in generated})
    if positives:
        write_jsonl(stage_dir / POSITIVES, ({"_id": qid, "passage": positives[qid], "text": window_text[positives[qid]]}
                                            for qid, _, _ in generated))
    else:  # the windows of earlier settings must not be read as this run's
        (stage_dir / POSITIVES).unlink(missing_ok=True)
    if dev:
        write_jsonl(stage_dir / DEV_QUERIES, ({"_id": qid, "text": q, "overlap": round(o, 4)} for qid, q, _, o in dev))
        write_qrels(stage_dir / DEV_QRELS, {qid: {doc_id: 1} for qid, _, doc_id, _ in dev})
    else:  # a dev set of earlier settings must not be read as this run's
        (stage_dir / DEV_QUERIES).unlink(missing_ok=True)
        (stage_dir / DEV_QRELS).unlink(missing_ok=True)
    dev_docs = dev_summary["generated_documents"] if dev_summary else 0
    made = generated_units * samples + dev_docs * per_dev
    summary = {
        "documents": len(ids), "passages": len(units), "queries_per_passage": per_document, "samples_per_passage": samples,
        "queries": stats.kept, "dropped": stats.dropped, "documents_without_query": without_query,
        "generator": cfg.generator, "runtime": runtime, "seconds_this_run": seconds,
        "passages_per_s": (generated_units + dev_docs) / seconds if made and seconds else None,
        "queries_per_s": made / seconds if made and seconds else None, "dev": dev_summary,
    }
    mark_stage_complete(stage_dir, settings, summary)
    return summary


def _generate_with_oom_retry(generator: Any, texts: list[str], per_document: int, seed: int, likelihood: bool = False) -> list[list[Any]]:
    """On CUDA out-of-memory, halve the batch (same seed per half) and say so."""
    try:
        if likelihood:
            return generator.generate_with_likelihood(texts, per_document, seed)
        return generator.generate(texts, per_document, seed)
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower() or len(texts) == 1:
            raise
        import torch

        torch.cuda.empty_cache()
        half = len(texts) // 2
        logger.warning("out of memory generating %d documents at once; retrying in batches of %d (lower generate.batch_size)", len(texts), half)
        return _generate_with_oom_retry(generator, texts[:half], per_document, seed, likelihood) + \
            _generate_with_oom_retry(generator, texts[half:], per_document, seed + 1, likelihood)
