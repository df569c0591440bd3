"""Similarity transform and warp: checked against closed-form references."""
import numpy as np
import pytest
from PIL import Image

from glassfinder_runtime.geometry import (
    DEFAULT_TEMPLATE,
    ReducedImages,
    apply_affine,
    crop_matrix,
    estimate_similarity,
    invert_affine,
    warp_affine,
    warp_affine_prefiltered,
    warp_affine_supersampled,
)

POINT_TOL_PX = 1e-6  # exact geometry in float64
WARP_TOL_LEVELS = 2.0  # bilinear sampling of a smooth ramp, in 8-bit levels
# Supersampled warp vs its float64 definition: Pillow's 16.16 fixed point may move a sample that
# lies within 2^-16 px of a pixel edge to the neighbour; on noise that changes a few pixels.
SUPERSAMPLE_MISMATCH_SHARE = 0.005


def similarity(scale, angle_deg, tx, ty):
    a = np.deg2rad(angle_deg)
    R = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.concatenate([R, [[tx], [ty]]], axis=1)


@pytest.mark.parametrize("scale,angle,tx,ty", [(1, 0, 0, 0), (2.5, 30, 10, -4), (0.3, -170, 100, 50)])
def test_estimate_similarity_recovers_exact_transform(scale, angle, tx, ty):
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, size=(5, 2))
    A = similarity(scale, angle, tx, ty)
    est = estimate_similarity(src, apply_affine(A, src))
    np.testing.assert_allclose(est, A, atol=POINT_TOL_PX)


def test_estimate_similarity_never_reflects():
    src = np.array([[0, 0], [1, 0], [0, 1]], float)
    dst = src * [-1, 1]  # a mirror image: best similarity must still be a rotation
    A = estimate_similarity(src, dst)
    assert np.linalg.det(A[:, :2]) > 0


def test_estimate_similarity_rejects_degenerate_points():
    with pytest.raises(ValueError, match="degenerate"):
        estimate_similarity(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="shape"):
        estimate_similarity(np.ones((5, 2)), np.zeros((4, 2)))


def test_invert_affine_round_trips():
    A = similarity(1.7, 12, 3, 9)
    pts = np.array([[1.0, 2.0], [50, -3]])
    np.testing.assert_allclose(apply_affine(invert_affine(A), apply_affine(A, pts)), pts, atol=POINT_TOL_PX)


def test_crop_matrix_maps_keypoints_onto_template():
    A_true = similarity(0.4, -8, -20, 5)
    keypoints = apply_affine(invert_affine(A_true), DEFAULT_TEMPLATE.as_array())
    np.testing.assert_allclose(apply_affine(crop_matrix(keypoints), keypoints), DEFAULT_TEMPLATE.as_array(), atol=1e-4)


def test_warp_affine_samples_where_the_matrix_says():
    # A horizontal ramp: value = x. Shift right by 10 px and check pixel centres.
    w, h = 64, 16
    ramp = np.tile(np.arange(w, dtype=np.uint8) * 3, (h, 1))
    img = Image.fromarray(np.stack([ramp] * 3, -1))
    A = similarity(1.0, 0, -10, 0)  # output x = source x - 10
    out = np.asarray(warp_affine(img, A, (32, 16))).astype(float)
    expected = (np.arange(32) + 10) * 3.0
    assert np.abs(out[8, :, 0] - expected).max() <= WARP_TOL_LEVELS


def test_reduced_images_are_made_once_and_warp_to_the_same_pixels():
    """The box reductions a search shares between its warps give the pixels of a fresh reduction,
    and each factor is reduced once."""
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(600, 500, 3), dtype=np.uint8))
    fresh = img.copy()
    calls = []
    reduce = img.reduce
    img.reduce = lambda k: calls.append(k) or reduce(k)  # count the reductions of the shared image
    shared = ReducedImages(img)
    shrinks = [similarity(0.3, 10, 5, -20), similarity(0.31, -5, 0, 3), similarity(0.2, 0, 1, 1),
               similarity(0.8, 3, 2, 2)]
    for A in shrinks:
        got = warp_affine_prefiltered(img, A, (64, 48), shared)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(warp_affine_prefiltered(fresh, A, (64, 48))))
    assert calls == [3, 5]  # 0.3 and 0.31 share the 3x reduction; 0.8 needs none
    assert shared.reduced(1) is img
    with pytest.raises(ValueError, match="another image"):
        warp_affine_prefiltered(fresh, similarity(0.3, 0, 0, 0), (8, 8), shared)


def _supersampled_reference(img: np.ndarray, A: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The definition in float64: the mean of the nearest source pixels of the 4 points at
    +-1/4 px around each output pixel centre (black outside), rounded as Pillow's reduce(2)."""
    w, h = size
    inv = invert_affine(A)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    total = np.zeros((h, w, 3), np.int64)
    for dx in (0.25, 0.75):
        for dy in (0.25, 0.75):
            p = apply_affine(inv, np.stack([xs + dx, ys + dy], -1).reshape(-1, 2)).reshape(h, w, 2)
            ix, iy = np.floor(p[..., 0]).astype(int), np.floor(p[..., 1]).astype(int)
            inside = (ix >= 0) & (ix < img.shape[1]) & (iy >= 0) & (iy < img.shape[0])
            total += np.where(inside[..., None], img[iy.clip(0, img.shape[0] - 1), ix.clip(0, img.shape[1] - 1)], 0)
    return ((total + 2) >> 2).astype(np.uint8)


@pytest.mark.parametrize("A", [similarity(0.8, 17, 3.3, -5.1), similarity(0.55, -160, 90, 60),
                               np.array([[0.7, 0.0, -3.0], [0.0, 0.6, 2.5]])])
def test_supersampled_warp_is_the_mean_of_four_nearest_samples(A):
    """Rotated shrinks go through Pillow's fixed-point path, axis-aligned ones through its scale path."""
    img = np.random.default_rng(5).integers(0, 256, size=(90, 110, 3), dtype=np.uint8)
    got = np.asarray(warp_affine_supersampled(Image.fromarray(img), A, (64, 48)))
    want = _supersampled_reference(img, A, (64, 48))
    assert got.shape == want.shape == (48, 64, 3)
    assert np.mean(np.any(got != want, axis=-1)) <= SUPERSAMPLE_MISMATCH_SHARE


def test_supersampled_half_scale_is_a_2x2_box_reduction():
    img = Image.fromarray(np.random.default_rng(6).integers(0, 256, size=(40, 60, 3), dtype=np.uint8))
    out = warp_affine_supersampled(img, np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]), (30, 20))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img.reduce(2)))


def test_pipeline_warp_supersamples_shrinks_and_keeps_bilinear_for_enlargements():
    img = Image.fromarray(np.random.default_rng(7).integers(0, 256, size=(80, 80, 3), dtype=np.uint8))
    shrink, enlarge = similarity(0.7, 10, 5, 5), similarity(1.3, 10, 5, 5)
    np.testing.assert_array_equal(np.asarray(warp_affine_prefiltered(img, shrink, (50, 50))),
                                  np.asarray(warp_affine_supersampled(img, shrink, (50, 50))))
    np.testing.assert_array_equal(np.asarray(warp_affine_prefiltered(img, enlarge, (50, 50))),
                                  np.asarray(warp_affine(img, enlarge, (50, 50))))
