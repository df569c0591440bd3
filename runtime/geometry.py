"""Geometry shared by every platform: the glasses-crop template and similarity transforms.

Conventions (the same in the Kotlin and Swift stubs):
- points are continuous (x, y) image coordinates, x to the right, y down; pixel (i, j) covers
  [i, i+1) x [j, j+1), so its centre is (i + 0.5, j + 0.5) (Pillow's convention, which warp_affine
  relies on; renderers evaluate their shapes at pixel centres);
- a 2x3 affine matrix `A` maps a source point p to `A[:, :2] @ p + A[:, 2]`;
- "right"/"left" are the subject's: the subject's right eye appears on the image's left.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

# Names of the five landmarks the glasses crop is aligned on (subject's right/left).
KEYPOINT_NAMES: tuple[str, ...] = (
    "right_eye_outer",
    "right_eye_inner",
    "left_eye_inner",
    "left_eye_outer",
    "nose_bridge",
)


@dataclass(frozen=True)
class CropTemplate:
    """Where the five glasses keypoints land in the aligned crop; written into the manifest."""

    # Crop width and height in pixels: wide, because glasses are about 2.2x the eye distance wide.
    width: int = 128
    height: int = 64
    # Template positions of KEYPOINT_NAMES, (x, y) in crop pixels. Eye centres at x=41 and x=87
    # (46 px apart) leave room for the temples of a wide frame; the eye line sits at y=30.
    points: tuple[tuple[float, float], ...] = (
        (30.0, 30.0),
        (52.0, 30.0),
        (76.0, 30.0),
        (98.0, 30.0),
        (64.0, 27.0),
    )

    def as_array(self) -> npt.NDArray[np.float32]:
        """(5, 2) float32 template points."""
        return np.asarray(self.points, dtype=np.float32)

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "keypoints": list(KEYPOINT_NAMES),
                "points": [list(p) for p in self.points]}


DEFAULT_TEMPLATE = CropTemplate()


def estimate_similarity(src: npt.ArrayLike, dst: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src onto dst.

    Umeyama (1991) without reflection. src, dst: (n, 2) with n >= 2. Returns a (2, 3) matrix.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two (n>=2, 2) point arrays of equal shape, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("source points are degenerate (all at one place)")
    cov = d.T @ s / len(src)
    U, S, Vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        sign[-1] = -1.0
    R = U @ np.diag(sign) @ Vt
    scale = (S * sign).sum() / var_s
    A = np.zeros((2, 3))
    A[:, :2] = scale * R
    A[:, 2] = mu_d - scale * R @ mu_s
    return A


def apply_affine(A: npt.ArrayLike, pts: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Map (n, 2) points through a (2, 3) affine matrix."""
    A = np.asarray(A, dtype=np.float64)
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ A[:, :2].T + A[:, 2]


def invert_affine(A: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Inverse of a (2, 3) affine matrix."""
    A = np.asarray(A, dtype=np.float64)
    M = np.linalg.inv(A[:, :2])
    return np.concatenate([M, -M @ A[:, 2:3]], axis=1)


def warp_affine(image: Image.Image, A: npt.ArrayLike, size: tuple[int, int]) -> Image.Image:
    """Warp `image` with the (2, 3) matrix A (source -> output pixels) into an output of size (w, h).

    Bilinear; outside the source is black. Pillow wants the output->source map, hence the inverse.
    """
    inv = invert_affine(A)
    return image.transform(size, Image.Transform.AFFINE, data=tuple(inv.reshape(-1)), resample=Image.Resampling.BILINEAR)


def warp_affine_supersampled(image: Image.Image, A: npt.ArrayLike, size: tuple[int, int]) -> Image.Image:
    """warp_affine for shrinking warps: each output pixel is the mean of 2 x 2 nearest-neighbour
    samples at +-1/4 output pixel around its centre (Pillow's NEAREST transform at twice the size,
    then reduce(2)); black outside.

    Why: Pillow's bilinear transform costs about 20 ns a pixel (0.8 ms for a 192-px face crop), its
    nearest one about 1.5 ns. When the warp shrinks (scale < 1) the four samples are a box filter at
    least as good as bilinear, which skips source pixels there; enlarging warps stay bilinear."""
    inv = invert_affine(A)
    w, h = size
    # Output pixel (X + 0.5) of the double-size image is point (X + 0.5) / 2 of the output: halving
    # the linear part (exact in binary) composes the map with that scale.
    data = (inv[0, 0] / 2, inv[0, 1] / 2, inv[0, 2], inv[1, 0] / 2, inv[1, 1] / 2, inv[1, 2])
    big = image.transform((2 * w, 2 * h), Image.Transform.AFFINE, data=data, resample=Image.Resampling.NEAREST)
    return big.reduce(2)


def crop_matrix(keypoints: npt.ArrayLike, template: CropTemplate = DEFAULT_TEMPLATE) -> npt.NDArray[np.float64]:
    """(2, 3) similarity from image pixels to crop pixels, from the five (5, 2) glasses keypoints."""
    return estimate_similarity(keypoints, template.as_array())


class ReducedImages:
    """The box-reduced copies of one image that warp_affine_prefiltered uses, made on first use and
    kept by factor. One per photo and search: the aligner passes and the glasses crop all warp the
    same photo, mostly with the same factor, and reducing a whole 12-MP photo costs more than a warp."""

    def __init__(self, image: Image.Image):
        self.image = image
        self._by_factor: dict[int, Image.Image] = {1: image}

    def reduced(self, k: int) -> Image.Image:
        """image.reduce(k) (the image itself for k = 1), computed once."""
        if k not in self._by_factor:
            self._by_factor[k] = self.image.reduce(k)
        return self._by_factor[k]


def warp_affine_prefiltered(image: Image.Image, A: npt.ArrayLike, size: tuple[int, int],
                            reduced: ReducedImages | None = None) -> Image.Image:
    """The pipeline's warp: a shrinking A (scale < 1) is warp_affine_supersampled, after a box
    reduction of the source by k = floor(1 / scale) when A shrinks it 2x or more (a 4000-px photo
    warped to a 192-px face crop), folded into the matrix; an enlarging A is warp_affine (bilinear).

    reduced: the reductions of this same image to reuse (ValueError if it holds another image)."""
    if reduced is not None and reduced.image is not image:
        raise ValueError("warp_affine_prefiltered: `reduced` holds the reductions of another image")
    A = np.asarray(A, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(A[:, :2]))))  # output pixels per source pixel
    warp = warp_affine_supersampled if scale < 1.0 else warp_affine
    k = int(np.floor(1.0 / scale)) if scale > 0 else 1
    if k < 2:
        return warp(image, A, size)
    source = reduced.reduced(k) if reduced is not None else image.reduce(k)
    # Reduced pixel i averages source pixels [i*k, (i+1)*k): continuous x_reduced = x / k.
    return warp(source, np.concatenate([A[:, :2] * k, A[:, 2:]], axis=1), size)
