"""Bundles: a tiny real bundle is written, opened and run, then tampered with in every way issue 7 lists.

The model is tests/fixtures/tiny_embedder.tflite (1.5 kB, regenerate with
tests/fixtures/make_tiny_tflite.py): input (1, 16, 16, 3) float32 -> mean over pixels ->
(3, 8) matmul + 0.1 -> L2 norm -> (1, 8).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import glassfinder_runtime.bundle as bundle_mod
from glassfinder_runtime.bundle import open_bundle, sha256_path, write_manifest
from glassfinder_runtime.errors import BundleError, ConfigError, GalleryError
from glassfinder_runtime.gallery import Gallery, parse_spec, write_gallery
from glassfinder_runtime.manifest import (
    MANIFEST_NAME,
    PENDING_SHA256,
    ChannelOrder,
    DType,
    EmbedderSettings,
    FileRef,
    GalleryEntry,
    InputSpec,
    Layout,
    Manifest,
    ModelEntry,
    ModelFormat,
    ModelRole,
    Normalization,
    Quantization,
    TensorSpec,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_embedder.tflite"
# The fixture's weights (see make_tiny_tflite.py): embedding = l2norm(mean_pixels @ W + 0.1).
WEIGHTS = np.linspace(-1.0, 1.0, 24, dtype=np.float32).reshape(3, 8)
# float32 TFLite vs the numpy reference of the same three ops.
EMBED_ATOL = 1e-5
D, N, SPEC = 8, 5, "PQ4x8,IP"


def embedder_entry(**changes) -> ModelEntry:
    entry = ModelEntry(
        name=ModelRole.EMBEDDER, file="models/embedder.tflite", sha256=PENDING_SHA256, format=ModelFormat.TFLITE,
        quantization=Quantization.FLOAT32,
        input=InputSpec(name="serving_default_image:0", shape=(1, 16, 16, 3), dtype=DType.FLOAT32, layout=Layout.NHWC,
                        channel_order=ChannelOrder.RGB, normalization=Normalization.RUNTIME,
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        outputs=(TensorSpec(name="PartitionedCall:0", shape=(1, D), dtype=DType.FLOAT32),),
    )
    return dataclasses.replace(entry, **changes)


def make_bundle(root: Path, **entry_changes) -> Manifest:
    """Write model, gallery, SKU list and golden file into root, then the manifest (last)."""
    (root / "models").mkdir(parents=True)
    (root / "gallery").mkdir()
    shutil.copy(FIXTURE, root / "models" / "embedder.tflite")
    rng = np.random.default_rng(0)
    spec = parse_spec(SPEC)
    write_gallery(Gallery(spec=spec, d=D, codebooks=rng.standard_normal((4, 256, 2)).astype(np.float32),
                          codes=rng.integers(0, 256, (N, 4), dtype=np.uint8), ids=np.arange(N, dtype=np.int64)),
                  root / "gallery" / "gallery.gfpq")
    (root / "gallery" / "skus.json").write_text(json.dumps([f"SKU-{i}" for i in range(N)]))
    (root / "golden.npz").write_bytes(b"golden vectors stand-in")
    manifest = Manifest(
        created_by="tests/runtime/test_bundle.py",
        models=(embedder_entry(**entry_changes),),
        embedder=EmbedderSettings(dim=D, l2_normalize=False),
        gallery=GalleryEntry(file="gallery/gallery.gfpq", sha256=PENDING_SHA256, spec=SPEC, d=D, n=N,
                             code_size=4, sku_file="gallery/skus.json", sku_sha256=PENDING_SHA256),
        golden=FileRef(file="golden.npz", sha256=PENDING_SHA256),
    )
    return write_manifest(root, manifest)


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    make_bundle(root)
    return root


@pytest.fixture
def probes(monkeypatch) -> list:
    """Records every batch of model bytes handed to LiteRT (the probe is where models first run)."""
    calls: list = []
    real = bundle_mod.probe_tflite

    def recording(contents, *args, **kwargs):
        calls.append(list(contents))
        return real(contents, *args, **kwargs)

    monkeypatch.setattr(bundle_mod, "probe_tflite", recording)
    return calls


def edit_manifest(root: Path, edit) -> None:
    path = root / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def open_error(path: Path) -> str:
    with pytest.raises(BundleError) as info:
        open_bundle(path)
    return str(info.value)


def test_written_bundle_opens_and_runs(bundle_dir):
    b = open_bundle(bundle_dir)
    entry = b.model("embedder")
    assert entry.sha256 == sha256_path(bundle_dir / "models" / "embedder.tflite")
    assert b.manifest.gallery.sha256 == sha256_path(bundle_dir / "gallery" / "gallery.gfpq")
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["gallery", "golden.npz", MANIFEST_NAME, "models"]
    x = np.random.default_rng(1).random((1, 16, 16, 3), dtype=np.float32)
    interp = b.interpreter("embedder", num_threads=1)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    y = interp.get_tensor(interp.get_output_details()[0]["index"])
    ref = x.mean(axis=(1, 2)) @ WEIGHTS + 0.1
    np.testing.assert_allclose(y, ref / np.linalg.norm(ref), atol=EMBED_ATOL)
    g = b.gallery
    assert (g.d, g.n, str(g.spec)) == (D, N, SPEC) and g.ids.tolist() == list(range(N))
    assert open_bundle(bundle_dir / MANIFEST_NAME).manifest == b.manifest  # the manifest path works too


def test_interpreter_options_are_checked(bundle_dir):
    b = open_bundle(bundle_dir)
    with pytest.raises(ConfigError, match="num_threads"):
        b.interpreter("embedder", num_threads=0)
    with pytest.raises(BundleError, match="no gate model in tflite format"):
        b.interpreter("gate")


def test_folder_without_manifest_is_refused(tmp_path):
    (tmp_path / "models").mkdir()
    shutil.copy(FIXTURE, tmp_path / "models" / "embedder.tflite")
    assert "there is no manifest.json" in open_error(tmp_path)
    assert "no such folder" in open_error(tmp_path / "nowhere")


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "the manifest is empty"),
    ("{not json", "invalid JSON at line 1"),
    ('{"kind": 1, "kind": 2}', "duplicate key 'kind'"),
    ('{"x": NaN}', "NaN is not valid JSON"),
    ("[" * 100_000, "nested too deeply"),
    ('"\udcff"', "not UTF-8"),
    ("1" * 5000, "invalid JSON (Exceeds the limit"),
])
def test_unreadable_manifest(bundle_dir, text, fragment):
    (bundle_dir / MANIFEST_NAME).write_bytes(text.encode("utf-8", "surrogateescape"))
    msg = open_error(bundle_dir)
    assert msg.startswith(str(bundle_dir / MANIFEST_NAME)) and fragment in msg


def test_missing_file(bundle_dir, probes):
    (bundle_dir / "gallery" / "skus.json").unlink()
    msg = open_error(bundle_dir)
    assert "skus.json: missing file" in msg and "gallery.sku_file" in msg
    assert probes == []


def test_models_are_probed_once_from_the_hashed_bytes(bundle_dir, probes):
    open_bundle(bundle_dir)
    assert probes == [[FIXTURE.read_bytes()]]


@pytest.mark.parametrize("victim", ["models/embedder.tflite", "gallery/gallery.gfpq", "golden.npz"])
def test_checksum_mismatch_and_no_model_is_executed(bundle_dir, probes, monkeypatch, victim):
    built: list = []
    monkeypatch.setattr(bundle_mod, "Interpreter", lambda *a, **k: built.append(k))
    path = bundle_dir / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    path.write_bytes(bytes(data))
    msg = open_error(bundle_dir)
    assert msg.startswith(str(path)) and "sha256 mismatch" in msg
    assert probes == [] and built == []  # checksums are all verified before any model is loaded


def test_versions(bundle_dir):
    edit_manifest(bundle_dir, lambda d: d.update(schema_version=2))
    assert "unknown schema_version 2" in open_error(bundle_dir)
    edit_manifest(bundle_dir, lambda d: d.update(schema_version=1, min_reader_version=7))
    assert "upgrade glassfinder" in open_error(bundle_dir)


def test_manifest_field_errors_name_the_file(bundle_dir):
    edit_manifest(bundle_dir, lambda d: d["models"][0]["input"].update(mean=[0.5]))
    msg = open_error(bundle_dir)
    assert msg.startswith(f"{bundle_dir / MANIFEST_NAME}: manifest.models[0].input: mean and std need 3 values")


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda m: m["input"].update(shape=[1, 32, 32, 3]), "input is 'serving_default_image:0' shape [1, 16, 16, 3] float32"),
    (lambda m: m["input"].update(name="image"), "but manifest.json says 'image'"),
    (lambda m: m["outputs"][0].update(dtype="int8", scale=0.5, zero_point=0), "outputs are 'PartitionedCall:0' shape [1, 8] float32"),
    (lambda m: m["outputs"].append({"name": "extra", "shape": [1, 8], "dtype": "float32", "scale": None, "zero_point": None}),
     "outputs are"),
    (lambda m: m.update(quantization="int8"), "says quantization 'int8' but the file's tensors are ['float32', 'int32']"),
    (lambda m: m.update(quantization="w8a8"), "quantization 'w8a8' does not apply to a TFLite model"),
])
def test_manifest_that_disagrees_with_the_model_file(bundle_dir, edit, fragment):
    edit_manifest(bundle_dir, lambda d: edit(d["models"][0]))
    msg = open_error(bundle_dir)
    assert msg.startswith(str(bundle_dir / "models" / "embedder.tflite")) and fragment in msg


def test_write_manifest_refuses_a_disagreeing_model(tmp_path):
    with pytest.raises(BundleError, match="the model file's input is"):
        make_bundle(tmp_path / "b", input=dataclasses.replace(embedder_entry().input, shape=(1, 32, 32, 3)))
    assert not (tmp_path / "b" / MANIFEST_NAME).exists()
    assert [p.name for p in (tmp_path / "b").iterdir() if p.name.startswith(".")] == []  # no temp file left


@pytest.mark.parametrize(("content", "fragment"), [
    (lambda b: (FIXTURE.parent / "litert_segfault.tflite").read_bytes(), "LiteRT crashed on it (SIGSEGV)"),
    (lambda b: b[: len(b) // 2], "not a valid TFLite model"),
    (lambda b: b[:6], "not a TFLite model (no TFL3 identifier"),
    (lambda b: b"", "not a TFLite model"),
    (lambda b: b[:8] + bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)), "not a valid TFLite model"),
])
def test_truncated_or_garbage_tflite_with_matching_checksum(bundle_dir, content, fragment):
    """The checksum matches (the manifest was rebuilt over the bad file): the loader must still refuse.

    litert_segfault.tflite is a fuzzer-found 1.5 kB file on which LiteRT 2.3.0 itself crashes
    with SIGSEGV while loading: it must be a BundleError, and this process must survive."""
    path = bundle_dir / "models" / "embedder.tflite"
    path.write_bytes(content(FIXTURE.read_bytes()))
    edit_manifest(bundle_dir, lambda d: d["models"][0].update(sha256=sha256_path(path)))
    msg = open_error(bundle_dir)
    assert msg.startswith(str(path)) and fragment in msg


def test_symlink_out_of_the_bundle(bundle_dir, tmp_path):
    outside = tmp_path / "elsewhere.npz"
    outside.write_bytes(b"golden vectors stand-in")
    (bundle_dir / "golden.npz").unlink()
    (bundle_dir / "golden.npz").symlink_to(outside)
    assert "points outside the bundle folder" in open_error(bundle_dir)


def test_mlpackage_folder_hash(tmp_path):
    pkg = tmp_path / "embedder.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    (pkg / "Data" / "weights.bin").write_bytes(b"\1\2\3")
    before = sha256_path(pkg)
    assert before == sha256_path(pkg) and len(before) == 64
    (pkg / "Data" / "weights.bin").write_bytes(b"\1\2\4")
    after = sha256_path(pkg)
    (pkg / "Data" / "weights.bin").rename(pkg / "Data" / "weights2.bin")
    assert len({before, after, sha256_path(pkg)}) == 3  # contents and names both count


def test_mlpackage_entry_is_verified(bundle_dir):
    pkg = bundle_dir / "models" / "embedder.mlpackage"
    pkg.mkdir()
    (pkg / "Manifest.json").write_text("{}")
    manifest = open_bundle(bundle_dir).manifest
    coreml = dataclasses.replace(manifest.models[0], file="models/embedder.mlpackage", sha256=PENDING_SHA256,
                                 format=ModelFormat.MLPACKAGE, quantization=Quantization.W8A8)
    written = write_manifest(bundle_dir, dataclasses.replace(manifest, models=manifest.models + (coreml,)))
    assert written.model("embedder", "mlpackage").sha256 == sha256_path(pkg)
    assert open_bundle(bundle_dir).model("embedder", "mlpackage").quantization is Quantization.W8A8
    (pkg / "Manifest.json").write_text('{"changed": true}')
    assert "sha256 mismatch" in open_error(bundle_dir)


def test_write_manifest_checks_given_checksums(bundle_dir):
    manifest = open_bundle(bundle_dir).manifest
    wrong = dataclasses.replace(manifest, golden=FileRef(file="golden.npz", sha256="0" * 64))
    with pytest.raises(BundleError, match="sha256 given for golden does not match"):
        write_manifest(bundle_dir, wrong)
    assert write_manifest(bundle_dir, manifest) == manifest  # already-correct hashes are kept


def test_gallery_header_must_match_the_manifest(bundle_dir):
    edit_manifest(bundle_dir, lambda d: d["gallery"].update(n=N + 1))
    with pytest.raises(GalleryError, match=f"gallery.gfpq: the file has d={D}, n={N}, {SPEC}, code size 4, but "):
        open_bundle(bundle_dir)  # the checksum is fine; the header disagrees


def _set_ids(data: bytes, ids: list[int]) -> bytes:
    """Overwrite the ids section (just before the CRC) and fix the CRC, as a careful forger would."""
    body = data[:-4 - 8 * N] + np.asarray(ids, "<i8").tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(("damage", "fragment"), [
    (lambda b: b"XXXX" + b[4:], "bad magic b'XXXX'"),
    (lambda b: b[:64 + 4 * 256 * 2 * 4 + 4], "truncated in the codes section"),  # header, codebooks, 4 code bytes
    (lambda b: _set_ids(b, [0, 1, 2, 3, -7]), "ids out of range: ids[4] = -7"),
    (lambda b: _set_ids(b, [0, 1, 2, 2, 4]), "duplicate ids"),
])
def test_malformed_gallery_with_matching_checksum(bundle_dir, damage, fragment):
    path = bundle_dir / "gallery" / "gallery.gfpq"
    path.write_bytes(damage(path.read_bytes()))
    edit_manifest(bundle_dir, lambda d: d["gallery"].update(sha256=sha256_path(path)))
    with pytest.raises(GalleryError) as info:
        open_bundle(bundle_dir)
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value)
