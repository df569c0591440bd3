"""The faces' data contract: what the renderer needs to put glasses on a face.

Procedural faces fill it from their own geometry; real photos fill it from the detector and
aligner (landmarks) plus a head-pose estimate from those landmarks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image


@dataclass(frozen=True)
class HeadPose:
    """Head rotation in degrees. yaw > 0: the subject turns to their left (face points to image right);
    pitch > 0: chin up; roll > 0: head tilts clockwise in the image."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0


@dataclass(frozen=True)
class FaceSample:
    """A face image and the ground truth the renderer and evaluation need.

    keypoints: (5, 2) float32, image pixels, in glassfinder_runtime.geometry.KEYPOINT_NAMES order
      (right_eye_outer, right_eye_inner, left_eye_inner, left_eye_outer, nose_bridge).
    eye_centres: (2, 2) float32, pupil centres (subject's right, left), image pixels.
    temples: (2, 2) float32, where the glasses' temples meet the side of the head at eye height
      (subject's right, left), image pixels; a temple whose side turns away is hidden behind the head.
    face_box: (4,) float32 x0, y0, x1, y1 of the face (brows to chin, ear to ear), image pixels.
    """

    image: Image.Image  # RGB
    keypoints: npt.NDArray[np.float32]
    eye_centres: npt.NDArray[np.float32]
    temples: npt.NDArray[np.float32]
    face_box: npt.NDArray[np.float32]
    pose: HeadPose
    face_id: str  # stable id, e.g. "proc-000123" or "real-<sha1 prefix>"
    split: str  # "train", "val", "gallery" or "query": disjoint face sets
