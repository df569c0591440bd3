"""Procedural faces for synthetic try-on, and a loader for folders of real face photos.

Procedural faces (2.5D), in head units (1 unit = half the head width, HEAD_UNIT_MM = 75 mm):
- the head is an ellipsoid whose X radius tapers below the cheekbones to a superellipse jaw
  (face shapes oval / round / square / long);
- the frontal face (skin tones, blush, eyes with iris and pupil, brows, lips, beard) is painted
  once into a texture addressed by the head-local frontal coordinates (X, Y);
- every output pixel is ray-cast onto the rotated head, looks the texture up at its (X, Y) and is
  shaded (Lambert + a little specular) for the scene's light direction;
- nose and ears are drawn from projected 3D points (parallax under yaw; the far ear hides behind
  the head by a depth test); hair is a larger ellipsoid cut at a (ragged) hairline, plus long hair
  falling behind the shoulders; neck, shoulders and background (plain, gradient, cluttered shapes
  or noise texture) complete the scene.
The ground truth (keypoints, pupils, temples, face box) is the projection of the same 3D points the
texture and overlays are drawn from, so it is exact. About 65 faces/s at 256x256 on one core.

Axes: x right, y down (image), z towards the camera; projection is orthographic with a scale
(weak perspective). Pose follows glassfinder.face_types.HeadPose: R = R_roll @ R_yaw @ R_pitch
(pitch first keeps the eyes level under yaw, so the image eye line makes exactly `roll` degrees).

Splits: face k of split s is `make_face(k, s)`; it is drawn from `default_rng([seed, SPLIT_CODE[s], k])`,
so the four splits are disjoint face sets by construction (different seed streams), and
`faces_for_split(s, n)` lists the first n face ids of a split.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from glassfinder.face_types import FaceSample, HeadPose
from glassfinder_runtime.errors import GlassfinderError

FACE_SPLITS: tuple[str, ...] = ("train", "val", "gallery", "query")
SPLIT_CODE: dict[str, int] = {"train": 0, "val": 1, "gallery": 2, "query": 3}
HEAD_UNIT_MM = 75.0  # one head unit (half the head width) in millimetres

# Texture of the frontal face: head-local X in [-TEX_X, TEX_X], Y in [TEX_Y0, TEX_Y1], TEX_RES texels/unit.
TEX_X, TEX_Y0, TEX_Y1, TEX_RES = 1.25, -1.75, 1.85, 90

FACE_SHAPES: tuple[str, ...] = ("oval", "round", "square", "long")
HAIR_STYLES: tuple[str, ...] = ("bald", "buzz", "short", "side-part", "fringe", "long", "curly", "bun")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "cluttered")


@dataclass(frozen=True)
class FaceConfig:
    """Procedural face scene: image size, framing and pose ranges."""

    seed: int = 0  # face k of split s is drawn from default_rng([seed, SPLIT_CODE[s], k])
    size: int = 256  # output image width = height, pixels
    # Framing: head width (ear to ear, 2 units) as a fraction of the image width, and the jitter of the
    # head centre (fraction of the image size).
    head_width_frac: tuple[float, float] = (0.36, 0.52)
    centre_jitter: float = 0.06
    # Pose ranges, degrees (uniform in +-max, with extra mass near frontal).
    max_yaw: float = 35.0
    max_pitch: float = 20.0
    max_roll: float = 30.0
    # Background kind probabilities in BACKGROUNDS order.
    background_p: tuple[float, float, float] = (0.3, 0.3, 0.4)


# ---------------------------------------------------------------------------------------------
# Splits

def face_split_seed(split: str) -> int:
    if split not in SPLIT_CODE:
        raise GlassfinderError(f"unknown face split {split!r}; expected one of {', '.join(FACE_SPLITS)}")
    return SPLIT_CODE[split]


def face_id_str(index: int, split: str) -> str:
    return f"proc-{split}-{index:06d}"


def face_split(face_id: str) -> str:
    """The split of a procedural face id "proc-<split>-<index>" (real faces carry theirs in FaceSample.split)."""
    parts = face_id.split("-")
    if len(parts) != 3 or parts[0] != "proc" or parts[1] not in SPLIT_CODE or not parts[2].isdigit():
        raise GlassfinderError(f"{face_id!r} is not a procedural face id (proc-<split>-<index>)")
    return parts[1]


def faces_for_split(split: str, n: int, start: int = 0) -> list[str]:
    """The ids of faces start..start+n-1 of `split` (make_face(k, split) renders face k)."""
    face_split_seed(split)
    return [face_id_str(k, split) for k in range(start, start + n)]


# ---------------------------------------------------------------------------------------------
# Palettes

# Skin: anchors from Fitzpatrick I (very light) to VI (very dark), sRGB.
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (250, 226, 206), (242, 210, 186), (232, 190, 160), (220, 172, 138), (204, 152, 116),
    (184, 130, 96), (160, 108, 76), (136, 90, 62), (112, 72, 50), (88, 56, 40), (66, 42, 30),
)
HAIR_COLOURS: tuple[tuple[tuple[int, int, int], float], ...] = (
    ((22, 18, 16), 4.0), ((40, 28, 20), 3.0), ((70, 46, 28), 2.5), ((110, 76, 46), 1.5),
    ((165, 125, 80), 1.0), ((200, 165, 110), 0.8), ((130, 60, 30), 0.5), ((150, 150, 150), 0.8),
    ((215, 215, 210), 0.4),
)
IRIS_COLOURS: tuple[tuple[tuple[int, int, int], float], ...] = (
    ((70, 42, 24), 5.0), ((100, 64, 34), 2.0), ((60, 100, 140), 1.2), ((80, 110, 70), 0.8),
    ((120, 110, 70), 0.8), ((110, 125, 140), 0.6),
)
CLOTHES_COLOURS: tuple[tuple[int, int, int], ...] = (
    (30, 30, 35), (240, 240, 240), (40, 60, 110), (120, 30, 40), (70, 90, 60), (150, 150, 155),
    (200, 170, 120), (90, 60, 40), (30, 90, 120), (180, 80, 60), (220, 200, 80), (100, 50, 110),
)


def _pick(rng: np.random.Generator, items: tuple) -> tuple[int, int, int]:
    w = np.array([p for _, p in items])
    return items[int(rng.choice(len(items), p=w / w.sum()))][0]


# ---------------------------------------------------------------------------------------------
# Face parameters

@dataclass(frozen=True)
class FaceParams:
    """Everything drawn for one face (head units, colours 0-255 floats)."""

    shape: str
    cranium_c: tuple[float, float, float]  # head ellipsoid centre
    cranium_r: tuple[float, float, float]  # head ellipsoid radii (x, y, z)
    jaw_y0: float  # below this height the head narrows from the ellipsoid to the jaw outline
    jaw_p: float  # superellipse exponent of the jaw: 2 = oval, larger = squarer
    chin_y: float  # bottom of the chin
    eye_y: float
    eye_x: float  # pupil |X|
    eye_hw: float  # eye half-width (corner to pupil)
    eye_hh: float  # eye opening half-height
    iris_r: float
    gaze: tuple[float, float]  # iris/pupil offset from the eye centre (both eyes), head units
    brow_gap: float  # brow above the eye centre
    brow_thick: float
    nose_len: float
    nose_hw: float
    nose_out: float  # nose tip protrusion
    mouth_y: float
    mouth_hw: float
    lip_h: float
    smile: float  # mouth corners raised (> 0) or lowered, head units
    skin: tuple[float, float, float]
    lip_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    brow_rgb: tuple[float, float, float]
    iris_rgb: tuple[float, float, float]
    clothes_rgb: tuple[float, float, float]
    hair: str
    beard: float  # 0 none, else beard/stubble strength
    pose: HeadPose
    light: tuple[float, float, float]  # unit vector towards the light (camera frame)
    ambient: float
    background: str


def _skin(rng: np.random.Generator) -> tuple[float, float, float]:
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = min(int(t), len(SKIN_TONES) - 2)
    f = t - i
    base = (1 - f) * np.array(SKIN_TONES[i]) + f * np.array(SKIN_TONES[i + 1])
    undertone = rng.uniform(-8, 8)  # warmer (redder) or cooler (yellower) skin
    base = base + np.array([undertone, -0.2 * undertone, -0.8 * undertone]) + rng.normal(0, 3, 3)
    return tuple(np.clip(base, 0, 255).tolist())  # type: ignore[return-value]


def _angle(rng: np.random.Generator, max_deg: float) -> float:
    # Half of the faces near frontal (real photos are mostly frontal), half over the full range.
    if rng.random() < 0.5:
        return float(np.clip(rng.normal(0, max_deg / 4), -max_deg, max_deg))
    return float(rng.uniform(-max_deg, max_deg))


_SHAPE_DIMS = {  # head half-height, jaw start below the eyes, jaw exponent, chin Y
    "oval": (1.50, 0.15, 2.0, 1.45),
    "round": (1.42, 0.30, 2.4, 1.32),
    "square": (1.48, 0.45, 4.0, 1.38),
    "long": (1.60, 0.25, 2.2, 1.58),
}


def draw_face_params(rng: np.random.Generator, cfg: FaceConfig) -> FaceParams:
    shape = FACE_SHAPES[int(rng.integers(len(FACE_SHAPES)))]
    bc, jy, jp, chin = (v * rng.uniform(0.97, 1.03) for v in _SHAPE_DIMS[shape])
    c = rng.uniform(1.1, 1.22)
    eye_y = rng.uniform(-0.05, 0.05)
    skin = _skin(rng)
    hair_rgb = np.array(_pick(rng, HAIR_COLOURS), dtype=np.float64)
    dark_skin = float(np.mean(skin)) < 130
    lip = np.array(skin) * (np.array([0.78, 0.6, 0.6]) if dark_skin else np.array([0.86, 0.62, 0.64]))
    brow = np.minimum(hair_rgb * 0.85, np.array(skin) * 0.45)
    if hair_rgb.mean() > 150:  # grey/blond hair: brows still darker than the skin
        brow = np.array(skin) * rng.uniform(0.45, 0.65)
    hair = HAIR_STYLES[int(rng.choice(len(HAIR_STYLES), p=[0.08, 0.1, 0.22, 0.14, 0.12, 0.18, 0.08, 0.08]))]
    beard = float(rng.uniform(0.15, 0.45)) if (hair in ("bald", "buzz", "short", "side-part") and rng.random() < 0.2) else 0.0
    pose = HeadPose(yaw=_angle(rng, cfg.max_yaw), pitch=_angle(rng, cfg.max_pitch), roll=_angle(rng, cfg.max_roll))
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.3), rng.uniform(0.7, 1.3)])
    light /= np.linalg.norm(light)
    bg_p = np.asarray(cfg.background_p, dtype=np.float64)
    background = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=bg_p / bg_p.sum()))]
    # Most people look at the camera; some glance aside.
    gaze = (rng.normal(0, 0.008, 2) if rng.random() < 0.7 else np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.015, 0.02)]))
    return FaceParams(
        shape=shape, cranium_c=(0.0, 0.05, 0.0), cranium_r=(1.0, bc, c),
        jaw_y0=eye_y + jy, jaw_p=jp, chin_y=min(chin, bc - 0.02),
        eye_y=eye_y, eye_x=rng.uniform(0.39, 0.44), eye_hw=rng.uniform(0.19, 0.22), eye_hh=rng.uniform(0.075, 0.1),
        iris_r=rng.uniform(0.078, 0.088), gaze=(float(gaze[0]), float(gaze[1])), brow_gap=rng.uniform(0.17, 0.23), brow_thick=rng.uniform(0.04, 0.075),
        nose_len=rng.uniform(0.55, 0.68), nose_hw=rng.uniform(0.14, 0.19), nose_out=rng.uniform(0.22, 0.32),
        mouth_y=eye_y + rng.uniform(0.92, 1.02), mouth_hw=rng.uniform(0.23, 0.3), lip_h=rng.uniform(0.045, 0.07), smile=rng.uniform(-0.01, 0.04),
        skin=skin, lip_rgb=tuple(np.clip(lip, 0, 255).tolist()), hair_rgb=tuple(hair_rgb.tolist()),
        brow_rgb=tuple(np.clip(brow, 0, 255).tolist()), iris_rgb=tuple(float(x) for x in _pick(rng, IRIS_COLOURS)),
        clothes_rgb=tuple(float(x) for x in CLOTHES_COLOURS[int(rng.integers(len(CLOTHES_COLOURS)))]),
        hair=hair, beard=beard, pose=pose, light=tuple(light.tolist()), ambient=float(rng.uniform(0.4, 0.62)),
        background=background,
    )


# ---------------------------------------------------------------------------------------------
# Geometry

def rotation(pose: HeadPose) -> npt.NDArray[np.float64]:
    """(3, 3) head-local -> camera rotation, R = R_roll @ R_yaw @ R_pitch (see module docstring)."""
    y, p, r = (math.radians(v) for v in (pose.yaw, pose.pitch, pose.roll))
    Rp = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    Ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    Rr = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return Rr @ Ry @ Rp


@dataclass(frozen=True)
class _Camera:
    R: npt.NDArray[np.float64]  # (3, 3) head-local -> camera
    scale: float  # pixels per head unit
    centre: tuple[float, float]  # image position of the head origin

    def project(self, pts: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(n, 3) head-local points -> (n, 3): image x, y (pixels) and camera depth z (units, larger = nearer)."""
        q = np.asarray(pts, dtype=np.float64).reshape(-1, 3) @ self.R.T
        return np.stack([q[:, 0] * self.scale + self.centre[0], q[:, 1] * self.scale + self.centre[1], q[:, 2]], 1)


def _ellipsoid_z(X, Y, centre, radii) -> npt.NDArray[np.float64]:
    """Front surface Z of an ellipsoid at local (X, Y); -inf where (X, Y) is outside it."""
    t = 1 - ((X - centre[0]) / radii[0]) ** 2 - ((Y - centre[1]) / radii[1]) ** 2
    return np.where(t > 0, centre[2] + radii[2] * np.sqrt(np.clip(t, 0, None)), -np.inf)


def _front_z(X: npt.ArrayLike, Y: npt.ArrayLike, p: FaceParams) -> npt.NDArray[np.float64]:
    """Front surface depth of the (tapered) head at head-local (X, Y); -inf outside it."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    return _ellipsoid_z(X / taper(p, Y), Y, p.cranium_c, p.cranium_r)


def jaw_half_width(p: FaceParams, Y: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Half-width of the face outline at height Y: the ellipsoid's side above jaw_y0, below it a
    superellipse (exponent jaw_p) from the side at jaw_y0 down to the chin."""
    Y = np.asarray(Y, dtype=np.float64)
    t = np.clip((Y - p.jaw_y0) / (p.chin_y - p.jaw_y0), 0, 1)
    jaw = float(_side_x(p, p.jaw_y0)) * (1 - t**p.jaw_p) ** (1 / p.jaw_p)
    return np.where(Y <= p.jaw_y0, _side_x(p, Y), jaw)


def taper(p: FaceParams, Y: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """X scale of the head ellipsoid at height Y, so that its outline follows jaw_half_width."""
    Y = np.asarray(Y, dtype=np.float64)
    side = _side_x(p, Y)
    s = jaw_half_width(p, Y) / np.maximum(side, 1e-3)
    return np.where(Y <= p.jaw_y0, 1.0, np.clip(s, 1e-3, 1.5))


def _on_face(X, Y, p: FaceParams, lift: float = 0.0) -> npt.NDArray[np.float64]:
    """(n, 3) head-local points on the front surface at (X, Y), raised by `lift` units."""
    X = np.atleast_1d(np.asarray(X, dtype=np.float64))
    Y = np.broadcast_to(np.asarray(Y, dtype=np.float64), X.shape)
    return np.stack([X, Y, _front_z(X, Y, p) + lift], axis=1)


def _side_x(p: FaceParams, Y: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Half-width of the cranium at height Y."""
    cy, (a, b, _) = p.cranium_c[1], p.cranium_r
    return a * np.sqrt(np.clip(1 - ((np.asarray(Y, dtype=np.float64) - cy) / b) ** 2, 0, None))


def landmarks_3d(p: FaceParams) -> dict[str, npt.NDArray[np.float64]]:
    """Head-local 3D ground-truth points; the texture and overlays are drawn from the same numbers."""
    ex, ey, hw = p.eye_x, p.eye_y, p.eye_hw
    kp = np.concatenate([_on_face([-(ex + hw), -(ex - hw), ex - hw, ex + hw], ey, p), _nose_points(p)[:1]])
    # Temples: on the side of the head at eye height, just in front of the ears (ears sit at Z < 0).
    c = p.cranium_r[2]
    tz = 0.2 * c
    tx = float(_side_x(p, ey)) * math.sqrt(1 - 0.2**2)
    temples = np.array([[-tx, ey, tz], [tx, ey, tz]])
    gx, gy = p.gaze
    return {"keypoints": kp, "eye_centres": _on_face([-ex + gx, ex + gx], ey + gy, p), "temples": temples}


def _nose_points(p: FaceParams) -> npt.NDArray[np.float64]:
    """(6, 3): bridge (the nose_bridge keypoint), tip, right/left ala, right/left nostril."""
    ey = p.eye_y
    bridge = _on_face([0.0], ey - 0.03, p, lift=0.2)[0]  # nasion ~18 mm in front of the inner eye corners
    tip_y = ey + p.nose_len
    tip = _on_face([0.0], tip_y, p, lift=p.nose_out)[0]
    alae = _on_face([-p.nose_hw, p.nose_hw], tip_y + 0.01, p, lift=0.07)
    nostrils = _on_face([-0.5 * p.nose_hw, 0.5 * p.nose_hw], tip_y + 0.05, p, lift=0.11)
    return np.vstack([bridge, tip, alae, nostrils])


def _ear_points(p: FaceParams, sign: float) -> npt.NDArray[np.float64]:
    """(14, 3) ear outline on the side of the head (sign -1: subject's right = image left)."""
    c = p.cranium_r[2]
    t = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    top, bot = p.eye_y - 0.1, p.eye_y + p.nose_len + 0.04
    yc, hh = (top + bot) / 2, (bot - top) / 2
    Y = yc + hh * np.sin(t) * np.where(np.sin(t) > 0, 0.9, 1.0)
    out = 0.2 + 0.07 * np.cos(t)  # how far the rim stands out of the head side
    Z = -0.15 * c + 0.14 * np.cos(t) * (1 - 0.35 * np.sin(t))
    return np.stack([sign * (_side_x(p, Y) * 0.95 + out), Y, Z], axis=1)


# ---------------------------------------------------------------------------------------------
# Face texture (frontal, head-local coordinates)

_TEX_W = int(round(2 * TEX_X * TEX_RES))
_TEX_H = int(round((TEX_Y1 - TEX_Y0) * TEX_RES))


def _tex_xy(X, Y, k: float = 1.0) -> tuple[float, float]:
    return ((X + TEX_X) * TEX_RES * k, (Y - TEX_Y0) * TEX_RES * k)


def _poly(pts: npt.ArrayLike, k: float = 1.0, off: tuple[float, float] = (0.0, 0.0)) -> list[tuple[float, float]]:
    return [(x - off[0], y - off[1]) for x, y in (_tex_xy(x, y, k) for x, y in np.asarray(pts))]


def _box(X0, Y0, X1, Y1, k: float = 1.0) -> list[float]:
    return [*_tex_xy(X0, Y0, k), *_tex_xy(X1, Y1, k)]


def _rgb(c, k: float = 1.0) -> tuple[int, int, int]:
    return tuple(int(min(max(v * k, 0), 255)) for v in c)  # type: ignore[return-value]


def _almond(cx: float, cy: float, hw: float, hh: float, n: int = 14) -> npt.NDArray[np.float64]:
    """Eye opening from the inner-side corner to the outer one: the upper lid arc higher and fuller,
    its peak slightly towards the nose; corners exactly at (cx -+ hw, cy)."""
    t = np.linspace(-1, 1, n)
    upper = np.stack([cx + hw * t, cy - hh * (1 - t**2) ** 0.7 * (1 - 0.15 * t)], 1)
    lower = np.stack([cx + hw * t[::-1], cy + 0.7 * hh * (1 - t[::-1] ** 2) ** 1.2], 1)
    return np.vstack([upper, lower])


def _jaw_outline(p: FaceParams, n: int = 40) -> npt.NDArray[np.float64]:
    """(2n, 2) closed outline of the face below the top of the head (X, Y), for the texture's alpha."""
    Y = np.linspace(p.cranium_c[1] - p.cranium_r[1] * 0.999, p.chin_y, n)
    w = jaw_half_width(p, Y)
    return np.vstack([np.stack([w, Y], 1), np.stack([-w, Y], 1)[::-1]])


def paint_texture(p: FaceParams, res: int = TEX_RES) -> npt.NDArray[np.float32]:
    """(H, W, 3) float32 0-255 frontal face texture in head-local (X, Y) coordinates, `res` texels
    per head unit (see texture_res)."""
    R = res / TEX_RES  # factor on the _tex_xy / _poly / _box coordinates
    W, H = int(round(_TEX_W * R)), int(round(_TEX_H * R))
    skin = np.array(p.skin)
    ey, ex = p.eye_y, p.eye_x
    # Soft tones (blush, eye sockets, beard) painted at 1/6 resolution and upscaled: smooth and cheap.
    k = 1 / 6  # independent of res: upscaled to (W, H) below
    lo = Image.new("RGB", (int(_TEX_W * k), int(_TEX_H * k)), _rgb(skin))
    d = ImageDraw.Draw(lo)
    for s in (-1, 1):
        d.ellipse(_box(s * (ex + 0.05) - 0.24, ey + 0.3, s * (ex + 0.05) + 0.24, ey + 0.58, k), fill=_rgb(skin * np.array([1.0, 0.95, 0.95])))
        d.ellipse(_box(s * ex - 0.27, ey - 0.2, s * ex + 0.27, ey + 0.16, k), fill=_rgb(skin, 0.93))
    d.ellipse(_box(-0.15, ey + 0.1, 0.15, ey + p.nose_len - 0.05, k), fill=_rgb(skin, 1.03))
    if p.beard > 0:
        beard = skin * (1 - p.beard) + np.array(p.hair_rgb) * p.beard
        # Sideburns and jaw, then skin over the cheeks, then the moustache around the mouth.
        jaw = _jaw_outline(p)
        d.polygon(_poly(jaw[jaw[:, 1] > p.mouth_y - 0.4], k), fill=_rgb(beard))
        cw = float(jaw_half_width(p, p.mouth_y)) - 0.14
        d.ellipse(_box(-cw, p.eye_y - 0.3, cw, p.mouth_y - 0.02, k), fill=_rgb(skin))
        d.ellipse(_box(-p.mouth_hw - 0.07, p.mouth_y - 0.16, p.mouth_hw + 0.07, p.mouth_y + 0.05, k), fill=_rgb(beard))
    img = lo.resize((W, H), Image.Resampling.BILINEAR)
    d = ImageDraw.Draw(img)
    # Mouth: upper lip with a cupid's bow, fuller lower lip, dark line between.
    my, mw, lh = p.mouth_y, p.mouth_hw, p.lip_h
    t = np.linspace(-1, 1, 15)
    lift = p.smile * t**2  # corners up for a smile
    upper = np.stack([mw * t, my - lift - lh * (1 - t**2) ** 0.8 * (1 - 0.3 * np.exp(-(t / 0.15) ** 2))], 1)
    lower = np.stack([mw * t[::-1], my - lift[::-1] + 1.25 * lh * (1 - t[::-1] ** 2) ** 0.8], 1)
    lip = np.array(p.lip_rgb)
    d.polygon(_poly(np.vstack([upper, lower]), R), fill=_rgb(lip))
    d.polygon(_poly(upper, R), fill=_rgb(lip, 0.9))
    d.line(_poly(np.stack([mw * t, my - lift + 0.006 * (1 - t**2)], 1), R), fill=_rgb(lip, 0.5), width=max(1, int(0.016 * res)))
    d.ellipse(_box(-0.35 * mw, my + 0.45 * lh, 0.35 * mw, my + 0.95 * lh, R), fill=_rgb(lip, 1.1))
    # Eyes: crease, sclera, iris with pupil and catchlight, lid line and lashes.
    lid = _rgb(np.minimum(skin * 0.3, 55))
    for s in (-1, 1):
        cx = s * ex
        outline = _almond(0.0, 0.0, p.eye_hw, p.eye_hh)
        outline = np.column_stack([cx - s * outline[:, 0], ey + outline[:, 1]])  # inner corner first on both sides
        tt = np.linspace(-0.85, 0.85, 9)
        crease = np.stack([cx + s * p.eye_hw * tt, ey - p.eye_hh * 1.85 * (1 - tt**2) ** 0.6 - 0.015], 1)
        d.line(_poly(crease, R), fill=_rgb(skin, 0.72), width=max(1, int(0.014 * res)))
        bx0, by0 = (int(v) - 2 for v in _tex_xy(cx - p.eye_hw, ey - p.eye_hh * 1.1, R))
        bx1, by1 = (int(v) + 3 for v in _tex_xy(cx + p.eye_hw, ey + p.eye_hh * 1.1, R))
        off = (bx0, by0)
        mask = Image.new("L", (bx1 - bx0, by1 - by0), 0)
        ImageDraw.Draw(mask).polygon(_poly(outline, R, off), fill=255)
        eye = Image.new("RGB", mask.size, _rgb(np.array([236, 232, 226]) * 0.8 + skin * 0.2))
        ed = ImageDraw.Draw(eye)
        r = p.iris_r
        ix, iy = cx + p.gaze[0], ey + p.gaze[1]  # the pupil centre (= FaceSample.eye_centres)
        ed.ellipse(_poly([(ix - r, iy - r), (ix + r, iy + r)], R, off), fill=_rgb(p.iris_rgb, 0.75))
        ed.ellipse(_poly([(ix - 0.78 * r, iy - 0.78 * r), (ix + 0.78 * r, iy + 0.78 * r)], R, off), fill=_rgb(p.iris_rgb))
        pr = 0.45 * r
        ed.ellipse(_poly([(ix - pr, iy - pr), (ix + pr, iy + pr)], R, off), fill=(10, 8, 8))
        ed.ellipse(_poly([(ix + 0.3 * r, iy - 0.55 * r), (ix + 0.62 * r, iy - 0.22 * r)], R, off), fill=(240, 240, 240))
        img.paste(eye, off, mask)
        n_up = len(outline) // 2
        d.line(_poly(outline[:n_up], R), fill=lid, width=max(2, int(0.026 * res)))
        d.line(_poly(outline[n_up - 1:], R), fill=_rgb(skin, 0.62), width=max(1, int(0.01 * res)))
        # A few lashes at the outer end of the upper lid.
        for j in range(n_up - 5, n_up - 1):
            x, y = outline[j]
            d.line(_poly([(x, y), (x + s * 0.035, y - 0.03)], R), fill=lid, width=max(1, int(0.01 * res)))
    # Brows: tapered arcs, thicker towards the nose.
    for s in (-1, 1):
        t = np.linspace(0, 1, 12)
        bx = s * (0.13 + t * (p.eye_x + p.eye_hw + 0.07 - 0.13))
        by = ey - p.brow_gap - 0.055 * np.sin(np.pi * np.clip(t * 1.15, 0, 1)) + 0.05 * t
        th = p.brow_thick * (1.0 - 0.55 * t)
        pts = np.vstack([np.stack([bx, by - th / 2], 1), np.stack([bx, by + th / 2], 1)[::-1]])
        d.polygon(_poly(pts, R), fill=_rgb(p.brow_rgb))
    return np.asarray(img, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Ray casting

@dataclass
class _Hits:
    """Front hits of the pixel rays of an image box (y0:y1, x0:x1) with one ellipsoid; arrays (h, w)."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    hit: npt.NDArray[np.bool_]
    z: npt.NDArray[np.float32]  # camera depth of the hit, head units (larger = nearer)
    q: tuple[npt.NDArray[np.float32], ...]  # hit point relative to the ellipsoid centre, local X, Y, Z
    n: tuple[npt.NDArray[np.float32], ...]  # local (unnormalised) outward normal
    alpha: npt.NDArray[np.float32]  # edge coverage 0..1


def _ellipsoid_box(cam: _Camera, centre, radii, size: int) -> tuple[int, int, int, int]:
    """Tight image box of an ellipsoid's silhouette (orthographic: extent |R_i * r| along camera axis i)."""
    c = cam.project(np.asarray(centre))[0]
    r = np.asarray(radii)
    ex = cam.scale * float(np.linalg.norm(cam.R[0] * r)) + 2
    ey = cam.scale * float(np.linalg.norm(cam.R[1] * r)) + 2
    return (int(max(0, c[0] - ex)), int(max(0, c[1] - ey)), int(min(size, c[0] + ex + 1)), int(min(size, c[1] + ey + 1)))


def _raycast(cam: _Camera, centre, radii, box: tuple[int, int, int, int], x_scale=None) -> _Hits:
    """Intersect the rays through the pixel centres of `box` with an ellipsoid (head-local centre, radii).

    x_scale: optional (h, w) per-pixel factor on the X radius (the head's jaw taper)."""
    x0, y0, x1, y1 = box
    R, s = cam.R, cam.scale
    f32 = np.float32
    px = ((np.arange(x0, x1, dtype=f32) + 0.5 - f32(cam.centre[0])) / f32(s))[None, :]
    py = ((np.arange(y0, y1, dtype=f32) + 0.5 - f32(cam.centre[1])) / f32(s))[:, None]
    r2 = np.asarray(radii, dtype=np.float64) ** 2
    c = np.asarray(centre, dtype=np.float64)
    u, v, d = R[0], R[1], R[2]  # local directions of the camera x, y, z axes
    o = [px * f32(u[j]) + (py * f32(v[j]) - f32(c[j])) for j in range(3)]  # ray origin rel. centre
    inv = [f32(1 / r2[0]), f32(1 / r2[1]), f32(1 / r2[2])]
    if x_scale is not None:
        inv[0] = inv[0] / (x_scale * x_scale).astype(f32)
    A = d[0] * d[0] * inv[0] + f32(d[1] * d[1]) * inv[1] + f32(d[2] * d[2]) * inv[2]
    B = o[0] * f32(d[0]) * inv[0] + o[1] * f32(d[1]) * inv[1] + o[2] * f32(d[2]) * inv[2]
    C = o[0] * o[0] * inv[0] + o[1] * o[1] * inv[1] + o[2] * o[2] * inv[2] - f32(1)
    disc = B * B - A * C
    hit = disc > 0
    sq = np.sqrt(np.maximum(disc, 0))
    t = (sq - B) / A
    q = tuple(o[j] + t * f32(d[j]) for j in range(3))
    n = tuple(q[j] * inv[j] for j in range(3))
    # Edge coverage: a ray at distance delta inside the silhouette has half-chord^2 ~ 2 * rho * delta.
    half = sq / A
    rho = f32(np.sqrt(r2.min()) * (0.5 if x_scale is not None else 1.0))
    alpha = np.clip(half * half * f32(s) / (2 * rho) + f32(0.3), 0, 1) * hit
    z = t + f32(c @ R[2])  # camera depth relative to the head origin (ray parameter t is relative to centre)
    return _Hits(box, hit, z, q, n, alpha.astype(f32))


def texture_res(scale: float) -> int:
    """Texels per head unit for a head drawn at `scale` pixels per unit: a little above the output
    resolution (sharp features on large renders), at least TEX_RES."""
    return int(min(max(TEX_RES, round(1.25 * scale)), 400))


def _sample(tex: npt.NDArray[np.float32], X: npt.NDArray, Y: npt.NDArray, res: int = TEX_RES) -> npt.NDArray[np.float32]:
    """Bilinear texture lookup at head-local (X, Y) (n,): (n, 3)."""
    H, W = tex.shape[:2]
    fx = np.clip((X + TEX_X) * res - 0.5, 0, W - 1.001)
    fy = np.clip((Y - TEX_Y0) * res - 0.5, 0, H - 1.001)
    x0 = fx.astype(np.int32)
    y0 = fy.astype(np.int32)
    wx = (fx - x0)[:, None].astype(np.float32)
    wy = (fy - y0)[:, None].astype(np.float32)
    top = tex[y0, x0] * (1 - wx) + tex[y0, x0 + 1] * wx
    bot = tex[y0 + 1, x0] * (1 - wx) + tex[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bot * wy


@lru_cache(maxsize=1)
def _hair_noise() -> npt.NDArray[np.float32]:
    """(64, 256) fixed strand-like noise (stretched along the strands), shared by every face."""
    rng = np.random.default_rng(12345)
    n = rng.random((16, 256))
    img = Image.fromarray((n * 255).astype(np.uint8)).resize((256, 64), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# Scene

def _background(p: FaceParams, rng: np.random.Generator, size: int) -> Image.Image:
    c1 = rng.uniform(30, 235, 3)
    if p.background == "plain":
        # A plain wall still has a soft light falloff.
        g = np.linspace(-1, 1, size, dtype=np.float32)
        fall = 1 - 0.12 * (g[None, :] ** 2 + g[:, None] ** 2)
        return Image.fromarray(np.clip(c1[None, None, :] * fall[..., None], 0, 255).astype(np.uint8))
    if p.background == "gradient":
        c2 = rng.uniform(20, 240, 3)
        ang = rng.uniform(0, 2 * np.pi)
        g = np.linspace(-1, 1, size, dtype=np.float32)
        t = (np.cos(ang) * g[None, :] + np.sin(ang) * g[:, None]) * 0.5 + 0.5
        return Image.fromarray((c1 * (1 - t[..., None]) + c2 * t[..., None]).astype(np.uint8))
    if rng.random() < 0.35:
        # Textured surface (fabric, foliage, plaster): noise at several scales between two colours.
        c2 = rng.uniform(20, 240, 3)
        t = np.zeros((size, size), dtype=np.float32)
        for cells, w in ((4, 0.45), (16, 0.3), (64, 0.25)):
            n = (rng.random((cells, cells)) * 255).astype(np.uint8)
            t += w * np.asarray(Image.fromarray(n).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255
        t = np.clip((t - 0.5) * rng.uniform(1.5, 3.0) + 0.5, 0, 1)[..., None]
        return Image.fromarray((c1 * (1 - t) + c2 * t).astype(np.uint8))
    # Cluttered: shelves, frames, blobs and lines, drawn small and upscaled (an out-of-focus room).
    lo = size // 2
    img = Image.new("RGB", (lo, lo), _rgb(c1))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(15, 40))):
        col = _rgb(rng.uniform(0, 255, 3))
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * lo
        w, h = rng.uniform(0.05, 0.5, 2) * lo
        k = int(rng.integers(4))
        if k == 0:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
        elif k == 1:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        elif k == 2:
            d.line([x0, y0, x0 + w * rng.choice([-1, 1]), y0 + h], fill=col, width=int(rng.integers(1, 5)))
        else:
            d.rectangle([x0, y0, x0 + w, y0 + h], outline=col, width=int(rng.integers(1, 4)))
    return img.resize((size, size), Image.Resampling.BILINEAR)


def _shading(n: tuple[npt.NDArray, ...], p: FaceParams, R: npt.NDArray, spec: float) -> npt.NDArray[np.float32]:
    """Lambert + Blinn-Phong factor for local normals n (any shape): ambient + diffuse (n.L) + specular."""
    L = R.T @ np.asarray(p.light)  # light direction in the head frame
    Hv = np.asarray(p.light) + np.array([0.0, 0.0, 1.0])
    Hv = R.T @ (Hv / np.linalg.norm(Hv))
    inv = 1 / np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2] + np.float32(1e-12))
    ndl = np.maximum((n[0] * L[0] + n[1] * L[1] + n[2] * L[2]) * inv, 0)
    k = np.float32(p.ambient) + np.float32(1.05 - p.ambient) * ndl
    if spec > 0:
        ndh = np.maximum((n[0] * Hv[0] + n[1] * Hv[1] + n[2] * Hv[2]) * inv, 0)
        k = k + np.float32(spec) * ndh**24
    return k.astype(np.float32)


def _hair_mask(X, Y, Z, p: FaceParams) -> npt.NDArray[np.float32]:
    """Hair coverage 0..1 on the hair-cap ellipsoid at points (X, Y, Z) relative to the cap centre."""
    phi = np.degrees(np.abs(np.arctan2(X, Z)))  # 0 front, 90 sides, 180 back
    b = p.cranium_r[1]
    front = {"buzz": -0.72, "short": -0.66, "side-part": -0.66, "fringe": -0.32, "long": -0.64,
             "curly": -0.64, "bun": -0.72}[p.hair] * b
    side = {"buzz": -0.12, "short": -0.05, "side-part": -0.05, "fringe": 0.0, "long": 0.9,
            "curly": 0.2, "bun": -0.15}[p.hair]
    back = {"buzz": 0.25, "short": 0.35, "side-part": 0.35, "fringe": 0.4, "long": 1.3,
            "curly": 0.5, "bun": 0.3}[p.hair]
    if p.hair == "side-part":  # the fringe sweeps lower on one side
        front = front + 0.2 * np.clip(X, 0, None)
    t_side = np.clip((phi - 30) / 45, 0, 1)
    t_back = np.clip((phi - 95) / 60, 0, 1)
    line = front + (side - front) * (t_side * t_side * (3 - 2 * t_side)) + (back - side) * t_back
    # Ragged hairline: strands of different lengths (noise along the angle around the head).
    noise = _hair_noise()
    strands = noise[40, (np.degrees(np.arctan2(X, Z)) * 3.0).astype(np.int32) % 256]
    line = line + 0.07 * (strands - 0.5)
    return np.clip((line - Y) * 20 + 0.5, 0, 1).astype(np.float32)


_CAP_PUFF = {"bald": 1.0, "buzz": 1.025, "short": 1.07, "side-part": 1.08, "fringe": 1.08, "long": 1.08,
             "curly": 1.2, "bun": 1.05}


def _blend(canvas: npt.NDArray[np.float32], box, mask: npt.NDArray, rgb: npt.NDArray, alpha: npt.NDArray) -> None:
    """Alpha-blend rgb (m, 3) with alpha (m,) over canvas[box][mask] (m pixels)."""
    x0, y0, x1, y1 = box
    sub = canvas[y0:y1, x0:x1]
    a = alpha[:, None]
    sub[mask] = sub[mask] * (1 - a) + rgb * a


def _render(p: FaceParams, rng: np.random.Generator, cfg: FaceConfig, size: int) -> tuple[Image.Image, _Camera]:
    """The scene, back to front: background, long hair, body, head, ears, nose, hair."""
    scale = size * rng.uniform(*cfg.head_width_frac) / 2.0
    # The head origin is near eye level: eyes a little above the image centre.
    centre = (size * (0.5 + rng.uniform(-cfg.centre_jitter, cfg.centre_jitter)),
              size * (0.44 + rng.uniform(-cfg.centre_jitter, cfg.centre_jitter)) - p.eye_y * scale)
    cam = _Camera(rotation(p.pose), scale, centre)
    bg = _background(p, rng, size)
    _draw_body(ImageDraw.Draw(bg), p, cam)
    canvas = np.asarray(bg, dtype=np.float32).copy()
    head_depth = _draw_head(canvas, p, cam)
    _draw_ears(canvas, p, cam, head_depth)
    out = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    _draw_nose(out, cam.project(_nose_points(p)), p, cam)
    if p.hair != "bald":
        out = _draw_hair(out, p, cam)
    return out, cam


def _draw_body(d: ImageDraw.ImageDraw, p: FaceParams, cam: _Camera) -> None:
    """Long hair hanging behind, shoulders (upright: the torso does not roll with the head) and neck."""
    scale, centre = cam.scale, cam.centre
    skin = np.array(p.skin)
    if p.hair in ("long", "curly"):
        w = 1.3 if p.hair == "curly" else 1.12
        low = 2.3 if p.hair == "long" else 1.2
        t = np.linspace(0, 1, 9)
        side = np.stack([w * (1.0 + 0.08 * np.sin(np.pi * t)), -0.5 + (low + 0.5) * t, -0.3 - 0.2 * t], 1)
        tips = np.stack([np.linspace(w, -w, 7), low + 0.08 * np.sin(np.linspace(0, 6 * np.pi, 7)), np.full(7, -0.5)], 1)
        flip = side * np.array([-1, 1, 1])
        back = cam.project(np.vstack([flip, tips[::-1], side[::-1]]))
        d.polygon([tuple(q) for q in back[:, :2]], fill=_rgb(p.hair_rgb, 0.7))
    chin = cam.project(np.array([[0.0, p.chin_y, 0.0]]))[0]
    sh_y = max(chin[1], centre[1] + 1.2 * scale) + 0.3 * scale
    d.ellipse([centre[0] - 2.7 * scale, sh_y, centre[0] + 2.7 * scale, sh_y + 3.2 * scale], fill=_rgb(p.clothes_rgb))
    d.ellipse([centre[0] - 2.5 * scale, sh_y + 0.1 * scale, centre[0] + 2.5 * scale, sh_y + 3.2 * scale], fill=_rgb(p.clothes_rgb, 0.85))
    # Neck: its top hides behind the jaw and turns with the head; its base stays on the shoulders.
    neck_top = cam.project(np.array([[-0.5, p.chin_y - 0.55, -0.35], [0.5, p.chin_y - 0.55, -0.35]]))
    neck_col = _rgb(skin, p.ambient * 0.55 + 0.28)
    nx = centre[0] + 0.25 * (neck_top[0, 0] + neck_top[-1, 0] - 2 * centre[0])
    d.polygon([(nx - 0.55 * scale, sh_y + 0.4 * scale), tuple(neck_top[0, :2]), tuple(neck_top[1, :2]),
               (nx + 0.55 * scale, sh_y + 0.4 * scale)], fill=neck_col)
    d.chord([nx - 0.55 * scale, sh_y - 0.2 * scale, nx + 0.55 * scale, sh_y + 0.7 * scale], 0, 180, fill=neck_col)
    # Shadow the chin casts on the neck.
    d.ellipse([chin[0] - 0.35 * scale, chin[1] - 0.4 * scale, chin[0] + 0.35 * scale, chin[1] + 0.07 * scale],
              fill=_rgb(skin, p.ambient * 0.45 + 0.2))


def _draw_head(canvas: npt.NDArray[np.float32], p: FaceParams, cam: _Camera) -> npt.NDArray[np.float32]:
    """Ray-cast, texture and shade the head into canvas (H, W, 3); returns the (H, W) head depth
    (camera z in head units, -inf off the head) for the ears' depth test."""
    size = canvas.shape[0]
    # The X radius tapers below jaw_y0 to the jaw outline. The taper depends on the hit's height, so
    # the hit is refined by a few fixed-point steps (the taper varies slowly).
    box = _ellipsoid_box(cam, p.cranium_c, p.cranium_r, size)
    xs = np.ones((box[3] - box[1], box[2] - box[0]), dtype=np.float32)
    for _ in range(3):
        h1 = _raycast(cam, p.cranium_c, p.cranium_r, box, xs)
        xs = np.where(h1.hit, taper(p, h1.q[1] + p.cranium_c[1]), xs).astype(np.float32)
    mask = h1.hit & (h1.q[1] + p.cranium_c[1] < p.chin_y)
    X = h1.q[0][mask] + p.cranium_c[0]
    Y = h1.q[1][mask] + p.cranium_c[1]
    shade = _shading(tuple(n[mask] for n in h1.n), p, cam.R, spec=0.05)
    res = texture_res(cam.scale)
    _blend(canvas, box, mask, _sample(paint_texture(p, res), X, Y, res) * shade[:, None], h1.alpha[mask])
    head_depth = np.full((size, size), -np.inf, dtype=np.float32)
    head_depth[box[1]:box[3], box[0]:box[2]] = np.where(mask, h1.z, -np.inf)
    return head_depth


def _draw_ears(canvas: npt.NDArray[np.float32], p: FaceParams, cam: _Camera, head_depth: npt.NDArray[np.float32]) -> None:
    """Ears where they are nearer than the head surface (the far ear hides behind the head)."""
    size = canvas.shape[0]
    skin = np.array(p.skin)
    for sign in (-1.0, 1.0):
        pts = cam.project(_ear_points(p, sign))
        ex0, ey0 = np.floor(pts[:, :2].min(0)).astype(int) - 1
        ex1, ey1 = np.ceil(pts[:, :2].max(0)).astype(int) + 2
        ex0, ey0, ex1, ey1 = max(ex0, 0), max(ey0, 0), min(ex1, size), min(ey1, size)
        if ex1 <= ex0 or ey1 <= ey0:
            continue
        facing = float((cam.R @ np.array([sign, 0.0, 0.0]))[2])  # > 0: this side turns towards the camera
        ear = Image.new("RGB", (ex1 - ex0, ey1 - ey0), _rgb(skin, np.clip(p.ambient + 0.3 + 0.25 * facing, 0.35, 1.0)))
        m = Image.new("L", ear.size, 0)
        ImageDraw.Draw(m).polygon([(x - ex0, y - ey0) for x, y in pts[:, :2]], fill=255)
        ctr = pts[:, :2].mean(0)
        inner = [(x - ex0, y - ey0) for x, y in pts[:, :2] * 0.55 + ctr * 0.45]
        ImageDraw.Draw(ear).polygon(inner, fill=_rgb(skin, 0.6))
        vis = (np.asarray(m) > 0) & (float(pts[:, 2].max()) > head_depth[ey0:ey1, ex0:ex1])
        canvas[ey0:ey1, ex0:ex1][vis] = np.asarray(ear, dtype=np.float32)[vis]


def _draw_hair(img: Image.Image, p: FaceParams, cam: _Camera) -> Image.Image:
    """The hair cap: a larger ellipsoid cut at the hairline, with strand grain; plus a bun on top."""
    canvas = np.asarray(img, dtype=np.float32).copy()
    b, c = p.cranium_r[1], p.cranium_r[2]
    puff = _CAP_PUFF[p.hair]
    cap_c = (0.0, p.cranium_c[1] - 0.05 * b, -0.06 * c)
    cap_r = (p.cranium_r[0] * puff, b * (puff + 0.01), c * (puff + 0.03))
    cbox = _ellipsoid_box(cam, cap_c, cap_r, canvas.shape[0])
    h3 = _raycast(cam, cap_c, cap_r, cbox)
    hm = _hair_mask(*h3.q, p) * h3.alpha
    sel = h3.hit & (hm > 0.01)
    Xs, Ys, Zs = (q[sel] for q in h3.q)
    noise = _hair_noise()
    u = ((np.arctan2(Xs, Zs) / np.pi + 1) * 128).astype(np.int32) % 256
    v = np.clip(((Ys / b + 1.2) * 24).astype(np.int32), 0, 63)
    # Wispy outline: near the silhouette (normal almost perpendicular to the view) strands thin out.
    n = [q[sel] for q in h3.n]
    ncz = (n[0] * cam.R[2, 0] + n[1] * cam.R[2, 1] + n[2] * cam.R[2, 2]) / np.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2)
    rim = np.clip(1 - ncz / 0.3, 0, 1)
    wisp = noise[(v * 2 + 17) % 64, (u * 7) % 256]
    hm_sel = hm[sel] * (1 - rim * np.clip(1.6 - 2.2 * wisp, 0, 1))
    grain = 0.75 + 0.45 * noise[v, u]
    if p.hair == "curly":
        grain = 0.7 + 0.6 * noise[(v * 4) % 64, (u * 5) % 256]
    hair_col = np.array(p.hair_rgb)
    col = hair_col[None, :] * (_shading(tuple(n[sel] for n in h3.n), p, cam.R, spec=0.15) * grain)[:, None]
    _blend(canvas, cbox, sel, col, hm_sel.astype(np.float32))
    out = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if p.hair == "bun":
        top = cam.project(np.array([[0.0, p.cranium_c[1] - b * 1.02, -0.4 * c]]))[0]
        rr = 0.36 * cam.scale
        ImageDraw.Draw(out).ellipse([top[0] - rr, top[1] - rr, top[0] + rr, top[1] + rr], fill=_rgb(hair_col, 0.8))
    return out


def _draw_nose(img: Image.Image, nose: npt.NDArray, p: FaceParams, cam: _Camera) -> None:
    """Nose shading from its projected 3D points, composited in a small box around the nose."""
    pts2 = nose[:, :2]
    m = 0.12 * cam.scale + 2
    x0, y0 = np.floor(pts2.min(0) - m).astype(int)
    x1, y1 = np.ceil(pts2.max(0) + m).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, img.width), min(y1, img.height)
    if x1 <= x0 or y1 <= y0:
        return
    bridge, tip, ala_r, ala_l, nos_r, nos_l = (q - (x0, y0) for q in pts2)
    skin = np.array(p.skin)
    layer = Image.new("RGBA", (x1 - x0, y1 - y0), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    # Shadow on the side of the nose that faces away from the light.
    lit_x = float((cam.R.T @ np.asarray(p.light))[0])  # light direction along the head's X axis
    ala_shadow = ala_l if lit_x < 0 else ala_r
    d.polygon([tuple(bridge), tuple(ala_shadow * 0.4 + bridge * 0.6), tuple(ala_shadow), tuple(tip)],
              fill=(*_rgb(skin, 0.7), int(60 + 80 * min(abs(lit_x) * 2, 1))))
    s = cam.scale
    w = max(1, int(0.02 * s))
    for ala in (ala_r, ala_l):
        d.line([tuple(ala * 0.6 + tip * 0.4 + (0, -0.06 * s)), tuple(ala), tuple(ala * 0.55 + tip * 0.45 + (0, 0.05 * s))],
               fill=(*_rgb(skin, 0.6), 170), width=w)
    layer = layer.filter(ImageFilter.GaussianBlur(max(0.5, 0.02 * s)))  # soft shading, no paper folds
    d = ImageDraw.Draw(layer)
    for n in (nos_r, nos_l):
        rx, ry = 0.045 * s, 0.022 * s
        d.ellipse([n[0] - rx, n[1] - ry, n[0] + rx, n[1] + ry], fill=(*_rgb(skin, 0.3), 210))
    r = 0.04 * s
    d.ellipse([tip[0] - r, tip[1] - r, tip[0] + r, tip[1] + r], fill=(*_rgb(np.minimum(skin * 1.15 + 10, 255)), 80))
    crop = img.crop((x0, y0, x1, y1)).convert("RGBA")
    img.paste(Image.alpha_composite(crop, layer).convert("RGB"), (x0, y0))


def _face_box(p: FaceParams, cam: _Camera) -> npt.NDArray[np.float32]:
    """x0, y0, x1, y1: brows to chin, ear to ear, from projected 3D points: a grid over the front of
    the face from the brows to the chin (its extremes are the silhouette on a turned head) and the ears."""
    top = p.eye_y - p.brow_gap - p.brow_thick
    Y = np.repeat(np.linspace(top, p.chin_y * 0.999, 10), 17)
    X = np.tile(np.linspace(-0.999, 0.999, 17), 10) * jaw_half_width(p, Y)
    face = _on_face(X, Y, p)
    ears = np.vstack([_ear_points(p, -1), _ear_points(p, 1)])
    pts = cam.project(np.vstack([face, ears]))[:, :2]
    return np.array([*pts.min(0), *pts.max(0)], dtype=np.float32)


def make_face(index: int, split: str = "train", size: int | None = None, cfg: FaceConfig = FaceConfig(),
              pose: HeadPose | None = None) -> FaceSample:
    """Render procedural face `index` of `split` (see the module docstring for the split scheme).

    size: output width = height (default cfg.size); pose: overrides the drawn head pose (same person,
    scene and framing). Returns a FaceSample: RGB image and its exact ground truth.
    """
    if index < 0:
        raise GlassfinderError(f"face index must be >= 0, got {index}")
    rng = np.random.default_rng([cfg.seed, face_split_seed(split), index])
    size = int(size or cfg.size)
    if size < 32:
        raise GlassfinderError(f"face image size must be >= 32 pixels, got {size}")
    p = draw_face_params(rng, cfg)
    if pose is not None:
        p = replace(p, pose=pose)
    img, cam = _render(p, rng, cfg, size)
    g = landmarks_3d(p)
    proj = {k: cam.project(v)[:, :2].astype(np.float32) for k, v in g.items()}
    return FaceSample(
        image=img,
        keypoints=proj["keypoints"],
        eye_centres=proj["eye_centres"],
        temples=proj["temples"],
        face_box=_face_box(p, cam),
        pose=p.pose,
        face_id=face_id_str(index, split),
        split=split,
    )


# ---------------------------------------------------------------------------------------------
# Real faces

@dataclass(frozen=True)
class Landmarks:
    """What a landmarker returns for one face (image pixels; see FaceSample for the layouts)."""

    keypoints: npt.NDArray[np.float32]  # (5, 2) in KEYPOINT_NAMES order
    eye_centres: npt.NDArray[np.float32]  # (2, 2)
    temples: npt.NDArray[np.float32]  # (2, 2)
    face_box: npt.NDArray[np.float32]  # (4,)
    pose: HeadPose | None = None  # None: estimated from the keypoints (renderer.estimate_pose)


class LandmarksLike(Protocol):
    """Any landmark result with the FaceSample fields (Landmarks above, glassfinder.landmarks.FaceLandmarks)."""

    keypoints: npt.ArrayLike
    eye_centres: npt.ArrayLike
    temples: npt.ArrayLike
    face_box: npt.ArrayLike
    pose: HeadPose | None


class Landmarker(Protocol):
    """Detector + aligner on a real photo: the most prominent face's landmarks, or None if no face
    (glassfinder.landmarks.Landmarker is the real implementation)."""

    def __call__(self, image: Image.Image) -> LandmarksLike | None: ...


def load_real_faces(folder: str | Path, landmarker: Landmarker, split: str = "train",
                    max_side: int | None = 1024) -> list[FaceSample]:
    """FaceSamples for every .jpg/.jpeg/.png photo in `folder` (sorted) on which `landmarker` finds a face.

    Photos are turned upright from their EXIF orientation and, if larger, shrunk so that their longer
    side is `max_side` (None: keep full size) before the landmarker runs, so the landmarks are in
    the stored image's pixels. Unreadable files and photos without a face are skipped with a warning
    naming the file. Raises GlassfinderError if the folder does not exist or holds no such image.
    """
    from glassfinder.renderer import estimate_pose  # lazy: the renderer imports this module

    face_split_seed(split)  # validates the split name
    folder = Path(folder)
    if not folder.is_dir():
        raise GlassfinderError(f"real-face folder {folder} does not exist or is not a folder")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png") and f.is_file())
    if not files:
        raise GlassfinderError(f"real-face folder {folder} contains no .jpg or .png images")
    out: list[FaceSample] = []
    for f in tqdm(files, desc=f"real faces in {folder.name}", unit="photo", disable=None):
        try:
            with Image.open(f) as im:
                im.load()
                img = ImageOps.exif_transpose(im).convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            warnings.warn(f"skipping {f}: not a readable image ({exc})", stacklevel=2)
            continue
        if max_side is not None and max(img.size) > max_side:
            k = max_side / max(img.size)
            img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))), Image.Resampling.LANCZOS)
        lm = landmarker(img)
        if lm is None:
            warnings.warn(f"skipping {f}: no face found", stacklevel=2)
            continue
        kp = np.asarray(lm.keypoints, dtype=np.float32).reshape(5, 2)
        digest = hashlib.sha1(f.read_bytes()).hexdigest()[:12]
        out.append(FaceSample(
            image=img,
            keypoints=kp,
            eye_centres=np.asarray(lm.eye_centres, dtype=np.float32).reshape(2, 2),
            temples=np.asarray(lm.temples, dtype=np.float32).reshape(2, 2),
            face_box=np.asarray(lm.face_box, dtype=np.float32).reshape(4),
            pose=lm.pose if lm.pose is not None else estimate_pose(kp),
            face_id=f"real-{digest}",
            split=split,
        ))
    return out
