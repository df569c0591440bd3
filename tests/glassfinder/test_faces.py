"""Procedural faces: determinism, disjoint splits, ground truth on the drawn geometry, pose; real-face loader."""
from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from glassfinder.face_types import FaceSample, HeadPose
from glassfinder.faces import (
    BACKGROUNDS,
    FACE_SPLITS,
    HAIR_STYLES,
    FaceConfig,
    Landmarks,
    draw_face_params,
    face_split,
    face_split_seed,
    faces_for_split,
    load_real_faces,
    make_face,
)
from glassfinder_runtime.errors import GlassfinderError

ROLL_TOL_DEG = 0.05  # the eye line of a rendered face makes exactly `roll` (pitch is applied first)
PUPIL_DARKER_BY = 25.0  # grey levels: pupil centre vs the skin below the eye
DARK_SKIN_MAX_LUM, LIGHT_SKIN_MIN_LUM = 90.0, 200.0  # the skin tones must reach both ends


def _lum(img: Image.Image, x: float, y: float, r: int = 1) -> float:
    a = np.asarray(img.convert("L"), dtype=np.float64)
    xi, yi = int(x), int(y)
    return float(a[yi - r:yi + r + 1, xi - r:xi + r + 1].mean())


def test_same_seed_same_bytes() -> None:
    a = make_face(5, "gallery")
    b = make_face(5, "gallery")
    assert a.image.tobytes() == b.image.tobytes()
    for k in ("keypoints", "eye_centres", "temples", "face_box"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.pose == b.pose and a.face_id == b.face_id == "proc-gallery-000005"
    other_seed = make_face(5, "gallery", cfg=FaceConfig(seed=1))
    assert other_seed.image.tobytes() != a.image.tobytes()


def test_splits_are_disjoint_face_sets() -> None:
    ids = {s: set(faces_for_split(s, 50)) for s in FACE_SPLITS}
    assert all(len(v) == 50 for v in ids.values())
    for a in FACE_SPLITS:
        for b in FACE_SPLITS:
            if a < b:
                assert not ids[a] & ids[b]
    # Face k of two splits is a different person (different seed stream), not the same one renamed.
    imgs = [make_face(3, s).image.tobytes() for s in FACE_SPLITS]
    assert len(set(imgs)) == len(FACE_SPLITS)
    assert make_face(3, "query").split == "query"
    assert all(face_split(i) == s for s in FACE_SPLITS for i in ids[s])
    with pytest.raises(GlassfinderError, match="real-abc"):
        face_split("real-abc")
    with pytest.raises(GlassfinderError, match="test"):
        face_split_seed("test")
    with pytest.raises(GlassfinderError):
        make_face(-1, "train")


def test_sample_contract() -> None:
    f = make_face(0, "train", size=200)
    assert isinstance(f, FaceSample)
    assert f.image.mode == "RGB" and f.image.size == (200, 200)
    assert f.keypoints.shape == (5, 2) and f.keypoints.dtype == np.float32
    assert f.eye_centres.shape == (2, 2) and f.temples.shape == (2, 2) and f.face_box.shape == (4,)
    cfg = FaceConfig()
    for i in range(30):
        f = make_face(i, "val")
        p = f.pose
        assert abs(p.yaw) <= cfg.max_yaw and abs(p.pitch) <= cfg.max_pitch and abs(p.roll) <= cfg.max_roll
        x0, y0, x1, y1 = f.face_box
        assert x0 < x1 and y0 < y1
        for pt in np.vstack([f.keypoints, f.eye_centres]):
            assert x0 <= pt[0] <= x1 and y0 <= pt[1] <= y1


def test_pupils_are_drawn_at_the_eye_centres() -> None:
    poses = [HeadPose(0, 0, 0), HeadPose(30, 0, 0), HeadPose(-25, 15, 20), HeadPose(10, -15, -30)]
    for i in range(6):
        for pose in poses:
            f = make_face(i, "gallery", size=384, pose=pose)
            (rx, ry), (lx, ly) = f.eye_centres
            d = math.hypot(lx - rx, ly - ry)
            for x, y in f.eye_centres:
                # Skin: 0.45 eye distances below the pupil, perpendicular to the (rolled) eye line.
                ux, uy = (lx - rx) / d, (ly - ry) / d
                skin = _lum(f.image, x - uy * 0.45 * d, y + ux * 0.45 * d, 2)
                pupil = _lum(f.image, x, y, 0)
                assert pupil < skin - PUPIL_DARKER_BY, (i, pose, pupil, skin)
            # The eye corners straddle the pupil along the eye line.
            kp = f.keypoints
            assert kp[0][0] < f.eye_centres[0][0] < kp[1][0] or abs(pose.roll) > 0
            assert np.linalg.norm((kp[0] + kp[1]) / 2 - f.eye_centres[0]) < 0.2 * d


def test_roll_rotates_the_eye_line_and_yaw_moves_the_bridge() -> None:
    for roll in (-30.0, -10.0, 0.0, 15.0, 30.0):
        f = make_face(2, "train", pose=HeadPose(0.0, 0.0, roll))
        (rx, ry), (lx, ly) = f.eye_centres
        assert math.degrees(math.atan2(ly - ry, lx - rx)) == pytest.approx(roll, abs=ROLL_TOL_DEG)
        # Keypoints rotate with the head about a common centre: the outer corners follow the same angle.
        k = f.keypoints
        assert math.degrees(math.atan2(k[3, 1] - k[0, 1], k[3, 0] - k[0, 0])) == pytest.approx(roll, abs=ROLL_TOL_DEG)
    offsets = []
    for yaw in (-30.0, 0.0, 30.0):
        k = make_face(2, "train", pose=HeadPose(yaw, 0.0, 0.0)).keypoints
        offsets.append(k[4, 0] - (k[1, 0] + k[2, 0]) / 2)
    assert offsets[0] < -1 and abs(offsets[1]) < 0.01 and offsets[2] > 1  # yaw > 0: face points to image right
    # Pitch > 0 (chin up) lifts the bridge relative to the eyes; the span between the temples
    # shrinks under yaw (the head turns).
    up = make_face(2, "train", pose=HeadPose(0, 15, 0)).keypoints
    down = make_face(2, "train", pose=HeadPose(0, -15, 0)).keypoints
    assert up[4, 1] - up[:4, 1].mean() < down[4, 1] - down[:4, 1].mean()
    t0 = make_face(2, "train", pose=HeadPose(0, 0, 0)).temples
    t30 = make_face(2, "train", pose=HeadPose(30, 0, 0)).temples
    assert abs(t30[1, 0] - t30[0, 0]) < abs(t0[1, 0] - t0[0, 0])


def test_variety_of_people_and_scenes() -> None:
    cfg = FaceConfig()
    params = [draw_face_params(np.random.default_rng([0, 0, i]), cfg) for i in range(400)]
    lum = [0.299 * p.skin[0] + 0.587 * p.skin[1] + 0.114 * p.skin[2] for p in params]
    assert min(lum) < DARK_SKIN_MAX_LUM and max(lum) > LIGHT_SKIN_MIN_LUM
    assert set(Counter(p.hair for p in params)) == set(HAIR_STYLES)
    assert set(Counter(p.background for p in params)) == set(BACKGROUNDS)
    assert len({p.shape for p in params}) == 4
    yaws = np.array([p.pose.yaw for p in params])
    assert yaws.min() < -25 and yaws.max() > 25


def _write_png(path, colour) -> None:
    Image.new("RGB", (64, 48), colour).save(path)


class _FakeLandmarker:
    """Finds a 'face' in every image except pure black ones (stand-in for the detector + aligner)."""

    def __call__(self, image: Image.Image) -> Landmarks | None:
        if max(image.getextrema()[0]) == 0:
            return None
        w, h = image.size
        kp = np.array([[0.2 * w, 0.4 * h], [0.4 * w, 0.42 * h], [0.6 * w, 0.44 * h], [0.8 * w, 0.46 * h], [0.5 * w, 0.4 * h]])
        return Landmarks(keypoints=kp, eye_centres=kp[[0, 2]], temples=kp[[0, 3]], face_box=np.array([0, 0, w, h]))


def test_load_real_faces(tmp_path) -> None:
    _write_png(tmp_path / "a.png", (200, 150, 120))
    _write_png(tmp_path / "b.jpg", (90, 60, 40))
    _write_png(tmp_path / "c.png", (0, 0, 0))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        faces = load_real_faces(tmp_path, _FakeLandmarker(), split="query")
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.jpg" in messages and "c.png" in messages
    assert len(faces) == 2
    f = faces[0]
    assert f.split == "query" and f.face_id.startswith("real-") and f.image.size == (64, 48)
    assert f.keypoints.dtype == np.float32 and f.keypoints.shape == (5, 2)
    # No pose from the landmarker: estimated from the keypoints (eye line rises by 0.06 h over 0.6 w).
    assert f.pose.roll == pytest.approx(math.degrees(math.atan2(0.04 * 48, 0.4 * 64)), abs=ROLL_TOL_DEG)
    assert faces[0].face_id != faces[1].face_id


def test_load_real_faces_shrinks_large_photos(tmp_path) -> None:
    Image.new("RGB", (3000, 1500), (180, 140, 110)).save(tmp_path / "big.jpg")
    (face,) = load_real_faces(tmp_path, _FakeLandmarker(), max_side=600)
    assert face.image.size == (600, 300)
    assert face.face_box[2] == 600  # landmarks are in the stored (shrunk) image's pixels
    (full,) = load_real_faces(tmp_path, _FakeLandmarker(), max_side=None)
    assert full.image.size == (3000, 1500)


def test_load_real_faces_errors(tmp_path) -> None:
    with pytest.raises(GlassfinderError, match="no .jpg or .png"):
        load_real_faces(tmp_path, _FakeLandmarker())
    with pytest.raises(GlassfinderError, match="missing"):
        load_real_faces(tmp_path / "missing", _FakeLandmarker())
    _write_png(tmp_path / "a.png", (200, 150, 120))
    with pytest.raises(GlassfinderError, match="holdout"):
        load_real_faces(tmp_path, _FakeLandmarker(), split="holdout")
