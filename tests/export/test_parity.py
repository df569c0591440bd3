"""Parity metrics against loop references, and the gate's verdict and messages (pure numpy, fast)."""
import json

import numpy as np
import pytest
from PIL import Image

from glassfinder_export import parity
from glassfinder_export.parity import ParityError, ParityThresholds, check_parity, enforce_parity

RTOL = 1e-12  # float64 metrics vs loop references


def test_cosine_matches_loop_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(50, 16))
    ref = [float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y))) for x, y in zip(a, b)]
    np.testing.assert_allclose(parity.cosine_similarity(a, b), ref, rtol=RTOL)
    stats = parity.cosine_stats(a, b)
    assert stats["cosine_median"] == pytest.approx(np.median(ref))
    assert stats["cosine_p1"] == pytest.approx(np.percentile(ref, 1))
    assert stats["cosine_min"] == pytest.approx(min(ref))


def test_cosine_of_identical_and_opposite_vectors():
    a = np.random.default_rng(1).normal(size=(5, 8))
    np.testing.assert_allclose(parity.cosine_similarity(a, a), 1.0, rtol=1e-12)
    np.testing.assert_allclose(parity.cosine_similarity(a, -a), -1.0, rtol=1e-12)
    assert parity.cosine_similarity(np.zeros((1, 8)), a[:1])[0] == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="equal shape"):
        parity.cosine_similarity(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError):
        parity.box_iou(np.ones((0, 4)), np.ones((0, 4)))


def test_box_iou_hand_computed():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], float)
    np.testing.assert_allclose(parity.box_iou(a, b), [1.0, 50 / 150, 0.0, 0.0])


def test_keypoint_and_landmark_errors():
    ref = np.zeros((2, 3, 2))
    ref[:, 0] = [0, 0]
    ref[:, 1] = [10, 0]  # the two "eyes" 10 px apart
    test = ref.copy()
    test[0, 2] += [3, 4]  # one point of item 0 moved by 5 px
    np.testing.assert_allclose(parity.keypoint_error(ref, test, np.array([1.0, 2.0])), [5 / 3, 0.0])
    pct = parity.landmark_error_pct_iod(ref, test, right_eye=[0], left_eye=[1])
    np.testing.assert_allclose(pct, [100 * (5 / 3) / 10, 0.0])
    with pytest.raises(ValueError, match="positive"):
        parity.keypoint_error(ref, test, np.array([1.0, 0.0]))


def test_gate_decisions_use_the_none_class_and_threshold():
    # classes: eyeglasses, sunglasses, none (none last, as in glassfinder.models.gate)
    p = np.array([[0.6, 0.1, 0.3], [0.2, 0.3, 0.5], [0.1, 0.5, 0.4]])
    np.testing.assert_array_equal(parity.gate_decisions(p, 0.6), [0, 2, 1])
    np.testing.assert_array_equal(parity.gate_decisions(p, 0.45), [0, 1, 1])
    q = p.copy()
    q[1] = [0.2, 0.31, 0.49]  # crosses 0.5: decision flips
    assert parity.gate_metrics(p, q, 0.51)["gate_agreement"] == pytest.approx(2 / 3)
    assert parity.decision_agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75


def test_retrieval_agreement():
    ref = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    test = np.array([[1, 3, 2, 9], [6, 5, 7, -1]])
    assert parity.top1_agreement(ref, test) == 0.5
    assert parity.topk_overlap(ref, test, k=4) == pytest.approx((3 / 4 + 3 / 4) / 2)
    m = parity.retrieval_metrics(np.tile(np.arange(10), (3, 1)), np.tile(np.arange(10), (3, 1)))
    assert m == {"top1_agreement": 1.0, "top10_overlap": 1.0}


def _fake_measured(p1: float) -> dict:
    return {"embedder": {"tflite_int8": {"cosine_median": 0.999, "cosine_p1": p1, "max_abs_diff": 0.01}},
            "gate": {"tflite_int8": {"gate_agreement": 1.0}}}


def test_check_parity_passes_good_numbers():
    report = check_parity(_fake_measured(0.99))
    assert report["passed"] and report["failures"] == []
    entry = report["models"]["embedder"]["tflite_int8"]
    assert entry["passed"] and {c["metric"] for c in entry["checks"]} == {"cosine_median", "cosine_p1"}
    enforce_parity(report)  # no exception


def test_check_parity_fails_with_model_target_metric_and_threshold():
    report = check_parity(_fake_measured(0.962))
    assert not report["passed"]
    assert report["failures"] == ["embedder: tflite_int8 embedding cosine p1 0.962 < 0.98 (threshold)"]
    assert report["models"]["gate"]["tflite_int8"]["passed"]
    with pytest.raises(ParityError, match=r"embedder: tflite_int8 embedding cosine p1 0.962 < 0.98 \(threshold\)"):
        enforce_parity(report)


def test_lower_is_better_metrics_and_custom_thresholds():
    measured = {"aligner": {"tflite_int8": {"landmark_error_median_pct_iod": 1.5}}}
    assert check_parity(measured)["failures"] == [
        "aligner: tflite_int8 landmark error median (% IOD) 1.5 > 1 (threshold)"]
    assert check_parity(measured, ParityThresholds(landmark_error_median_pct_iod=2.0))["passed"]


def test_missing_required_metric_and_nan_fail():
    report = check_parity({"detector": {"tflite_int8": {"box_iou_median": 0.99}}})
    assert report["failures"] == [
        "detector: tflite_int8 keypoint error median (box fraction) was not measured (required)"]
    report = check_parity({"embedder": {"onnx": {"cosine_median": float("nan"), "cosine_p1": 1.0}}})
    assert not report["passed"]


def test_skipped_targets_are_listed_not_passed():
    report = check_parity({"embedder": {"coreml_fp16": {"skipped": "macOS only"}}})
    assert report["passed"] and report["skipped"] == ["embedder: coreml_fp16 not measured (macOS only)"]
    assert report["models"]["embedder"]["coreml_fp16"]["passed"] is None


def test_writers(tmp_path):
    rng = np.random.default_rng(0)
    measured = _fake_measured(0.962)
    measured["embedder"]["tflite_int8"]["remedies"] = ["per-channel weight scales"]
    report = check_parity(measured)
    cos = {"tflite_int8": 1 - rng.exponential(0.002, 200), "onnx_int8_nncf": 1 - rng.exponential(0.001, 200)}
    paths = parity.write_parity(report, tmp_path, cos)
    loaded = json.loads(paths["json"].read_text())
    assert loaded["passed"] is False and loaded["failures"] == report["failures"]
    assert loaded["models"]["embedder"]["tflite_int8"]["remedies"] == ["per-channel weight scales"]
    md = paths["md"].read_text()
    assert "**FAILED**" in md and report["failures"][0] in md and "parity_cosine.png" in md
    assert "per-channel weight scales" in md
    img = Image.open(paths["png"])
    assert img.size == (640, 360)
    # something was drawn in each series' colour
    px = np.asarray(img.convert("RGB")).reshape(-1, 3)
    for colour in parity._COLOURS[:2]:
        assert (px == colour).all(1).any()
