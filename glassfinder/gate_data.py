"""Gate training data: what "none" looks like, and the mixed batches the gate learns from.

Positives are aligned crops of faces wearing glasses (eyeglasses or sunglasses, from the renderer).
Negatives are everything else an aligned crop can show when the detector fires: bare faces, and
procedural non-faces drawn here with anti-aliased signed-distance shapes — textures (noise, stripes,
checks, wood grain, gradients) and objects on a table (cups, forks, knives, phones, bottles, and
glasses lying flat with no face behind them, the hardest negative for a "glasses?" detector).
All arrays are (n, H, W, 3) uint8 RGB; everything is drawn from the given numpy Generator.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from glassfinder.models.gate import GATE_CLASSES

EYEGLASSES, SUNGLASSES, NONE = (GATE_CLASSES.index(c) for c in ("eyeglasses", "sunglasses", "none"))
F32 = np.float32
Images = npt.NDArray[np.uint8]


def _grid(h: int, w: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Pixel-centre coordinates (h, w) x and y."""
    y, x = np.mgrid[0:h, 0:w].astype(F32) + 0.5
    return x, y


def _cover(sdf: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Anti-aliased coverage of a signed distance field in pixels (negative inside)."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _paint(img: npt.NDArray[np.float32], sdf: npt.NDArray[np.float32], rgb: npt.ArrayLike) -> None:
    a = _cover(sdf)[..., None]
    img *= 1 - a
    img += a * np.asarray(rgb, F32)


def _ellipse_sdf(x, y, cx, cy, a, b):
    """Approximate signed distance (pixels) to an axis-aligned ellipse."""
    return (np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2) - 1.0) * min(a, b)


def _box_sdf(x, y, cx, cy, hx, hy, r=0.0):
    qx, qy = np.abs(x - cx) - hx + r, np.abs(y - cy) - hy + r
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def _segment_sdf(x, y, p0, p1, half_width):
    px, py = x - p0[0], y - p0[1]
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    return np.hypot(px - t * dx, py - t * dy) - half_width


def _rotate(x, y, cx, cy, angle):
    c, s = np.cos(angle), np.sin(angle)
    return c * (x - cx) + s * (y - cy) + cx, -s * (x - cx) + c * (y - cy) + cy


def _colour(rng: np.random.Generator) -> npt.NDArray[np.float32]:
    return rng.uniform(0, 255, 3).astype(F32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> npt.NDArray[np.float32]:
    """(h, w) value noise in [0, 1]: a random (cells x 2cells) grid, bilinearly upsampled."""
    g = rng.random((cells + 1, 2 * cells + 1)).astype(F32)
    ys = np.linspace(0, cells, h, dtype=F32)
    xs = np.linspace(0, 2 * cells, w, dtype=F32)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), 2 * cells - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a, b = g[y0][:, x0], g[y0][:, x0 + 1]
    c, d = g[y0 + 1][:, x0], g[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def texture(rng: np.random.Generator, h: int = 64, w: int = 128) -> npt.NDArray[np.float32]:
    """One (h, w, 3) float32 0..255 texture: noise, stripes, checks, wood grain or a gradient."""
    x, y = _grid(h, w)
    c0, c1 = _colour(rng), _colour(rng)
    kind = rng.integers(5)
    if kind == 0:
        t = _smooth_noise(rng, h, w, int(rng.integers(2, 16)))
    elif kind == 1:
        ang, period = rng.uniform(0, np.pi), rng.uniform(3, 30)
        t = 0.5 + 0.5 * np.sin((np.cos(ang) * x + np.sin(ang) * y) * 2 * np.pi / period)
    elif kind == 2:
        s = rng.uniform(4, 24)
        t = ((np.floor(x / s) + np.floor(y / s)) % 2).astype(F32)
    elif kind == 3:  # wood grain: stretched sinusoid of a warped coordinate
        warp = _smooth_noise(rng, h, w, 3) * rng.uniform(5, 30)
        t = 0.5 + 0.5 * np.sin((y + warp) * 2 * np.pi / rng.uniform(3, 12))
    else:
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * x / w + np.sin(ang) * y / h) * 0.5 + 0.5
    t = np.clip(t, 0, 1)[..., None]
    return (c0 * (1 - t) + c1 * t).astype(F32)


def _draw_cup(img, x, y, rng):
    h, w = img.shape[:2]
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.35, 0.65) * h
    hw, hh = rng.uniform(0.1, 0.2) * w, rng.uniform(0.25, 0.45) * h
    col = _colour(rng)
    _paint(img, np.abs(_ellipse_sdf(x, y, cx + hw, cy, hw * 0.45, hh * 0.45)) - 2.0, col)  # handle ring
    _paint(img, _box_sdf(x, y, cx, cy, hw, hh, r=3.0), col)
    _paint(img, _ellipse_sdf(x, y, cx, cy - hh, hw, hh * 0.2), col * 0.6)  # rim opening


def _draw_cutlery(img, x, y, rng):
    h, w = img.shape[:2]
    xr, yr = _rotate(x, y, w / 2, h / 2, rng.uniform(-0.6, 0.6))
    col = rng.uniform(150, 235) * np.ones(3, F32) * rng.uniform(0.85, 1.0, 3).astype(F32)
    y0 = rng.uniform(0.3, 0.7) * h
    x0, x1 = rng.uniform(0.05, 0.25) * w, rng.uniform(0.55, 0.7) * w
    _paint(img, _segment_sdf(xr, yr, (x0, y0), (x1, y0), rng.uniform(1.5, 3.5)), col)  # handle
    kind = rng.integers(3)
    if kind == 0:  # fork: tines
        n = int(rng.integers(3, 5))
        for i in range(n):
            dy = (i - (n - 1) / 2) * rng.uniform(2.5, 4)
            _paint(img, _segment_sdf(xr, yr, (x1, y0 + dy), (x1 + 0.25 * w, y0 + dy), 0.9), col)
        _paint(img, _box_sdf(xr, yr, x1, y0, 2.5, (n - 1) * 2 + 1.5, 1.0), col)
    elif kind == 1:  # spoon bowl
        _paint(img, _ellipse_sdf(xr, yr, x1 + 0.12 * w, y0, 0.12 * w, 0.12 * h + 3), col)
    else:  # knife blade
        _paint(img, _box_sdf(xr, yr, x1 + 0.13 * w, y0, 0.13 * w, 3.5, 2.5), col)


def _draw_flat_glasses(img, x, y, rng):
    """Glasses lying on a table: two lens outlines + bridge (+ folded temples), no face."""
    h, w = img.shape[:2]
    xr, yr = _rotate(x, y, w / 2, h / 2, rng.uniform(-0.5, 0.5))
    col = _colour(rng) * rng.uniform(0.1, 1.0)
    cx, cy = w / 2 + rng.uniform(-10, 10), h / 2 + rng.uniform(-8, 8)
    a, b = rng.uniform(12, 24), rng.uniform(8, 16)
    gap, t = rng.uniform(4, 12), rng.uniform(0.7, 3.0)
    rect = rng.random() < 0.5
    for side in (-1, 1):
        lx = cx + side * (gap / 2 + a)
        sdf = _box_sdf(xr, yr, lx, cy, a, b, r=min(a, b) * 0.5) if rect else _ellipse_sdf(xr, yr, lx, cy, a, b)
        if rng.random() < 0.4:  # tinted lens
            a_lens = _cover(sdf)[..., None] * rng.uniform(0.3, 0.9)
            img *= 1 - a_lens
            img += a_lens * _colour(rng) * 0.3
        _paint(img, np.abs(sdf) - t, col)
    _paint(img, _segment_sdf(xr, yr, (cx - gap / 2 - 1, cy - b * 0.3), (cx + gap / 2 + 1, cy - b * 0.3), t), col)
    if rng.random() < 0.7:  # folded temples across the lenses
        _paint(img, _segment_sdf(xr, yr, (cx - gap / 2 - 2 * a, cy - b * 0.5), (cx + a, cy + b * 0.6), t * 0.8), col)


def _draw_misc(img, x, y, rng):
    """Phones, bottles, coins, boxes: rounded rectangles and circles."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        xr, yr = _rotate(x, y, cx, cy, rng.uniform(0, np.pi))
        if rng.random() < 0.5:
            sdf = _box_sdf(xr, yr, cx, cy, rng.uniform(5, 40), rng.uniform(5, 25), r=rng.uniform(0, 8))
        else:
            r = rng.uniform(4, 25)
            sdf = _ellipse_sdf(xr, yr, cx, cy, r, r * rng.uniform(0.6, 1.0))
        _paint(img, sdf, _colour(rng))


_OBJECTS: tuple[Callable, ...] = (_draw_cup, _draw_cutlery, _draw_flat_glasses, _draw_misc)


def _finish(img: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """Lighting gradient and sensor noise, as the renderer's camera model does for faces."""
    h, w = img.shape[:2]
    x, y = _grid(h, w)
    light = 1 + rng.uniform(-0.3, 0.3) * (x / w - 0.5) + rng.uniform(-0.3, 0.3) * (y / h - 0.5)
    img = img * light[..., None] * rng.uniform(0.6, 1.3) + rng.normal(0, rng.uniform(0, 6), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def random_textures(n: int, rng: np.random.Generator, h: int = 64, w: int = 128) -> Images:
    """(n, h, w, 3) uint8 texture crops."""
    return np.stack([_finish(texture(rng, h, w), rng) for _ in range(n)]) if n else np.zeros((0, h, w, 3), np.uint8)


def random_objects(n: int, rng: np.random.Generator, h: int = 64, w: int = 128) -> Images:
    """(n, h, w, 3) uint8 crops of objects on a table-like texture (cups, cutlery, flat glasses, ...)."""
    out = []
    x, y = _grid(h, w)
    for _ in range(n):
        img = texture(rng, h, w) * rng.uniform(0.5, 1.0) + rng.uniform(0, 60)
        _OBJECTS[int(rng.integers(len(_OBJECTS)))](img, x, y, rng)
        out.append(_finish(img, rng))
    return np.stack(out) if out else np.zeros((0, h, w, 3), np.uint8)


# ---------------------------------------------------------------------------------------------


GlassesRenderer = Callable[[int, bool, np.random.Generator], Images]  # (n, sunglasses?, rng) -> crops
FacesRenderer = Callable[[int, np.random.Generator], Images]  # (n, rng) -> bare-face crops


@dataclass(frozen=True)
class GateMix:
    """Share of each kind of crop in a gate batch (normalised when drawn)."""

    eyeglasses: float = 0.35
    sunglasses: float = 0.2
    bare_faces: float = 0.25
    textures: float = 0.08
    objects: float = 0.12


class MixedGateSource:
    """A GateSource: each sample's kind is drawn from `mix`; labels follow GATE_CLASSES."""

    def __init__(self, glasses: GlassesRenderer, faces: FacesRenderer, mix: GateMix = GateMix(),
                 h: int = 64, w: int = 128):
        self.glasses, self.faces, self.mix, self.h, self.w = glasses, faces, mix, h, w

    def sample(self, n: int, rng: np.random.Generator) -> tuple[Images, npt.NDArray[np.int64]]:
        images, labels, _ = self.sample_with_kinds(n, rng)
        return images, labels

    KINDS: tuple[str, ...] = ("eyeglasses", "sunglasses", "bare_faces", "textures", "objects")

    def sample_with_kinds(self, n: int, rng: np.random.Generator) -> tuple[Images, npt.NDArray[np.int64],
                                                                             npt.NDArray[np.str_]]:
        """Like sample, plus each crop's kind (one of KINDS), for per-kind rates."""
        p = np.array([self.mix.eyeglasses, self.mix.sunglasses, self.mix.bare_faces, self.mix.textures,
                      self.mix.objects], dtype=np.float64)
        counts = rng.multinomial(n, p / p.sum())
        parts = [self.glasses(int(counts[0]), False, rng), self.glasses(int(counts[1]), True, rng),
                 self.faces(int(counts[2]), rng), random_textures(int(counts[3]), rng, self.h, self.w),
                 random_objects(int(counts[4]), rng, self.h, self.w)]
        labels = np.repeat(np.array([EYEGLASSES, SUNGLASSES, NONE, NONE, NONE], dtype=np.int64), counts)
        images = np.concatenate([q for q in parts if len(q)] or [np.zeros((0, self.h, self.w, 3), np.uint8)])
        kinds = np.repeat(np.array(self.KINDS), counts)
        order = rng.permutation(n)
        return images[order], labels[order], kinds[order]


# ---------------------------------------------------------------------------------------------
# Stand-in data: coloured shapes instead of renders (tests, and a smoke run without the renderer)


class ShapesCropSource:
    """A CropSource whose class c is a fixed coloured shape drawn from default_rng([seed, c]);
    each render jitters position, size, brightness and noise. Classes are separable but not trivially."""

    def __init__(self, num_classes: int, seed: int = 0, h: int = 64, w: int = 128):
        self.num_classes, self.h, self.w = num_classes, h, w
        self._params = [np.random.default_rng([seed, c]) for c in range(num_classes)]
        self._params = [(int(r.integers(3)), _colour(r), _colour(r), r.uniform(8, 20), r.uniform(6, 14),
                         r.uniform(0.3, 0.7) * w, r.uniform(0.3, 0.7) * h) for r in self._params]

    def render(self, labels: npt.NDArray[np.int64], rng: np.random.Generator) -> Images:
        return self.render_sized(labels, rng)[0]

    def render_sized(self, labels: npt.NDArray[np.int64], rng: np.random.Generator) -> tuple[
            Images, npt.NDArray[np.float32]]:
        """-> (n, h, w, 3) crops and (n,) stand-in lens widths in mm: 33 + 1.5 x the drawn half-width in
        pixels (about 43..68, around the size head's reference)."""
        x, y = _grid(self.h, self.w)
        out, sizes = [], []
        for c in labels:
            kind, fg, bg, a, b, cx, cy = self._params[int(c)]
            img = np.ones((self.h, self.w, 3), F32) * bg
            s = rng.uniform(0.85, 1.15)
            cx, cy = cx + rng.uniform(-4, 4), cy + rng.uniform(-3, 3)
            sdf = (_ellipse_sdf(x, y, cx, cy, a * s, b * s) if kind == 0 else
                   _box_sdf(x, y, cx, cy, a * s, b * s, r=3.0) if kind == 1 else
                   np.abs(_ellipse_sdf(x, y, cx, cy, a * s, b * s)) - 2.5)
            _paint(img, sdf, fg)
            out.append(_finish(img, rng))
            sizes.append(33.0 + 1.5 * a * s)
        images = np.stack(out) if out else np.zeros((0, self.h, self.w, 3), np.uint8)
        return images, np.asarray(sizes, np.float32)


def shapes_gate_source(h: int = 64, w: int = 128) -> MixedGateSource:
    """A GateSource on stand-in pictures: a skin-coloured blob is the "face"; eyeglasses are two
    rings on it, sunglasses two dark filled lenses."""
    x, y = _grid(h, w)

    def face(rng: np.random.Generator) -> npt.NDArray[np.float32]:
        img = texture(rng, h, w)
        skin = np.array([rng.uniform(90, 240), rng.uniform(60, 190), rng.uniform(40, 160)], F32)
        _paint(img, _ellipse_sdf(x, y, w / 2, h * 0.7, w * 0.45, h * 0.8), skin)
        return img

    def faces(n: int, rng: np.random.Generator) -> Images:
        return np.stack([_finish(face(rng), rng) for _ in range(n)]) if n else np.zeros((0, h, w, 3), np.uint8)

    def glasses(n: int, sun: bool, rng: np.random.Generator) -> Images:
        out = []
        for _ in range(n):
            img = face(rng)
            col = _colour(rng) * rng.uniform(0.1, 0.8)
            for lx in (41.0, 87.0):
                sdf = _ellipse_sdf(x, y, lx + rng.uniform(-2, 2), 31.0, rng.uniform(15, 21), rng.uniform(9, 14))
                if sun:
                    _paint(img, sdf, col * 0.3)
                _paint(img, np.abs(sdf) - rng.uniform(0.8, 2.5), col)
            out.append(_finish(img, rng))
        return np.stack(out) if out else np.zeros((0, h, w, 3), np.uint8)

    return MixedGateSource(glasses, faces, h=h, w=w)


# ---------------------------------------------------------------------------------------------
# Measuring the gate: TPR on glasses worn, FPR on everything else


# realdata manifest categories -> True (glasses worn: should be accepted) / False (should be refused).
REAL_CATEGORIES: dict[str, bool] = {"a_eyeglasses": True, "b_sunglasses": True,
                                    "c_no_glasses_face": False, "d_no_face": False}


def evaluate_gate_real(folder: str, gate: Any, threshold: float, landmarker: Any = None) -> dict[str, Any]:
    """Run detector -> aligner -> crop -> gate on every photo of a folder with a manifest.csv
    (columns file, category). A photo without a face is refused (never accepted).

    Returns per-category counts and acceptance rates, TPR over the glasses-worn categories and FPR
    over the others (categories not in REAL_CATEGORIES are reported but not counted)."""
    from pathlib import Path

    from glassfinder.landmarks import align_photo, read_categories
    from glassfinder.models.gate import gate_scores
    from glassfinder_runtime.errors import GlassfinderError, ImageError

    root = Path(folder)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise GlassfinderError(f"{manifest}: not found (a real-photo folder needs a manifest.csv with file, category)")
    per: dict[str, dict[str, int]] = {}
    rows = []
    for path, cat in sorted(read_categories(manifest, root).items()):
        try:
            crop = np.asarray(align_photo(path, landmarker).crop, np.uint8)[None]
            score = float(1.0 - gate_scores(gate, crop)[0, -1])
        except ImageError:
            score = None  # no face: the pipeline refuses before the gate
        accepted = score is not None and score >= threshold
        c = per.setdefault(cat, {"n": 0, "accepted": 0, "no_face": 0})
        c["n"] += 1
        c["accepted"] += int(accepted)
        c["no_face"] += int(score is None)
        rel = path.relative_to(root.resolve()) if path.is_relative_to(root.resolve()) else path
        rows.append({"file": str(rel), "category": cat, "score": score,
                     "accepted": accepted})
    pos = [r for r in rows if REAL_CATEGORIES.get(r["category"]) is True]
    neg = [r for r in rows if REAL_CATEGORIES.get(r["category"]) is False]
    return {"tpr": float(np.mean([r["accepted"] for r in pos])) if pos else float("nan"),
            "fpr": float(np.mean([r["accepted"] for r in neg])) if neg else float("nan"),
            "n_pos": len(pos), "n_neg": len(neg), "threshold": threshold, "per_category": per, "rows": rows}


def evaluate_gate_synthetic(source: MixedGateSource, gate: Any, threshold: float, n: int, seed: int) -> dict[str, Any]:
    """TPR / FPR of the gate at `threshold` on n crops drawn from `source` with default_rng(seed),
    with the acceptance rate of each kind of crop."""
    from glassfinder.models.gate import gate_scores

    images, labels, kinds = source.sample_with_kinds(n, np.random.default_rng(seed))
    score = 1.0 - gate_scores(gate, images)[:, NONE]
    accepted = score >= np.float32(threshold)
    worn = labels != NONE
    return {"tpr": float(accepted[worn].mean()), "fpr": float(accepted[~worn].mean()),
            "n_pos": int(worn.sum()), "n_neg": int((~worn).sum()), "threshold": threshold,
            "accepted_by_kind": {k: float(accepted[kinds == k].mean()) for k in MixedGateSource.KINDS
                                 if (kinds == k).any()}}
