"""Virtual try-on of a catalog SKU on a real photo: the user feature ("see the frame on your own
face") and how real-face query sets are built.

The landmarks come from the caller (explicit keypoints) or from a landmarker: any callable
`image -> face | None` whose face has `keypoints` (5, 2) in KEYPOINT_NAMES order and `temples`
(2, 2), image pixels (glassfinder.landmarks.default_landmarker(): the detector + aligner). The head pose is
estimated from those keypoints, and the frame is drawn with the renderer's exact fit (no jitter),
so a try-on is deterministic.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from glassfinder.catalog_types import Sku
from glassfinder.renderer import FitConfig, draw_glasses, estimate_pose, place_glasses
from glassfinder_runtime.errors import GlassfinderError, ImageError

Landmarker = Callable[[Image.Image], Any]  # image -> object with .keypoints (5, 2) and .temples (2, 2), or None

# Fit without jitter: the frame sits where an optician would put it.
TRYON_FIT = FitConfig(jitter_drop_mm=0.0, jitter_shift_mm=0.0, jitter_scale=0.0, jitter_tilt_deg=0.0)


def parse_keypoints(text: str) -> npt.NDArray[np.float32]:
    """'x1,y1,...,x5,y5' (KEYPOINT_NAMES order, image pixels) -> (5, 2) float32."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise GlassfinderError(f"--keypoints must be 10 comma-separated numbers x1,y1,...,x5,y5; got {text!r}") from None
    if len(values) != 10 or not np.all(np.isfinite(values)):
        raise GlassfinderError(
            f"--keypoints needs 10 finite numbers (x,y of right_eye_outer, right_eye_inner, left_eye_inner, "
            f"left_eye_outer, nose_bridge), got {len(values)}"
        )
    return np.asarray(values, np.float32).reshape(5, 2)


def check_keypoints(keypoints: npt.ArrayLike, size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Validate (5, 2) keypoints against an image of size (w, h): inside it, eyes apart, right eye first."""
    kp = np.asarray(keypoints, np.float32)
    if kp.shape != (5, 2):
        raise GlassfinderError(f"keypoints must be 5 (x, y) points, got shape {kp.shape}")
    w, h = size
    if np.any(kp < 0) or np.any(kp[:, 0] > w) or np.any(kp[:, 1] > h):
        raise GlassfinderError(f"keypoints {kp.round(1).tolist()} fall outside the {w}x{h} image")
    if np.linalg.norm(kp[3] - kp[0]) < 8:
        raise GlassfinderError("the outer eye corners are less than 8 px apart: face too small for a try-on")
    if (kp[3] - kp[0]) @ (kp[2] - kp[1]) <= 0:
        raise GlassfinderError("keypoints are out of order: expected the subject's right eye (image left) first")
    return kp


def tryon(
    image: Image.Image,
    sku: Sku,
    keypoints: npt.ArrayLike | None = None,
    landmarker: Landmarker | None = None,
    seed: int = 0,
) -> Image.Image:
    """Draw `sku` on the face in `image` (RGB result of the same size).

    keypoints: (5, 2) image pixels; when None, `landmarker(image)` must supply them (and the
    temples). seed only drives the reflections' placement."""
    image = image.convert("RGB")
    temples = None
    if keypoints is None:
        if landmarker is None:
            raise GlassfinderError("try-on needs the face's keypoints: pass them explicitly or give a landmarker")
        face = landmarker(image)
        if face is None:
            raise ImageError("no face found in the photo: try a larger, frontal face or pass --keypoints")
        keypoints, temples = face.keypoints, face.temples
    kp = check_keypoints(keypoints, image.size)
    pose = estimate_pose(kp, TRYON_FIT)
    placement = place_glasses(kp, pose, TRYON_FIT, rng=None)
    canvas = np.asarray(image, np.float32).copy()
    draw_glasses(canvas, sku, placement, np.random.default_rng(seed), temples_px=temples)
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))


