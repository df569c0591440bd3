"""Property tests (hypothesis) for the three parsers of untrusted input: images, manifests, galleries.

The property is the same everywhere: any bytes or JSON give either a valid result or the module's
own error (ImageError / BundleError / GalleryError) — never another exception, a hang or a
crash. Mutations start from valid files, so they reach past the first header check (PNG chunk
CRCs and the gallery CRC are recomputed after mutating, so the decoders behind them are fuzzed).

Budget: GLASSFINDER_FUZZ_EXAMPLES examples per test (default 60, what CI runs, derandomized so
CI is reproducible; the TFLite probe test runs 1/25 of that, in batches of up to 25 models).
A longer local run:
    GLASSFINDER_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/runtime/test_fuzz.py \
        -p no:cacheprovider --hypothesis-show-statistics
"""
from __future__ import annotations

import copy
import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from glassfinder_runtime.bundle import check_tflite_models, open_bundle, probe_tflite
from glassfinder_runtime.errors import BundleError, GalleryError, ImageError
from glassfinder_runtime.gallery import Gallery, gallery_from_bytes, gallery_to_bytes, parse_spec, pq_search
from glassfinder_runtime.image_io import ImageLimits, decode_image
from glassfinder_runtime.manifest import (
    MANIFEST_NAME,
    ChannelOrder,
    DType,
    InputSpec,
    Layout,
    ModelEntry,
    ModelFormat,
    ModelRole,
    Normalization,
    Quantization,
    TensorSpec,
    manifest_to_dict,
    manifest_to_json,
    parse_manifest,
)

_LONG_RUN = "GLASSFINDER_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("GLASSFINDER_FUZZ_EXAMPLES", "60"))
# A decode or parse of a small input taking longer than this is treated as a hang.
DEADLINE_MS = 5000
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE_MS, derandomize=not _LONG_RUN, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Smaller pixel limit than the default, so that mutated headers claiming big images stay fast.
LIMITS = ImageLimits(max_pixels=2_000_000)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# ---------------------------------------------------------------------------------------------
# Images


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    deep = Image.fromarray((np.arange(40 * 48).reshape(40, 48) * 30).astype(np.uint16))
    return [
        _encode(rgb, "PNG"),
        _encode(rgb.convert("RGBA"), "PNG"),
        _encode(rgb.convert("P"), "PNG", transparency=0),
        _encode(deep, "PNG"),
        _encode(rgb, "JPEG", quality=80),
        _encode(rgb, "JPEG", quality=80, progressive=True, exif=exif.tobytes()),
        _encode(rgb.convert("CMYK"), "JPEG"),
        _encode(rgb.convert("P"), "GIF", save_all=True, append_images=[rgb.rotate(90).convert("P")]),
        _encode(rgb, "WEBP", quality=70),
        _encode(rgb, "BMP"),
        _encode(rgb, "TIFF", compression="tiff_lzw"),
    ]


SEED_IMAGES = _seed_images()


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every PNG chunk CRC that can be located, so that a mutation reaches the decoder."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data), 8
    while pos + 12 <= len(out):
        (length,) = struct.unpack_from(">I", out, pos)
        end = pos + 8 + length
        if end + 4 > len(out):
            break
        struct.pack_into(">I", out, end, zlib.crc32(bytes(out[pos + 4:end])))
        pos = end + 4
    return bytes(out)


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A valid seed with 1-4 byte-level mutations, biased towards the header."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "u32"]))
        near_start = draw(st.booleans())
        pos = draw(st.integers(0, min(len(data), 96) if near_start else len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "u32" and pos + 4 <= len(data):  # sizes and counts live in 32-bit fields
            struct.pack_into(draw(st.sampled_from([">I", "<I"])), data, pos,
                             draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF])))
    return bytes(data)


def _check_image(data: bytes) -> None:
    try:
        im, info = decode_image(data, LIMITS, name="fuzz.img")
    except ImageError as exc:
        assert str(exc).startswith("fuzz.img: ")
        return
    w, h = im.size
    assert im.mode == "RGB" and w * h <= LIMITS.max_pixels and min(w, h) >= LIMITS.min_side
    assert max(w, h) / min(w, h) <= LIMITS.max_aspect and info.size == im.size
    im.tobytes()  # the pixels really exist


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_image_random_bytes(data):
    _check_image(data)


@FUZZ
@given(mutated(SEED_IMAGES), st.booleans())
def test_fuzz_image_mutated_files(data, fix_crc):
    _check_image(fix_png_crcs(data) if fix_crc else data)


# ---------------------------------------------------------------------------------------------
# Manifests

EXAMPLE_MANIFEST = json.loads((FIXTURES / "manifest_example.json").read_text())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# Values close to valid ones (so the parser's later checks are reached), plus classic troublemakers.
tricky_values = st.sampled_from([
    0, 1, -1, 3, 128, 2**31, 2**63, 0.0, -0.5, 1.5, 1e308, "", "tflite", "int8", "NHWC", "RGB", "PQ16x8,IP",
    "OPQ16,PQ16x8,L2", "../x", "/abs", "a\\b", "models/x.tflite", "0" * 64, [], [1], [1, 2, 3], [[30.0, 30.0]], {}, None,
    True, [0.5, 0.5, 0.5], [1, 896, 16],
])


def _paths(value, prefix=()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


MANIFEST_PATHS = _paths(EXAMPLE_MANIFEST)


@st.composite
def mutated_manifest(draw) -> dict:
    data = copy.deepcopy(EXAMPLE_MANIFEST)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(MANIFEST_PATHS))
        parent = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed it
        if not isinstance(parent, (dict, list)):
            continue  # an earlier mutation turned the container into a string
        op = draw(st.sampled_from(["replace", "tricky", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(json_values)
        elif op == "tricky":
            parent[path[-1]] = draw(tricky_values)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent.append(draw(json_values | tricky_values))
    return data


def _check_manifest(data) -> None:
    try:
        m = parse_manifest(data, source="fuzz.json")
    except BundleError as exc:
        assert str(exc).startswith("fuzz.json: ")
        return
    assert parse_manifest(manifest_to_dict(m)) == m
    assert parse_manifest(json.loads(manifest_to_json(m))) == m


@FUZZ
@given(json_values)
def test_fuzz_manifest_random_json(data):
    _check_manifest(data)


@FUZZ
@given(mutated_manifest())
def test_fuzz_manifest_mutated(data):
    _check_manifest(data)


@FUZZ
@given(st.binary(max_size=512) | mutated([json.dumps(EXAMPLE_MANIFEST).encode()]))
def test_fuzz_manifest_file_bytes(raw):
    """open_bundle reading arbitrary manifest.json bytes: BundleError (or, for valid JSON, a
    missing-file error from the bundle check), never anything else."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MANIFEST_NAME).write_bytes(raw)
        try:
            open_bundle(tmp)
        except BundleError as exc:
            assert str(exc).startswith(tmp)


# ---------------------------------------------------------------------------------------------
# Galleries (runtime/gallery.py .gfpq) and TFLite models behind a matching checksum


def _seed_galleries() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for spec_text, d, n in (("PQ4x8,IP", 8, 6), ("PQ2x4,L2", 8, 3), ("OPQ4,PQ4x8,L2", 8, 2), ("PQ1x8,IP", 4, 0)):
        spec = parse_spec(spec_text)
        g = Gallery(spec=spec, d=d, codebooks=rng.standard_normal((spec.M, spec.ksub, d // spec.M)).astype(np.float32),
                    codes=rng.integers(0, spec.ksub, (n, spec.M), dtype=np.uint8),
                    ids=rng.permutation(1000)[:n].astype(np.int64),
                    rotation=np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32) if spec.opq else None)
        out.append(gallery_to_bytes(g))
    return out


SEED_GALLERIES = _seed_galleries()


@FUZZ
@given(st.binary(max_size=256) | mutated(SEED_GALLERIES), st.booleans())
def test_fuzz_gallery_reader(data, fix_crc):
    if fix_crc and len(data) >= 4:  # recompute the trailing CRC32 so the parser goes past it
        data = data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))
    try:
        g = gallery_from_bytes(data)
    except GalleryError:
        return
    D, I = pq_search(g, np.ones((2, g.d), np.float32), k=3)
    assert D.shape == I.shape == (2, 3) and set(I.ravel().tolist()) <= set(g.ids.tolist()) | {-1}


TFLITE = (FIXTURES / "tiny_embedder.tflite").read_bytes()
# The fixture's real contract (see make_tiny_tflite.py), so that undamaged parts pass the checks.
TFLITE_ENTRY = ModelEntry(
    name=ModelRole.EMBEDDER, file="fuzz.tflite", sha256="0" * 64, format=ModelFormat.TFLITE,
    quantization=Quantization.FLOAT32,
    input=InputSpec(name="serving_default_image:0", shape=(1, 16, 16, 3), dtype=DType.FLOAT32, layout=Layout.NHWC,
                    channel_order=ChannelOrder.RGB, normalization=Normalization.RUNTIME, mean=(0.5,) * 3, std=(0.5,) * 3),
    outputs=(TensorSpec(name="PartitionedCall:0", shape=(1, 8), dtype=DType.FLOAT32),),
)


@settings(FUZZ, max_examples=max(2, EXAMPLES // 25))
@given(st.lists(mutated([TFLITE]), min_size=1, max_size=25))
def test_fuzz_tflite_probe(batch):
    """Damaged models (as if their checksum had been recomputed) are probed in a child process:
    every model gets a record (details, a LiteRT error, or the crash that the child died of) and
    this process survives. Batched, because each probe starts a Python process."""
    records = probe_tflite(batch)
    assert len(records) == len(batch)
    for rec, content in zip(records, batch):
        assert set(rec) in ({"inputs", "outputs", "tensor_dtypes"}, {"error"}, {"crash"})
        if content == TFLITE:
            assert "inputs" in rec
    check_tflite_models([(Path("fuzz.tflite"), TFLITE_ENTRY, TFLITE)])  # the undamaged model still passes
