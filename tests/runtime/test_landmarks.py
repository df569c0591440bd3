"""Numpy face-mesh stages and the glasses crop vs torch / formula references."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from glassfinder_runtime import landmarks as L
from glassfinder_runtime.align import align_crop
from glassfinder_runtime.errors import ImageError
from glassfinder_runtime.geometry import (
    DEFAULT_TEMPLATE,
    apply_affine,
    invert_affine,
    warp_affine,
    warp_affine_prefiltered,
)

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "mediapipe_golden.npz"

GEOM_ATOL = 1e-6  # pure matrix algebra, pixels
PROJECTION_ATOL_PX = 1e-3  # decode vs MediaPipe's LandmarkProjection formula
CROP_MEAN_ABS_LEVELS = 1.0  # Pillow bilinear vs torch grid_sample, mean |diff| in 0..255 levels
CROP_MAX_ABS_LEVELS = 3.0
POSE_ATOL_DEG = 0.5
MARKER_ATOL_PX = 1.0


def test_roi_matrix_levels_the_eye_line():
    roi = L.face_roi([100, 80, 200, 200], right_eye=[130, 120], left_eye=[170, 140], scale=1.5)
    assert roi.side == pytest.approx(1.5 * 120) and (roi.cx, roi.cy) == (150, 140)
    A = L.roi_matrix(roi, 192)
    assert np.allclose(apply_affine(A, [[150, 140]]), [[96, 96]], atol=GEOM_ATOL)
    d = apply_affine(A, [[170, 140]]) - apply_affine(A, [[130, 120]])
    assert abs(d[0, 1]) < GEOM_ATOL and d[0, 0] > 0  # right eye -> left eye points along +x
    assert np.sqrt(abs(np.linalg.det(A[:, :2]))) == pytest.approx(192 / roi.side)


def test_crop_face_matches_torch_grid_sample():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC)
    roi = L.FaceRoi(cx=170.0, cy=120.0, side=150.0, angle=0.3)
    A = L.roi_matrix(roi, 192)
    got = L.crop_face(img, A, 192).astype(np.float32)
    # Reference: the output pixel centres mapped to the source with the inverse matrix, sampled
    # bilinearly by grid_sample (align_corners=False is the same pixel-centre convention).
    inv = invert_affine(A)
    u, v = np.meshgrid(np.arange(192) + 0.5, np.arange(192) + 0.5)
    src = apply_affine(inv, np.stack([u.ravel(), v.ravel()], 1))
    grid = torch.from_numpy(src / np.array([320, 240]) * 2 - 1).float().reshape(1, 192, 192, 2)
    x = torch.from_numpy(np.asarray(img, np.float32)).permute(2, 0, 1)[None]
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].permute(1, 2, 0).numpy()
    inside = (src[:, 0] > 1) & (src[:, 0] < 319) & (src[:, 1] > 1) & (src[:, 1] < 239)
    diff = np.abs(got.reshape(-1, 3) - ref.reshape(-1, 3))[inside]
    assert inside.mean() > 0.5
    assert diff.mean() < CROP_MEAN_ABS_LEVELS and diff.max() < CROP_MAX_ABS_LEVELS


def test_decode_matches_mediapipe_landmark_projection():
    g = np.load(GOLDEN)
    raw = g["aligner_landmarks"][0]
    roi = L.FaceRoi(cx=400.0, cy=300.0, side=250.0, angle=-0.4)
    mesh = L.decode_landmarks(raw, L.roi_matrix(roi, 192))
    # MediaPipe LandmarkProjectionCalculator, in pixels: rotate (normalised - 0.5) by the roi
    # angle, scale by the roi size, add the centre; z scaled by the roi width.
    p = raw.reshape(468, 3) / 192.0
    x, y = p[:, 0] - 0.5, p[:, 1] - 0.5
    c, s = np.cos(roi.angle), np.sin(roi.angle)
    ref_x = (c * x - s * y) * roi.side + roi.cx
    ref_y = (s * x + c * y) * roi.side + roi.cy
    assert np.abs(mesh[:, 0] - ref_x).max() < PROJECTION_ATOL_PX
    assert np.abs(mesh[:, 1] - ref_y).max() < PROJECTION_ATOL_PX
    assert np.abs(mesh[:, 2] - p[:, 2] * roi.side).max() < PROJECTION_ATOL_PX


def synthetic_mesh() -> np.ndarray:
    """A (468, 3) mesh with the points the stages read placed like a frontal face (eyes 60 px apart)."""
    m = np.zeros((468, 3))
    m[:, :2] = [200.0, 200.0]
    for ring, cx in ((L.RIGHT_EYE_RING, 170.0), (L.LEFT_EYE_RING, 230.0)):
        t = np.linspace(0, 2 * np.pi, len(ring), endpoint=False)
        m[list(ring), 0] = cx + 15 * np.cos(t)
        m[list(ring), 1] = 190 + 6 * np.sin(t)
    m[33, :2], m[133, :2], m[362, :2], m[263, :2] = (155, 190), (185, 190), (215, 190), (245, 190)
    m[168, :2] = (200, 185)
    for chain, x in ((L.RIGHT_TEMPLE_CHAIN, 120.0), (L.LEFT_TEMPLE_CHAIN, 280.0)):
        m[list(chain), 0] = x
        m[list(chain), 1] = np.linspace(130, 260, len(chain))
    m[list(L.BROWS), 1] = 170
    m[L.FOREHEAD, :2], m[L.CHIN, :2] = (200, 120), (200, 300)
    return m


def test_keypoints_eyes_temples_box_from_the_mesh():
    m = synthetic_mesh()
    kp = L.glasses_keypoints(m)
    assert kp.tolist() == [[155, 190], [185, 190], [215, 190], [245, 190], [200, 185]]
    assert np.allclose(L.eye_centres(m), [[170, 190], [230, 190]], atol=1e-4)
    assert np.allclose(L.temples(m), [[120, 190], [280, 190]], atol=1e-4)  # contour at eye height
    assert np.allclose(L.face_box(m), [120, 170, 280, 300])


def rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = np.radians([yaw, pitch, roll])
    Ry = np.array([[np.cos(y), 0, -np.sin(y)], [0, 1, 0], [np.sin(y), 0, np.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    Rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


@pytest.mark.parametrize("pose", [(25.0, 0.0, 0.0), (0.0, 15.0, 0.0), (0.0, 0.0, -30.0), (-40.0, 0.0, 0.0)])
def test_head_pose_recovers_single_axis_rotations(pose):
    m = synthetic_mesh()
    centre = np.array([200.0, 210.0, 0.0])
    m3 = (m - centre) @ rot(*pose).T * 1.7 + centre + [50, -20, 0]  # rotate, scale, move
    assert np.allclose(L.head_pose(m3), pose, atol=POSE_ATOL_DEG)


def test_roi_from_mesh_is_tight_on_a_tilted_face():
    m = synthetic_mesh()
    A = np.array([[np.cos(0.5), -np.sin(0.5), 40.0], [np.sin(0.5), np.cos(0.5), -10.0]])
    tilted = m.copy()
    tilted[:, :2] = apply_affine(A, m[:, :2])
    roi, ref = L.roi_from_mesh(tilted, 1.5), L.roi_from_mesh(m, 1.5)
    assert roi.angle == pytest.approx(0.5) and roi.side == pytest.approx(ref.side)
    assert np.allclose(apply_affine(A, [[ref.cx, ref.cy]]), [[roi.cx, roi.cy]], atol=GEOM_ATOL * 1e3)


def test_align_crop_puts_keypoints_on_the_template():
    tpl = DEFAULT_TEMPLATE.as_array().astype(np.float64)
    # A photo where the glasses region is 3x bigger, rotated by 20 degrees and shifted.
    a = np.radians(20)
    S = 3.0 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    kp = tpl @ S.T + [150, 90]
    img = Image.new("RGB", (600, 450), (255, 255, 255))
    img.paste((255, 0, 0), (int(kp[0, 0]) - 3, int(kp[0, 1]) - 3, int(kp[0, 0]) + 3, int(kp[0, 1]) + 3))
    crop, M = align_crop(img, kp)
    assert crop.shape == (DEFAULT_TEMPLATE.height, DEFAULT_TEMPLATE.width, 3)
    assert np.allclose(apply_affine(M, kp), tpl, atol=1e-6)
    red = np.argwhere((crop[..., 0] > 150) & (crop[..., 1] < 120))
    marker = red.mean(0)[::-1] + 0.5
    expected = apply_affine(M, [[int(kp[0, 0]), int(kp[0, 1])]])[0]
    assert np.abs(marker - expected).max() < MARKER_ATOL_PX
    with pytest.raises(ImageError):
        align_crop(img, kp[:4])


def test_prefiltered_warp_does_not_alias():
    checker = (np.indices((800, 800)).sum(0) % 2 * 255).astype(np.uint8)
    img = Image.fromarray(np.stack([checker] * 3, -1))
    A = np.array([[0.0937, 0.0, 0.3], [0.0, 0.0937, 0.2]])  # 800 -> 75
    good = np.asarray(warp_affine_prefiltered(img, A, (70, 70)), np.float32)
    bad = np.asarray(warp_affine(img, A, (70, 70)), np.float32)
    inner = good[1:-1, 1:-1]  # the first row and column sample partly outside the photo (black)
    assert abs(inner.mean() - 127.5) < 3 and inner.std() < 3  # a uniform grey
    assert bad.std() > 20  # plain bilinear aliases into moire
    B = np.array([[1.2, 0.0, 5.0], [0.0, 1.2, 5.0]])  # an enlargement: identical to warp_affine
    assert np.array_equal(np.asarray(warp_affine_prefiltered(img, B, (60, 60))), np.asarray(warp_affine(img, B, (60, 60))))
