"""Face-mesh stages (MediaPipe's `face_landmark.tflite`, 468 points) and what we read from them.

Chain (same names in the stubs):

    face_roi (from a detection) -> roi_matrix -> crop_face -> [model] -> decode_landmarks
    -> glasses_keypoints / eye_centres / temples / face_box / head_pose

`face_roi` follows MediaPipe's FaceDetectionFrontDetectionToRoi: the detection box centre, a
rotation that levels the line from the right-eye to the left-eye keypoint, the box scaled by
1.5 and squared on its long side. Landmarks come out in crop pixels (x, y, z; z is depth in
the same units, smaller = closer to the camera) and are mapped back to image pixels with the
inverse of the crop matrix (z scaled by the crop scale).

Mesh indices used (MediaPipe canonical face mesh; subject's right = image left):
- glasses keypoints (geometry.KEYPOINT_NAMES order): right eye outer corner 33, right eye inner
  corner 133, left eye inner corner 362, left eye outer corner 263, nose bridge 168 (between
  the eyes, where a frame's bridge sits);
- eye centres: mean of the 16-point eye contours (RIGHT_EYE_RING / LEFT_EYE_RING);
- temples: the face-oval contour (TEMPLE chains, forehead to jaw) interpolated at the height of
  the eye line, measured along the face's own vertical axis (so it works on tilted heads);
- face box: x from the whole mesh, y from the top of the brows to the chin (152);
- head pose: face axes from the 3D mesh: x = outer eye corners (33 -> 263),
  y = forehead (10) -> chin (152), orthogonalised.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from glassfinder_runtime.geometry import ReducedImages, apply_affine, invert_affine, warp_affine_prefiltered

RIGHT_EYE_RING: tuple[int, ...] = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE_RING: tuple[int, ...] = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
# Face-oval contour on each side, from the forehead down to the jaw.
RIGHT_TEMPLE_CHAIN: tuple[int, ...] = (103, 54, 21, 162, 127, 234, 93, 132, 58)
LEFT_TEMPLE_CHAIN: tuple[int, ...] = (332, 284, 251, 389, 356, 454, 323, 361, 288)
BROWS: tuple[int, ...] = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
FOREHEAD, CHIN = 10, 152


@dataclass(frozen=True)
class MeshOptions:
    """How the runtime crops the face for the mesh model and reads the mesh; in the manifest."""

    input_size: int = 192  # square crop fed to the model, pixels
    num_landmarks: int = 468
    roi_scale: float = 1.5  # face crop side = roi_scale * long side of the detection box
    presence_threshold: float = 0.5  # sigmoid(face_flag) below this: "no face in the crop"
    # Mesh indices of geometry.KEYPOINT_NAMES (right eye outer/inner, left eye inner/outer, bridge).
    keypoint_indices: tuple[int, ...] = (33, 133, 362, 263, 168)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["keypoint_indices"] = list(self.keypoint_indices)
        d["right_eye_ring"], d["left_eye_ring"] = list(RIGHT_EYE_RING), list(LEFT_EYE_RING)
        d["right_temple_chain"], d["left_temple_chain"] = list(RIGHT_TEMPLE_CHAIN), list(LEFT_TEMPLE_CHAIN)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MeshOptions":
        names = {"input_size", "num_landmarks", "roi_scale", "presence_threshold", "keypoint_indices"}
        kw = {k: v for k, v in d.items() if k in names}
        kw["keypoint_indices"] = tuple(kw["keypoint_indices"])
        return cls(**kw)


@dataclass(frozen=True)
class FaceRoi:
    """A rotated square in image pixels: centre (x, y), side length, rotation in radians
    (the roi's x axis is (cos, sin) in the image, y down: positive = clockwise)."""

    cx: float
    cy: float
    side: float
    angle: float


def face_roi(box: npt.ArrayLike, right_eye: npt.ArrayLike, left_eye: npt.ArrayLike, scale: float = 1.5) -> FaceRoi:
    """MediaPipe's detection -> roi: box (4,) x0, y0, x1, y1 and the two detector eye keypoints
    (2,), all in image pixels."""
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64))
    r = np.asarray(right_eye, dtype=np.float64)
    l_ = np.asarray(left_eye, dtype=np.float64)
    angle = float(np.arctan2(l_[1] - r[1], l_[0] - r[0]))
    side = scale * max(x1 - x0, y1 - y0)
    return FaceRoi((x0 + x1) / 2, (y0 + y1) / 2, side, angle)


def roi_matrix(roi: FaceRoi, size: int) -> npt.NDArray[np.float64]:
    """(2, 3) map from image pixels to the size x size crop of the roi (level eyes)."""
    s = size / roi.side
    c, n = np.cos(roi.angle), np.sin(roi.angle)
    M = s * np.array([[c, n], [-n, c]])  # rotate by -angle, then scale
    t = np.array([size / 2, size / 2]) - M @ np.array([roi.cx, roi.cy])
    return np.concatenate([M, t[:, None]], axis=1)


def crop_face(image: Image.Image, A: npt.ArrayLike, size: int,
              reduced: ReducedImages | None = None) -> npt.NDArray[np.uint8]:
    """(size, size, 3) uint8 crop through the image->crop matrix A (outside the photo: black).
    reduced: geometry.ReducedImages of this image, shared by the warps of one search."""
    if image.mode != "RGB":
        image, reduced = image.convert("RGB"), None
    return np.asarray(warp_affine_prefiltered(image, A, (size, size), reduced), dtype=np.uint8)


def presence_score(face_flag: npt.ArrayLike) -> float:
    """sigmoid of the face-flag logit (one value; clipped to +-80 so exp cannot overflow)."""
    x = float(np.clip(np.asarray(face_flag, dtype=np.float64).reshape(-1)[0], -80.0, 80.0))
    return 1.0 / (1.0 + float(np.exp(-x)))


def decode_landmarks(raw: npt.ArrayLike, A: npt.ArrayLike, num_landmarks: int = 468) -> npt.NDArray[np.float32]:
    """Raw (1404,) or (1, 1404) crop-pixel output -> (468, 3) float32 image pixels (x, y, z).

    A is the (2, 3) image->crop matrix used for the crop; z is scaled like x and y.
    """
    pts = np.asarray(raw, dtype=np.float64).reshape(num_landmarks, 3)
    inv = invert_affine(A)
    xy = apply_affine(inv, pts[:, :2])
    z = pts[:, 2] * float(np.sqrt(abs(np.linalg.det(inv[:, :2]))))
    return np.concatenate([xy, z[:, None]], axis=1).astype(np.float32)


def glasses_keypoints(mesh: npt.ArrayLike, opts: MeshOptions = MeshOptions()) -> npt.NDArray[np.float32]:
    """(5, 2) float32 image pixels in geometry.KEYPOINT_NAMES order, from a (468, >=2) mesh."""
    m = np.asarray(mesh, dtype=np.float32)
    return m[list(opts.keypoint_indices), :2].copy()


def eye_centres(mesh: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(2, 2) float32: centres of the subject's right and left eye contours."""
    m = np.asarray(mesh, dtype=np.float32)
    return np.stack([m[list(RIGHT_EYE_RING), :2].mean(0), m[list(LEFT_EYE_RING), :2].mean(0)])


def _face_axes(mesh: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Unit 2D image directions of the face's x axis (right eye -> left eye) and y axis (down)."""
    ex = mesh[263, :2] - mesh[33, :2]
    ex = ex / max(np.linalg.norm(ex), 1e-9)
    return ex, np.array([-ex[1], ex[0]])


def _chain_at(mesh: npt.NDArray[np.float64], chain: tuple[int, ...], origin: npt.NDArray[np.float64],
              ey: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Point of the contour `chain` whose height along ey equals that of `origin` (interpolated;
    clamped to the chain's ends)."""
    pts = mesh[list(chain), :2]
    h = (pts - origin) @ ey  # increasing down the chain
    i = int(np.clip(np.searchsorted(h, 0.0), 1, len(chain) - 1))
    h0, h1 = h[i - 1], h[i]
    t = float(np.clip(-h0 / (h1 - h0), 0.0, 1.0)) if h1 != h0 else 0.0
    return pts[i - 1] + t * (pts[i] - pts[i - 1])


def temples(mesh: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(2, 2) float32: where the face contour crosses the eye line (subject's right, left)."""
    m = np.asarray(mesh, dtype=np.float64)
    _, ey = _face_axes(m)
    eyes = eye_centres(m).astype(np.float64)
    centre = eyes.mean(0)
    return np.stack([_chain_at(m, RIGHT_TEMPLE_CHAIN, centre, ey),
                     _chain_at(m, LEFT_TEMPLE_CHAIN, centre, ey)]).astype(np.float32)


def face_box(mesh: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(4,) float32 x0, y0, x1, y1: mesh extent left-right, brows to chin."""
    m = np.asarray(mesh, dtype=np.float32)
    return np.array([m[:, 0].min(), m[list(BROWS), 1].min(), m[:, 0].max(), m[CHIN, 1]], dtype=np.float32)


def head_pose(mesh: npt.ArrayLike) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from the 3D mesh (signs of glassfinder.face_types.HeadPose:
    yaw > 0 face points to image right, pitch > 0 chin up, roll > 0 clockwise tilt)."""
    m = np.asarray(mesh, dtype=np.float64)
    ex = m[263] - m[33]
    ex /= max(np.linalg.norm(ex), 1e-9)
    ey = m[CHIN] - m[FOREHEAD]
    ey -= (ey @ ex) * ex
    ey /= max(np.linalg.norm(ey), 1e-9)
    fwd = -np.cross(ex, ey)  # towards the camera (z decreases towards the camera)
    yaw = np.degrees(np.arctan2(fwd[0], -fwd[2]))
    pitch = np.degrees(np.arctan2(-fwd[1], np.hypot(fwd[0], fwd[2])))
    roll = np.degrees(np.arctan2(ex[1], ex[0]))
    return float(yaw), float(pitch), float(roll)


def roi_from_mesh(mesh: npt.ArrayLike, scale: float = 1.5) -> FaceRoi:
    """Landmarks -> roi (MediaPipe's tracking step; here a refinement pass on one photo): level on
    the outer eye corners (33 -> 263), the mesh's bounding box measured in that levelled frame
    (tight on tilted heads), scaled by `scale` and squared on its long side."""
    m = np.asarray(mesh, dtype=np.float64)[:, :2]
    ex, ey = _face_axes(m)
    u, v = m @ ex, m @ ey
    cu, cv = (u.min() + u.max()) / 2, (v.min() + v.max()) / 2
    c = cu * ex + cv * ey
    side = scale * max(u.max() - u.min(), v.max() - v.min())
    return FaceRoi(float(c[0]), float(c[1]), float(side), float(np.arctan2(ex[1], ex[0])))
