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
)

POINT_TOL_PX = 1e-6  # exact geometry in float64
WARP_TOL_LEVELS = 2.0  # bilinear sampling of a smooth ramp, in 8-bit levels


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
