"""The on-device pipeline, end to end: photo -> detector -> aligner -> crop -> gate -> embedder -> PQ search.

Public API in the style of MediaPipe tasks (same names in the Kotlin and Swift stubs):

    options = SearchOptions(top_k=10)
    with GlassFinder.create_from_bundle("bundle/", options) as finder:
        result = finder.search("photo.jpg")      # SearchResult
        if result.status == "ok":
            print(result.results[0].name)

Every stage is a small pure function over numpy arrays, configured from the manifest; this module
only runs the LiteRT models and strings the stages together. It never imports torch or tensorflow.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from glassfinder_runtime import detect as D
from glassfinder_runtime import landmarks as L
from glassfinder_runtime.align import align_crop
from glassfinder_runtime.bundle import Bundle, open_bundle
from glassfinder_runtime.errors import BundleError, ConfigError
from glassfinder_runtime.gallery import pq_search
from glassfinder_runtime.geometry import CropTemplate, ReducedImages
from glassfinder_runtime.image_io import load_image
from glassfinder_runtime.manifest import InputSpec, Layout, ModelEntry, ModelRole, Normalization

# What the user is told when the photo is not glasses worn on a face (both stubs show the same).
REFUSAL_MESSAGE = "Please use a photo of glasses or sunglasses worn on a face"


@dataclass(frozen=True)
class FaceSearchOptions:
    """How hard to look for a face (the same in the torch Landmarker and on device)."""

    refine: int = 1  # extra aligner passes from the previous mesh
    tile_rows: int = 2  # tiled second detector pass when the whole photo gives no confirmed face; 0 = never
    max_candidates: int = 4  # detections tried per pass, largest first

    def __post_init__(self) -> None:
        for name in ("refine", "tile_rows", "max_candidates"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"FaceSearchOptions.{name} must be an integer >= 0, got {v!r}")


@dataclass(frozen=True)
class SearchOptions:
    """Runtime knobs (the models' own settings come from the manifest)."""

    top_k: int = 10  # results returned
    num_threads: int = 1  # LiteRT threads per model
    face: FaceSearchOptions = field(default_factory=FaceSearchOptions)  # how hard to look for a face

    def __post_init__(self) -> None:
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"top_k must be an integer >= 1, got {self.top_k!r}")


@dataclass(frozen=True)
class SkuHit:
    sku: str  # SKU id
    name: str  # display name
    score: float  # cosine similarity (inner product of unit vectors), higher is closer
    index: int  # row in the gallery


@dataclass(frozen=True)
class Face:
    """The face the search used, image pixels. keypoints (5, 2) in geometry.KEYPOINT_NAMES order."""

    box: npt.NDArray[np.float32]  # (4,) x0, y0, x1, y1 from the detector
    score: float  # detector score
    keypoints: npt.NDArray[np.float32]  # (5, 2) glasses keypoints from the mesh
    crop_matrix: npt.NDArray[np.float64]  # (2, 3) image -> glasses crop


@dataclass(frozen=True)
class SearchResult:
    """status "ok": results holds the top-k SKUs; "rejected": message says why (reason: no_face | no_glasses)."""

    status: str
    message: str
    reason: str | None
    faces: int  # faces the detector found
    face: Face | None
    crop: npt.NDArray[np.uint8] | None  # (H, W, 3) the aligned glasses crop
    gate_probs: dict[str, float]
    results: list[SkuHit] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    embedding: npt.NDArray[np.float32] | None = None  # (d,) unit query vector when the gate accepted

    def to_json(self) -> dict:
        """The `glassfinder search --json` shape."""
        return {"status": self.status, "message": self.message, "reason": self.reason, "faces": self.faces,
                "gate": {k: round(v, 4) for k, v in self.gate_probs.items()},
                "results": [{"sku": h.sku, "name": h.name, "score": round(h.score, 4)} for h in self.results],
                "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()}}


# ---------------------------------------------------------------------------------------------
# Model I/O


def preprocess(pixels: npt.NDArray[np.uint8], spec: InputSpec) -> npt.NDArray[np.float32]:
    """(H, W, 3) uint8 RGB -> the float tensor the model's input expects, batch of 1.

    normalization "runtime": (p / 255 - mean) / std, else p / 255. Layout NHWC or NCHW.
    uint8 pixels are looked up in `pixel_table` (the same float32 bits as the arithmetic).
    """
    px = np.asarray(pixels)
    if px.dtype == np.uint8 and px.ndim == 3:
        return D.lookup_pixels(px, pixel_table(spec), channels_first=spec.layout is Layout.NCHW)[None]
    x = D.normalize(px, *_mean_std(spec))
    if spec.layout is Layout.NCHW:
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])


def _mean_std(spec: InputSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) preprocess applies: the spec's, or 0 and 1 (exactly p / 255) when in the graph."""
    if spec.normalization is Normalization.RUNTIME:
        return spec.mean, spec.std
    return (0.0,) * spec.channels, (1.0,) * spec.channels


def pixel_table(spec: InputSpec) -> npt.NDArray[np.float32]:
    """(channels, 256) float32, read-only: what preprocess feeds for each uint8 value of each channel."""
    return D.normalize_table(*(tuple(map(float, v)) for v in _mean_std(spec)))


def quantize(x: npt.NDArray[np.float32], scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float -> int8/uint8 with the file's own scale and zero point: clip(round(x / s) + z).

    np.round rounds half to even (the stubs do the same; TFLite's own quantizer rounds half away)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> npt.NDArray[np.float32]:
    """int8/uint8 -> float: (q - z) * s."""
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


def gate_decision(logits: npt.ArrayLike, accept: Sequence[int], threshold: float) -> tuple[bool, float]:
    """(accepted, P(glasses)): softmax of the gate's logits, summed over the accepted classes, >= threshold."""
    p = float(softmax(logits)[list(accept)].sum())
    return p >= threshold, p


class TfliteModel:
    """One LiteRT interpreter: float in, float out, whatever the file's I/O types are.

    int8/uint8 inputs are quantized and outputs dequantized with the scale and zero point the
    interpreter reports (never values from elsewhere). Outputs come back in the manifest's order,
    matched by tensor name.
    """

    def __init__(self, bundle: Bundle, role: ModelRole, num_threads: int = 1):
        self.entry: ModelEntry = bundle.model(role)
        self.interp = bundle.interpreter(role, num_threads=num_threads)
        self.input = self.interp.get_input_details()[0]
        by_name = {d["name"]: d for d in self.interp.get_output_details()}
        try:
            self.outputs = [by_name[o.name] for o in self.entry.outputs]
        except KeyError as exc:
            raise BundleError(f"{bundle.path(self.entry)}: output {exc.args[0]!r} of the manifest is not in the model "
                              f"(it has {sorted(by_name)})") from None
        # (channels, 256): the input value of each uint8 pixel value, preprocess then quantize. Both
        # are elementwise per channel, so `run_pixels` looks pixels up instead (the same values).
        table = pixel_table(self.entry.input)
        d = self.input
        self.input_table = (quantize(table, *d["quantization"], d["dtype"]) if d["dtype"] in (np.int8, np.uint8)
                            else table.astype(d["dtype"]))

    def __call__(self, x: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        d = self.input
        if d["dtype"] in (np.int8, np.uint8):
            x = quantize(x, *d["quantization"], d["dtype"])
        return self._invoke(x.astype(d["dtype"], copy=False))

    def run_pixels(self, pixels: npt.NDArray[np.uint8]) -> list[npt.NDArray[np.float32]]:
        """(H, W, C) uint8 pixels -> outputs; the same as self(preprocess(pixels, spec)), in one lookup."""
        px = np.asarray(pixels)
        if px.dtype != np.uint8 or px.ndim != 3:
            return self(preprocess(px, self.entry.input))
        channels_first = self.entry.input.layout is Layout.NCHW
        return self._invoke(D.lookup_pixels(px, self.input_table, channels_first)[None])

    def _invoke(self, x: np.ndarray) -> list[npt.NDArray[np.float32]]:
        """x: the input tensor in the file's dtype. get_tensor returns copies, so float outputs are not copied again."""
        self.interp.set_tensor(self.input["index"], x)
        self.interp.invoke()
        outs = []
        for o in self.outputs:
            y = self.interp.get_tensor(o["index"])
            outs.append(dequantize(y, *o["quantization"]) if o["dtype"] in (np.int8, np.uint8)
                        else y.astype(np.float32, copy=False))
        return outs


# ---------------------------------------------------------------------------------------------
# Stages as pure functions over model callables (the torch Landmarker runs the same chain).

ModelFn = Callable[[npt.NDArray[np.uint8]], Sequence[np.ndarray]]  # (H, W, 3) uint8 pixels -> raw outputs


def detect_faces(image: Image.Image, run_detector: ModelFn, spec: D.DetectorSpec, anchors: npt.NDArray[np.float32],
                 tile_rows: int = 0) -> D.Detections:
    """All faces in image pixels: letterbox -> detector -> decode -> weighted NMS -> project.

    tile_rows > 0: run on overlapping square tiles (D.tile_windows) and merge, for faces too small
    for the whole-photo pass (a face of a group photo can be ~10 px in the 128-px input).
    """
    if tile_rows <= 0:
        pixels, A = D.letterbox(image, spec.input_size)
        raw_boxes, raw_scores = run_detector(pixels)[:2]
        return D.postprocess(raw_boxes, raw_scores, A, spec, anchors)
    parts = []
    for x0, y0, side in D.tile_windows(image.width, image.height, tile_rows):
        part = detect_faces(image.crop((int(x0), int(y0), int(x0 + side), int(y0 + side))), run_detector, spec, anchors)
        shift = np.array([x0, y0], dtype=np.float32)
        parts.append(D.Detections(part.boxes + np.tile(shift, 2), part.keypoints + shift, part.scores))
    return D.merge(parts, spec.decode.nms_iou, spec.decode.nms_algorithm)


def face_mesh(image: Image.Image, roi: L.FaceRoi, run_aligner: ModelFn, opts: L.MeshOptions,
              reduced: ReducedImages | None = None) -> tuple[npt.NDArray[np.float32], float]:
    """(468, 3) image-pixel mesh and face-presence score for one rotated face roi.
    reduced: geometry.ReducedImages of this image, shared by the warps of one search."""
    A = L.roi_matrix(roi, opts.input_size)
    raw, flag = run_aligner(L.crop_face(image, A, opts.input_size, reduced))[:2]
    return L.decode_landmarks(raw, A, opts.num_landmarks), L.presence_score(flag)


def locate_landmarks(image: Image.Image, det: D.Detections, i: int, run_aligner: ModelFn, opts: L.MeshOptions,
                     refine: int = 1, reduced: ReducedImages | None = None) -> tuple[npt.NDArray[np.float32], float]:
    """(468, 3) mesh of detection i after `refine` re-crops from the mesh (MediaPipe's tracking roi,
    tighter on tilted heads), and the best presence score of all passes. The re-crops always run:
    on blurred, dark or small faces the detector's loose roi often scores below the threshold while
    the re-crop centred on the mesh clears it. reduced: as in face_mesh (made here if None)."""
    reduced = ReducedImages(image) if reduced is None else reduced
    kp = det.keypoints[i]
    roi = L.face_roi(det.boxes[i], kp[D.FaceKeypoint.RIGHT_EYE], kp[D.FaceKeypoint.LEFT_EYE], opts.roi_scale)
    mesh, presence = face_mesh(image, roi, run_aligner, opts, reduced)
    best = presence
    for _ in range(refine):
        mesh, presence = face_mesh(image, L.roi_from_mesh(mesh, opts.roi_scale), run_aligner, opts, reduced)
        best = max(best, presence)
    return mesh, best


def find_face(image: Image.Image, run_detector: ModelFn, run_aligner: ModelFn, spec: D.DetectorSpec,
              anchors: npt.NDArray[np.float32], mesh_opts: L.MeshOptions,
              opts: FaceSearchOptions = FaceSearchOptions(), timings: dict[str, float] | None = None,
              reduced: ReducedImages | None = None) -> tuple[D.Detections, int, npt.NDArray[np.float32] | None, float]:
    """(detections, index of the chosen face or -1, its (468, 3) mesh or None, its presence score).

    The chosen face is the largest detection the aligner confirms (presence >= threshold), from the
    whole-photo pass, else from the tiled pass. The detections returned are those of the pass that
    confirmed a face (the whole-photo ones if none did). `timings` accumulates seconds spent in
    "detect" and "align". reduced: geometry.ReducedImages of this image (made here if None).
    """
    t = timings if timings is not None else {}
    reduced = ReducedImages(image) if reduced is None else reduced
    whole = None
    for tile_rows in (0, opts.tile_rows) if opts.tile_rows > 0 else (0,):
        t0 = time.perf_counter()
        det = detect_faces(image, run_detector, spec, anchors, tile_rows)
        t["detect"] = t.get("detect", 0.0) + time.perf_counter() - t0
        whole = det if whole is None else whole
        t0 = time.perf_counter()
        try:
            for i in D.by_prominence(det)[: opts.max_candidates]:
                mesh, presence = locate_landmarks(image, det, int(i), run_aligner, mesh_opts, opts.refine, reduced)
                if presence >= mesh_opts.presence_threshold:
                    return det, int(i), mesh, presence
        finally:
            t["align"] = t.get("align", 0.0) + time.perf_counter() - t0
    return whole, -1, None, 0.0


def softmax(logits: npt.ArrayLike) -> npt.NDArray[np.float32]:
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    e = np.exp(z - z.max())
    return (e / e.sum()).astype(np.float32)


def l2_normalize(x: npt.ArrayLike, eps: float = 1e-12) -> npt.NDArray[np.float32]:
    """(n, d) -> unit rows (the L2-norm runs in float, outside the int8 graph)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


# ---------------------------------------------------------------------------------------------


def read_sku_metadata(path: Path, n: int) -> list[dict]:
    """The bundle's SKU list: {"skus": [{"sku", "name", ...}, ...]} indexed by gallery id."""
    try:
        skus = json.loads(path.read_text(encoding="utf-8"))["skus"]
        if not isinstance(skus, list) or not all(isinstance(s, dict) and "sku" in s and "name" in s for s in skus):
            raise ValueError("each entry needs 'sku' and 'name'")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: not a SKU list ({exc})") from None
    if len(skus) != n:
        raise BundleError(f"{path}: {len(skus)} SKUs listed but the gallery holds {n} vectors")
    return skus


class GlassFinder:
    """The whole on-device search over one verified bundle. Not thread-safe: one per thread."""

    def __init__(self, bundle: Bundle, options: SearchOptions = SearchOptions(),
                 runners: dict[ModelRole, ModelFn] | None = None):
        """runners: replace the bundle's LiteRT models (e.g. float references for benchmarks);
        each maps (H, W, 3) uint8 pixels to the model's raw float outputs in manifest order."""
        m = bundle.manifest
        missing = [name for name in ("detector", "aligner", "gate", "embedder", "gallery") if getattr(m, name) is None]
        if missing:
            raise BundleError(f"{bundle.root}: the bundle has no {', '.join(missing)} section: it cannot run a search")
        self.bundle, self.options = bundle, options
        det_entry = bundle.model(ModelRole.DETECTOR)
        self.det_spec = D.DetectorSpec(input_size=m.detector.anchors.input_size, mean=det_entry.input.mean,
                                       std=det_entry.input.std, anchors=m.detector.anchors, decode=m.detector.decode)
        self.anchors = D.generate_anchors(self.det_spec.anchors)
        self.mesh_opts: L.MeshOptions = m.aligner.mesh
        self.template = CropTemplate(width=m.aligner.template.width, height=m.aligner.template.height,
                                     points=tuple(tuple(p) for p in m.aligner.template.points))
        self.run = runners or {role: TfliteModel(bundle, role, options.num_threads).run_pixels for role in ModelRole}
        self.gallery = bundle.gallery
        self.skus = read_sku_metadata(bundle.path(m.gallery.sku_file), self.gallery.n)
        gate = m.gate
        self.accept = [gate.class_names.index(c) for c in gate.accept_classes]

    @classmethod
    def create_from_bundle(cls, path: str | os.PathLike, options: SearchOptions = SearchOptions()) -> "GlassFinder":
        """Open and verify the bundle (manifest, versions, every sha256) and load its models."""
        return cls(open_bundle(path), options)

    def close(self) -> None:
        self.run = {}

    def __enter__(self) -> "GlassFinder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def embed_crop(self, crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """(H, W, 3) aligned crop -> (d,) unit vector."""
        return l2_normalize(np.asarray(self.run[ModelRole.EMBEDDER](crop)[0]).reshape(1, -1))[0]

    def gate_crop(self, crop: npt.NDArray[np.uint8]) -> tuple[bool, dict[str, float]]:
        """(H, W, 3) aligned crop -> (accepted, class probabilities)."""
        logits = self.run[ModelRole.GATE](crop)[0]
        accepted, _ = gate_decision(logits, self.accept, self.bundle.manifest.gate.threshold)
        return accepted, {name: float(p) for name, p in zip(self.bundle.manifest.gate.class_names, softmax(logits))}

    def search_vector(self, q: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """(d,) query -> (k,) scores and (k,) gallery rows, best first."""
        D_, I = pq_search(self.gallery, q[None], k)
        return D_[0], I[0]

    def search(self, image: Image.Image | str | os.PathLike) -> SearchResult:
        """Search one photo (a path, or a PIL image). Bad files raise ImageError naming the file."""
        t = {}
        t0 = time.perf_counter()
        if not isinstance(image, Image.Image):
            image = load_image(image)
        elif image.mode != "RGB":
            image = image.convert("RGB")
        t["decode"] = time.perf_counter() - t0

        reduced = ReducedImages(image)  # box reductions shared by the aligner passes and the glasses crop
        det, i, mesh, _ = find_face(image, self.run[ModelRole.DETECTOR], self.run[ModelRole.ALIGNER], self.det_spec,
                                 self.anchors, self.mesh_opts, self.options.face, t, reduced)
        if i < 0:
            return self._rejected("no_face", len(det), None, None, {}, t)
        keypoints = L.glasses_keypoints(mesh, self.mesh_opts)
        t0 = time.perf_counter()
        crop, A = align_crop(image, keypoints, self.template, reduced)
        t["crop"] = time.perf_counter() - t0
        face = Face(box=det.boxes[i].copy(), score=float(det.scores[i]), keypoints=keypoints, crop_matrix=A)

        t0 = time.perf_counter()
        accepted, probs = self.gate_crop(crop)
        t["gate"] = time.perf_counter() - t0
        if not accepted:
            return self._rejected("no_glasses", len(det), face, crop, probs, t)

        t0 = time.perf_counter()
        q = self.embed_crop(crop)
        t["embed"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores, rows = self.search_vector(q, self.options.top_k)
        t["search"] = time.perf_counter() - t0
        hits = [SkuHit(sku=self.skus[r]["sku"], name=self.skus[r]["name"], score=float(s), index=int(r))
                for s, r in zip(scores, rows) if r >= 0]
        return SearchResult("ok", "", None, len(det), face, crop, probs, hits, _ms(t), q)

    def _rejected(self, reason: str, faces: int, face: Face | None, crop, probs: dict, t: dict) -> SearchResult:
        why = "no face was found" if reason == "no_face" else "no glasses are worn on the face"
        message = f"{self.bundle.manifest.gate.refusal_message} ({why})"
        return SearchResult("rejected", message, reason, faces, face, crop, probs, [], _ms(t))


def _ms(t: dict[str, float]) -> dict[str, float]:
    out = {k: 1e3 * v for k, v in t.items()}
    out["total"] = sum(out.values())
    return out
