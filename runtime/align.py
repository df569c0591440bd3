"""The glasses crop: least-squares similarity of the five glasses keypoints onto the template,
then the warp (geometry.crop_matrix + geometry.warp_affine_prefiltered).

The template and the crop size are one object, geometry.CropTemplate (in the manifest).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

from glassfinder_runtime.errors import ImageError
from glassfinder_runtime.geometry import (DEFAULT_TEMPLATE, CropTemplate, ReducedImages, crop_matrix,
                                          warp_affine_prefiltered)


def align_crop(image: Image.Image, keypoints: npt.ArrayLike, template: CropTemplate = DEFAULT_TEMPLATE,
               reduced: ReducedImages | None = None) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """RGB image + (5, 2) glasses keypoints (image pixels, geometry.KEYPOINT_NAMES order) ->
    ((template.height, template.width, 3) uint8 crop, (2, 3) image->crop matrix).
    reduced: geometry.ReducedImages of this image, shared by the warps of one search."""
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape != (len(template.points), 2) or not np.all(np.isfinite(kp)):
        raise ImageError(f"align_crop needs ({len(template.points)}, 2) finite keypoints, got shape {kp.shape}")
    A = crop_matrix(kp, template)
    if image.mode != "RGB":
        image, reduced = image.convert("RGB"), None
    crop = warp_affine_prefiltered(image, A, (template.width, template.height), reduced)
    return np.asarray(crop, dtype=np.uint8), A
