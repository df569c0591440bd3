"""Parity gates: float (torch) vs exported/quantized outputs, as pure numpy metrics plus a verdict.

Metric functions take the decoded outputs of both sides on the same held-out images; `check_parity`
compares them with `ParityThresholds` and returns a report (written as parity.json and parity.md with
a cosine histogram). `enforce_parity` raises ParityError naming the model, target, metric and
threshold of every miss: int8 collapsing silently is the failure users of other exporters hit most.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from glassfinder_runtime.errors import GlassfinderError

SCHEMA = "glassfinder.parity/1"


class ParityError(GlassfinderError):
    """An export missed a parity threshold: the bundle must not be written."""


@dataclass(frozen=True)
class ParityThresholds:
    """Targets for quantized vs float (DESIGN.md "Targets" and "Parity")."""

    cosine_median: float = 0.995  # embedding cosine, median over the parity set (DESIGN target)
    cosine_p1: float = 0.98  # embedding cosine, 1st percentile (DESIGN target)
    gate_agreement: float = 0.995  # fraction of identical accept/refuse (and class) decisions
    detection_agreement: float = 0.98  # detector: same "face found / not found" decision
    box_iou_median: float = 0.95  # detector: IoU of the top face box, float vs quantized
    box_iou_p1: float = 0.85
    keypoint_error_median: float = 0.02  # detector keypoints: mean distance / face-box size
    keypoint_error_p99: float = 0.05
    landmark_error_median_pct_iod: float = 1.0  # aligner: mean landmark distance in % of inter-ocular distance
    landmark_error_p99_pct_iod: float = 3.0
    top1_agreement: float = 0.98  # end to end: same top-1 SKU as the float pipeline
    top10_overlap: float = 0.95  # end to end: mean |top10_float & top10_quant| / 10
    # End to end, the gate is a collapse guard: the bundle (quantized models + PQ gallery) keeps at least
    # this share of the float pipeline's top-1. The DESIGN accuracy target (within 1.0 point of float)
    # is reported as top1_drop_points next to it, and by `glassfinder eval`.
    top1_retention: float = 0.5


# metric key -> (ParityThresholds field, direction, label used in messages)
CHECKS: dict[str, tuple[str, str, str]] = {
    "cosine_median": ("cosine_median", ">=", "embedding cosine median"),
    "cosine_p1": ("cosine_p1", ">=", "embedding cosine p1"),
    "gate_agreement": ("gate_agreement", ">=", "gate decision agreement"),
    "detection_agreement": ("detection_agreement", ">=", "face-found decision agreement"),
    "box_iou_median": ("box_iou_median", ">=", "box IoU median"),
    "box_iou_p1": ("box_iou_p1", ">=", "box IoU p1"),
    "keypoint_error_median": ("keypoint_error_median", "<=", "keypoint error median (box fraction)"),
    "keypoint_error_p99": ("keypoint_error_p99", "<=", "keypoint error p99 (box fraction)"),
    "landmark_error_median_pct_iod": ("landmark_error_median_pct_iod", "<=", "landmark error median (% IOD)"),
    "landmark_error_p99_pct_iod": ("landmark_error_p99_pct_iod", "<=", "landmark error p99 (% IOD)"),
    "top1_agreement": ("top1_agreement", ">=", "end-to-end top-1 agreement"),
    "top10_overlap": ("top10_overlap", ">=", "end-to-end top-10 overlap"),
    "top1_retention": ("top1_retention", ">=", "end-to-end top-1 retention (bundle / float)"),
}

# Metrics a model's parity entry must contain (a missing one fails: no silent pass).
REQUIRED: dict[str, tuple[str, ...]] = {
    "embedder": ("cosine_median", "cosine_p1"),
    "gate": ("gate_agreement",),
    "detector": ("box_iou_median", "keypoint_error_median"),
    "aligner": ("landmark_error_median_pct_iod",),
    # Rank agreement and the top-1 drop are reported beside it (see ParityThresholds.top1_retention).
    "end_to_end": ("top1_retention",),
}


# ---------------------------------------------------------------- metric functions (pure numpy)

def _pair(a: npt.ArrayLike, b: npt.ArrayLike, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or (ndim is not None and a.ndim != ndim) or len(a) == 0:
        raise ValueError(f"need two non-empty arrays of equal shape{f' and {ndim} dims' if ndim else ''}, "
                         f"got {a.shape} and {b.shape}")
    return a, b


def cosine_similarity(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Row-wise cosine of two (n, d) arrays -> (n,). Zero rows give 0."""
    a, b = _pair(a, b, 2)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-300), 0.0)


def cosine_stats(a: npt.ArrayLike, b: npt.ArrayLike) -> dict[str, float]:
    """Embedding parity of (n, d) float vs (n, d) quantized: median, 1st percentile, min, mean cosine."""
    c = cosine_similarity(a, b)
    return {"cosine_median": float(np.median(c)), "cosine_p1": float(np.percentile(c, 1)),
            "cosine_min": float(c.min()), "cosine_mean": float(c.mean())}


def max_abs_diff(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    a, b = _pair(a, b)
    return float(np.abs(a - b).max())


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """IoU of paired boxes: (n, 4) x0, y0, x1, y1 each -> (n,). Empty boxes give 0."""
    a, b = _pair(a, b, 2)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-300), 0.0)


def keypoint_error(ref: npt.ArrayLike, test: npt.ArrayLike, scale: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Mean point distance per item, divided by a per-item scale: (n, k, 2), (n, k, 2), (n,) -> (n,)."""
    ref, test = _pair(ref, test, 3)
    scale = np.asarray(scale, np.float64)
    if scale.shape != (len(ref),) or np.any(scale <= 0):
        raise ValueError(f"scale must be ({len(ref)},) and positive, got {scale.shape}")
    return np.linalg.norm(ref - test, axis=2).mean(1) / scale


def box_size(boxes: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """sqrt(width * height) of (n, 4) boxes: the scale keypoint errors are divided by."""
    b = np.asarray(boxes, np.float64)
    return np.sqrt(np.clip(b[:, 2] - b[:, 0], 1e-9, None) * np.clip(b[:, 3] - b[:, 1], 1e-9, None))


def inter_ocular(landmarks: npt.ArrayLike, right_eye: Sequence[int],
                 left_eye: Sequence[int]) -> npt.NDArray[np.float64]:
    """Distance between the two eye centres (mean of each eye's landmark indices): (n, L, 2) -> (n,)."""
    lm = np.asarray(landmarks, np.float64)
    return np.linalg.norm(lm[:, list(right_eye)].mean(1) - lm[:, list(left_eye)].mean(1), axis=1)


def landmark_error_pct_iod(ref: npt.ArrayLike, test: npt.ArrayLike, right_eye: Sequence[int],
                           left_eye: Sequence[int]) -> npt.NDArray[np.float64]:
    """Mean landmark distance in % of the (float) inter-ocular distance: (n, L, 2) x2 -> (n,)."""
    ref, test = _pair(ref, test, 3)
    return 100.0 * keypoint_error(ref, test, inter_ocular(ref, right_eye, left_eye))


def decision_agreement(ref: npt.ArrayLike, test: npt.ArrayLike) -> float:
    """Fraction of identical decisions (integer class labels, (n,) each)."""
    ref = np.asarray(ref)
    test = np.asarray(test)
    if ref.shape != test.shape or ref.ndim != 1 or len(ref) == 0:
        raise ValueError(f"need two non-empty (n,) label arrays, got {ref.shape} and {test.shape}")
    return float((ref == test).mean())


def gate_decisions(probs: npt.ArrayLike, threshold: float, none_class: int = -1) -> npt.NDArray[np.int64]:
    """(n, c) class probabilities -> (n,) decided class: the most likely glasses class when
    1 - P(none) reaches the threshold (the runtime's accept rule), else `none_class` (refused)."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"need (n, c >= 2) probabilities, got {p.shape}")
    none = none_class % p.shape[1]
    glasses = np.delete(np.arange(p.shape[1]), none)
    accept = 1.0 - p[:, none] >= threshold
    return np.where(accept, glasses[p[:, glasses].argmax(1)], none).astype(np.int64)


def top1_agreement(ref_I: npt.ArrayLike, test_I: npt.ArrayLike) -> float:
    """Fraction of queries with the same top-1 id: (n, k) int64 neighbour ids each (-1 = no result)."""
    ref_I, test_I = np.asarray(ref_I), np.asarray(test_I)
    if ref_I.ndim != 2 or test_I.ndim != 2 or len(ref_I) != len(test_I) or len(ref_I) == 0:
        raise ValueError(f"need two (n, k) id arrays, got {ref_I.shape} and {test_I.shape}")
    return float((ref_I[:, 0] == test_I[:, 0]).mean())


def topk_overlap(ref_I: npt.ArrayLike, test_I: npt.ArrayLike, k: int = 10) -> float:
    """Mean |top-k(ref) & top-k(test)| / k over queries; -1 ids never count as overlap."""
    ref_I, test_I = np.asarray(ref_I), np.asarray(test_I)
    if ref_I.shape[1] < k or test_I.shape[1] < k or len(ref_I) != len(test_I):
        raise ValueError(f"need (n, >= {k}) id arrays, got {ref_I.shape} and {test_I.shape}")
    return float(np.mean([len((set(r[:k]) & set(t[:k])) - {-1}) / k for r, t in zip(ref_I, test_I)]))


# ---------------------------------------------------------------- per-model metric bundles

def embedder_metrics(ref: npt.ArrayLike, test: npt.ArrayLike) -> dict[str, float]:
    """(n, d) float vs quantized embeddings (both after the runtime's L2-norm)."""
    return {**cosine_stats(ref, test), "max_abs_diff": max_abs_diff(ref, test)}


def detector_metrics(ref_boxes, test_boxes, ref_kps, test_kps) -> dict[str, float]:
    """Top face per image: (n, 4) boxes and (n, k, 2) keypoints, float vs quantized, in input pixels."""
    iou = box_iou(ref_boxes, test_boxes)
    err = keypoint_error(ref_kps, test_kps, box_size(ref_boxes))
    return {"box_iou_median": float(np.median(iou)), "box_iou_p1": float(np.percentile(iou, 1)),
            "keypoint_error_median": float(np.median(err)), "keypoint_error_p99": float(np.percentile(err, 99))}


def aligner_metrics(ref, test, right_eye: Sequence[int], left_eye: Sequence[int]) -> dict[str, float]:
    """(n, L, 2) landmarks float vs quantized, in crop pixels."""
    e = landmark_error_pct_iod(ref, test, right_eye, left_eye)
    return {"landmark_error_median_pct_iod": float(np.median(e)),
            "landmark_error_p99_pct_iod": float(np.percentile(e, 99))}


def gate_metrics(ref_probs, test_probs, threshold: float, none_class: int = -1) -> dict[str, float]:
    """(n, c) class probabilities float vs quantized; decisions taken with the manifest's threshold."""
    return {"gate_agreement": decision_agreement(gate_decisions(ref_probs, threshold, none_class),
                                                 gate_decisions(test_probs, threshold, none_class)),
            "max_abs_diff": max_abs_diff(ref_probs, test_probs)}


def retrieval_metrics(ref_I, test_I, k: int = 10) -> dict[str, float]:
    """(n, >= k) ranked SKU ids of the float pipeline vs the quantized pipeline."""
    return {"top1_agreement": top1_agreement(ref_I, test_I), "top10_overlap": topk_overlap(ref_I, test_I, k)}


# ---------------------------------------------------------------- per-model metric functions
# (torch float outputs, exported outputs) -> metrics; the same functions at export and in `glassfinder parity`.

MetricsFn = Callable[[list, list], dict[str, float]]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def embedder_parity(ref: list, test: list) -> dict[str, float]:
    """Output 0 is the embedding, already L2-normalised on both sides (run_exported applies the norm)."""
    return embedder_metrics(ref[0], test[0])


def gate_parity(threshold: float) -> MetricsFn:
    def fn(ref: list, test: list) -> dict[str, float]:
        return gate_metrics(_softmax(ref[0]), _softmax(test[0]), threshold, none_class=-1)
    return fn


def detector_parity(spec) -> MetricsFn:
    """Each side's best face as the runtime outputs it (decode + weighted NMS, which averages the
    overlapping anchors: the single top anchor of two near-equal neighbours is not what ships, and
    comparing it gave IoU ~0.85 even between float and weights-only int8). Box IoU and keypoint error
    are measured on the images where float finds a face; whether a face is found at all is a
    decision: detection_agreement. spec: glassfinder_runtime.detect.DetectorSpec."""
    from glassfinder_runtime.detect import decode_boxes, generate_anchors, weighted_nms

    anchors = generate_anchors(spec.anchors)
    d = spec.decode

    def top(reg: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, kps, scores = [], [], []
        for r, c in zip(reg, cls):
            det = weighted_nms(decode_boxes(r, c, anchors, d), d.min_score, d.nms_iou, d.nms_algorithm)
            if len(det) == 0:  # no face: a zero box, score 0 (the decision metric catches it)
                boxes.append(np.zeros(4)), kps.append(np.zeros((d.num_keypoints, 2))), scores.append(0.0)
                continue
            i = int(det.scores.argmax())
            boxes.append(det.boxes[i] * spec.input_size)
            kps.append(det.keypoints[i] * spec.input_size)
            scores.append(det.scores[i])
        return np.asarray(boxes), np.asarray(kps), np.asarray(scores)

    def fn(ref: list, test: list) -> dict[str, float]:
        rb, rk, rs = top(*ref)
        tb, tk, ts = top(*test)
        found_r, found_t = rs >= spec.decode.min_score, ts >= spec.decode.min_score
        out = {"detection_agreement": decision_agreement(found_r, found_t),
               "faces_in_parity_set": float(found_r.sum()),
               "max_abs_diff": max_abs_diff(ref[0], test[0])}
        if found_r.any():
            out.update(detector_metrics(rb[found_r], tb[found_r], rk[found_r], tk[found_r]))
        return out
    return fn


def aligner_parity(ref: list, test: list) -> dict[str, float]:
    """Output 0: (n, 468 * 3) mesh in crop pixels; error in % of the inter-ocular distance."""
    from glassfinder_runtime.landmarks import LEFT_EYE_RING, RIGHT_EYE_RING

    r = ref[0].reshape(len(ref[0]), -1, 3)[..., :2]
    t = test[0].reshape(len(test[0]), -1, 3)[..., :2]
    return {**aligner_metrics(r, t, RIGHT_EYE_RING, LEFT_EYE_RING),
            "max_abs_diff": max_abs_diff(ref[0], test[0])}


# ---------------------------------------------------------------- verdict

def _fmt(v: float) -> str:
    return f"{v:.4g}"


def check_parity(measured: Mapping[str, Mapping[str, Mapping[str, Any]]],
                 thresholds: ParityThresholds = ParityThresholds()) -> dict[str, Any]:
    """measured: {model: {target: {metric: value}}}; an entry {"skipped": reason} records a target whose
    numerics cannot be measured on this platform (it neither passes nor fails, and is listed). Optional
    non-numeric entries: "remedies" (list of remedies applied) and "note" (e.g. "simulated in torch").

    Returns the parity report: per model and target the metrics, one check per known metric, a passed
    flag, plus top-level "failures" (messages), "skipped" and "passed"."""
    th = asdict(thresholds)
    models: dict[str, Any] = {}
    failures: list[str] = []
    skipped: list[str] = []
    for model, per_target in measured.items():
        models[model] = {}
        for target, metrics in per_target.items():
            if "skipped" in metrics:
                models[model][target] = {"skipped": str(metrics["skipped"]), "passed": None}
                skipped.append(f"{model}: {target} not measured ({metrics['skipped']})")
                continue
            extra = {k: metrics[k] for k in ("remedies", "note") if k in metrics}
            metrics = {k: v for k, v in metrics.items() if k not in extra}
            checks = []
            for key in REQUIRED.get(model, ()):
                if key not in metrics:
                    msg = f"{model}: {target} {CHECKS[key][2]} was not measured (required)"
                    checks.append({"metric": key, "value": None, "op": CHECKS[key][1],
                                   "threshold": th[CHECKS[key][0]], "passed": False})
                    failures.append(msg)
            for key, value in metrics.items():
                if key not in CHECKS:
                    continue
                field, op, label = CHECKS[key]
                thr = th[field]
                value = float(value)
                ok = bool(np.isfinite(value)) and (value >= thr if op == ">=" else value <= thr)
                checks.append({"metric": key, "value": value, "op": op, "threshold": thr, "passed": ok})
                if not ok:
                    failures.append(f"{model}: {target} {label} {_fmt(value)} {'<' if op == '>=' else '>'} "
                                    f"{thr:g} (threshold)")
            models[model][target] = {"metrics": {k: float(v) for k, v in metrics.items()}, **extra,
                                     "checks": checks, "passed": all(c["passed"] for c in checks)}
    return {"schema": SCHEMA, "thresholds": th, "models": models, "failures": failures, "skipped": skipped,
            "passed": not failures}


def enforce_parity(report: Mapping[str, Any]) -> None:
    """Raise ParityError listing every missed threshold (model, target, metric, value, threshold)."""
    if not report["passed"]:
        raise ParityError("parity gate failed:\n  " + "\n  ".join(report["failures"]))


# ---------------------------------------------------------------- writers

def write_parity_json(report: Mapping[str, Any], path: Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def cosine_histogram_png(cosines: Mapping[str, npt.ArrayLike], path: Path, thresholds: ParityThresholds =
                         ParityThresholds(), bins: int = 40, size: tuple[int, int] = (640, 360)) -> Path:
    """Histogram (step lines) of per-image cosine for each series, with the p1 and median thresholds as
    dashed vertical lines. Pillow only (no matplotlib)."""
    from PIL import Image, ImageDraw

    W, H = size
    left, right, top, bottom = 60, 20, 20, 60
    series = {k: np.asarray(v, np.float64) for k, v in cosines.items() if len(v)}
    lo = min([thresholds.cosine_p1 - 0.005] + [float(v.min()) for v in series.values()])
    lo = max(lo, -1.0)
    edges = np.linspace(lo, 1.0, bins + 1)
    counts = {k: np.histogram(np.clip(v, lo, 1.0), edges)[0] / len(v) for k, v in series.items()}
    ymax = max([c.max() for c in counts.values()] + [1e-9])
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    px = lambda x: left + (x - lo) / (1.0 - lo) * (W - left - right)  # noqa: E731
    py = lambda y: H - bottom - y / ymax * (H - top - bottom)  # noqa: E731
    d.line([(left, top), (left, H - bottom), (W - right, H - bottom)], fill="black")
    for t in (lo, (lo + 1) / 2, 1.0):
        d.text((px(t) - 18, H - bottom + 6), f"{t:.4f}", fill="black")
    d.text((W // 2 - 60, H - 22), "cosine (quantized vs float)", fill="black")
    d.text((4, top), f"{ymax:.0%}", fill="black")  # y: share of the parity images per bin
    d.text((4, H - bottom - 10), "0%", fill="black")
    for thr, name in ((thresholds.cosine_p1, "p1"), (thresholds.cosine_median, "median")):
        x = px(thr)
        for y in range(top, H - bottom, 8):
            d.line([(x, y), (x, y + 4)], fill=(120, 120, 120))
        d.text((x + 3, top), f"{name} >= {thr:g}", fill=(90, 90, 90))
    for i, (name, c) in enumerate(counts.items()):
        col = _COLOURS[i % len(_COLOURS)]
        pts = []
        for j, v in enumerate(c):
            pts += [(px(edges[j]), py(v)), (px(edges[j + 1]), py(v))]
        d.line(pts, fill=col, width=2)
        d.text((left + 10, top + 16 + 14 * i), f"{name} (n={len(series[name])})", fill=col)
    img.save(path)
    return Path(path)


def write_parity_md(report: Mapping[str, Any], path: Path, histogram: str | None = None) -> Path:
    """A readable summary: verdict, failures, one table per model and target, the cosine plot."""
    lines = ["# Parity report", "", f"**{'PASSED' if report['passed'] else 'FAILED'}** "
             "(quantized/exported vs torch float on the held-out parity set)", ""]
    if report["failures"]:
        lines += ["## Failures", ""] + [f"- {m}" for m in report["failures"]] + [""]
    if report.get("skipped"):
        lines += ["## Not measured here", ""] + [f"- {m}" for m in report["skipped"]] + [""]
    for model, per_target in report["models"].items():
        lines += [f"## {model}", "", "| target | metric | value | threshold | ok |", "| --- | --- | --- | --- | --- |"]
        for target, entry in per_target.items():
            if "skipped" in entry:
                lines.append(f"| {target} | (not measured) | {entry['skipped']} | | |")
                continue
            checked = {c["metric"] for c in entry["checks"]}
            for c in entry["checks"]:
                val = "missing" if c["value"] is None else _fmt(c["value"])
                lines.append(f"| {target} | {c['metric']} | {val} | {c['op']} {c['threshold']:g} | "
                             f"{'yes' if c['passed'] else '**NO**'} |")
            for k, v in entry["metrics"].items():
                if k not in checked:
                    lines.append(f"| {target} | {k} | {_fmt(v)} | | |")
            if entry.get("note"):
                lines.append(f"| {target} | note | {entry['note']} | | |")
            for r in entry.get("remedies", []):
                lines.append(f"| {target} | remedy applied | {r} | | |")
        lines.append("")
    if histogram:
        lines += ["## Embedding cosine distribution", "", f"![cosine histogram]({histogram})", ""]
    Path(path).write_text("\n".join(lines))
    return Path(path)


def write_parity(report: Mapping[str, Any], out_dir: Path,
                 cosines: Mapping[str, npt.ArrayLike] | None = None) -> dict[str, Path]:
    """Write parity.json, parity.md and (when cosines are given) parity_cosine.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_parity_json(report, out_dir / "parity.json")}
    hist = None
    if cosines:
        paths["png"] = cosine_histogram_png(cosines, out_dir / "parity_cosine.png")
        hist = "parity_cosine.png"
    paths["md"] = write_parity_md(report, out_dir / "parity.md", hist)
    return paths
