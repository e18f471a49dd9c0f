"""ONNX export: real torch.onnx export, ONNX Runtime sessions and parity against PyTorch on a tiny bi-encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_texts

from genq_search.encoders import load_encoder
from genq_search.engines.embedded import EmbeddedBackend
from genq_search.errors import GenqError
from genq_search.export import MIN_CALIBRATION, export_bundle
from genq_search.onnx_encoder import OPENVINO_VARIANTS, OnnxEncoder, cpu_has_bf16
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


def test_a_variant_that_misses_parity_stops_the_export_or_is_left_out(tiny_bi_encoder: Path, tmp_path: Path, monkeypatch,
                                                                      caplog) -> None:
    """A required variant below its threshold: one line naming it and its figures, nothing written. An optional one
    (OpenVINO's): the bundle is written without it, the manifest says why, and it loads."""
    from genq_search import export

    monkeypatch.setattr(export, "load_profile", lambda name: {"variants": ["fp32", "int8"], "opset": 17,
                                                              "min_mean_cosine": {"fp32": 0.9999, "int8": 1.01}})
    with pytest.raises(GenqError, match=r"^parity check failed for int8 \(mean cosine [01]\.\d{5} to PyTorch, threshold "
                                        r"1\.01\); nothing written: export with --profile gpu, which does not build it$"):
        export_bundle(str(tiny_bi_encoder), tmp_path / "strict", sample_texts=sample_texts(20))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the bundle nor its work directory
    pytest.importorskip("openvino")
    bf16 = ["openvino-bf16"] if cpu_has_bf16() else []  # runs openvino-fp32's IR, which must then stay
    monkeypatch.setattr(export, "load_profile", lambda name: {
        "variants": ["fp32"], "optional_variants": ["openvino-fp32", *bf16], "opset": 17,
        "min_mean_cosine": {"fp32": 0.9999, "openvino-fp32": 1.01, "openvino-bf16": 0.99}})
    manifest = export_bundle(str(tiny_bi_encoder), tmp_path / "lenient", sample_texts=sample_texts(20), formats=())
    assert manifest == json.loads((tmp_path / "lenient" / "manifest.json").read_text())
    assert list(manifest["variants"]) == ["fp32", *bf16] and manifest["left_out"]["openvino-fp32"]["threshold"] == 1.01
    assert len(list((tmp_path / "lenient").rglob("*.xml"))) == len(list((tmp_path / "lenient").rglob("*.bin"))) == len(bf16)
    assert (tmp_path / "lenient" / "openvino").is_dir() == bool(bf16)  # no empty folder left behind
    assert "openvino-fp32 (mean cosine" in caplog.text and "left out of the bundle" in caplog.text
    assert OnnxEncoder(tmp_path / "lenient", provider="cpu").variant in ("fp32", *bf16)
    for variant in ["fp32", *bf16]:  # every variant kept loads, its checksums verified
        assert OnnxEncoder(tmp_path / "lenient", variant=variant, provider="cpu").encode_queries(["a query"]).shape == (1, 32)
    from typer.testing import CliRunner

    from genq_search.cli import app

    done = CliRunner().invoke(app, ["export", "--model", str(tiny_bi_encoder), "--out", str(tmp_path / "cli"), "--formats", ""])
    assert done.exit_code == 0, done.output
    assert "openvino-fp32: left out, mean cosine" in done.output and "below its threshold 1.01" in done.output


def test_a_variant_is_chosen_with_the_at_suffix(bundle: Path) -> None:
    assert load_encoder(f"onnx:{bundle}@fp32", device="cpu").variant == "fp32"
    assert load_encoder(f"onnx:{bundle}@int8", device="cpu").variant == "int8"
    with pytest.raises(GenqError, match="not an ONNX bundle|no such|does not exist|not found"):
        load_encoder(f"onnx:{bundle}@nope", device="cpu")  # not a variant name: part of the path


def test_the_fastest_variant_whose_runtime_is_installed_is_chosen(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    """Auto choice: the variant measured fastest at export among those that passed parity; a bundle whose fastest
    variant is OpenVINO's falls back to ONNX Runtime's fastest where OpenVINO is not installed, and says so."""
    from genq_search import onnx_encoder

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
    monkeypatch.setattr(onnx_encoder, "cpu_has_bf16", lambda: False)  # a CPU without bf16: the next fastest
    assert OnnxEncoder(fast, provider="cpu").variant == "openvino-int8"
    monkeypatch.setattr(onnx_encoder, "openvino_available", lambda: False)
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


def test_fp16_is_built_for_the_gpu_and_keeps_a_parity_reference(bundle: Path, tiny_bi_encoder: Path) -> None:
    import onnx

    graph = onnx.load(str(bundle / "model.fp16.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert "Attention" in ops and "SkipLayerNormalization" in ops  # ONNX Runtime's transformer fusions
    assert {i.data_type for i in graph.graph.initializer if i.dims and len(i.dims) == 2} == {onnx.TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in graph.graph.input] == [onnx.TensorProto.INT64] * 3
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 in and out
    manifest = json.loads((bundle / "manifest.json").read_text())
    texts = json.loads((bundle / manifest["parity_reference"]["texts"]).read_text())
    vectors = np.load(bundle / manifest["parity_reference"]["vectors"])
    assert texts == TEXTS[:32] and vectors.shape == (32, 32)
    reference = load_encoder(str(tiny_bi_encoder), device="cpu").encode_passages(texts, progress=False)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


def _as_if_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider list a CUDA machine gets; ONNX Runtime without CUDA warns and runs it on the CPU, so every GPU-side
    decision (fp16 chosen, checked at load, IOBinding) runs here on real sessions."""
    from genq_search import onnx_encoder

    monkeypatch.setattr(onnx_encoder, "pick_providers", lambda provider: ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_fp16_is_checked_on_the_device_and_replaced_by_fp32_when_it_fails(bundle: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    _as_if_on_a_gpu(monkeypatch)
    encoder = OnnxEncoder(bundle)
    assert encoder.variant == "fp16" and encoder.io_binding
    assert encoder.device_parity["passed"] and encoder.device_parity["mean_cosine"] >= 0.99
    assert encoder.device_parity["sample"] == 32 and encoder.truncated == 0
    strict = tmp_path / "strict"
    shutil.copytree(bundle, strict)
    manifest = json.loads((strict / "manifest.json").read_text())
    manifest["variants"]["fp16"]["parity"]["threshold"] = 1.01  # fp16 cannot meet it anywhere
    (strict / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        fallback = OnnxEncoder(strict)
    assert fallback.variant == "fp32" and fallback.device_parity["passed"]
    assert "fp16 mean cosine" in caplog.text and "using fp32" in caplog.text
    with pytest.raises(GenqError, match="variant fp16 fails its parity check on CUDAExecutionProvider"):
        OnnxEncoder(strict, variant="fp16")  # asked for by name: refused, not swapped
    (strict / "parity" / "vectors.npy").write_bytes(b"not the vectors")
    with pytest.raises(GenqError, match="parity/vectors.npy is missing, modified or corrupt"):
        OnnxEncoder(strict)
    old = tmp_path / "old"  # a bundle exported before parity references: fp16 cannot be checked, fp32 runs
    shutil.copytree(bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["parity_reference"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert OnnxEncoder(old).variant == "fp32"
    assert OnnxEncoder(old, variant="fp16").variant == "fp16"


def test_io_binding_gives_the_same_vectors(bundle: Path) -> None:
    plain = OnnxEncoder(bundle, variant="fp32", provider="cpu")
    bound = OnnxEncoder(bundle, variant="fp32", provider="cpu", io_binding=True)
    assert not plain.io_binding and bound.io_binding
    np.testing.assert_allclose(bound.encode_passages(TEXTS, batch_size=7, progress=False),
                               plain.encode_passages(TEXTS, batch_size=7, progress=False), atol=1e-6)


@pytest.mark.gpu
def test_the_gpu_paths_on_a_gpu(bundle: Path, tiny_bi_encoder: Path) -> None:
    """On a CUDA machine: the PyTorch GPU loop at each dtype gives the CPU's vectors; where onnxruntime has the CUDA
    provider, the bundle's automatic choice there is fp16, checked on the GPU at load, with IOBinding."""
    import onnxruntime as ort

    reference = load_encoder(str(tiny_bi_encoder), device="cpu").encode_passages(TEXTS, progress=False)
    for dtype, tolerance in (("float32", 0.9999), ("float16", 0.99), ("bfloat16", 0.99)):
        vectors = load_encoder(str(tiny_bi_encoder), device="cuda", dtype=dtype).encode_passages(TEXTS, batch_size=7, progress=False)
        assert (vectors * reference).sum(1).mean() >= tolerance
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA provider (pip install 'genq-search[gpu]')")
    encoder = OnnxEncoder(bundle, provider="cuda")
    assert encoder.variant == "fp16" and encoder.io_binding and encoder.device_parity["passed"]
    assert encoder.session.get_providers()[0] == "CUDAExecutionProvider"
    assert (encoder.encode_passages(TEXTS, progress=False) * reference).sum(1).mean() >= 0.99
