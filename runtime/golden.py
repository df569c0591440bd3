"""Golden test vectors for the Android (Kotlin) and iOS (Swift) stubs, computed by THIS runtime.

`write_golden(out_dir, seed)` runs every numeric stage of the reference runtime on small,
seeded inputs and writes the inputs and the outputs to one text file, `golden.txt`, that a
phone-side test can parse without any library (the bundle lists it as `manifest.golden`):

    # comment lines start with '#'
    <name> <dtype> <ndim> <dim0> ... <dimN-1>
    <values, row-major, separated by single spaces, one or more lines>

dtypes:
- `f32`: float32, written as the shortest decimal that reads back to the same float32;
- `f64`: float64, the shortest decimal that reads back to the same float64;
- `i64`: integers (ids, codes, ranks, uint8 pixels, booleans as 0/1);
- `str`: shape (1,); the NEXT LINE is the string itself (compact JSON: never a newline).
Infinities and NaN are written `Infinity`, `-Infinity`, `NaN` (what Java and Swift parse).

Stages covered (block name prefixes): image_limits, letterbox, tiles, normalize, anchors, decode, nms, project,
similarity, affine, warp (plain and prefiltered), align_crop, landmarks, preprocess, int8 (int8 and
uint8 quantize/dequantize), gate (gate_decision), l2_normalize, pq (with the Refine(SQ8) re-ranking), manifest, find_face (the candidate
loop, the tiled fallback and the re-crop presence rule of pipeline.find_face, over fake detector and aligner models).
The consumers compare integers exactly and floats with named tolerances (android_stub/.../GoldenCheck.kt,
ios_stub/Tests/GlassFinderTests/GoldenTests.swift).

Deterministic: the same seed and the same runtime give the same bytes (tests/runtime/test_golden.py
regenerates the committed copy in tests/fixtures/golden/ and compares).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from glassfinder_runtime import detect, gallery, geometry, image_io, landmarks, pipeline
from glassfinder_runtime.align import align_crop
from glassfinder_runtime.errors import ImageError
from glassfinder_runtime.manifest import (
    AlignerSettings,
    ChannelOrder,
    DetectorSettings,
    DType,
    EmbedderSettings,
    FileRef,
    GalleryEntry,
    GateSettings,
    InputSpec,
    Layout,
    Manifest,
    ModelEntry,
    ModelFormat,
    ModelRole,
    Normalization,
    Quantization,
    TemplateSpec,
    TensorSpec,
    manifest_to_dict,
    parse_manifest,
)

GOLDEN_NAME = "golden.txt"
FORMAT_VERSION = 1
DEFAULT_SEED = 0
# Values per line for long last dimensions (keeps diffs of the committed copy readable).
_PER_LINE = 12


# ---------------------------------------------------------------------------------------------
# The text format


def _fmt_float(v: float, single: bool) -> str:
    """Shortest decimal that reads back to the same float32 (single) or float64."""
    if np.isnan(v):
        return "NaN"
    if np.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    # numpy's str of a float32 scalar and Python's repr of a float are both shortest round-trip.
    return str(np.float32(v)) if single else repr(float(v))


class GoldenWriter:
    """Accumulates named blocks in insertion order and renders them as golden.txt text."""

    def __init__(self, header: str) -> None:
        self._lines: list[str] = [f"# {line}" if line else "#" for line in header.splitlines()]
        self._names: set[str] = set()

    def _head(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        if name in self._names or not name or any(c.isspace() for c in name):
            raise ValueError(f"golden block name {name!r} is empty, has spaces or is a duplicate")
        self._names.add(name)
        self._lines.append(" ".join([name, dtype, str(len(shape)), *map(str, shape)]))

    def array(self, name: str, values: npt.ArrayLike, dtype: str) -> None:
        """Add one numeric block; dtype is 'f32', 'f64' or 'i64'."""
        arr = np.asarray(values)
        self._head(name, dtype, arr.shape)
        flat = arr.reshape(-1)
        if dtype == "f32":
            flat = flat.astype(np.float32)
            items = [_fmt_float(v, True) for v in flat]
        elif dtype == "f64":
            flat = flat.astype(np.float64)
            items = [_fmt_float(v, False) for v in flat]
        elif dtype == "i64":
            if flat.size and not np.issubdtype(flat.dtype, np.integer) and not np.issubdtype(flat.dtype, np.bool_):
                raise ValueError(f"golden block {name!r}: i64 needs integers, got {flat.dtype}")
            items = [str(int(v)) for v in flat]
        else:
            raise ValueError(f"unknown golden dtype {dtype!r}")
        per_line = arr.shape[-1] if arr.ndim and 0 < arr.shape[-1] <= _PER_LINE else _PER_LINE
        for i in range(0, len(items), per_line):
            self._lines.append(" ".join(items[i:i + per_line]))

    def text(self, name: str, value: str) -> None:
        """Add one string block (must not contain a newline)."""
        if "\n" in value or "\r" in value:
            raise ValueError(f"golden string {name!r} contains a newline")
        self._head(name, "str", (1,))
        self._lines.append(value)

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


def read_golden(path: str | os.PathLike) -> dict[str, np.ndarray | str]:
    """Parse golden.txt back (used by the tests; the stubs have their own ~40-line parsers)."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    out: dict[str, np.ndarray | str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line or line.startswith("#"):
            continue
        name, dtype, ndim, *dims = line.split(" ")
        shape = tuple(int(d) for d in dims)
        if len(shape) != int(ndim):
            raise ValueError(f"{path}: block {name!r} has ndim {ndim} but {len(shape)} dims")
        if dtype == "str":
            out[name] = lines[i]
            i += 1
            continue
        count = int(np.prod(shape)) if shape else 1
        values: list[str] = []
        while len(values) < count:
            values.extend(lines[i].split(" "))
            i += 1
        np_dtype = {"f32": np.float32, "f64": np.float64, "i64": np.int64}[dtype]
        out[name] = np.array(values, dtype=np_dtype).reshape(shape)
    return out


def _json(obj: object) -> str:
    """Compact, key-ordered JSON on one line (deterministic)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Stages


def _letterbox(w: GoldenWriter) -> None:
    """letterbox: the image -> input matrix (pixels depend on the platform's resampler; the
    matrix and the placement do not). Includes sizes where Python's round() ties to even."""
    size = 128
    sizes = [(640, 480), (480, 640), (128, 128), (256, 101), (1, 1), (1000, 3), (333, 777), (384, 129)]
    mats = []
    for iw, ih in sizes:
        _, A = detect.letterbox(Image.new("RGB", (iw, ih)), size)
        mats.append(A)
    w.array("letterbox.input_size", [size], "i64")
    w.array("letterbox.image_sizes", sizes, "i64")
    w.array("letterbox.matrices", np.stack(mats), "f64")


def _image_limits(w: GoldenWriter) -> None:
    """image_io's size policy (too small, extreme aspect ratio), decided by load_image on real PNGs."""
    limits = image_io.DEFAULT_LIMITS
    sizes = [(32, 32), (31, 100), (100, 31), (256, 32), (257, 32), (40, 321), (1000, 125), (640, 480)]
    accepted = []
    for size in sizes:
        buf = io.BytesIO()
        Image.new("RGB", size).save(buf, format="PNG")
        try:
            image_io.load_image(buf.getvalue())
            accepted.append(1)
        except ImageError:
            accepted.append(0)
    w.array("image_limits.values", [limits.max_pixels, limits.min_side, limits.max_aspect], "f64")
    w.array("image_limits.sizes", sizes, "i64")
    w.array("image_limits.accepted", accepted, "i64")


def _tiles(w: GoldenWriter) -> None:
    """tile_windows: the overlapping square tiles of the small-face detection pass."""
    cases = [(640, 480, 2), (480, 640, 2), (1000, 125, 2), (128, 128, 1), (4032, 3024, 3), (333, 777, 2), (50, 50, 4)]
    tiles = [detect.tile_windows(cw, ch, rows) for cw, ch, rows in cases]
    w.array("tiles.cases", cases, "i64")
    w.array("tiles.counts", [len(t) for t in tiles], "i64")
    w.array("tiles.windows", np.concatenate(tiles), "i64")


def _normalize(w: GoldenWriter, rng: np.random.Generator) -> None:
    px = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    px[0, 0] = (0, 128, 255)
    w.array("normalize.pixels", px, "i64")
    for tag, mean, std in (("half", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                           ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        w.array(f"normalize.{tag}.mean", mean, "f64")
        w.array(f"normalize.{tag}.std", std, "f64")
        w.array(f"normalize.{tag}.out", detect.normalize(px, mean, std), "f32")


def _anchors(w: GoldenWriter) -> np.ndarray:
    default = detect.AnchorOptions()
    anchors = detect.generate_anchors(default)
    w.text("anchors.default.options", _json(default.to_dict()))
    w.array("anchors.default", anchors, "f32")
    # A second layout that exercises what BlazeFace does not: several ratios, sized anchors,
    # a stride change between every layer.
    alt = detect.AnchorOptions(input_size=64, num_layers=3, strides=(8, 16, 32), min_scale=0.2, max_scale=0.9,
                               anchor_offset=0.5, aspect_ratios=(1.0, 2.0, 0.5),
                               interpolated_scale_aspect_ratio=1.0, fixed_anchor_size=False)
    w.text("anchors.alt.options", _json(alt.to_dict()))
    w.array("anchors.alt", detect.generate_anchors(alt), "f32")
    return anchors


def _raw_detector_output(rng: np.random.Generator, n: int, opts: detect.DecodeOptions) -> tuple[np.ndarray, np.ndarray]:
    """Plausible raw regressors (input pixels around each anchor) and score logits."""
    raw = np.zeros((n, opts.num_coords), dtype=np.float32)
    raw[:, 0:2] = rng.normal(0.0, 6.0, size=(n, 2))
    raw[:, 2:4] = rng.uniform(12.0, 70.0, size=(n, 2))
    raw[:, 4:] = rng.normal(0.0, 20.0, size=(n, opts.num_coords - 4))
    logits = rng.normal(0.0, 4.0, size=n).astype(np.float32)
    logits[:3] = (250.0, -250.0, 0.0)  # clipping both ways, and exactly 0.5
    return raw.astype(np.float32), logits


def _decode(w: GoldenWriter, rng: np.random.Generator, anchors: np.ndarray) -> None:
    idx = np.sort(rng.choice(anchors.shape[0], size=40, replace=False))
    an = anchors[idx]
    for tag, opts in (("xywh", detect.DecodeOptions()),
                      ("yxhw", detect.DecodeOptions(box_format=detect.BoxFormat.YXHW_CENTER, scale=100.0,
                                                    score_clipping=5.0))):
        raw, logits = _raw_detector_output(rng, len(an), opts)
        det = detect.decode_boxes(raw, logits, an, opts)
        w.text(f"decode.{tag}.options", _json(opts.to_dict()))
        w.array(f"decode.{tag}.anchors", an, "f32")
        w.array(f"decode.{tag}.raw_boxes", raw, "f32")
        w.array(f"decode.{tag}.raw_scores", logits, "f32")
        w.array(f"decode.{tag}.boxes", det.boxes, "f32")
        w.array(f"decode.{tag}.keypoints", det.keypoints, "f32")
        w.array(f"decode.{tag}.scores", det.scores, "f32")


def _clustered_detections(rng: np.random.Generator) -> detect.Detections:
    """Three clusters of overlapping boxes plus isolated ones; distinct scores, some below 0.5."""
    boxes, scores = [], []
    for cx, cy, s in ((0.30, 0.35, 0.22), (0.70, 0.40, 0.18), (0.52, 0.75, 0.25)):
        for _ in range(5):
            jx, jy, js = rng.normal(0.0, 0.015, size=3)
            half = (s + js) / 2
            boxes.append((cx + jx - half, cy + jy - half, cx + jx + half, cy + jy + half))
            scores.append(rng.uniform(0.3, 0.99))
    for _ in range(4):
        cx, cy = rng.uniform(0.1, 0.9, size=2)
        boxes.append((cx - 0.04, cy - 0.04, cx + 0.04, cy + 0.04))
        scores.append(rng.uniform(0.3, 0.99))
    b = np.asarray(boxes, dtype=np.float32)
    centres = (b[:, :2] + b[:, 2:]) / 2
    kps = centres[:, None, :] + rng.normal(0.0, 0.03, size=(len(b), 6, 2))
    order = rng.permutation(len(b))
    return detect.Detections(b[order], kps[order].astype(np.float32), np.asarray(scores, dtype=np.float32)[order])


def _nms_and_project(w: GoldenWriter, rng: np.random.Generator) -> None:
    det = _clustered_detections(rng)
    min_score, iou_thr = 0.5, 0.3
    w.array("nms.boxes", det.boxes, "f32")
    w.array("nms.keypoints", det.keypoints, "f32")
    w.array("nms.scores", det.scores, "f32")
    w.array("nms.min_score", [min_score], "f64")
    w.array("nms.iou_threshold", [iou_thr], "f64")
    w.array("nms.iou_first", detect.iou(det.boxes[0], det.boxes), "f32")
    weighted = detect.weighted_nms(det, min_score, iou_thr, detect.NmsAlgorithm.WEIGHTED)
    hard = detect.weighted_nms(det, min_score, iou_thr, detect.NmsAlgorithm.HARD)
    for tag, out in (("weighted", weighted), ("hard", hard)):
        w.array(f"nms.{tag}.count", [len(out)], "i64")
        w.array(f"nms.{tag}.boxes", out.boxes, "f32")
        w.array(f"nms.{tag}.keypoints", out.keypoints, "f32")
        w.array(f"nms.{tag}.scores", out.scores, "f32")
    # HARD keeps input rows unchanged: their input positions are the kept indices (exact ints).
    keep = [int(np.flatnonzero((det.boxes == b).all(axis=1))[0]) for b in hard.boxes]
    w.array("nms.hard.keep", keep, "i64")
    w.array("nms.weighted.most_prominent", [detect.most_prominent(weighted)], "i64")
    w.array("nms.by_prominence", detect.by_prominence(det), "i64")
    # merge: detections of two passes (here: the two halves of the input) -> one set.
    half = len(det) // 2
    merged = detect.merge([det.take(np.arange(half)), det.take(np.arange(half, len(det)))], iou_thr)
    w.array("nms.merge.split", [half], "i64")
    w.array("nms.merge.boxes", merged.boxes, "f32")
    w.array("nms.merge.keypoints", merged.keypoints, "f32")
    w.array("nms.merge.scores", merged.scores, "f32")
    _, A = detect.letterbox(Image.new("RGB", (640, 480)), 128)
    proj = detect.project(weighted, A, 128)
    w.array("project.letterbox_matrix", A, "f64")
    w.array("project.input_size", [128], "i64")
    w.array("project.boxes", proj.boxes, "f32")
    w.array("project.keypoints", proj.keypoints, "f32")


def _random_similarity(rng: np.random.Generator, scale: tuple[float, float]) -> np.ndarray:
    a = rng.uniform(-0.6, 0.6)
    s = rng.uniform(*scale)
    t = rng.uniform(-30.0, 200.0, size=2)
    return np.array([[s * np.cos(a), -s * np.sin(a), t[0]], [s * np.sin(a), s * np.cos(a), t[1]]])


def _similarity(w: GoldenWriter, rng: np.random.Generator) -> None:
    template = geometry.DEFAULT_TEMPLATE
    w.text("similarity.template", _json(template.to_dict()))
    cases = []
    for _ in range(4):  # a face: the template moved into an image, plus landmark noise
        T = _random_similarity(rng, (1.5, 6.0))
        cases.append(geometry.apply_affine(T, template.as_array()) + rng.normal(0.0, 1.5, size=(5, 2)))
    mirrored = cases[0].copy()
    mirrored[:, 0] = -mirrored[:, 0] + 500.0  # a reflection: Umeyama must not return one
    cases.append(mirrored)
    w.array("similarity.keypoints", np.stack(cases), "f64")
    w.array("similarity.crop_matrices", np.stack([geometry.crop_matrix(kp, template) for kp in cases]), "f64")
    # estimate_similarity on other point counts (n = 2 and n = 7).
    for n in (2, 7):
        src = rng.uniform(0.0, 100.0, size=(n, 2))
        dst = geometry.apply_affine(_random_similarity(rng, (0.3, 3.0)), src) + rng.normal(0.0, 0.5, size=(n, 2))
        w.array(f"similarity.n{n}.src", src, "f64")
        w.array(f"similarity.n{n}.dst", dst, "f64")
        w.array(f"similarity.n{n}.matrix", geometry.estimate_similarity(src, dst), "f64")


def _affine(w: GoldenWriter, rng: np.random.Generator) -> None:
    A = _random_similarity(rng, (0.5, 2.0))
    A[0, 1] += 0.1  # a general affine, not only a similarity
    pts = rng.uniform(-50.0, 150.0, size=(6, 2))
    w.array("affine.matrix", A, "f64")
    w.array("affine.points", pts, "f64")
    w.array("affine.applied", geometry.apply_affine(A, pts), "f64")
    w.array("affine.inverse", geometry.invert_affine(A), "f64")


def _synthetic_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(h, w, 3) uint8: smooth gradients plus noise, so bilinear weights matter."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([x * 255 / max(1, width - 1), y * 255 / max(1, height - 1),
                     127.5 + 127.5 * np.sin((x + y) / 3.0)], axis=-1)
    noisy = base + rng.normal(0.0, 25.0, size=base.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _warp(w: GoldenWriter, rng: np.random.Generator) -> None:
    """warp_affine (Pillow bilinear, black outside) on a small image, 3 matrices, and the
    prefiltered warp of the pipeline (supersampled nearest for shrinks, box reduction first)."""
    img = _synthetic_image(rng, 20, 14)
    w.array("warp.image", img, "i64")
    out_w, out_h = 16, 12
    w.array("warp.size", [out_w, out_h], "i64")
    a = np.radians(20.0)
    mats = [
        np.array([[1.3 * np.cos(a), -1.3 * np.sin(a), 2.0], [1.3 * np.sin(a), 1.3 * np.cos(a), -4.0]]),
        np.array([[0.6 * np.cos(-0.6), -0.6 * np.sin(-0.6), 4.25], [0.6 * np.sin(-0.6), 0.6 * np.cos(-0.6), 6.5]]),
        np.array([[1.0, 0.0, -2.375], [0.0, 1.0, 1.625]]),
    ]
    outs = [np.asarray(geometry.warp_affine(Image.fromarray(img), A, (out_w, out_h)), dtype=np.uint8) for A in mats]
    w.array("warp.matrices", np.stack(mats), "f64")
    w.array("warp.outputs", np.stack(outs), "i64")
    # warp_affine_prefiltered (via landmarks.crop_face): shrinks are supersampled nearest warps
    # (Pillow's fixed-point NEAREST path when rotated, its scale-only path when not); shrinks of 2x
    # and 3x box-reduce the source first (Pillow's Image.reduce, partial blocks at the edges: 50
    # and 37 are not multiples).
    big = _synthetic_image(rng, 50, 37)
    w.array("warp.prefiltered.image", big, "i64")
    size = 12
    pmats = [np.array([[0.45 * np.cos(0.3), 0.45 * np.sin(0.3), -2.0], [-0.45 * np.sin(0.3), 0.45 * np.cos(0.3), 3.0]]),
             np.array([[0.3, 0.0, 0.5], [0.0, 0.3, 0.75]]),
             np.array([[0.8 * np.cos(-0.2), 0.8 * np.sin(-0.2), 1.5], [-0.8 * np.sin(-0.2), 0.8 * np.cos(-0.2), -6.25]]),
             np.array([[0.7, 0.0, -3.0], [0.0, 0.7, 0.5]])]
    pouts = [landmarks.crop_face(Image.fromarray(big), A, size) for A in pmats]
    w.array("warp.prefiltered.size", [size], "i64")
    w.array("warp.prefiltered.matrices", np.stack(pmats), "f64")
    w.array("warp.prefiltered.outputs", np.stack(pouts), "i64")
    w.array("warp.reduce3", np.asarray(Image.fromarray(big).reduce(3), dtype=np.uint8), "i64")


def _align(w: GoldenWriter, rng: np.random.Generator) -> None:
    """align_crop with a small template (the real one is 128x64; same code path)."""
    template = geometry.CropTemplate(width=32, height=16,
                                     points=tuple((x / 4.0, y / 4.0) for x, y in geometry.DEFAULT_TEMPLATE.points))
    img = _synthetic_image(rng, 64, 48)
    T = np.array([[1.6 * np.cos(0.25), -1.6 * np.sin(0.25), 10.0], [1.6 * np.sin(0.25), 1.6 * np.cos(0.25), 8.0]])
    kp = geometry.apply_affine(T, template.as_array()) + rng.normal(0.0, 0.4, size=(5, 2))
    crop, A = align_crop(Image.fromarray(img), kp, template)
    w.text("align_crop.template", _json(template.to_dict()))
    w.array("align_crop.image", img, "i64")
    w.array("align_crop.keypoints", kp, "f64")
    w.array("align_crop.matrix", A, "f64")
    w.array("align_crop.crop", crop, "i64")


def _landmarks(w: GoldenWriter, rng: np.random.Generator) -> None:
    """face_roi -> roi_matrix -> decode_landmarks -> glasses_keypoints (+ presence_score)."""
    opts = landmarks.MeshOptions()
    box = np.array([210.0, 140.0, 330.0, 270.0])
    right_eye, left_eye = np.array([245.0, 190.0]), np.array([298.0, 182.0])
    roi = landmarks.face_roi(box, right_eye, left_eye, opts.roi_scale)
    A = landmarks.roi_matrix(roi, opts.input_size)
    raw = rng.uniform(0.0, opts.input_size, size=(opts.num_landmarks, 3)).astype(np.float32)
    raw[:, 2] = rng.normal(0.0, 10.0, size=opts.num_landmarks)
    mesh = landmarks.decode_landmarks(raw.reshape(-1), A, opts.num_landmarks)
    w.text("landmarks.options", _json(opts.to_dict()))
    w.array("landmarks.box", box, "f64")
    w.array("landmarks.eyes", np.stack([right_eye, left_eye]), "f64")
    w.array("landmarks.roi", [roi.cx, roi.cy, roi.side, roi.angle], "f64")
    w.array("landmarks.roi_matrix", A, "f64")
    w.array("landmarks.raw", raw, "f32")
    w.array("landmarks.mesh", mesh, "f32")
    w.array("landmarks.glasses_keypoints", landmarks.glasses_keypoints(mesh, opts), "f32")
    flags = np.array([-3.0, 0.0, 2.5], dtype=np.float32)
    w.array("landmarks.face_flags", flags, "f32")
    w.array("landmarks.presence", [landmarks.presence_score(f) for f in flags], "f64")
    # The refinement pass: the next roi from the mesh itself.
    r2 = landmarks.roi_from_mesh(mesh, opts.roi_scale)
    w.array("landmarks.roi_from_mesh", [r2.cx, r2.cy, r2.side, r2.angle], "f64")


def _pipeline(w: GoldenWriter, rng: np.random.Generator) -> None:
    """The float boundaries of the models (runtime/pipeline.py): preprocess, quantize and
    dequantize, softmax + gate_decision, L2 normalisation."""
    px = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    w.array("preprocess.pixels", px, "i64")
    for tag, layout, norm in (("nhwc_runtime", Layout.NHWC, Normalization.RUNTIME),
                              ("nchw_in_graph", Layout.NCHW, Normalization.IN_GRAPH)):
        shape = (1, 4, 5, 3) if layout is Layout.NHWC else (1, 3, 4, 5)
        spec = InputSpec(name="input", shape=shape, dtype=DType.FLOAT32, layout=layout, channel_order=ChannelOrder.RGB,
                         normalization=norm, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        w.text(f"preprocess.{tag}.spec", _json(manifest_to_dict(spec)))
        w.array(f"preprocess.{tag}.out", pipeline.preprocess(px, spec), "f32")
    # int8/uint8 (pipeline.quantize / dequantize, what TfliteModel does at an integer model's input and
    # output): exact .5 ties (numpy rounds half to even), clipping at both ends, random values.
    ties = np.array([1.25, 0.75, -1.25, -0.75, 0.25, 100.0, -100.0, 0.0], dtype=np.float32)
    noise = rng.normal(0.0, 1.5, size=16).astype(np.float32)
    for tag, x, dtype, in_q, out_q in (("ties", ties, np.int8, (0.5, 0), (0.5, 0)),
                                       ("random", noise, np.int8, (0.0235, -3), (0.0125, 5)),
                                       ("uint8", noise, np.uint8, (0.0235, 128), (0.0125, 120))):
        q = pipeline.quantize(x, *in_q, dtype)
        w.text(f"int8.{tag}.dtype", np.dtype(dtype).name)
        w.array(f"int8.{tag}.x", x, "f32")
        w.array(f"int8.{tag}.quant", [in_q[0], in_q[1], out_q[0], out_q[1]], "f64")
        w.array(f"int8.{tag}.q", q, "i64")
        w.array(f"int8.{tag}.dequantized", pipeline.dequantize(q, *out_q), "f32")
    # Gate: pipeline.gate_decision (softmax of the logits, P(glasses) = the float32 sum of the accept
    # classes' probabilities, accepted when >= threshold), as GlassFinder.gate_crop calls it.
    gate = _sample_manifest().gate
    accept = [gate.class_names.index(c) for c in gate.accept_classes]
    logits = rng.normal(0.0, 2.0, size=(6, len(gate.class_names))).astype(np.float32)
    logits[0] = (4.0, -1.0, 0.5)
    decisions = [pipeline.gate_decision(row, accept, gate.threshold) for row in logits]
    w.array("gate.logits", logits, "f32")
    w.array("gate.accept", accept, "i64")
    w.array("gate.threshold", [gate.threshold], "f64")
    w.array("gate.probs", np.stack([pipeline.softmax(row) for row in logits]), "f32")
    w.array("gate.p_glasses", [p for _, p in decisions], "f64")
    w.array("gate.accepted", [a for a, _ in decisions], "i64")
    x = rng.normal(0.0, 1.0, size=(4, 16)).astype(np.float32)
    x[1] = 0.0  # a zero row stays zero (eps)
    x[2] *= 1e4
    w.array("l2_normalize.x", x, "f32")
    w.array("l2_normalize.out", pipeline.l2_normalize(x), "f32")


def _pq(w: GoldenWriter, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """PQ4x4 over d=16: codebooks, codes (with duplicate rows: exact ties), lookup tables,
    ADC top-k for IP, L2 and OPQ, k > n padding, encode, and the .gfpq bytes. Returns the
    arrays the refine case builds on."""
    d, M, nbits, n, nq, k = 16, 4, 4, 40, 3, 6
    ksub, dsub = 1 << nbits, d // M
    codebooks = rng.normal(0.0, 0.5, size=(M, ksub, dsub)).astype(np.float32)
    codes = rng.integers(0, ksub, size=(n, M), dtype=np.uint8)
    codes[7] = codes[3]  # exact ties: the lower gallery position ranks first
    codes[21] = codes[3]
    ids = (1000 + rng.permutation(500)[:n]).astype(np.int64)
    xq = rng.normal(0.0, 0.5, size=(nq, d)).astype(np.float32)
    xq[0] = gallery.decode(codebooks, codes[3:4])[0]  # a query on a tied code
    w.array("pq.codebooks", codebooks, "f32")
    w.array("pq.codes", codes, "i64")
    w.array("pq.ids", ids, "i64")
    w.array("pq.queries", xq, "f32")
    w.array("pq.k", [k], "i64")
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotation = q.astype(np.float32)
    cases = (("ip", "PQ4x4,IP", None), ("l2", "PQ4x4,L2", None), ("opq_ip", "OPQ4,PQ4x4,IP", rotation))
    for tag, spec_text, rot in cases:
        spec = gallery.parse_spec(spec_text)
        g = gallery.Gallery(spec=spec, d=d, codebooks=codebooks, codes=codes, ids=ids, rotation=rot)
        w.text(f"pq.{tag}.spec", str(spec))
        if rot is not None:
            w.array(f"pq.{tag}.rotation", rot, "f32")
        xr = xq if rot is None else xq @ rot.T
        # The per-query lookup tables are what the phone code builds first; record them.
        w.array(f"pq.{tag}.lut", gallery._lookup_tables(g, np.ascontiguousarray(xr, dtype=np.float32)), "f32")
        D, I = gallery.pq_search(g, xq, k)
        w.array(f"pq.{tag}.D", D, "f32")
        w.array(f"pq.{tag}.I", I, "i64")
    # k > n: the tail is -1 / -inf (IP) or +inf (L2).
    for tag, metric in (("ip", "IP"), ("l2", "L2")):
        small = gallery.Gallery(spec=gallery.parse_spec(f"PQ4x4,{metric}"), d=d, codebooks=codebooks,
                                codes=codes[:3], ids=ids[:3])
        D, I = gallery.pq_search(small, xq, 5)
        w.array(f"pq.small_{tag}.D", D, "f32")
        w.array(f"pq.small_{tag}.I", I, "i64")
    # One-shot enrollment: codes of new vectors with the existing codebooks.
    x_new = rng.normal(0.0, 0.5, size=(5, d)).astype(np.float32)
    w.array("pq.encode.x", x_new, "f32")
    w.array("pq.encode.codes", gallery.encode(codebooks, x_new), "i64")
    w.array("pq.encode.codes_opq", gallery.encode(codebooks, x_new, rotation), "i64")
    # The binary gallery file: the stubs parse it and compare with the arrays above.
    g_ip = gallery.Gallery(spec=gallery.parse_spec("PQ4x4,IP"), d=d, codebooks=codebooks, codes=codes, ids=ids)
    w.array("pq.gfpq_bytes", np.frombuffer(gallery.gallery_to_bytes(g_ip), dtype=np.uint8), "i64")
    return {"codebooks": codebooks, "codes": codes, "ids": ids, "rotation": rotation}


# Shortlist of the golden refine galleries: smaller than n = 40 and than 2k, so that the refine
# really re-orders a shortlist; the `small` case (n = 3, k = 5) clamps it to n.
_GOLDEN_SHORTLIST = 8


def _pq_refine(w: GoldenWriter, rng: np.random.Generator, pq: dict[str, np.ndarray]) -> None:
    """Refine(SQ8) on the PQ4x4 gallery of `_pq`: SQ8 scales/codes of vectors near the PQ
    reconstructions, rows 12 and 30 identical (exact ties after the ADC and after the refine),
    refined top-k for IP, L2 and OPQ, k > n, SQ8 encoding with exact .5 ties, and the v2 bytes.
    Its own rng: the blocks written before and after it do not move when it changes."""
    codebooks, ids, rotation = pq["codebooks"], pq["ids"], pq["rotation"]
    codes = pq["codes"].copy()
    codes[30] = codes[12]
    n, d = codes.shape[0], codebooks.shape[0] * codebooks.shape[2]
    k = 6
    xb = (gallery.decode(codebooks, codes) + rng.normal(0.0, 0.3, size=(n, d))).astype(np.float32)
    xb[30] = xb[12]
    xq = np.stack([xb[3] + rng.normal(0.0, 0.05, d), xb[12] + rng.normal(0.0, 0.05, d),
                   rng.normal(0.0, 0.5, d)]).astype(np.float32)
    scales = gallery.sq8_scales(xb)
    sq8 = gallery.sq8_encode(scales, xb)
    w.array("pq.refine.codes", codes, "i64")
    w.array("pq.refine.x", xb, "f32")
    w.array("pq.refine.scales", scales, "f32")
    w.array("pq.refine.sq8", sq8, "i64")
    w.array("pq.refine.queries", xq, "f32")
    w.array("pq.refine.k", [k], "i64")
    w.array("pq.refine.shortlist", [_GOLDEN_SHORTLIST], "i64")
    cases = (("ip", "PQ4x4,IP,Refine(SQ8)", None), ("l2", "PQ4x4,L2,Refine(SQ8)", None),
             ("opq_ip", "OPQ4,PQ4x4,IP,Refine(SQ8)", rotation))
    for tag, spec_text, rot in cases:
        spec = gallery.parse_spec(spec_text)
        g = gallery.Gallery(spec=spec, d=d, codebooks=codebooks, codes=codes, ids=ids, rotation=rot,
                            refine_scales=scales, refine_codes=sq8, shortlist=_GOLDEN_SHORTLIST)
        w.text(f"pq.refine_{tag}.spec", str(spec))
        D, I = gallery.pq_search(g, xq, k)
        w.array(f"pq.refine_{tag}.D", D, "f32")
        w.array(f"pq.refine_{tag}.I", I, "i64")
    # k > n and shortlist > n: every row is re-scored, the tail is padded.
    small = gallery.Gallery(spec=gallery.parse_spec("PQ4x4,IP,Refine(SQ8)"), d=d, codebooks=codebooks,
                            codes=codes[:3], ids=ids[:3], refine_scales=scales, refine_codes=sq8[:3],
                            shortlist=_GOLDEN_SHORTLIST)
    D, I = gallery.pq_search(small, xq, 5)
    w.array("pq.refine_small.D", D, "f32")
    w.array("pq.refine_small.I", I, "i64")
    # SQ8 encoding of new SKUs with existing scales: powers of two make x / scale exact, so the
    # .5 cases are true ties (round half to even), and +-200 steps clip to +-127.
    enc_scales = np.array([2.0 ** -7, 2.0 ** -6, 0.01, 2.0 ** -3], dtype=np.float32)
    steps = np.array([[0.5, 1.5, 2.5, -0.5], [-1.5, -2.5, 126.5, -126.5], [127.5, -127.5, 200.0, -200.0],
                      [3.49, -3.51, 0.0, 7.0]], dtype=np.float32)
    enc_x = (steps * enc_scales).astype(np.float32)
    enc_x[3, :] = rng.normal(0.0, 0.3, 4).astype(np.float32)
    w.array("pq.sq8.scales", enc_scales, "f32")
    w.array("pq.sq8.x", enc_x, "f32")
    w.array("pq.sq8.codes", gallery.sq8_encode(enc_scales, enc_x), "i64")
    # The version-2 file: the stubs parse it and compare with the arrays above.
    g_file = gallery.Gallery(spec=gallery.parse_spec("OPQ4,PQ4x4,IP,Refine(SQ8)"), d=d, codebooks=codebooks,
                             codes=codes, ids=ids, rotation=rotation, refine_scales=scales, refine_codes=sq8,
                             shortlist=_GOLDEN_SHORTLIST)
    w.array("pq.refine.gfpq_bytes", np.frombuffer(gallery.gallery_to_bytes(g_file), dtype=np.uint8), "i64")


def _fake_sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _sample_manifest() -> Manifest:
    """A complete manifest as a bundle would carry it (file hashes are stand-ins), built from the
    manifest dataclasses and parsed back from its JSON, so it is valid for the current schema."""
    anchors, dec, mesh = detect.AnchorOptions(), detect.DecodeOptions(), landmarks.MeshOptions()
    num_anchors = int(detect.generate_anchors(anchors).shape[0])

    def tensor(name: str, shape: tuple[int, ...], dtype: DType = DType.FLOAT32) -> TensorSpec:
        return TensorSpec(name=name, shape=shape, dtype=dtype)

    def model(role: ModelRole, quant: Quantization, hw: tuple[int, int], dtype: DType,
              outputs: tuple[TensorSpec, ...]) -> ModelEntry:
        file = f"{role.value}.tflite"
        inp = InputSpec(name="input", shape=(1, *hw, 3), dtype=dtype, layout=Layout.NHWC,
                        channel_order=ChannelOrder.RGB, normalization=Normalization.RUNTIME,
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        return ModelEntry(file=file, sha256=_fake_sha(file), name=role, format=ModelFormat.TFLITE,
                          quantization=quant, input=inp, outputs=outputs)

    crop_hw = (geometry.DEFAULT_TEMPLATE.height, geometry.DEFAULT_TEMPLATE.width)  # gate and embedder eat the crop
    m = Manifest(
        created_by="glassfinder_runtime.golden (sample manifest)",
        models=(
            model(ModelRole.DETECTOR, Quantization.FLOAT16, (anchors.input_size,) * 2, DType.FLOAT32,
                  (tensor("regressors", (1, num_anchors, dec.num_coords)), tensor("classificators", (1, num_anchors, 1)))),
            model(ModelRole.ALIGNER, Quantization.FLOAT16, (mesh.input_size,) * 2, DType.FLOAT32,
                  (tensor("landmarks", (1, 1, 1, 3 * mesh.num_landmarks)), tensor("face_flag", (1, 1, 1, 1)))),
            model(ModelRole.GATE, Quantization.INT8, crop_hw, DType.INT8, (tensor("logits", (1, 3), DType.INT8),)),
            model(ModelRole.EMBEDDER, Quantization.INT8, crop_hw, DType.INT8, (tensor("embedding", (1, 128), DType.INT8),)),
        ),
        detector=DetectorSettings(anchors=anchors, decode=dec),
        aligner=AlignerSettings(template=TemplateSpec.from_template(geometry.DEFAULT_TEMPLATE), mesh=mesh),
        gate=GateSettings(class_names=("eyeglasses", "sunglasses", "none"), accept_classes=("eyeglasses", "sunglasses"),
                          threshold=0.62, refusal_message=pipeline.REFUSAL_MESSAGE),
        embedder=EmbedderSettings(dim=128, l2_normalize=True),
        gallery=GalleryEntry(file="gallery.gfpq", sha256=_fake_sha("gallery.gfpq"), spec="PQ16x8,IP", d=128, n=3200,
                             code_size=16, sku_file="skus.json", sku_sha256=_fake_sha("skus.json")),
        golden=FileRef(file=GOLDEN_NAME, sha256=_fake_sha(GOLDEN_NAME)),
    )
    return parse_manifest(json.loads(json.dumps(manifest_to_dict(m))), source="golden sample manifest")


def _manifest(w: GoldenWriter) -> None:
    """A sample manifest (JSON text) and the values a stub must read out of it."""
    m = _sample_manifest()
    w.text("manifest.json", _json(manifest_to_dict(m)))
    det = m.detector
    w.array("manifest.detector.num_anchors", [det.num_anchors], "i64")
    w.array("manifest.detector.strides", det.anchors.strides, "i64")
    w.array("manifest.detector.scales", [det.decode.scale, det.anchors.min_scale, det.anchors.max_scale,
                                         det.decode.min_score, det.decode.nms_iou], "f64")
    w.array("manifest.template.size", [m.aligner.template.width, m.aligner.template.height], "i64")
    w.array("manifest.template.points", m.aligner.template.points, "f64")
    w.array("manifest.mesh.keypoint_indices", m.aligner.mesh.keypoint_indices, "i64")
    w.array("manifest.gate.threshold", [m.gate.threshold], "f64")
    w.array("manifest.gate.accept_mask", [c in m.gate.accept_classes for c in m.gate.class_names], "i64")
    w.array("manifest.gallery.shape", [m.gallery.d, m.gallery.n, m.gallery.code_size], "i64")
    w.text("manifest.gallery.spec", m.gallery.spec)
    w.array("manifest.models.input_shapes", [list(mm.input.shape) for mm in m.models], "i64")


# ---------------------------------------------------------------------------------------------
# pipeline.find_face over fake models: the candidate loop and the tiled fallback


# Detector logit of every anchor a fake detector call does not list (sigmoid ~ 2e-9: no face).
_FAKE_BACKGROUND_LOGIT = -20.0
# The fake aligner's face flag: (mean crop pixel - offset) / scale, so a crop on the bright patch
# (a "face") is confirmed and one on the dark background is not.
_FAKE_FLAG_OFFSET, _FAKE_FLAG_SCALE = 50.0, 4.0


class _FakeDetector:
    """A detector "model" that ignores its pixels (the letterbox resize is platform code, not
    golden-checked) and returns, on its c-th call, the raw rows listed for call c: (anchor index,
    regressors, logit); every other anchor gets zeros and the background logit. So the order of
    the calls (whole photo, then the tiles in tile_windows order) is pinned too."""

    def __init__(self, calls: np.ndarray, anchor_idx: np.ndarray, raw: np.ndarray, logits: np.ndarray,
                 num_anchors: int) -> None:
        self.table, self.num_anchors, self.calls = (calls, anchor_idx, raw, logits), num_anchors, 0

    def __call__(self, pixels: np.ndarray) -> list[np.ndarray]:
        calls, anchor_idx, raw, logits = self.table
        boxes = np.zeros((self.num_anchors, raw.shape[1]), dtype=np.float32)
        scores = np.full(self.num_anchors, _FAKE_BACKGROUND_LOGIT, dtype=np.float32)
        rows = calls == self.calls
        boxes[anchor_idx[rows]] = raw[rows]
        scores[anchor_idx[rows]] = logits[rows]
        self.calls += 1
        return [boxes[None], scores[None, :, None]]


class _FakeAligner:
    """An aligner "model": always the same raw (468, 3) mesh (crop pixels), face flag from the crop's
    mean pixel (the crop itself is byte-exact on every platform). Records the mean of every crop."""

    def __init__(self, raw: np.ndarray) -> None:
        self.raw, self.means = raw, []

    def __call__(self, crop: np.ndarray) -> list[np.ndarray]:
        mean = float(crop.mean(dtype=np.float64))
        self.means.append(mean)
        return [self.raw.reshape(1, -1), np.array([[(mean - _FAKE_FLAG_OFFSET) / _FAKE_FLAG_SCALE]], dtype=np.float32)]


def _fake_face_rows(call: int, faces: list[tuple[float, float, float, float, float]], anchors: np.ndarray,
                    input_size: int, opts: detect.DecodeOptions) -> list[tuple[int, int, np.ndarray, float]]:
    """Raw detector rows that decode to the given boxes: faces are (x0, y0, x1, y1, logit) in the
    call's letterboxed input pixels; each goes on the anchor nearest its centre."""
    rows = []
    for x0, y0, x1, y1, logit in faces:
        cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        a = int(np.argmin(np.hypot(anchors[:, 0] * input_size - cx, anchors[:, 1] * input_size - cy)))
        origin = anchors[a, :2] * input_size  # regressors are input pixels relative to the anchor centre
        # Eyes level at 40 % height, then nose, mouth, ears (detect.FaceKeypoint order).
        kps = np.array([(0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.5, 0.8), (0.05, 0.5), (0.95, 0.5)]) * (bw, bh) + (x0, y0)
        raw = np.concatenate([[cx, cy] - origin, [bw, bh], (kps - origin).reshape(-1)])
        rows.append((call, a, raw.astype(np.float32), logit))
    return rows


def _find_face(w: GoldenWriter, rng: np.random.Generator) -> None:
    """pipeline.find_face with a fake detector and aligner on a dark photo with one bright "face"
    patch: case `whole`, the largest detection (dark) is rejected and the second (bright) confirmed
    after `refine` passes; case `tiled`, max_candidates=1 leaves only the dark face in the
    whole-photo pass, and the tiled pass finds the bright one in two overlapping tiles (merged);
    case `none`, nothing is confirmed and the whole-photo detections come back with index -1;
    case `recrop`, the only detection sits left of the patch and the fake mesh sits right of the
    crop centre (fake_aligner.shift, crop pixels; 0 in the other cases), so the first pass scores
    below the threshold, the first re-crop lands on the patch and scores above, the second
    re-crop overshoots and scores below again: confirmed with the best presence of all passes
    and the last pass's mesh (pipeline.locate_landmarks)."""
    spec = detect.DetectorSpec()
    anchors = detect.generate_anchors(spec.anchors)
    mesh_opts = landmarks.MeshOptions()
    img = _synthetic_image(rng, 64, 48) // 6  # dark background, 0..42
    img[8:24, 36:52] = 200 + img[8:24, 36:52]  # the bright patch: x 36..52, y 8..24
    image = Image.fromarray(img)
    w.array("find_face.image", img, "i64")
    w.text("find_face.anchor_options", _json(spec.anchors.to_dict()))
    w.text("find_face.decode_options", _json(spec.decode.to_dict()))
    w.text("find_face.mesh_options", _json(mesh_opts.to_dict()))
    w.array("find_face.fake_detector.background_logit", [_FAKE_BACKGROUND_LOGIT], "f32")
    w.array("find_face.fake_aligner.flag", [_FAKE_FLAG_OFFSET, _FAKE_FLAG_SCALE], "f64")
    # The fake mesh: points inside the middle two thirds of the crop, eye corners 33 and 263 level,
    # so a refine pass re-crops about the same square.
    s = mesh_opts.input_size
    raw_mesh = np.stack([rng.uniform(s / 6, 5 * s / 6, mesh_opts.num_landmarks), rng.uniform(s / 6, 5 * s / 6, mesh_opts.num_landmarks),
                         rng.normal(0.0, 5.0, mesh_opts.num_landmarks)], axis=1).astype(np.float32)
    raw_mesh[33, :2], raw_mesh[263, :2] = (0.3 * s, 0.4 * s), (0.7 * s, 0.4 * s)
    w.array("find_face.fake_aligner.raw", raw_mesh, "f32")
    # Letterbox of the 64x48 photo: x2, 16 px black bands top and bottom. Tiles (rows=2): 32 px at
    # x 0, 16, 32 and y 0, 16, each letterboxed x4. Boxes below are (x0, y0, x1, y1, logit) in input px.
    def whole(x0: float, y0: float, x1: float, y1: float, logit: float) -> tuple[float, ...]:
        return 2 * x0, 2 * y0 + 16, 2 * x1, 2 * y1 + 16, logit

    def tile(tx: int, ty: int, x0: float, y0: float, x1: float, y1: float, logit: float) -> tuple[float, ...]:
        return 4 * (x0 - tx), 4 * (y0 - ty), 4 * (x1 - tx), 4 * (y1 - ty), logit

    dark_big, bright = whole(2.0, 14.0, 30.0, 44.0, 3.0), whole(34.5, 6.0, 54.0, 26.0, 2.0)
    dark_small = whole(56.0, 40.0, 60.0, 44.0, 1.5)
    cases = {
        "whole": (pipeline.FaceSearchOptions(refine=2, tile_rows=2, max_candidates=4), {0: [dark_big, bright, dark_small]}),
        "tiled": (pipeline.FaceSearchOptions(refine=1, tile_rows=2, max_candidates=1),
                  {0: [dark_big, bright], 2: [tile(16, 0, 35.0, 7.0, 53.0, 25.0, 2.5)],
                   3: [tile(32, 0, 35.5, 6.5, 53.5, 25.5, 1.0)], 6: [tile(32, 16, 40.0, 34.0, 46.0, 40.0, 0.5)]}),
        "none": (pipeline.FaceSearchOptions(refine=1, tile_rows=2, max_candidates=4),
                 {0: [dark_big, dark_small], 5: [tile(16, 16, 20.0, 30.0, 28.0, 38.0, 1.0)]}),
        "recrop": (pipeline.FaceSearchOptions(refine=2, tile_rows=2, max_candidates=4),
                   {0: [whole(14.0, 6.0, 34.0, 26.0, 2.0)]}),
    }
    # Mesh offsets (crop px; none in the other cases): 128 crop px of the recrop case's 30-px roi move
    # each re-crop 20 px right.
    shifts = {"recrop": (128.0, 0.0)}
    for tag, (opts, faces_by_call) in cases.items():
        rows = [r for call, faces in faces_by_call.items()
                for r in _fake_face_rows(call, faces, anchors, spec.input_size, spec.decode)]
        calls = np.array([r[0] for r in rows], dtype=np.int64)
        anchor_idx = np.array([r[1] for r in rows], dtype=np.int64)
        raw = np.stack([r[2] for r in rows])
        logits = np.array([r[3] for r in rows], dtype=np.float32)
        run_detector = _FakeDetector(calls, anchor_idx, raw, logits, anchors.shape[0])
        shift = np.array(shifts.get(tag, (0.0, 0.0)), dtype=np.float32)
        case_mesh = raw_mesh.copy()
        case_mesh[:, :2] += shift  # float32 adds, as the stubs do
        run_aligner = _FakeAligner(case_mesh)
        det, i, mesh, presence = pipeline.find_face(image, run_detector, run_aligner, spec, anchors, mesh_opts, opts)
        p = f"find_face.{tag}"
        w.array(f"{p}.options", [opts.refine, opts.tile_rows, opts.max_candidates], "i64")
        w.array(f"{p}.fake_aligner.shift", shift, "f32")
        w.array(f"{p}.fake_detector.call", calls, "i64")
        w.array(f"{p}.fake_detector.anchor", anchor_idx, "i64")
        w.array(f"{p}.fake_detector.raw", raw, "f32")
        w.array(f"{p}.fake_detector.logit", logits, "f32")
        w.array(f"{p}.detector_calls", [run_detector.calls], "i64")
        w.array(f"{p}.aligner_means", run_aligner.means, "f64")
        w.array(f"{p}.boxes", det.boxes, "f32")
        w.array(f"{p}.keypoints", det.keypoints, "f32")
        w.array(f"{p}.scores", det.scores, "f32")
        w.array(f"{p}.index", [i], "i64")
        w.array(f"{p}.presence", [presence], "f64")
        w.array(f"{p}.mesh", np.zeros((0, 3), np.float32) if mesh is None else mesh, "f32")


# ---------------------------------------------------------------------------------------------


def golden_text(seed: int = DEFAULT_SEED) -> str:
    """The whole golden.txt content for `seed` (deterministic)."""
    rng = np.random.default_rng(seed)
    w = GoldenWriter(
        f"glassfinder golden vectors, format {FORMAT_VERSION}, seed {seed}.\n"
        "Written by glassfinder_runtime.golden.write_golden from the Python reference runtime; do not edit.\n"
        "Block: '<name> <dtype> <ndim> <dims...>' then row-major values (dtypes f32, f64, i64), or\n"
        "'<name> str 1 1' then one line of text. Matrices are (2, 3) image->output affines.")
    w.array("format_version", [FORMAT_VERSION], "i64")
    w.array("seed", [seed], "i64")
    _image_limits(w)
    _letterbox(w)
    _tiles(w)
    _normalize(w, rng)
    anchors = _anchors(w)
    _decode(w, rng, anchors)
    _nms_and_project(w, rng)
    _similarity(w, rng)
    _affine(w, rng)
    _warp(w, rng)
    _align(w, rng)
    _landmarks(w, rng)
    _pipeline(w, rng)
    pq = _pq(w, rng)
    _pq_refine(w, np.random.default_rng([seed, 17]), pq)
    _manifest(w)
    _find_face(w, rng)
    return w.render()


def write_golden(out_dir: str | os.PathLike, seed: int = DEFAULT_SEED) -> Path:
    """Write `out_dir/golden.txt` (creating out_dir) and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / GOLDEN_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(golden_text(seed), encoding="utf-8", newline="\n")
    os.replace(tmp, path)
    return path
