"""Numpy detection stages vs torch / loop references and the original model's golden outputs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glassfinder_runtime import detect as D
from glassfinder_runtime.geometry import apply_affine

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "mediapipe_golden.npz"

DECODE_ATOL = 1e-6  # numpy vs torch decode, normalised coordinates
SCORE_ATOL = 1e-6
NMS_ATOL = 1e-5  # weighted means, numpy vs loop reference
LETTERBOX_ATOL_PX = 1e-6  # matrix algebra only
MARKER_ATOL_PX = 1.0  # where a drawn marker lands after the resize
LETTERBOX_REDUCTION_TOL = 3.0  # 8-bit levels: box reduction + resize vs one antialiased resize, smooth image


def torch_decode(raw: np.ndarray, logits: np.ndarray, anchors: np.ndarray, scale: float = 128.0):
    """Reference: MediaPipe's TensorsToDetections (reverse_output_order) written with torch ops."""
    r, a = torch.from_numpy(raw).double(), torch.from_numpy(anchors).double()
    xc = r[:, 0] / scale * a[:, 2] + a[:, 0]
    yc = r[:, 1] / scale * a[:, 3] + a[:, 1]
    w, h = r[:, 2] / scale * a[:, 2], r[:, 3] / scale * a[:, 3]
    boxes = torch.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], 1)
    kp = r[:, 4:16].reshape(-1, 6, 2) / scale * a[:, None, 2:] + a[:, None, :2]
    scores = torch.sigmoid(torch.from_numpy(logits).double().reshape(-1).clamp(-100, 100))
    return boxes.numpy(), kp.numpy(), scores.numpy()


def loop_nms(boxes, kps, scores, min_score, thr, weighted=True):
    """Reference NMS written as plain loops (MediaPipe NonMaxSuppressionCalculator)."""
    def iou1(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    remaining = sorted([i for i in range(len(scores)) if scores[i] >= min_score], key=lambda i: -scores[i])
    out = []
    while remaining:
        best = remaining[0]
        group = [i for i in remaining if iou1(boxes[best], boxes[i]) > thr]
        remaining = [i for i in remaining if i not in group]
        if weighted:
            w = np.array([scores[i] for i in group], dtype=np.float64)
            box = sum(boxes[i] * wi for i, wi in zip(group, w)) / w.sum()
            kp = sum(kps[i] * wi for i, wi in zip(group, w)) / w.sum()
        else:
            box, kp = boxes[best], kps[best]
        out.append((box, kp, scores[best]))
    return out


def test_anchors_match_the_blazeface_layout():
    an = D.generate_anchors()
    assert an.shape == (896, 4)
    assert np.all(an[:, 2:] == 1.0)  # fixed_anchor_size
    # 16x16 map, 2 anchors per cell, then 8x8 map, 6 per cell; row-major cells.
    ref = [((x + 0.5) / 16, (y + 0.5) / 16) for y in range(16) for x in range(16) for _ in range(2)]
    ref += [((x + 0.5) / 8, (y + 0.5) / 8) for y in range(8) for x in range(8) for _ in range(6)]
    assert np.allclose(an[:, :2], np.asarray(ref), atol=0)


def test_anchor_options_round_trip():
    opts = D.AnchorOptions()
    assert D.AnchorOptions.from_dict(opts.to_dict()) == opts
    dec = D.DecodeOptions()
    assert D.DecodeOptions.from_dict(dec.to_dict()) == dec
    assert dec.to_dict()["box_format"] == "xywh_center" and dec.keypoint_names[0] == "right_eye"


def test_decode_matches_torch_reference_on_golden_outputs():
    g = np.load(GOLDEN)
    an = D.generate_anchors()
    for raw, logits in zip(g["detector_regressors"], g["detector_classificators"]):
        det = D.decode_boxes(raw, logits, an)
        boxes, kp, scores = torch_decode(raw, logits, an)
        assert np.abs(det.boxes - boxes).max() < DECODE_ATOL
        assert np.abs(det.keypoints - kp).max() < DECODE_ATOL
        assert np.abs(det.scores - scores).max() < SCORE_ATOL


def test_decode_rejects_bad_shapes():
    an = D.generate_anchors()
    with pytest.raises(ValueError):
        D.decode_boxes(np.zeros((896, 12)), np.zeros(896), an)


@pytest.mark.parametrize("algorithm", [D.NmsAlgorithm.WEIGHTED, D.NmsAlgorithm.HARD])
def test_nms_matches_loop_reference(algorithm):
    rng = np.random.default_rng(0)
    n = 60
    centres = rng.uniform(0.2, 0.8, (n, 2))
    # clusters: a few true faces with jittered copies
    centres[20:] = centres[rng.integers(0, 5, n - 20)] + rng.normal(0, 0.01, (n - 20, 2))
    wh = rng.uniform(0.1, 0.3, (n, 1))
    boxes = np.concatenate([centres - wh / 2, centres + wh / 2], 1).astype(np.float32)
    kps = rng.uniform(0, 1, (n, 6, 2)).astype(np.float32)
    scores = rng.uniform(0.3, 1.0, n).astype(np.float32)
    got = D.weighted_nms(D.Detections(boxes, kps, scores), 0.5, 0.3, algorithm)
    ref = loop_nms(boxes, kps, scores, 0.5, 0.3, weighted=algorithm is D.NmsAlgorithm.WEIGHTED)
    assert len(got) == len(ref) > 1
    for j, (box, kp, score) in enumerate(ref):
        assert np.abs(got.boxes[j] - box).max() < NMS_ATOL
        assert np.abs(got.keypoints[j] - kp).max() < NMS_ATOL
        assert got.scores[j] == score
    assert np.all(np.diff(got.scores) <= 0)


def test_nms_keeps_disjoint_and_merges_duplicates():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]], np.float32)
    det = D.Detections(boxes, np.zeros((3, 6, 2), np.float32), np.array([0.9, 0.7, 0.8], np.float32))
    out = D.weighted_nms(det, 0.5, 0.3)
    assert len(out) == 2 and out.scores.tolist() == pytest.approx([0.9, 0.8])
    assert len(D.weighted_nms(det, 0.95, 0.3)) == 0


def test_letterbox_matrix_and_padding():
    img = Image.new("RGB", (400, 200), (255, 255, 255))
    img.putpixel((300, 50), (255, 0, 0))
    big = Image.new("RGB", (400, 200), (255, 255, 255))
    big.paste((255, 0, 0), (296, 46, 304, 54))  # 8x8 red square centred on (300, 50)
    x, A = D.letterbox(big, 128)
    assert x.shape == (128, 128, 3) and x.dtype == np.uint8
    # 400x200 -> 128x64, centred vertically: rows 0..31 and 96..127 are black padding
    assert np.all(x[:32] == 0) and np.all(x[96:] == 0) and np.all(x[40:90, :20] == 255)
    assert np.allclose(A, [[0.32, 0, 0], [0, 0.32, 32]], atol=LETTERBOX_ATOL_PX)
    red = np.argwhere((x[..., 0] > 200) & (x[..., 1] < 150))
    centre = red.mean(0)[::-1] + 0.5  # (x, y) continuous
    assert np.abs(centre - apply_affine(A, [[300, 50]])[0]).max() < MARKER_ATOL_PX


def test_project_inverts_the_letterbox():
    _, A = D.letterbox(Image.new("RGB", (300, 500)), 128)
    pts = np.array([[10.0, 20.0], [290.0, 480.0]])
    norm = apply_affine(A, pts) / 128
    det = D.Detections(norm.reshape(1, 4).astype(np.float32), np.tile(norm, (3, 1)).reshape(1, 6, 2).astype(np.float32),
                       np.array([0.9], np.float32))
    back = D.project(det, A, 128)
    assert np.abs(back.boxes[0] - pts.reshape(-1)).max() < 1e-3
    assert np.abs(back.keypoints[0, :2] - pts).max() < 1e-3


def test_postprocess_finds_the_golden_face():
    g = np.load(GOLDEN)
    img = Image.fromarray(g["detector_images"][0])
    _, A = D.letterbox(img, 128)
    det = D.postprocess(g["detector_regressors"][0], g["detector_classificators"][0], A)
    assert len(det) == 1 and D.most_prominent(det) == 0
    x0, y0, x1, y1 = det.boxes[0]
    # the cartoon face (about 75 x 95 px) is drawn around the centre of the 128x128 image
    assert abs((x0 + x1) / 2 - 64) < 12 and abs((y0 + y1) / 2 - 66) < 12 and 50 < x1 - x0 < 110
    re, le = det.keypoints[0, D.FaceKeypoint.RIGHT_EYE], det.keypoints[0, D.FaceKeypoint.LEFT_EYE]
    assert re[0] < le[0] and abs(re[1] - le[1]) < 3  # subject's right eye on the image's left; level
    assert x0 < re[0] and le[0] < x1 and y0 < re[1] < y1


def test_most_prominent_prefers_the_largest():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 3, 3], [5, 5, 7, 7]], np.float32)
    det = D.Detections(boxes, np.zeros((3, 6, 2), np.float32), np.array([0.99, 0.6, 0.9], np.float32))
    assert D.most_prominent(det) == 1
    assert D.most_prominent(det.take([])) == -1


def test_runtime_never_imports_torch():
    code = ("import sys, glassfinder_runtime.detect, glassfinder_runtime.landmarks, glassfinder_runtime.align; "
            "bad = [m for m in ('torch', 'tensorflow', 'glassfinder') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tile_windows_cover_the_photo_with_half_overlap():
    for w, h in ((500, 375), (375, 500), (640, 640), (100, 30)):
        t = D.tile_windows(w, h, rows=2)
        side = t[0, 2]
        assert side == round(2 * min(w, h) / 3) and np.all(t[:, 2] == side)
        assert t[:, 0].min() == 0 and t[:, 1].min() == 0
        assert (t[:, 0] + side).max() == w and (t[:, 1] + side).max() == h  # reaches both far edges
        for starts in (np.unique(t[:, 0]), np.unique(t[:, 1])):
            assert np.all(np.diff(starts) <= side / 2 + 1)  # neighbours overlap by >= half a tile


def test_merge_combines_passes_and_orders_by_prominence():
    kp = np.zeros((1, 6, 2), np.float32)
    whole = D.Detections(np.array([[10, 10, 50, 50]], np.float32), kp, np.array([0.6], np.float32))
    tile = D.Detections(np.array([[12, 10, 52, 50], [200, 200, 300, 300]], np.float32), np.zeros((2, 6, 2), np.float32),
                        np.array([0.9, 0.7], np.float32))
    out = D.merge([whole, tile], 0.3)
    assert len(out) == 2
    assert np.allclose(out.boxes[0], (np.array([10, 10, 50, 50]) * 0.6 + np.array([12, 10, 52, 50]) * 0.9) / 1.5)
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])
    assert D.by_prominence(out).tolist() == [1, 0]  # the 100-px box first


@pytest.mark.parametrize("mean,std", [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                                      ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                      ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))])
def test_normalize_lookup_gives_the_bits_of_the_arithmetic(mean, std):
    """normalize looks uint8 pixels up in a table; it must be the float32 arithmetic, bit for bit
    (the golden vectors and the stubs compute it per pixel)."""
    px = np.random.default_rng(0).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    px[0, :3] = [(0, 0, 0), (255, 255, 255), (1, 128, 254)]
    expected = (px.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    got = D.normalize(px, mean, std)
    assert got.dtype == np.float32 and got.shape == px.shape
    np.testing.assert_array_equal(got, expected)
    table = D.normalize_table(mean, std)
    np.testing.assert_array_equal(D.lookup_pixels(px, table, channels_first=True), expected.transpose(2, 0, 1))
    # non-uint8 input takes the arithmetic itself
    np.testing.assert_array_equal(D.normalize(px.astype(np.float64), mean, std), expected)


def test_lookup_pixels_rejects_a_table_for_other_channels():
    with pytest.raises(ValueError, match="channels"):
        D.lookup_pixels(np.zeros((4, 4, 3), np.uint8), np.zeros((1, 256), np.float32))


@pytest.mark.parametrize("size", [(400, 200), (200, 400), (301, 299), (256, 256), (64, 64)])
def test_letterbox_pixels_are_the_pasted_canvas(size):
    """The padded input is built in numpy; it must equal Pillow's resize pasted on a black canvas."""
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    x, A = D.letterbox(img, 128)
    nw, nh = round(A[0, 0] * size[0]), round(A[1, 1] * size[1])
    canvas = Image.new("RGB", (128, 128))
    resized = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=D.LETTERBOX_REDUCING_GAP)
    canvas.paste(resized, (int(A[0, 2]), int(A[1, 2])))
    assert x.shape == (128, 128, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, np.asarray(canvas))


def test_postprocess_decodes_only_what_nms_keeps_and_gets_the_full_chain():
    """postprocess skips the anchors below min_score before decoding; the detections must be those of
    decode_boxes -> weighted_nms -> project over all 896 anchors, exactly."""
    rng = np.random.default_rng(5)
    spec = D.DetectorSpec()
    anchors = D.generate_anchors(spec.anchors)
    raw = rng.normal(0.0, 4.0, size=(896, 16)).astype(np.float32)
    raw[:, 2:4] = np.abs(raw[:, 2:4]) + 20.0  # widths and heights in input pixels
    logits = rng.normal(-6.0, 4.0, size=(896, 1)).astype(np.float32)
    logits[[10, 11, 12, 400, 401, 895]] = [[3.0], [0.2], [50.0], [2.0], [1e-7], [0.0]]  # overlapping groups, ties at 0.5
    _, A = D.letterbox(Image.new("RGB", (640, 480)), 128)
    full = D.weighted_nms(D.decode_boxes(raw, logits, anchors), spec.decode.min_score, spec.decode.nms_iou)
    expected = D.project(full, A, 128)
    got = D.postprocess(raw, logits, A, spec, anchors)
    assert len(got) == len(expected) > 3
    for name in ("boxes", "keypoints", "scores"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    none = D.postprocess(raw, np.full((896, 1), -20.0, np.float32), A, spec, anchors)
    assert len(none) == 0 and none.boxes.shape == (0, 4) and none.keypoints.shape == (0, 6, 2)


def test_nms_ends_on_degenerate_boxes():
    """A zero-area box has IoU 0 even with itself; it must still form its own group (no endless loop)."""
    boxes = np.array([[0.2, 0.2, 0.2, 0.5], [0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.3, 0.3]], np.float32)
    det = D.Detections(boxes, np.zeros((3, 6, 2), np.float32), np.array([0.9, 0.8, 0.7], np.float32))
    out = D.weighted_nms(det, 0.5, 0.3)
    assert len(out) == 3
    np.testing.assert_array_equal(out.boxes, boxes)


def test_letterbox_reduction_keeps_the_picture():
    """The box reduction before the resize changes pixels by rounding, not the picture: a smooth
    3x shrink stays within LETTERBOX_REDUCTION_TOL levels of the one-step antialiased resize."""
    y, x = np.mgrid[0:384, 0:384]
    smooth = np.stack([x * 255 / 383, y * 255 / 383, 127.5 + 120 * np.sin((x + y) / 40.0)], -1)
    img = Image.fromarray(np.round(smooth).astype(np.uint8))
    got, _ = D.letterbox(img, 128)
    one_step = np.asarray(img.resize((128, 128), Image.Resampling.BILINEAR), np.float32)
    assert np.abs(got.astype(np.float32) - one_step).max() <= LETTERBOX_REDUCTION_TOL
