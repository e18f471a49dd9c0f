"""ONNX export: real torch.onnx export, ONNX Runtime sessions and parity against PyTorch on a tiny bi-encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_texts

from genq_search.backends.embedded import EmbeddedBackend
from genq_search.encoders import load_encoder
from genq_search.errors import GenqError
from genq_search.export import (
    MIN_CALIBRATION,
    OPENVINO_VARIANTS,
    OnnxEncoder,
    cpu_has_bf16,
    export_bundle,
)
from genq_search.passages import Passage

TEXTS = sample_texts(60)
OV_BUILT = [v for v in OPENVINO_VARIANTS if v != "openvino-bf16" or cpu_has_bf16()]  # bf16 only where the CPU has it


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Path:
    return tiny_bundle


def test_bundle_layout_and_manifest(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "fp16", "int8", *OV_BUILT}  # OpenVINO's: the profile's optional variants
    assert manifest["dimension"] == 32 and manifest["pooling"] == "mean" and manifest["normalize"] is True
    for entry in manifest["variants"].values():
        assert (bundle / entry["file"]).is_file()
        assert entry["runtime"] == ("openvino" if entry["file"].startswith("openvino/") else "onnxruntime")
        assert entry["parity"]["passed"] and entry["parity"]["sample"] == len(TEXTS)
    assert manifest["variants"]["fp32"]["parity"]["mean_cosine"] >= 0.9999
    assert (bundle / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.parametrize(("variant", "tolerance"), [("fp32", 0.9999), ("fp16", 0.99), ("int8", 0.99), ("openvino-fp32", 0.9999),
                                                    ("openvino-bf16", 0.999), ("openvino-int8", 0.99)])
def test_every_variant_matches_pytorch(bundle: Path, tiny_bi_encoder: Path, variant: str, tolerance: float) -> None:
    if variant == "openvino-bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 instructions: openvino-bf16 is not built")
    reference = load_encoder(str(tiny_bi_encoder), device="cpu").encode_passages(TEXTS, progress=False)
    onnx = OnnxEncoder(bundle, variant=variant, provider="cpu")
    vectors = onnx.encode_passages(TEXTS, batch_size=7, progress=False)
    cosine = (vectors * reference).sum(1)
    assert cosine.mean() >= tolerance and cosine.min() >= tolerance - 0.02
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_bundle_reloads_from_another_directory_and_counts_truncation(bundle: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(bundle, moved)
    encoder = load_encoder(f"onnx:{moved}", device="cpu")
    a = encoder.encode_queries(["json parse string"])
    b = OnnxEncoder(bundle, variant=encoder.variant, provider="cpu").encode_queries(["json parse string"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    encoder.encode_passages(["word " * 500], progress=False)
    assert encoder.truncated == 1


def test_checksums_catch_a_modified_file(bundle: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    with (tampered / "model.int8.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(GenqError, match="checksum mismatch for model.int8.onnx"):
        OnnxEncoder(tampered, variant="int8", provider="cpu")
    with (tampered / "openvino" / "model.int8.bin").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(GenqError, match="model.int8.bin is missing, modified or corrupt"):
        OnnxEncoder(tampered, variant="openvino-int8", provider="cpu")
    (tampered / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(GenqError, match="tokenizer file tokenizer.json is missing or modified"):
        OnnxEncoder(tampered, variant="fp32", provider="cpu")


def test_onnx_encoder_gives_the_same_ranking_in_the_embedded_backend(bundle: Path, tiny_bi_encoder: Path) -> None:
    corpus = {f"d{i}": {"title": "", "text": t} for i, t in enumerate(TEXTS[:40])}
    passages = [Passage(d, d, v["text"]) for d, v in corpus.items()]
    queries = TEXTS[40:45]
    rankings = []
    for encoder in (load_encoder(str(tiny_bi_encoder), device="cpu"), OnnxEncoder(bundle, variant="fp32", provider="cpu")):
        backend = EmbeddedBackend()
        backend.index(corpus, passages, encoder.encode_passages([p.text for p in passages], progress=False))
        results = backend.vector_search([str(i) for i in range(5)], encoder.encode_queries(queries), 5)
        rankings.append({q: list(r) for q, r in results.items()})
    assert rankings[0] == rankings[1]


def test_bad_exports_fail_clearly(tmp_path: Path, bundle: Path) -> None:
    with pytest.raises(GenqError, match="exists and is not empty; pass --overwrite"):
        export_bundle("unused", bundle)
    with pytest.raises(GenqError, match="unknown export profile 'tpu'"):
        export_bundle("unused", tmp_path / "x", profile="tpu")
    with pytest.raises(GenqError, match="not an ONNX bundle"):
        OnnxEncoder(tmp_path, provider="cpu")
    with pytest.raises(GenqError, match="provider 'CUDAExecutionProvider' is not available"):
        OnnxEncoder(bundle, provider="cuda")
    assert not (tmp_path / "x").exists()


def test_a_variant_is_chosen_with_the_at_suffix(bundle: Path) -> None:
    assert load_encoder(f"onnx:{bundle}@fp32", device="cpu").variant == "fp32"
    assert load_encoder(f"onnx:{bundle}@int8", device="cpu").variant == "int8"
    with pytest.raises(GenqError, match="not an ONNX bundle|no such|does not exist|not found"):
        load_encoder(f"onnx:{bundle}@nope", device="cpu")  # not a variant name: part of the path


def test_the_fastest_variant_whose_runtime_is_installed_is_chosen(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    """Auto choice: the variant measured fastest at export among those that passed parity; a bundle whose fastest
    variant is OpenVINO's falls back to ONNX Runtime's fastest where OpenVINO is not installed, and says so."""
    from genq_search import export

    fast = tmp_path / "fast"
    shutil.copytree(bundle, fast)
    manifest = json.loads((fast / "manifest.json").read_text())
    for variant, speed in {"fp32": 10.0, "int8": 20.0, "openvino-fp32": 15.0, "openvino-int8": 40.0}.items():
        manifest["variants"][variant]["parity"]["cpu_docs_per_s"] = speed
    manifest["variants"].pop("openvino-bf16", None)
    (fast / "manifest.json").write_text(json.dumps(manifest))
    assert OnnxEncoder(fast, provider="cpu").variant == "openvino-int8"
    manifest["variants"]["openvino-int8"]["parity"]["passed"] = False
    (fast / "manifest.json").write_text(json.dumps(manifest))
    assert OnnxEncoder(fast, provider="cpu").variant == "int8"
    manifest["variants"]["openvino-int8"]["parity"]["passed"] = True
    (fast / "manifest.json").write_text(json.dumps(manifest))
    manifest["variants"]["openvino-bf16"] = {**manifest["variants"]["openvino-fp32"], "precision": "bf16"}
    manifest["variants"]["openvino-bf16"]["parity"] = {**manifest["variants"]["openvino-fp32"]["parity"], "cpu_docs_per_s": 80.0}
    (fast / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(export, "cpu_has_bf16", lambda: False)  # a CPU without bf16: the next fastest
    assert OnnxEncoder(fast, provider="cpu").variant == "openvino-int8"
    monkeypatch.setattr(export, "openvino_available", lambda: False)
    assert OnnxEncoder(fast, provider="cpu").variant == "int8"


def test_openvino_refusals_are_one_clear_line(bundle: Path, tiny_bi_encoder: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(GenqError, match=f"openvino-int8 needs at least {MIN_CALIBRATION} calibration passages from the corpus, got 10"):
        export_bundle(str(tiny_bi_encoder), tmp_path / "few", profile="openvino", sample_texts=TEXTS[:10], formats=())
    assert not (tmp_path / "few").exists() and not list(tmp_path.glob(".export-*"))
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # the extra not installed
    with pytest.raises(GenqError, match=r"pip install 'genq-search\[openvino\]'"):
        OnnxEncoder(bundle, variant="openvino-int8", provider="cpu")
    with pytest.raises(GenqError, match=r"pip install 'genq-search\[openvino\]'"):
        export_bundle(str(tiny_bi_encoder), tmp_path / "none", profile="openvino", sample_texts=TEXTS, formats=())


def test_static_int8_vectors_do_not_depend_on_their_batch(bundle: Path) -> None:
    """openvino-int8 fixes its activation scales at calibration: a passage gets the same vector alone (an ingest
    pipeline, one document per call) as in a batch (the reindex), unlike dynamic int8, which scales per batch."""
    encoder = OnnxEncoder(bundle, variant="openvino-int8", provider="cpu")
    batched = encoder.encode_passages(TEXTS[:40], batch_size=16, progress=False)
    alone = np.vstack([encoder.encode_passages([t], batch_size=1, progress=False) for t in TEXTS[:40]])
    assert (batched * alone).sum(1).min() >= 0.9999


def test_export_creates_missing_parent_folders(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "bundles" / "b"
    export_bundle(str(tiny_bi_encoder), out, profile="gpu", sample_texts=TEXTS[:8], formats=())
    assert (out / "manifest.json").is_file() and not list(out.parent.glob(".export-*"))
