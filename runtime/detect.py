"""Face detection stages (BlazeFace short-range, MediaPipe's `face_detection_short_range.tflite`).

The chain, one pure function per stage (same names in the Kotlin and Swift stubs):

    letterbox -> [model] -> generate_anchors (once) -> decode_boxes -> weighted_nms -> project

It follows MediaPipe's `face_detection.pbtxt` (ImageToTensor keep_aspect_ratio + BORDER_ZERO,
SsdAnchors, TensorsToDetections with reverse_output_order, NonMaxSuppression WEIGHTED,
DetectionProjection). Every option lives in `AnchorOptions` / `DecodeOptions`, which the
manifest stores and reads back with `to_dict` / `from_dict`.

Coordinates: decoded boxes and keypoints are normalised to the model input ([0, 1] over the
128x128 letterboxed tensor); `project` maps them to image pixels with the inverse of the
letterbox matrix (conventions of `geometry`: continuous pixels, 2x3 matrices).
"""
from __future__ import annotations

import enum
import functools
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt
from PIL import Image

from glassfinder_runtime.errors import ImageError
from glassfinder_runtime.geometry import apply_affine, invert_affine


class BoxFormat(str, enum.Enum):
    """Layout of the first four regressor values of each anchor."""

    # (x_center, y_center, width, height): MediaPipe's `reverse_output_order: true`.
    XYWH_CENTER = "xywh_center"
    # (y_center, x_center, height, width): MediaPipe's default order (unused by BlazeFace).
    YXHW_CENTER = "yxhw_center"


class FaceKeypoint(enum.IntEnum):
    """The six detector keypoints, in regressor order (subject's right/left)."""

    RIGHT_EYE = 0
    LEFT_EYE = 1
    NOSE_TIP = 2
    MOUTH_CENTRE = 3
    RIGHT_EAR_TRAGION = 4
    LEFT_EAR_TRAGION = 5


DETECTOR_KEYPOINT_NAMES: tuple[str, ...] = tuple(k.name.lower() for k in FaceKeypoint)


class NmsAlgorithm(str, enum.Enum):
    # Boxes overlapping the best one are averaged, weighted by score (MediaPipe's WEIGHTED).
    WEIGHTED = "weighted"
    # Boxes overlapping the best one are dropped (classic NMS).
    HARD = "hard"


@dataclass(frozen=True)
class AnchorOptions:
    """SsdAnchorsCalculator options of face_detection_short_range (896 anchors)."""

    input_size: int = 128  # square model input, pixels
    num_layers: int = 4  # SSD layers; layers with equal strides share one feature map
    strides: tuple[int, ...] = (8, 16, 16, 16)  # feature-map stride of each layer
    min_scale: float = 0.1484375  # anchor scale of the first layer
    max_scale: float = 0.75  # anchor scale of the last layer
    anchor_offset: float = 0.5  # anchor centre inside its cell, in cells (x and y)
    aspect_ratios: tuple[float, ...] = (1.0,)  # one anchor per ratio per layer
    interpolated_scale_aspect_ratio: float = 1.0  # > 0 adds one anchor between two scales
    fixed_anchor_size: bool = True  # anchors are 1x1 (boxes are regressed absolutely)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AnchorOptions":
        d = dict(d)
        for k in ("strides", "aspect_ratios"):
            d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class DecodeOptions:
    """TensorsToDetections + NonMaxSuppression options of face_detection_short_range."""

    num_coords: int = 16  # values per anchor: 4 box + 2 * num_keypoints
    box_format: BoxFormat = BoxFormat.XYWH_CENTER
    num_keypoints: int = 6  # FaceKeypoint order
    keypoint_names: tuple[str, ...] = DETECTOR_KEYPOINT_NAMES
    scale: float = 128.0  # x/y/w/h scale: regressors are in input pixels
    score_clipping: float = 100.0  # logits are clipped to [-c, c] before the sigmoid
    min_score: float = 0.5  # detections below this (after sigmoid) are dropped
    nms_algorithm: NmsAlgorithm = NmsAlgorithm.WEIGHTED
    nms_iou: float = 0.3  # boxes with IoU above this are merged (weighted) or dropped (hard)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box_format"] = self.box_format.value
        d["nms_algorithm"] = self.nms_algorithm.value
        d["keypoint_names"] = list(self.keypoint_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DecodeOptions":
        d = dict(d)
        d["box_format"] = BoxFormat(d["box_format"])
        d["nms_algorithm"] = NmsAlgorithm(d["nms_algorithm"])
        d["keypoint_names"] = tuple(d["keypoint_names"])
        return cls(**d)


@dataclass(frozen=True)
class Detections:
    """n face detections.

    boxes: (n, 4) float32 x0, y0, x1, y1; keypoints: (n, k, 2) float32 (x, y) in FaceKeypoint
    order; scores: (n,) float32 in [0, 1]. Units depend on the stage: normalised model input
    after `decode_boxes`/`weighted_nms`, image pixels after `project`.
    """

    boxes: npt.NDArray[np.float32]
    keypoints: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, idx: npt.ArrayLike) -> "Detections":
        idx = np.asarray(idx, dtype=np.int64)
        return Detections(self.boxes[idx], self.keypoints[idx], self.scores[idx])

    def areas(self) -> npt.NDArray[np.float32]:
        """(n,) box areas."""
        wh = np.clip(self.boxes[:, 2:] - self.boxes[:, :2], 0.0, None)
        return (wh[:, 0] * wh[:, 1]).astype(np.float32)


# Pillow's two-step resize: a box reduce() by an integer factor, then the antialiased bilinear resize
# of at most this ratio: 0.65 -> 0.14 ms for a 384-px photo and 16 -> 5 ms for a 2,400-px one. With
# it (and the supersampled warps), the same faces were found on 300 synthetic scenes and 49 real
# photos, keypoint error unchanged (5.87 vs 5.88 % of the eye distance).
LETTERBOX_REDUCING_GAP = 1.0


def letterbox(image: Image.Image, size: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """Fit an RGB image into a size x size square, centred, padded with black (BORDER_ZERO).

    Returns the (size, size, 3) uint8 input and the (2, 3) matrix mapping image pixels to input
    pixels (invert it with geometry.invert_affine, or use `project`). The resize is Pillow's
    antialiased bilinear after a box reduction (LETTERBOX_REDUCING_GAP); the matrix accounts for
    the rounding of the resized size.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    if w < 1 or h < 1:
        raise ImageError(f"image has an empty size {w}x{h}")
    s = size / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    resized = np.asarray(image.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=LETTERBOX_REDUCING_GAP),
                         dtype=np.uint8)
    A = np.array([[nw / w, 0.0, ox], [0.0, nh / h, oy]])
    if (nw, nh) == (size, size):  # square photo: nothing to pad
        return resized, A
    padded = np.zeros((size, size, 3), dtype=np.uint8)
    padded[oy:oy + nh, ox:ox + nw] = resized
    return padded, A


def _normalize_arithmetic(x: npt.ArrayLike, mean: tuple[float, ...], std: tuple[float, ...]) -> npt.NDArray[np.float32]:
    """The definition of `normalize`, evaluated per element: (x / 255 - mean) / std in float32."""
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    return (np.asarray(x).astype(np.float32) / 255.0 - m) / s


@functools.lru_cache(maxsize=32)
def normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> npt.NDArray[np.float32]:
    """(channels, 256) float32, read-only: `normalize` of every uint8 value of every channel.

    The normalisation is elementwise and per channel, so looking pixels up in this table gives the
    same float32 bits as the arithmetic (four full passes over the image) in one gather."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, len(mean)))
    table = np.ascontiguousarray(_normalize_arithmetic(values, mean, std).T)
    table.flags.writeable = False
    return table


def lookup_pixels(pixels: npt.NDArray[np.uint8], table: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """(h, w, c) uint8 -> (h, w, c), or (c, h, w) when channels_first, of table[channel, pixel].

    table: (c, 256), any dtype (the output's). One gather when every channel has the same row."""
    h, w, c = pixels.shape
    if table.shape != (c, 256):
        raise ValueError(f"pixels have {c} channels but the table is for {table.shape[0]} (shape {table.shape})")
    if not channels_first and (table == table[:1]).all():
        return np.take(table[0], pixels)
    out = np.empty((c, h, w) if channels_first else (h, w, c), dtype=table.dtype)
    for ch in range(c):
        np.take(table[ch], pixels[..., ch], out=out[ch] if channels_first else out[..., ch])
    return out


def normalize(x: npt.NDArray[np.uint8], mean: tuple[float, ...], std: tuple[float, ...]) -> npt.NDArray[np.float32]:
    """(h, w, 3) uint8 -> (h, w, 3) float32 (x / 255 - mean) / std (NHWC, as LiteRT wants it).

    uint8 pixels go through `normalize_table` (same bits, one pass); other dtypes are computed."""
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 3:
        return _normalize_arithmetic(x, mean, std)
    return lookup_pixels(x, normalize_table(tuple(map(float, mean)), tuple(map(float, std))))


def _calculate_scale(min_scale: float, max_scale: float, i: int, n: int) -> float:
    return (min_scale + max_scale) * 0.5 if n == 1 else min_scale + (max_scale - min_scale) * i / (n - 1)


def generate_anchors(opts: AnchorOptions = AnchorOptions()) -> npt.NDArray[np.float32]:
    """SSD anchors as (n, 4) float32 x_center, y_center, w, h, normalised to the input.

    A port of MediaPipe's SsdAnchorsCalculator: consecutive layers with the same stride share a
    feature map, so its cells get the anchors of all those layers (2 + 6 per cell here: 896).
    Order: feature map, then row, then column, then anchor, which is the regressor order.
    """
    anchors: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < opts.num_layers:
        scales: list[float] = []
        ratios: list[float] = []
        last = layer
        while last < opts.num_layers and opts.strides[last] == opts.strides[layer]:
            scale = _calculate_scale(opts.min_scale, opts.max_scale, last, len(opts.strides))
            for r in opts.aspect_ratios:
                ratios.append(r)
                scales.append(scale)
            if opts.interpolated_scale_aspect_ratio > 0.0:
                nxt = 1.0 if last == len(opts.strides) - 1 else _calculate_scale(
                    opts.min_scale, opts.max_scale, last + 1, len(opts.strides))
                scales.append(float(np.sqrt(scale * nxt)))
                ratios.append(opts.interpolated_scale_aspect_ratio)
            last += 1
        stride = opts.strides[layer]
        fm = int(np.ceil(opts.input_size / stride))
        for y in range(fm):
            for x in range(fm):
                for scale, ratio in zip(scales, ratios):
                    xc = (x + opts.anchor_offset) / fm
                    yc = (y + opts.anchor_offset) / fm
                    if opts.fixed_anchor_size:
                        anchors.append((xc, yc, 1.0, 1.0))
                    else:
                        r = float(np.sqrt(ratio))
                        anchors.append((xc, yc, scale * r, scale / r))
        layer = last
    return np.asarray(anchors, dtype=np.float32)


def decode_boxes(raw_boxes: npt.ArrayLike, raw_scores: npt.ArrayLike, anchors: npt.ArrayLike,
                 opts: DecodeOptions = DecodeOptions()) -> Detections:
    """Decode every anchor (no thresholding): raw_boxes (n, num_coords), raw_scores (n,) or (n, 1)
    logits, anchors (n, 4) -> Detections in normalised input coordinates (n of them)."""
    rb = np.ascontiguousarray(raw_boxes, dtype=np.float32)
    rs = np.ascontiguousarray(raw_scores, dtype=np.float32).reshape(-1)
    an = np.ascontiguousarray(anchors, dtype=np.float32)
    n = an.shape[0]
    if rb.shape != (n, opts.num_coords) or rs.shape != (n,) or an.shape != (n, 4):
        raise ValueError(f"decode_boxes: shapes {rb.shape}, {rs.shape}, {an.shape} do not match "
                         f"{n} anchors x {opts.num_coords} coords")
    if opts.box_format is BoxFormat.XYWH_CENTER:
        xc, yc, w, h = rb[:, 0], rb[:, 1], rb[:, 2], rb[:, 3]
    else:
        yc, xc, h, w = rb[:, 0], rb[:, 1], rb[:, 2], rb[:, 3]
    ax, ay, aw, ah = an[:, 0], an[:, 1], an[:, 2], an[:, 3]
    xc = xc / opts.scale * aw + ax
    yc = yc / opts.scale * ah + ay
    w = w / opts.scale * aw
    h = h / opts.scale * ah
    boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
    kp = rb[:, 4:4 + 2 * opts.num_keypoints].reshape(n, opts.num_keypoints, 2)
    kp = kp / opts.scale * an[:, None, 2:4] + an[:, None, 0:2]
    return Detections(boxes.astype(np.float32), kp.astype(np.float32), decode_scores(rs, opts))


def decode_scores(raw_scores: npt.ArrayLike, opts: DecodeOptions = DecodeOptions()) -> npt.NDArray[np.float32]:
    """(n,) logits -> (n,) float32 scores: sigmoid of the logits clipped to +-score_clipping."""
    rs = np.asarray(raw_scores, dtype=np.float32).reshape(-1)
    logits = np.clip(rs.astype(np.float64), -opts.score_clipping, opts.score_clipping)  # float64: exp(100)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def iou(box: npt.ArrayLike, boxes: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """IoU of one (4,) xyxy box with (n, 4) boxes -> (n,); 0 where they do not intersect."""
    b = np.asarray(box, dtype=np.float32)
    bs = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    lo = np.maximum(b[:2], bs[:, :2])
    hi = np.minimum(b[2:], bs[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=1)
    area = lambda x: np.prod(np.clip(x[..., 2:] - x[..., :2], 0.0, None), axis=-1)  # noqa: E731
    union = area(b) + area(bs) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def weighted_nms(det: Detections, min_score: float, iou_threshold: float,
                 algorithm: NmsAlgorithm = NmsAlgorithm.WEIGHTED) -> Detections:
    """MediaPipe's NonMaxSuppression: keep scores >= min_score, then, best first, gather the
    boxes whose IoU with the best one is > iou_threshold and replace them by their score-weighted
    mean box and keypoints (WEIGHTED) or by the best box alone (HARD). The score stays the best
    one's. Output sorted by score, descending."""
    keep = np.flatnonzero(det.scores >= min_score)
    order = keep[np.argsort(-det.scores[keep], kind="stable")]
    boxes, kps, scores = [], [], []
    while order.size:
        best = order[0]
        overlap = iou(det.boxes[best], det.boxes[order]) > iou_threshold
        overlap[0] = True  # the best box is in its own group even when degenerate (zero area: IoU 0)
        group, order = order[overlap], order[~overlap]
        if algorithm is NmsAlgorithm.WEIGHTED:
            w = det.scores[group].astype(np.float64)
            boxes.append((det.boxes[group] * w[:, None]).sum(0) / w.sum())
            kps.append((det.keypoints[group] * w[:, None, None]).sum(0) / w.sum())
        else:
            boxes.append(det.boxes[best])
            kps.append(det.keypoints[best])
        scores.append(det.scores[best])
    k = det.keypoints.shape[1]
    return Detections(np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                      np.asarray(kps, dtype=np.float32).reshape(-1, k, 2),
                      np.asarray(scores, dtype=np.float32).reshape(-1))


def project(det: Detections, letterbox_matrix: npt.ArrayLike, input_size: int) -> Detections:
    """Normalised input coordinates -> image pixels, through the inverse letterbox matrix.

    The letterbox is axis-aligned, so boxes stay boxes (corners map to corners).
    """
    inv = invert_affine(letterbox_matrix)
    n, k = len(det), det.keypoints.shape[1]
    corners = apply_affine(inv, det.boxes.reshape(-1, 2) * input_size).reshape(n, 4)
    kps = apply_affine(inv, det.keypoints.reshape(-1, 2) * input_size).reshape(n, k, 2)
    return Detections(corners.astype(np.float32), kps.astype(np.float32), det.scores.copy())


def tile_windows(width: int, height: int, rows: int = 2) -> npt.NDArray[np.int64]:
    """Overlapping square tiles for faces too small for the 128-px whole-image pass: (k, 3) int64
    x0, y0, side. side = 2 * short side / (rows + 1), so `rows` tiles overlap by half along the
    short side; along the long side, as many as keep that overlap."""
    side = max(1, round(2 * min(width, height) / (rows + 1)))

    def starts(length: int) -> npt.NDArray[np.int64]:
        n = 1 if length <= side else int(np.ceil((length - side) / (side / 2))) + 1
        return np.linspace(0, max(length - side, 0), n).round().astype(np.int64)

    xs, ys = starts(width), starts(height)
    return np.array([(x, y, side) for y in ys for x in xs], dtype=np.int64)


def merge(parts: list[Detections], iou_threshold: float,
          algorithm: NmsAlgorithm = NmsAlgorithm.WEIGHTED) -> Detections:
    """Detections of several passes (same units, e.g. image pixels) -> one set, overlaps merged."""
    if not parts:
        raise ValueError("merge needs at least one Detections")
    k = parts[0].keypoints.shape[1]
    cat = Detections(np.concatenate([p.boxes for p in parts]).reshape(-1, 4),
                     np.concatenate([p.keypoints for p in parts]).reshape(-1, k, 2),
                     np.concatenate([p.scores for p in parts]).reshape(-1))
    return weighted_nms(cat, -np.inf, iou_threshold, algorithm)


def by_prominence(det: Detections) -> npt.NDArray[np.int64]:
    """Indices from the largest face to the smallest (ties: higher score first)."""
    return np.lexsort((-det.scores, -det.areas())).astype(np.int64)


def most_prominent(det: Detections) -> int:
    """Index of the largest face (ties: higher score); -1 when there is none."""
    return int(by_prominence(det)[0]) if len(det) else -1


@dataclass(frozen=True)
class DetectorSpec:
    """What the runtime needs to run the detector file: input contract + decode options."""

    input_size: int = 128
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # on pixels / 255, RGB
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    anchors: AnchorOptions = field(default_factory=AnchorOptions)
    decode: DecodeOptions = field(default_factory=DecodeOptions)


def postprocess(raw_boxes: npt.ArrayLike, raw_scores: npt.ArrayLike, letterbox_matrix: npt.ArrayLike,
                spec: DetectorSpec = DetectorSpec(), anchors: npt.ArrayLike | None = None) -> Detections:
    """decode_boxes -> weighted_nms -> project, for one image. raw_boxes (896, 16) or (1, 896, 16)."""
    an = np.asarray(generate_anchors(spec.anchors) if anchors is None else anchors, dtype=np.float32)
    rb = np.asarray(raw_boxes, dtype=np.float32).reshape(-1, spec.decode.num_coords)
    rs = np.asarray(raw_scores, dtype=np.float32).reshape(-1)
    if rb.shape[0] != rs.shape[0] or an.shape[0] != rs.shape[0]:
        raise ValueError(f"postprocess: {rb.shape[0]} boxes, {rs.shape[0]} scores and {an.shape[0]} anchors differ")
    # Only the anchors that weighted_nms would keep are decoded (about 10 of 896): decoding is per
    # anchor and the kept ones stay in anchor order, so the detections are the same.
    keep = np.flatnonzero(decode_scores(rs, spec.decode) >= spec.decode.min_score)
    det = decode_boxes(rb[keep], rs[keep], an[keep], spec.decode)
    det = weighted_nms(det, spec.decode.min_score, spec.decode.nms_iou, spec.decode.nms_algorithm)
    return project(det, letterbox_matrix, spec.input_size)
