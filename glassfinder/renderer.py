"""Synthetic virtual try-on: draw a catalog SKU on a face from its landmarks and head pose.

One code path for both output modes:

- the frame front is modelled in millimetres in the *glasses plane* (origin at the bridge
  centre, x to the subject's left, y down, z towards the camera) from the SKU's FrameShape, as
  signed distance functions (SDF, negative inside) that give anti-aliased coverage for free:
  coverage = clip(0.5 - sdf / mm_per_pixel, 0, 1);
- a homography maps the glasses plane into the image: the head pose rotates a small 3D model
  (glasses plane + eye corners), a pinhole camera projects it, and a similarity fitted on the
  four eye-corner landmarks places it on the face (so the scale comes from the measured eye
  distance and a 63 mm interpupillary distance);
- every pixel of the target grid is mapped back to the glasses plane and the lens, rim, bridge,
  end-piece and shadow layers are evaluated there with vectorised numpy (float32);
- `render_scene` evaluates that on the face image (full scene with ground truth) and
  `render_crop_batch` evaluates it directly on the 128x64 aligned crop grid (the same homography
  composed with the crop similarity) on top of cached, pre-aligned face crops.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from PIL import Image

from glassfinder.camera import CameraConfig, apply_camera
from glassfinder.catalog_types import BridgeStyle, LensType, Material, RimStyle, Sku
from glassfinder.face_types import FaceSample, HeadPose
from glassfinder_runtime.geometry import (
    DEFAULT_TEMPLATE,
    CropTemplate,
    apply_affine,
    crop_matrix,
    estimate_similarity,
    warp_affine,
)

F32 = np.float32

# ---------------------------------------------------------------------------------------------
# Fit: where the glasses sit on the head
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitConfig:
    """How a frame sits on a face, and how much that varies from one render to the next."""

    ipd_mm: float = 63.0  # assumed interpupillary distance: converts the eye distance in pixels to mm
    lens_drop_mm: float = 1.5  # lens centres sit this far below the pupils (frames rest on the nose)
    head_radius_mm: float = 95.0  # rotation centre of the head behind the glasses plane
    camera_distance_mm: float = 1000.0  # pinhole camera distance: perspective of the temples and the yaw
    # Per-render jitter (uniform +-): position on the nose, size, tilt. Zero gives the exact fit.
    jitter_drop_mm: float = 1.5
    jitter_shift_mm: float = 0.6
    jitter_scale: float = 0.03
    jitter_tilt_deg: float = 1.5


EXACT_FIT = FitConfig(lens_drop_mm=0.0, jitter_drop_mm=0.0, jitter_shift_mm=0.0, jitter_scale=0.0, jitter_tilt_deg=0.0)

# 3D positions (mm, glasses-plane axes, z towards the camera) of the KEYPOINT_NAMES landmarks on an
# average head: eye corners behind the lens plane (the outer ones ~14 mm behind the inner ones),
# the nose bridge between the eyes, a little above the eye line and in the lens plane (the frame's
# bridge rests on it). Depths are calibrated so that estimate_pose recovers the yaw of
# glassfinder.faces' heads (mean error < 1 degree). Eye centres are +-ipd/2; the template's corner
# spacing (inner 24 px, outer 68 px for 46 px between the eye centres) gives +-16.4 mm and +-46.6 mm.
_MODEL_KEYPOINTS = np.array(
    [[-46.6, 0.0, -28.0], [-16.4, 0.0, -14.0], [16.4, 0.0, -14.0], [46.6, 0.0, -28.0], [0.0, -2.5, 0.0]],
    dtype=np.float64,
)
# The eye corners define the fit; the nose bridge keypoint's height differs between face sources.
_FIT_POINTS = slice(0, 4)


def rotation_matrix(pose: HeadPose) -> npt.NDArray[np.float64]:
    """(3, 3) head rotation for a HeadPose (yaw > 0 turns the face to image right, pitch > 0 chin up,
    roll > 0 clockwise in the image). Axes: x image right, y image down, z towards the camera."""
    y, p, r = (math.radians(a) for a in (pose.yaw, pose.pitch, pose.roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rp = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rr = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rr @ ry @ rp  # pitch first, as glassfinder.faces: the eye line stays level under yaw


def _project_model(points: npt.NDArray[np.float64], pose: HeadPose, fit: FitConfig,
                   R: npt.NDArray[np.float64] | None = None) -> npt.NDArray[np.float64]:
    """Rotate (n, 3) glasses-frame points about the head centre and project them (pinhole, mm units
    at the glasses plane). Returns (n, 2) before the image similarity."""
    centre = np.array([0.0, 0.0, -fit.head_radius_mm])
    rotated = (points - centre) @ (rotation_matrix(pose) if R is None else R).T + centre
    w = fit.camera_distance_mm / (fit.camera_distance_mm - rotated[:, 2])
    return rotated[:, :2] * w[:, None]


@dataclass(frozen=True)
class Placement:
    """Where the glasses go in one target image (image pixels or crop pixels)."""

    G: npt.NDArray[np.float64]  # (3, 3) homography: glasses plane mm (x, y, 1) -> target pixels (homogeneous)
    S: npt.NDArray[np.float64]  # (2, 3) similarity from projected-model mm to target pixels
    J: npt.NDArray[np.float64]  # (3, 3) fit jitter on the glasses plane (applied before the head pose)
    pose: HeadPose
    fit: FitConfig
    mm_per_px: float  # size of one target pixel on the glasses plane
    R: npt.NDArray[np.float64]  # (3, 3) head rotation of `pose`

    def project(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(n, 3) glasses-frame mm points (on or off the plane) -> (n, 2) target pixels."""
        pts = np.array(points, dtype=np.float64)
        pts[:, :2] = apply_affine(self.J[:2], pts[:, :2])
        return apply_affine(self.S, _project_model(pts, self.pose, self.fit, self.R))

    def plane_to_px(self, xy: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(n, 2) glasses-plane mm -> (n, 2) target pixels."""
        xy = np.asarray(xy, dtype=np.float64)
        return self.project(np.concatenate([xy, np.zeros((len(xy), 1))], axis=1))


def place_glasses(
    keypoints: npt.ArrayLike,
    pose: HeadPose,
    fit: FitConfig = FitConfig(),
    rng: np.random.Generator | None = None,
) -> Placement:
    """Fit the glasses plane onto (5, 2) keypoints (KEYPOINT_NAMES order, target pixels).

    The similarity from the posed 3D model to the landmarks gives scale, roll and position; rng
    (when given) adds the FitConfig jitter: the frame sits a little higher/lower, off-centre,
    larger/smaller or tilted on the nose, as real frames do.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape != (5, 2):
        raise ValueError(f"keypoints must be (5, 2), got {kp.shape}")
    drop, shift, scale, tilt = fit.lens_drop_mm, 0.0, 1.0, 0.0
    if rng is not None:
        drop += rng.uniform(-1, 1) * fit.jitter_drop_mm
        shift = rng.uniform(-1, 1) * fit.jitter_shift_mm
        scale += rng.uniform(-1, 1) * fit.jitter_scale
        tilt = rng.uniform(-1, 1) * fit.jitter_tilt_deg
    model = _MODEL_KEYPOINTS.copy()
    model[:, :2] *= fit.ipd_mm / 63.0
    R = rotation_matrix(pose)
    S = estimate_similarity(_project_model(model[_FIT_POINTS], pose, fit, R), kp[_FIT_POINTS])
    # Glasses plane (x, y, 0) -> rotated -> pinhole: a homography. Jitter is a 2D similarity on the plane.
    c, s = math.cos(math.radians(tilt)) * scale, math.sin(math.radians(tilt)) * scale
    J = np.array([[c, -s, shift], [s, c, drop], [0, 0, 1.0]])
    h, D = fit.head_radius_mm, fit.camera_distance_mm
    # rotated = R @ (x, y, h) - (0, 0, h); pinhole divides by (D - z_rot) / D.
    Hm = np.array(
        [
            [R[0, 0], R[0, 1], R[0, 2] * h],
            [R[1, 0], R[1, 1], R[1, 2] * h],
            [-R[2, 0] / D, -R[2, 1] / D, (D - R[2, 2] * h + h) / D],
        ]
    )
    S3 = np.vstack([S, [0, 0, 1.0]])
    G = S3 @ Hm @ J
    px_per_mm = math.sqrt(abs(np.linalg.det(S[:, :2]))) * scale
    return Placement(G=G, S=S, J=J, pose=pose, fit=fit, mm_per_px=1.0 / px_per_mm, R=R)


def estimate_pose(keypoints: npt.ArrayLike, fit: FitConfig = FitConfig()) -> HeadPose:
    """Head pose from the (5, 2) keypoints alone (for real photos): the yaw whose projected 3D model
    fits the landmarks best (the far eye is foreshortened and the nose moves towards it); roll from
    the eye line. Pitch is poorly observed by five points on one line and is left at 0."""
    kp = np.asarray(keypoints, dtype=np.float64)
    best, best_err = 0.0, math.inf
    for yaw in np.arange(-60.0, 60.5, 1.0):
        pts = _project_model(_MODEL_KEYPOINTS, HeadPose(yaw=float(yaw)), fit)
        S = estimate_similarity(pts, kp)
        err = float(((apply_affine(S, pts) - kp) ** 2).sum())
        if err < best_err - 1e-9:
            best, best_err = float(yaw), err
    eye_line = kp[3] - kp[0]
    return HeadPose(yaw=best, pitch=0.0, roll=math.degrees(math.atan2(eye_line[1], eye_line[0])))


# ---------------------------------------------------------------------------------------------
# Frame front: signed distance functions in millimetres (negative inside)
# ---------------------------------------------------------------------------------------------


def lens_sdf(sku: Sku, a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """SDF of one lens opening in lens-local mm: a outwards (towards the temple), b down, origin at
    the lens centre. Same shape for both lenses (the right one is mirrored). (h, w) -> (h, w)."""
    sh = sku.shape
    w, h = F32(sh.lens_width_mm / 2), F32(sh.lens_height_mm / 2)
    top = np.clip(-b / h, 0, 1)  # 1 on the top edge, 0 below the centre line
    bottom = np.clip(b / h, 0, 1)
    an = np.clip(a / w, -1, 1)
    if sh.slant:  # wayfarer: wider at the top than at the bottom
        a = a / (F32(1) - F32(0.45 * sh.slant) * np.clip(b / h, -1, 1))
    if sh.outer_lift:  # cat-eye: the outer upper corner swept up and out
        outer = np.clip(an, 0, 1) ** 2 * top
        b = b + F32(1.5 * sh.outer_lift) * h * outer
        a = a - F32(0.3 * sh.outer_lift) * w * outer
    if sh.top_curve:  # arched (> 0) or flattened (< 0) top edge
        b = b + F32(0.22 * sh.top_curve) * h * (1 - an * an) * top
    if sh.bottom_curve:  # aviator teardrop: the bottom sags, deepest towards the nose
        ai = np.clip((a + F32(0.35) * w) / (F32(1.35) * w), -1, 1)
        b = b - F32(1.0 * sh.bottom_curve) * h * (1 - ai * ai) * bottom
        a = a / (F32(1) - F32(0.45 * sh.bottom_curve) * bottom)  # and narrows towards the bottom
    if sh.facets >= 3:
        # Regular polygon (apothem 1) in coordinates normalised by the lens half sizes; flat top edge.
        an2, bn2 = a / w, b / h
        d = None
        for k in range(sh.facets):
            t = 2 * math.pi * k / sh.facets + math.pi / 2
            dk = an2 * F32(math.cos(t)) + bn2 * F32(math.sin(t))
            d = dk if d is None else np.maximum(d, dk)
        return (d - 1) * min(w, h)
    r = F32(np.clip(sh.corner_radius, 0, 1)) * min(w, h)
    qx, qy = np.abs(a) - (w - r), np.abs(b) - (h - r)
    box = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0) - r
    e = float(np.clip((sh.corner_radius - 0.7) / 0.3, 0, 1))
    if e <= 0:
        return box
    # Ellipse (approximate distance, exact on the outline) for round and oval lenses.
    k0 = np.sqrt((a / w) ** 2 + (b / h) ** 2)
    k1 = np.sqrt((a / (w * w)) ** 2 + (b / (h * h)) ** 2) + F32(1e-6)
    ell = k0 * (k0 - 1) / k1
    return box + F32(e) * (ell - box)


def _box_sdf(x, y, cx, cy, hx, hy, r=0.0):
    """Rounded rectangle SDF centred at (cx, cy) with half sizes (hx, hy) and corner radius r."""
    qx, qy = np.abs(x - F32(cx)) - F32(hx - r), np.abs(y - F32(cy)) - F32(hy - r)
    return np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0) - F32(r)


def _is_metal(sku: Sku) -> bool:
    return sku.colourway.material == Material.METAL or sku.shape.rim_style == RimStyle.RIMLESS


def _bridge_sdf(sku: Sku, x, y) -> npt.NDArray[np.float32]:
    """SDF of the bridge between the lenses (glasses-plane mm), with its style's shape."""
    sh = sku.shape
    h = sh.lens_height_mm / 2
    half = sh.bridge_width_mm / 2 + 2.0  # ends overlap the rims
    tb = 1.3 if _is_metal(sku) else max(sh.rim_thickness_mm * 1.2, 3.2)
    u2 = np.clip((x / F32(sh.bridge_width_mm / 2)) ** 2, 0, 1)
    style = sh.bridge_style
    y0, arch = {
        BridgeStyle.SADDLE: (-0.3 * h, 2.0),
        BridgeStyle.KEYHOLE: (-0.2 * h, 4.0),
        BridgeStyle.STRAIGHT: (-0.45 * h, 0.0),
        BridgeStyle.DOUBLE: (-0.35 * h, 1.5),
    }[style]
    centre = F32(y0) - F32(arch) * (1 - u2)
    d = np.maximum(np.abs(y - centre) - F32(tb / 2), np.abs(x) - F32(half))
    if style == BridgeStyle.DOUBLE:  # the aviator's top bar, straight across above the lenses
        top_y = -h * 0.85
        d2 = np.maximum(np.abs(y - F32(top_y)) - F32(0.7), np.abs(x) - F32(sh.bridge_width_mm / 2 + 0.25 * sh.lens_width_mm))
        d = np.minimum(d, d2)
    return d


_TEXTURE: npt.NDArray[np.float32] | None = None


def _tortoise_texture() -> npt.NDArray[np.float32]:
    """(256, 256) float32 in [0, 1]: smooth multi-octave noise, built once from a fixed seed."""
    global _TEXTURE
    if _TEXTURE is None:
        rng = np.random.default_rng(20240611)
        acc = np.zeros((256, 256), np.float32)
        for cells, weight in ((8, 1.0), (16, 0.6), (32, 0.35), (64, 0.2)):
            small = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
            acc += weight * np.asarray(small.resize((256, 256), Image.Resampling.BICUBIC), np.float32)
        acc -= acc.min()
        _TEXTURE = acc / acc.max()
    return _TEXTURE


# ---------------------------------------------------------------------------------------------
# Drawing one pair of glasses onto a float32 canvas
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlassesMasks:
    """Debug/ground-truth coverage maps of one render, each (H, W) float32 in [0, 1] on the target."""

    lens_right: npt.NDArray[np.float32]  # subject's right lens (image left in a frontal view)
    lens_left: npt.NDArray[np.float32]
    frame: npt.NDArray[np.float32]  # rims, bridge, end pieces (the front)
    temples: npt.NDArray[np.float32]


def _smooth01(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _coverage(sdf, px_mm: float):
    """Anti-aliased coverage from an SDF in mm: a one-pixel-wide linear ramp across the edge."""
    return np.clip(F32(0.5) - sdf * F32(1.0 / px_mm), 0, 1)


def _blur(img: npt.NDArray[np.float32], sigma: float) -> npt.NDArray[np.float32]:
    """Soft blur of a (h, w) map, about a Gaussian of `sigma` px; edges clamped. Small sigmas (crop
    scale) use one separable 3-tap box, larger ones two box passes from cumulative sums."""
    if sigma < 1.2:
        p = np.pad(img, 1, mode="edge")
        img = (p[:-2] + p[1:-1] + p[2:]) * F32(1 / 3)
        return (img[:, :-2] + img[:, 1:-1] + img[:, 2:]) * F32(1 / 3)
    r = max(1, int(round(sigma * 1.2)))  # two passes of a (2r+1) box: sigma ~ sqrt(2 r (r + 1) / 3)
    k = 2 * r + 1
    for _ in range(2):
        for axis in (0, 1):
            pad = [(0, 0), (0, 0)]
            pad[axis] = (r + 1, r)
            c = np.cumsum(np.pad(img, pad, mode="edge"), axis=axis, dtype=np.float32)
            n = img.shape[axis]
            hi = c[k:k + n] if axis == 0 else c[:, k:k + n]
            lo = c[:n] if axis == 0 else c[:, :n]
            img = (hi - lo) * F32(1 / k)
    return img


def _frame_bbox(sku: Sku, placement: Placement, shape_hw: tuple[int, int], temples_px) -> tuple[int, int, int, int]:
    """Integer pixel box (x0, y0, x1, y1) that holds the frame front, its shadow and the temples."""
    sh = sku.shape
    half_w = sh.bridge_width_mm / 2 + sh.lens_width_mm * (1 + 0.15 * abs(sh.outer_lift)) + sh.rim_thickness_mm + 5
    h = sh.lens_height_mm / 2 * (1 + 0.4 * abs(sh.bottom_curve) + 0.6 * abs(sh.outer_lift)) + sh.rim_thickness_mm
    h += sh.browline_thickness_mm + 6
    corners = np.array([[-half_w, -h, 0], [half_w, -h, 0], [-half_w, h + 3, 0], [half_w, h + 3, 0]])
    pts = [placement.project(corners)]
    if temples_px is not None:
        pts.append(np.asarray(temples_px, np.float64))
    pts = np.concatenate(pts)
    H, W = shape_hw
    x0, y0 = np.floor(pts.min(0)).astype(int) - 3
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 3
    return max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)


def _temple_points(sku: Sku, placement: Placement, temples_px) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hinges (2, 2) px, temple far ends (2, 2) px and per-side visibility (2,), subject's right first.

    A temple runs from the hinge backwards to the side of the head; the side turned away from the
    camera hides its temple behind the head."""
    sh = sku.shape
    x_h = sh.bridge_width_mm / 2 + sh.lens_width_mm + sh.rim_thickness_mm * 0.5 + 1.0
    y_h = -sh.lens_height_mm * 0.25 - 0.55 * sh.outer_lift * sh.lens_height_mm * 0.35
    hinges = placement.project(np.array([[-x_h, y_h, -3.0], [x_h, y_h, -3.0]]))
    if temples_px is None:
        ends = placement.project(np.array([[-x_h - 4, y_h + 4, -95.0], [x_h + 4, y_h + 4, -95.0]]))
    else:
        ends = np.asarray(temples_px, np.float64)
    R = placement.R
    # z of the outward side normals (+-x rotated): > 0 faces the camera.
    nz = np.array([-R[2, 0], R[2, 0]])
    vis = np.clip((nz + 0.3) / 0.15, 0, 1)
    return hinges, ends, vis


def draw_glasses(
    canvas: npt.NDArray[np.float32],
    sku: Sku,
    placement: Placement,
    rng: np.random.Generator,
    temples_px: npt.ArrayLike | None = None,
    want_masks: bool = False,
) -> GlassesMasks | None:
    """Draw `sku` on a float32 (H, W, 3) canvas (0-255 sRGB) in place.

    placement maps the glasses plane to canvas pixels; temples_px (2, 2) are where the temples meet
    the head (subject's right, left), or None to use the 3D model. The layers, back to front: the
    rims' soft shadow on the skin, the temples, the lenses (tint, gradient, mirror, reflections,
    edge) and the frame front (rims, bridge, end pieces, with the material's shading)."""
    H, W = canvas.shape[:2]
    x0, y0, x1, y1 = _frame_bbox(sku, placement, (H, W), temples_px)
    if x1 <= x0 or y1 <= y0:
        return _empty_masks(H, W) if want_masks else None
    sh, cw = sku.shape, sku.colourway
    px = placement.mm_per_px
    # Pixel centres of the box -> glasses plane (inverse homography).
    gx = np.arange(x0, x1, dtype=F32)[None, :] + F32(0.5)
    gy = np.arange(y0, y1, dtype=F32)[:, None] + F32(0.5)
    Gi = np.linalg.inv(placement.G).astype(F32)
    hw = Gi[2, 0] * gx + Gi[2, 1] * gy + Gi[2, 2]
    u = (Gi[0, 0] * gx + Gi[0, 1] * gy + Gi[0, 2]) / hw
    v = (Gi[1, 0] * gx + Gi[1, 1] * gy + Gi[1, 2]) / hw
    region = canvas[y0:y1, x0:x1]

    # --- front geometry -------------------------------------------------------------------
    w2, h2 = sh.lens_width_mm / 2, sh.lens_height_mm / 2
    cx = F32(sh.bridge_width_mm / 2 + w2)
    a = np.abs(u) - cx
    b = v
    d = lens_sdf(sku, a, b)
    metal = _is_metal(sku)
    t = max(sh.rim_thickness_mm, 0.7 if metal else 1.2)
    top_w = _smooth01((-b / F32(h2) - 0.15) / 0.5)  # 0 below the middle, 1 along the top bar
    t_eff = F32(t) + F32(sh.browline_thickness_mm) * top_w
    if sh.rim_style == RimStyle.RIMLESS:
        rim_sdf = np.full_like(d, 1e3)
    else:
        rim_sdf = np.maximum(-d - F32(0.3), d - t_eff)  # slight overlap under the lens edge: no gap
        if sh.rim_style == RimStyle.HALF:  # top and upper sides only
            rim_sdf = np.maximum(rim_sdf, b - F32(0.1 * h2))
    bridge = _bridge_sdf(sku, u, v)
    # End pieces: a block at the outer top of each lens, where the hinge is.
    ep_h = 1.2 if metal else max(1.8, t * 0.8)
    end_y = -h2 * 0.5 - 0.55 * sh.outer_lift * h2 * 0.7
    ends = _box_sdf(a, b, w2 + t * 0.5, end_y, 1.6 + t * 0.5, ep_h, r=0.5)
    front_sdf = np.minimum(np.minimum(rim_sdf, bridge), ends)
    if sh.rim_style == RimStyle.RIMLESS:  # drilled mounts: small metal studs on the lens
        front_sdf = np.minimum(front_sdf, _box_sdf(a, b, w2 - 2.0, end_y, 2.2, 0.9, r=0.4))
        front_sdf = np.minimum(front_sdf, _box_sdf(a, b, -w2 + 1.5, -h2 * 0.35, 1.5, 0.9, r=0.4))
    front_cov = _coverage(front_sdf, px)
    lens_cov = _coverage(d, px)
    pads_cov = None
    if metal:  # nose pads: small clear silicone ovals on the nose side of each lens, low down
        pad = _box_sdf(np.abs(u), v, sh.bridge_width_mm / 2 + 0.5, 0.22 * h2, 1.6, 3.2, r=1.5)
        pads_cov = _coverage(pad, px) * F32(0.45)

    # --- shadow of the front on the skin (offset down, blurred) -------------------------------
    shift = int(round(1.6 / px))
    blur = 1.0 / px  # shadow softness: ~1 mm
    shadow_src = front_cov + lens_cov * F32(0.5 * cw.lens_opacity)
    shadow = np.zeros_like(shadow_src)
    if shift < shadow.shape[0]:
        shadow[shift:] = shadow_src[: shadow.shape[0] - shift]
    shadow = _blur(shadow, blur)
    region *= (F32(1) - F32(0.35) * np.clip(shadow, 0, 1))[..., None]

    # --- temples (behind the front) -------------------------------------------------------
    hinges, tends, vis = _temple_points(sku, placement, temples_px)
    temple_cov = np.zeros_like(d)
    r_t = (0.8 if metal else max(1.6, 0.55 * t + 0.8)) / px
    for side in range(2):
        if vis[side] <= 0:
            continue
        A, B = hinges[side] - (x0, y0), tends[side] - (x0, y0)
        ba = (B - A).astype(F32)
        pax, pay = gx - F32(x0) - F32(A[0]), gy - F32(y0) - F32(A[1])
        hh = np.clip((pax * ba[0] + pay * ba[1]) / F32(max(ba @ ba, 1e-6)), 0, 1)
        dist = np.sqrt((pax - ba[0] * hh) ** 2 + (pay - ba[1] * hh) ** 2) - F32(r_t)
        temple_cov = np.maximum(temple_cov, np.clip(F32(0.5) - dist, 0, 1) * F32(vis[side]))
    temple_rgb = np.asarray(cw.primary_rgb, F32) * F32(0.8)
    region += (temple_rgb - region) * temple_cov[..., None]

    # --- nose pads (behind the lenses) and lenses ---------------------------------------------
    if pads_cov is not None:
        region += (F32(225) - region) * pads_cov[..., None]
    _draw_lenses(region, sku, d, a, b, lens_cov, px, rng)

    # --- frame front ------------------------------------------------------------------------
    rim_s = np.clip(d / t_eff, 0, 1)  # 0 at the lens edge, 1 at the outer edge of the rim
    on_rim = (rim_sdf <= front_sdf + F32(1e-3)).astype(F32)
    # A rim under ~3 px wide cannot show its rounded profile: fade to its mean so it does not alias
    # into a dotted highlight.
    detail = float(np.clip((t / px - 1.5) / 2.0, 0, 1))
    profile = (F32(0.64 * (1 - detail)) + F32(detail) * np.sin(F32(math.pi) * rim_s)) * on_rim + F32(0.6) * (1 - on_rim)
    colour, opacity = _frame_colour(sku, u, v, b, h2, profile, rim_s, on_rim, top_w, detail, rng)
    region += (colour - region) * (front_cov * opacity)[..., None]
    np.clip(region, 0, 255, out=region)

    if not want_masks:
        return None
    m = _empty_masks(H, W)
    right = (u < 0).astype(F32)
    m.lens_right[y0:y1, x0:x1] = lens_cov * right
    m.lens_left[y0:y1, x0:x1] = lens_cov * (1 - right)
    m.frame[y0:y1, x0:x1] = front_cov
    m.temples[y0:y1, x0:x1] = temple_cov
    return m


def _empty_masks(H: int, W: int) -> GlassesMasks:
    return GlassesMasks(*(np.zeros((H, W), F32) for _ in range(4)))


def _draw_lenses(region, sku: Sku, d, a, b, lens_cov, px: float, rng: np.random.Generator) -> None:
    """Lens layer in place: a colour filter whose strength is the lens opacity (clear lenses let the
    eyes through almost untouched), a top-down fade for gradient lenses, a bright sky-to-ground
    gradient for mirrors, soft reflection streaks and the lens edge catching the light."""
    cw, sh = sku.colourway, sku.shape
    h2 = sh.lens_height_mm / 2
    tint = np.asarray(cw.lens_rgb, F32)
    alpha = np.full_like(d, F32(cw.lens_opacity))
    if cw.lens == LensType.GRADIENT:
        alpha = alpha * (F32(1) - F32(0.8) * _smooth01((b / F32(h2) + 0.7) / 1.5))
    if cw.lens != LensType.CLEAR:
        # Absorbing filter: dark where the tint is dark, with a little of the tint's own colour scattered back.
        filt = F32(0.25) + F32(0.75) * tint / F32(255)
        mix = alpha * lens_cov
        lensed = region * ((F32(1) - mix)[..., None] + (mix[..., None] * filt * F32(0.55))) + (mix[..., None] * tint * F32(0.18))
        region[...] = lensed
    else:
        region += (F32(235) - region) * (F32(cw.lens_opacity) * lens_cov)[..., None]
    if cw.lens == LensType.MIRROR:
        g = _smooth01((b / F32(h2) + 1) / 2)[..., None]
        sky = np.clip(tint * F32(0.9) + F32(110), 0, 255)
        ground = tint * F32(0.45)
        mirror = sky + (ground - sky) * g
        k = (F32(0.75 * cw.lens_opacity) * lens_cov)[..., None]
        region += (mirror - region) * k
    # Reflection streaks: two soft diagonal bands per lens, random position and strength.
    strength = {LensType.CLEAR: 0.10, LensType.TINTED: 0.16, LensType.GRADIENT: 0.14, LensType.MIRROR: 0.22}[cw.lens]
    strength *= rng.uniform(0.5, 1.3)
    c = F32(rng.uniform(-0.6, 0.2) * h2)
    width = F32(rng.uniform(1.5, 3.5))
    diag = a * F32(0.55) + b - c
    streak = np.exp(-((diag / width) ** 2)) + F32(0.5) * np.exp(-(((diag - F32(2.6) * width) / (width * F32(0.5))) ** 2))
    region += (F32(255) - region) * (F32(strength) * streak * lens_cov)[..., None]
    # Lens edge: a thin bright bevel (visible on rimless and under the open half-rim).
    edge = np.clip(F32(1) - np.abs(d + F32(0.25)) / F32(max(0.35, 0.6 * px)), 0, 1)
    k_edge = 0.45 if sh.rim_style != RimStyle.FULL else 0.0
    if k_edge:
        region += (F32(240) - region) * (F32(k_edge) * edge)[..., None]


def _is_crystal(rgb: tuple[int, int, int]) -> bool:
    """Very light, nearly neutral acetate reads as clear "crystal" plastic: drawn translucent."""
    return min(rgb) >= 195 and max(rgb) - min(rgb) <= 25


def _frame_colour(sku: Sku, u, v, b, h2: float, profile, rim_s, on_rim, top_w, detail: float, rng):
    """Colour (h, w, 3) and opacity (scalar or (h, w)) of the frame front: base colour (solid,
    tortoise pattern, two-tone split, browline top bar), a rounded-profile shading lit from above,
    a specular line whose strength is the gloss (metal: a strong, broken sheen); crystal acetate
    is translucent."""
    cw, sh = sku.colourway, sku.shape
    p = np.asarray(cw.primary_rgb, F32)
    s = np.asarray(cw.secondary_rgb, F32)
    opacity = F32(0.5) if cw.material == Material.ACETATE and _is_crystal(cw.primary_rgb) else F32(1)
    light = F32(1) - F32(0.18) * np.clip(b / F32(h2), -1, 1)  # lit from above
    if _is_metal(sku):
        phase = F32(rng.uniform(0, 2 * math.pi))
        sheen = F32(0.5) + F32(0.5) * np.cos(u * F32(0.25) + v * F32(0.4) + phase)
        shade = (F32(0.55) + F32(0.55) * profile) * light
        base = p[None, None, :] * shade[..., None]
        spec = (F32(0.25 + 0.6 * cw.gloss) * profile ** 4 * sheen)[..., None]
        return np.clip(base + (s * F32(0.5) + F32(127)) * spec, 0, 255), F32(1)
    if cw.material == Material.TORTOISE:
        tex = _tortoise_texture()
        ox, oy = rng.uniform(0, 60, size=2)
        ix = np.clip((u * F32(1.2) + F32(ox + 96)).astype(np.int32), 0, 255)
        iy = np.clip((v * F32(1.2) + F32(oy + 96)).astype(np.int32), 0, 255)
        spots = _smooth01((tex[iy, ix] - F32(0.45)) / F32(0.25))[..., None]
        base = p + (s - p) * spots
    elif cw.material == Material.TWO_TONE:
        lower = _smooth01((b / F32(h2) + 0.1) / 0.3)[..., None]
        base = p + (s - p) * lower
        if _is_crystal(cw.secondary_rgb):
            opacity = F32(1) - F32(0.55) * lower[..., 0]
    else:
        base = np.broadcast_to(p, u.shape + (3,))
    if sh.browline_thickness_mm > 0 and cw.material != Material.TWO_TONE:
        # Browline: the heavy top bar in the primary colour, the thin lower rim in the (metal) secondary.
        lower = (F32(1) - top_w)[..., None] * on_rim[..., None]
        base = base + (s - base) * lower
    shade = (F32(0.72) + F32(0.38) * profile) * light
    col = base * shade[..., None]
    # Gloss: a specular line along the upper part of the rim, a softer one along the bridge.
    line = F32(detail) * np.exp(-(((rim_s - F32(0.45)) / F32(0.12)) ** 2)) + F32(0.3 * (1 - detail))
    spec = line * _smooth01(-b / F32(h2) + 0.3) * on_rim
    spec = spec + F32(0.35) * (1 - on_rim) * _smooth01(-v / F32(h2))
    return np.clip(col + F32(150 * cw.gloss) * spec[..., None], 0, 255), opacity


# ---------------------------------------------------------------------------------------------
# Output mode 1: full scene with ground truth
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """A rendered scene and its ground truth (image pixels)."""

    image: Image.Image  # RGB, the face image's size
    face_box: npt.NDArray[np.float32]  # (4,) x0, y0, x1, y1
    keypoints: npt.NDArray[np.float32]  # (5, 2) in KEYPOINT_NAMES order
    glasses_polygon: npt.NDArray[np.float32]  # (n, 2) convex outline of the frame front; (0, 2) for a bare face
    sku_id: str | None  # None: a bare face (a negative for the gate)
    masks: GlassesMasks | None = field(default=None, compare=False)  # only with return_masks=True


def convex_hull_of_mask(mask: npt.NDArray[np.float32], threshold: float = 0.5) -> npt.NDArray[np.float32]:
    """(n, 2) convex hull (counter-clockwise in image axes, pixel-corner coordinates) of the pixels
    of a (H, W) map above threshold; (0, 2) when there are none."""
    ys, xs = np.nonzero(mask > threshold)
    if len(xs) == 0:
        return np.zeros((0, 2), F32)
    # Only each row's extreme pixels can be on the hull; use their outer corners.
    pts = []
    for y in np.unique(ys):
        row = xs[ys == y]
        lo, hi = row.min(), row.max() + 1
        pts += [(lo, y), (hi, y), (lo, y + 1), (hi, y + 1)]
    pts = sorted(set(pts))
    if len(pts) < 3:
        return np.asarray(pts, F32)

    def cross(o, p, q):
        return (p[0] - o[0]) * (q[1] - o[1]) - (p[1] - o[1]) * (q[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1], F32)


def render_scene(
    sku: Sku | None,
    face: FaceSample,
    rng: np.random.Generator,
    camera: CameraConfig | None = None,
    fit: FitConfig = FitConfig(),
    return_masks: bool = False,
) -> Scene:
    """Render `sku` (None: bare face) on a full face image, then the camera model (a CameraConfig,
    or None for a clean image). Ground truth comes with it."""
    canvas = np.asarray(face.image.convert("RGB"), dtype=F32).copy()
    masks = None
    polygon = np.zeros((0, 2), F32)
    if sku is not None:
        placement = place_glasses(face.keypoints, face.pose, fit, rng)
        masks = draw_glasses(canvas, sku, placement, rng, temples_px=face.temples, want_masks=True)
        polygon = convex_hull_of_mask(np.maximum(masks.frame, np.maximum(masks.lens_left, masks.lens_right)))
    image = np.clip(canvas + F32(0.5), 0, 255).astype(np.uint8)
    if camera is not None:
        image = apply_camera(image, rng, camera)
    return Scene(
        image=Image.fromarray(image),
        face_box=np.asarray(face.face_box, F32),
        keypoints=np.asarray(face.keypoints, F32),
        glasses_polygon=polygon,
        sku_id=None if sku is None else sku.sku_id,
        masks=masks if return_masks else None,
    )


# ---------------------------------------------------------------------------------------------
# Output mode 2: fast path, rendered directly in aligned-crop space
# ---------------------------------------------------------------------------------------------

# Mirroring a crop swaps the subject's right and left landmarks.
_FLIP_ORDER = [3, 2, 1, 0, 4]


@dataclass(frozen=True)
class CropJitter:
    """Random misalignment of an aligned crop, like the one the aligner's landmark error causes at
    query time (training crops are otherwise aligned on ground-truth keypoints, exactly).

    A sample's crop becomes D(crop), D a similarity about the crop centre: per-axis shift
    ~ N(0, shift x the template's eye distance), rotation ~ N(0, rotation_deg) degrees, log scale
    ~ N(0, scale); each draw clipped at `clip` standard deviations. All zero: off (no random
    numbers are drawn, so the renders are exactly those without jitter)."""

    shift: float = 0.0  # std of the crop-centre shift per axis, as a fraction of the eye distance
    rotation_deg: float = 0.0  # std of the rotation, degrees
    scale: float = 0.0  # std of the log scale (0.06: about 6 %)
    clip: float = 2.5  # draws are clipped at this many standard deviations

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.rotation_deg > 0 or self.scale > 0

    def scaled(self, k: float) -> "CropJitter":
        """The same jitter with every standard deviation times k (k = 0: off)."""
        return CropJitter(self.shift * k, self.rotation_deg * k, self.scale * k, self.clip)


# The crop error of the committed aligner: crop_matrix(predicted keypoints) vs crop_matrix(ground
# truth) on 353 VAL-face scenes with glasses and the query camera (mean keypoint error 7.1 % of the
# eye distance): shift std 4.3 % (x) and 4.6 % (y) of the eye distance, rotation std 2.2 degrees,
# log-scale std 0.062. (It also has a small bias, -2.2 % in y and +2.4 % in scale, left out here.)
ALIGNER_JITTER = CropJitter(shift=0.045, rotation_deg=2.2, scale=0.06)


@dataclass(frozen=True)
class SkinTexture:
    """Texture laid over a face crop before the glasses are drawn, which real faces have and the
    procedural ones lack: fine value noise (pores, blotches, stubble) and broad shading (uneven
    light, shadows, ruddy patches), both multiplicative.

    Why: trained on smooth, evenly lit procedural skin, the gate learnt "texture = glasses". On
    bare VAL faces, fine noise of 6-10 % made the stage-3 gate accept 56-70 % of them, and after
    training with fine noise alone, broad shading of 20-30 % still made it accept 30-40 %; it
    accepted 35 of 36 real bare faces (TRAINING.md, gate stage 4). Per crop, each part's std is
    drawn uniform in [0, its bound] and its correlation length log-uniform in its range."""

    fine: float = 0.12  # upper bound of the fine noise's std, as a fraction of the pixel value
    fine_cell_px: tuple[float, float] = (1.0, 6.0)  # its correlation length, crop pixels
    shading: float = 0.25  # upper bound of the broad shading's std
    shading_cell_px: tuple[float, float] = (8.0, 32.0)

    def scaled(self, k: float) -> "SkinTexture":
        """Both bounds times k."""
        return replace(self, fine=self.fine * k, shading=self.shading * k)


def _value_noise(rng: np.random.Generator, h: int, w: int, cell_px: tuple[float, float]) -> npt.NDArray[np.float32]:
    """(h, w) zero-mean, unit-std noise, smooth over a correlation length drawn log-uniform in cell_px."""
    cell = math.exp(rng.uniform(math.log(cell_px[0]), math.log(cell_px[1])))
    grid = rng.standard_normal((math.ceil(h / cell) + 2, math.ceil(w / cell) + 2)).astype(F32)
    noise = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), F32)
    return (noise - noise.mean()) / max(float(noise.std()), 1e-6)


def skin_texture_field(rng: np.random.Generator, h: int, w: int, tex: SkinTexture) -> npt.NDArray[np.float32]:
    """(h, w) float32 multiplicative texture around 1 (see SkinTexture)."""
    field = 1.0 + rng.uniform(0.0, tex.fine) * _value_noise(rng, h, w, tex.fine_cell_px)
    field *= 1.0 + rng.uniform(0.0, tex.shading) * _value_noise(rng, h, w, tex.shading_cell_px)
    return np.maximum(field, 0.3).astype(F32)


# Context kept around each cached crop (pixels at crop scale), so that a jittered crop is re-warped
# from real face pixels rather than padded; enough for ALIGNER_JITTER at its clip (twice that can
# leave a few black corner pixels on the rarest draws).
CONTEXT_MARGIN = 32


def template_eye_distance(template: CropTemplate = DEFAULT_TEMPLATE) -> float:
    """Distance between the template's eye centres (mean of each eye's two corners), crop pixels."""
    pts = template.as_array().astype(np.float64)
    return float(np.linalg.norm(pts[0:2].mean(0) - pts[2:4].mean(0)))


def jitter_matrix(jitter: CropJitter, rng: np.random.Generator,
                  template: CropTemplate = DEFAULT_TEMPLATE) -> npt.NDArray[np.float64]:
    """(2, 3) random similarity crop pixels -> jittered crop pixels, about the crop centre.
    Draws four standard normals from rng (shift x, shift y, rotation, log scale), in that order."""
    z = np.clip(rng.standard_normal(4), -jitter.clip, jitter.clip)
    t = z[0:2] * jitter.shift * template_eye_distance(template)
    angle = math.radians(z[2] * jitter.rotation_deg)
    s = math.exp(z[3] * jitter.scale)
    A = s * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    c = np.array([template.width / 2, template.height / 2])
    return np.concatenate([A, (c + t - A @ c)[:, None]], axis=1)


class FaceCropCache:
    """Faces already warped into the aligned crop, with their landmarks in crop pixels.

    crops: (F, H, W, 3) uint8; keypoints: (F, 5, 2) float32; temples: (F, 2, 2) float32;
    yaw_pitch: (F, 2) float32 degrees (roll is removed by the alignment); context:
    (F, H + 2m, W + 2m, 3) uint8, the same warp with m = CONTEXT_MARGIN pixels more on each side
    (crop pixel (x, y) is context pixel (x + m, y + m)), which CropJitter re-warps from."""

    def __init__(self, faces: Sequence[FaceSample], template: CropTemplate = DEFAULT_TEMPLATE):
        if len(faces) == 0:
            raise ValueError("FaceCropCache needs at least one face")
        self.template = template
        crops, contexts, kps, temples, poses = [], [], [], [], []
        m = CONTEXT_MARGIN
        for face in faces:
            M = crop_matrix(face.keypoints, template)
            crops.append(_warp_to_crop(face.image, M, (template.width, template.height)))
            # A separate warp (not a slice of it): the crops stay bit for bit what they were.
            contexts.append(_warp_to_crop(face.image, M + np.array([[0, 0, m], [0, 0, m]]),
                                          (template.width + 2 * m, template.height + 2 * m)))
            kps.append(apply_affine(M, face.keypoints))
            temples.append(apply_affine(M, face.temples))
            poses.append((face.pose.yaw, face.pose.pitch))
        self.crops = np.stack(crops)
        self.context = np.stack(contexts)
        self.keypoints = np.asarray(kps, F32)
        self.temples = np.asarray(temples, F32)
        self.yaw_pitch = np.asarray(poses, F32)
        self.face_ids = [f.face_id for f in faces]

    def __len__(self) -> int:
        return len(self.crops)

    @classmethod
    def from_split(cls, split: str, n: int = 256, seed: int = 0, template: CropTemplate = DEFAULT_TEMPLATE) -> "FaceCropCache":
        """Build from n procedural faces of one face split (glassfinder.faces.make_face)."""
        from glassfinder.faces import FaceConfig, make_face

        cfg = FaceConfig(seed=seed)
        return cls([make_face(i, split=split, cfg=cfg) for i in range(n)], template)


def _warp_to_crop(image: Image.Image, M: npt.NDArray[np.float64], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """(H, W, 3) uint8 crop of size (W, H); a large face is first shrunk with a box filter so the
    bilinear warp does not alias."""
    image = image.convert("RGB")
    scale = math.sqrt(abs(np.linalg.det(M[:, :2])))
    factor = int(1 / scale) if scale < 0.5 else 1
    if factor > 1:
        image = image.reduce(factor)
        # reduce() maps source pixel corners x -> x / factor exactly.
        M = M @ np.array([[factor, 0, 0], [0, factor, 0], [0, 0, 1.0]])
    return np.asarray(warp_affine(image, M, size), np.uint8)


def jittered_face(faces: FaceCropCache, f: int, D: npt.ArrayLike) -> tuple[
        npt.NDArray[np.float32], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Cached face f seen through the (2, 3) crop -> jittered-crop similarity D: the (H, W, 3)
    float32 crop re-warped from the face's context, and its (5, 2) keypoints and (2, 2) temples."""
    m = CONTEXT_MARGIN
    H, W = faces.crops.shape[1:3]
    D = np.asarray(D, np.float64)
    from_context = np.concatenate([D[:, :2], (D[:, 2] - m * D[:, :2].sum(1))[:, None]], axis=1)  # D(p - m)
    canvas = np.asarray(warp_affine(Image.fromarray(faces.context[f]), from_context, (W, H)), F32)
    return canvas, apply_affine(D, faces.keypoints[f]), apply_affine(D, faces.temples[f])


def render_crop_batch(
    skus: Sequence[Sku | None],
    faces: FaceCropCache,
    rng: np.random.Generator,
    fit: FitConfig = FitConfig(),
    face_index: Sequence[int] | None = None,
    flip: bool | None = None,
    camera: CameraConfig | None = None,
    return_masks: bool = False,
    jitter: CropJitter | None = None,
    skin: SkinTexture | None = None,
):
    """Render skus (None entries: bare faces) on cached face crops, directly at crop resolution.

    Returns (N, H, W, 3) uint8, plus a list of N GlassesMasks when return_masks=True. Faces are
    drawn at random unless face_index is given; each sample is mirrored with probability 0.5 unless
    flip says otherwise (the template is left-right symmetric), and the fit jitters per sample.
    jitter (None or all zero: off) misaligns each face crop as the aligner would, before the glasses are
    drawn on it (they sit on the jittered face). camera (optional) degrades every crop afterwards
    (masks are not affected). skin (optional) textures each face crop before the glasses are drawn.
    """
    n = len(skus)
    H, W = faces.crops.shape[1:3]
    out = np.empty((n, H, W, 3), np.uint8)
    all_masks = []
    idx = rng.integers(0, len(faces), size=n) if face_index is None else np.asarray(face_index)
    for i, sku in enumerate(skus):
        f = int(idx[i])
        mirror = bool(rng.random() < 0.5) if flip is None else flip
        if jitter is not None and jitter.active:
            canvas, kp, temples = jittered_face(faces, f, jitter_matrix(jitter, rng, faces.template))
        else:
            canvas = faces.crops[f].astype(F32)
            kp, temples = faces.keypoints[f], faces.temples[f]
        if skin is not None:
            canvas = canvas * skin_texture_field(rng, H, W, skin)[..., None]
        yaw, pitch = faces.yaw_pitch[f]
        if mirror:
            canvas = canvas[:, ::-1].copy()
            kp = np.stack([W - kp[:, 0], kp[:, 1]], 1)[_FLIP_ORDER]
            temples = np.stack([W - temples[:, 0], temples[:, 1]], 1)[::-1]
            yaw = -yaw
        masks = None
        if sku is not None:
            placement = place_glasses(kp, HeadPose(yaw=float(yaw), pitch=float(pitch)), fit, rng)
            masks = draw_glasses(canvas, sku, placement, rng, temples_px=temples, want_masks=return_masks)
        out[i] = np.clip(canvas + F32(0.5), 0, 255).astype(np.uint8)
        if return_masks:
            all_masks.append(masks if masks is not None else _empty_masks(H, W))
    if camera is not None:
        out = apply_camera(out, rng, camera)
    return (out, all_masks) if return_masks else out


# ---------------------------------------------------------------------------------------------
# Benchmark (single process, numpy only)
# ---------------------------------------------------------------------------------------------


def benchmark_render(n_crops: int = 1024, n_scenes: int = 64, n_faces: int = 32, batch: int = 64, seed: int = 0) -> dict:
    """Throughput of both output modes on catalog SKUs and procedural faces, one process.

    Face generation and the crop cache are built first and timed separately: training builds
    them once and reuses them for every batch."""
    import os
    import platform
    import time

    from glassfinder.catalog import CatalogConfig, build_catalog
    from glassfinder.faces import FaceConfig, make_face

    rng = np.random.default_rng(seed)
    skus = build_catalog(CatalogConfig(seed=0, n_train=2000, n_val=0, n_gallery=0)).by_split("train")
    t0 = time.perf_counter()
    faces = [make_face(i, split="train", cfg=FaceConfig(seed=seed)) for i in range(n_faces)]
    t1 = time.perf_counter()
    cache = FaceCropCache(faces)
    t2 = time.perf_counter()
    picks = rng.integers(0, len(skus), size=max(n_crops, n_scenes))
    render_crop_batch([skus[i] for i in picks[:batch]], cache, rng)  # warm-up (texture, caches)
    t3, c3 = time.perf_counter(), time.process_time()
    done = 0
    while done < n_crops:
        k = min(batch, n_crops - done)
        render_crop_batch([skus[i] for i in picks[done : done + k]], cache, rng)
        done += k
    t4, c4 = time.perf_counter(), time.process_time()
    for j in range(n_scenes):
        render_scene(skus[picks[j]], faces[j % n_faces], rng)
    t5, c5 = time.perf_counter(), time.process_time()
    return {
        "crops_per_s": n_crops / (t4 - t3),
        "scenes_per_s": n_scenes / (t5 - t4),
        # Per second of this process's CPU time: the per-core rate, even when other jobs share the machine.
        "crops_per_cpu_s": n_crops / max(c4 - c3, 1e-9),
        "scenes_per_cpu_s": n_scenes / max(c5 - c4, 1e-9),
        "n_crops": n_crops,
        "n_scenes": n_scenes,
        "batch_size": batch,
        "crop_size": [cache.template.width, cache.template.height],
        "scene_size": list(faces[0].image.size),
        "faces_per_s": n_faces / (t1 - t0),
        "crop_cache_s": t2 - t1,
        "processes": 1,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
    }
