"""The torch BlazeFace with the committed weights vs the ORIGINAL face_detection_short_range.tflite.

The golden fixture (tests/fixtures/mediapipe_golden.npz) holds LiteRT outputs of the original
file on synthetic inputs, written by scripts/convert_mediapipe.py; no mediapipe wheel needed.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from glassfinder.models.detector import (
    DEFAULT_DETECTOR_WEIGHTS,
    DetectorConfig,
    build_detector,
    load_detector,
    same_pad,
)
from glassfinder_runtime import detect as D

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "mediapipe_golden.npz"

# torch float32 vs LiteRT float32 on identical float16-valued weights: summation order only
# (measured 6e-5 when converting). Regressors are in input pixels, logits O(10).
RAW_ATOL = 1e-3
# Decoded best detection, torch vs original: box IoU and keypoint distance in input pixels.
BOX_IOU_MIN = 0.999
KEYPOINT_ATOL_PX = 0.05
# ONNX (onnxruntime) vs torch, same model.
ONNX_ATOL = 1e-3


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


@pytest.fixture(scope="module")
def detector():
    return load_detector()


def run(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cfg = model.cfg
    x = np.stack([D.normalize(im, cfg.mean, cfg.std) for im in images])
    with torch.no_grad():
        reg, cls = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    return reg.numpy(), cls.numpy()


def test_raw_outputs_match_original_tflite(golden, detector):
    reg, cls = run(detector, golden["detector_images"])
    assert reg.shape == golden["detector_regressors"].shape
    assert np.abs(reg - golden["detector_regressors"]).max() < RAW_ATOL
    assert np.abs(cls - golden["detector_classificators"]).max() < RAW_ATOL


def test_decoded_detections_match_original_tflite(golden, detector):
    reg, cls = run(detector, golden["detector_images"])
    anchors = D.generate_anchors()
    opts = D.DecodeOptions()
    found = 0
    for i in range(len(reg)):
        ours = D.weighted_nms(D.decode_boxes(reg[i], cls[i], anchors), opts.min_score, opts.nms_iou)
        ref = D.weighted_nms(D.decode_boxes(golden["detector_regressors"][i], golden["detector_classificators"][i],
                                            anchors), opts.min_score, opts.nms_iou)
        assert len(ours) == len(ref)
        for j in range(len(ref)):
            assert D.iou(ours.boxes[j], ref.boxes[j:j + 1])[0] >= BOX_IOU_MIN
            assert np.abs(ours.keypoints[j] - ref.keypoints[j]).max() * 128 < KEYPOINT_ATOL_PX
        found += len(ref)
    assert found >= 2, "the synthetic faces of the fixture should be detected by the original model"


def test_output_contract_and_config():
    cfg = DetectorConfig()
    assert cfg.num_anchors == 896 == len(D.generate_anchors(cfg.anchors))
    model = build_detector(cfg).eval()
    with torch.no_grad():
        reg, cls = model(torch.zeros(2, 3, cfg.input_size, cfg.input_size))
    assert reg.shape == (2, 896, cfg.decode.num_coords) and cls.shape == (2, 896, 1)
    assert DetectorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    contract = cfg.input_contract()
    assert contract["shape"] == [1, 3, 128, 128] and contract["mean"] == [0.5] * 3 and contract["std"] == [0.5] * 3


def test_tflite_same_padding_is_asymmetric():
    # TFLite SAME: out = ceil(in / stride), the odd pixel of padding goes after.
    assert same_pad(5, 2, 128) == (1, 2)
    assert same_pad(3, 2, 64) == (0, 1)
    assert same_pad(3, 1, 16) == (1, 1)


def test_weights_provenance(golden):
    side = json.loads(DEFAULT_DETECTOR_WEIGHTS.with_suffix(".json").read_text())
    assert side["source"]["sha256"] == str(golden["detector_sha256"])
    assert side["source"]["path_in_wheel"].endswith("face_detection_short_range.tflite")
    notice = (DEFAULT_DETECTOR_WEIGHTS.parent / "LICENSE-mediapipe.md").read_text()
    assert "Apache License, Version 2.0" in notice and side["source"]["sha256"] in notice


# The legacy exporter's deprecation notice and its constant-folding notes on the Pad ops.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_exports_to_onnx_with_static_shapes(detector):
    import onnxruntime as ort

    x = torch.rand(1, 3, 128, 128) * 2 - 1
    buf = io.BytesIO()
    torch.onnx.export(detector, (x,), buf, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["regressors", "classificators"])
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    reg, cls = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref_reg, ref_cls = detector(x)
    assert np.abs(reg - ref_reg.numpy()).max() < ONNX_ATOL
    assert np.abs(cls - ref_cls.numpy()).max() < ONNX_ATOL
