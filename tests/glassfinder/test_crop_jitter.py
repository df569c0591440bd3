"""CropJitter: training crops misaligned like the aligner's (glassfinder.renderer)."""
from __future__ import annotations

import numpy as np
import pytest

from glassfinder.catalog import build_catalog
from glassfinder.faces import make_face
from glassfinder.renderer import (
    ALIGNER_JITTER,
    CONTEXT_MARGIN,
    EXACT_FIT,
    CropJitter,
    FaceCropCache,
    jitter_matrix,
    jittered_face,
    render_crop_batch,
    template_eye_distance,
)
from glassfinder.train import TrainConfig
from glassfinder_runtime.errors import ConfigError
from glassfinder_runtime.geometry import DEFAULT_TEMPLATE, apply_affine

STAT_REL_TOL = 0.08  # relative tolerance of a standard deviation estimated from N_DRAWS draws
N_DRAWS = 4000
CENTROID_TOL_PX = 0.35  # lens-mask centroid vs its predicted place (anti-aliased edges, crop border)


@pytest.fixture(scope="module")
def cache() -> FaceCropCache:
    return FaceCropCache([make_face(i, "val") for i in range(2)])


@pytest.fixture(scope="module")
def skus():
    return [s for s in build_catalog().by_split("val") if not s.is_sunglasses][:3]


def test_template_eye_distance_is_46_px():
    assert template_eye_distance(DEFAULT_TEMPLATE) == pytest.approx(46.0)


def test_jitter_matrix_is_deterministic_from_the_seed():
    a = jitter_matrix(ALIGNER_JITTER, np.random.default_rng(7))
    b = jitter_matrix(ALIGNER_JITTER, np.random.default_rng(7))
    c = jitter_matrix(ALIGNER_JITTER, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_jittered_renders_are_deterministic_from_the_seed(cache, skus):
    a = render_crop_batch(skus, cache, np.random.default_rng(3), jitter=ALIGNER_JITTER)
    b = render_crop_batch(skus, cache, np.random.default_rng(3), jitter=ALIGNER_JITTER)
    plain = render_crop_batch(skus, cache, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, plain)


def test_zero_jitter_is_the_identity_bit_for_bit(cache, skus):
    """No jitter draws nothing and changes nothing: the renders are those without the argument."""
    assert not CropJitter().active and not ALIGNER_JITTER.scaled(0.0).active
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    a = render_crop_batch(skus + [None], cache, r1)
    b = render_crop_batch(skus + [None], cache, r2, jitter=ALIGNER_JITTER.scaled(0.0))
    assert np.array_equal(a, b)
    assert r1.random() == r2.random()  # the same number of draws


def test_identity_matrix_reproduces_the_cached_crop(cache):
    """The context warp and the crop warp agree: an identity jitter gives the cached crop exactly."""
    canvas, kp, temples = jittered_face(cache, 1, np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    assert np.array_equal(canvas, cache.crops[1].astype(np.float32))
    assert np.array_equal(kp, cache.keypoints[1]) and np.array_equal(temples, cache.temples[1])


def test_an_integer_shift_moves_pixels_and_keypoints_by_that_shift(cache):
    tx, ty = 5, -3
    canvas, kp, _ = jittered_face(cache, 0, np.array([[1.0, 0, tx], [0, 1.0, ty]]))
    m, (H, W) = CONTEXT_MARGIN, cache.crops.shape[1:3]
    # Jittered pixel (x, y) shows crop pixel (x - tx, y - ty), i.e. context pixel (x - tx + m, y - ty + m).
    expected = cache.context[0, m - ty : m - ty + H, m - tx : m - tx + W]
    assert np.array_equal(canvas, expected.astype(np.float32))
    np.testing.assert_allclose(kp - cache.keypoints[0], np.tile([tx, ty], (5, 1)), atol=1e-5)


def test_jitter_statistics_match_the_config():
    """Shift, rotation and scale of many draws have the configured standard deviations (times the
    shrinkage of a normal clipped at 2.5 sigma) and the crop centre as their fixed point."""
    jit = CropJitter(shift=0.05, rotation_deg=3.0, scale=0.07)
    rng = np.random.default_rng(0)
    Ds = np.stack([jitter_matrix(jit, rng) for _ in range(N_DRAWS)])
    c = np.array([DEFAULT_TEMPLATE.width / 2, DEFAULT_TEMPLATE.height / 2])
    shifts = Ds[:, :, :2] @ c + Ds[:, :, 2] - c  # where the crop centre goes
    angles = np.degrees(np.arctan2(Ds[:, 1, 0], Ds[:, 0, 0]))
    log_scales = 0.5 * np.log(np.abs(np.linalg.det(Ds[:, :, :2])))
    z = np.random.default_rng(1).standard_normal(200_000)
    clipped_std = float(np.clip(z, -jit.clip, jit.clip).std())  # about 0.97
    for values, sigma in ((shifts[:, 0], 0.05 * 46), (shifts[:, 1], 0.05 * 46), (angles, 3.0), (log_scales, 0.07)):
        assert values.std() == pytest.approx(sigma * clipped_std, rel=STAT_REL_TOL)
        assert np.abs(values).max() <= sigma * jit.clip + 1e-9
    # A pure rotation + scale (no shift) keeps the crop centre where it is.
    D = jitter_matrix(CropJitter(rotation_deg=3.0, scale=0.07), np.random.default_rng(2))
    np.testing.assert_allclose(apply_affine(D, c[None]), c[None], atol=1e-9)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]] + 0.5
    return np.array([(xs * mask).sum(), (ys * mask).sum()]) / mask.sum()


def test_glasses_follow_the_jittered_face(cache, skus):
    """The glasses are drawn on the jittered face: each lens lands where the jitter similarity
    takes it in the unjittered render (the first draws of rng are the jitter's when the face and
    the mirroring are given)."""
    jit = CropJitter(shift=0.06, rotation_deg=3.0, scale=0.05)
    for seed in (11, 12):
        _, masks = render_crop_batch(skus[:1], cache, np.random.default_rng(seed), fit=EXACT_FIT, face_index=[0],
                                     flip=False, jitter=jit, return_masks=True)
        _, plain = render_crop_batch(skus[:1], cache, np.random.default_rng(seed), fit=EXACT_FIT, face_index=[0],
                                     flip=False, return_masks=True)
        D = jitter_matrix(jit, np.random.default_rng(seed))
        for lens in ("lens_right", "lens_left"):
            before = _centroid(getattr(plain[0], lens))
            moved = _centroid(getattr(masks[0], lens))
            predicted = apply_affine(D, before[None])[0]
            assert np.linalg.norm(predicted - before) > 1.0  # the draw really moves the lens
            assert np.linalg.norm(moved - predicted) < CENTROID_TOL_PX, (seed, lens, moved, predicted)


def test_train_config_rejects_a_bad_crop_jitter():
    with pytest.raises(ConfigError, match="crop_jitter"):
        TrainConfig(crop_jitter=-0.5)
    assert TrainConfig().crop_jitter == 1.0
