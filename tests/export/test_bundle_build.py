"""Bundle assembly decisions that need no conversion (the full build runs in scripts/make_tiny_bundle.py
and is exercised through the committed tests/fixtures/tiny_bundle)."""
import json
from pathlib import Path

import pytest

from glassfinder_export.bundle import SHIP_PREFERENCE, choose_shipped
from glassfinder_export.bundle_parity import export_thresholds
from glassfinder_export.parity import ParityThresholds
from glassfinder_export.targets import Target
from glassfinder_runtime.errors import BundleError

TINY = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny_bundle"
GOOD = {"landmark_error_median_pct_iod": 0.4, "landmark_error_p99_pct_iod": 1.5}
BAD = {"landmark_error_median_pct_iod": 1.8, "landmark_error_p99_pct_iod": 12.0}


def test_full_integer_ships_when_its_parity_passes():
    measured = {Target.TFLITE_INT8.value: GOOD, Target.TFLITE_DYNAMIC_INT8.value: GOOD}
    assert choose_shipped("aligner", measured, ParityThresholds()) is Target.TFLITE_INT8


def test_dynamic_range_int8_is_the_fallback():
    measured = {Target.TFLITE_INT8.value: BAD, Target.TFLITE_DYNAMIC_INT8.value: GOOD}
    assert choose_shipped("aligner", measured, ParityThresholds()) is Target.TFLITE_DYNAMIC_INT8


def test_when_nothing_passes_the_first_preference_is_kept_so_the_verdict_fails():
    measured = {Target.TFLITE_INT8.value: BAD, Target.TFLITE_DYNAMIC_INT8.value: BAD}
    assert choose_shipped("aligner", measured, ParityThresholds()) is SHIP_PREFERENCE[0]


def test_float16_weights_are_the_last_resort():
    measured = {Target.TFLITE_INT8.value: BAD, Target.TFLITE_DYNAMIC_INT8.value: BAD, Target.TFLITE_FP16.value: GOOD}
    assert choose_shipped("aligner", measured, ParityThresholds()) is Target.TFLITE_FP16


def test_a_missing_required_metric_never_passes():
    measured = {Target.TFLITE_INT8.value: {}, Target.TFLITE_DYNAMIC_INT8.value: GOOD}
    assert choose_shipped("aligner", measured, ParityThresholds()) is Target.TFLITE_DYNAMIC_INT8


def test_parity_thresholds_are_read_back_from_the_bundle(tmp_path):
    recorded = json.loads((TINY / "parity.json").read_text())["thresholds"]
    assert export_thresholds(TINY).cosine_median == pytest.approx(recorded["cosine_median"])
    (tmp_path / "parity.json").write_text("{}")
    with pytest.raises(BundleError, match="parity thresholds"):
        export_thresholds(tmp_path)


def test_the_tiny_fixture_records_what_it_shipped():
    report = json.loads((TINY / "parity.json").read_text())
    assert report["passed"] is True
    assert set(report["shipped"]) == {"detector", "aligner", "gate", "embedder"}
    assert all(v in (t.value for t in SHIP_PREFERENCE) for v in report["shipped"].values())
    assert "end_to_end" in report["models"]


def test_a_clearly_slower_candidate_is_skipped_for_a_faster_passing_one():
    measured = {Target.TFLITE_INT8.value: BAD, Target.TFLITE_DYNAMIC_INT8.value: GOOD, Target.TFLITE_FP16.value: GOOD}
    latency = {Target.TFLITE_INT8.value: 9.9, Target.TFLITE_DYNAMIC_INT8.value: 1.97, Target.TFLITE_FP16.value: 1.63}
    assert choose_shipped("aligner", measured, ParityThresholds(), latency) is Target.TFLITE_FP16


def test_small_timing_differences_keep_the_preference_order():
    measured = {Target.TFLITE_INT8.value: GOOD, Target.TFLITE_DYNAMIC_INT8.value: GOOD}
    latency = {Target.TFLITE_INT8.value: 0.06, Target.TFLITE_DYNAMIC_INT8.value: 0.04, Target.TFLITE_FP16.value: 0.05}
    assert choose_shipped("gate", measured, ParityThresholds(), latency) is Target.TFLITE_INT8  # 50% but 0.02 ms


def test_a_failing_candidate_never_sets_the_pace():
    measured = {Target.TFLITE_INT8.value: GOOD, Target.TFLITE_DYNAMIC_INT8.value: BAD}
    latency = {Target.TFLITE_INT8.value: 3.0, Target.TFLITE_DYNAMIC_INT8.value: 1.0, Target.TFLITE_FP16.value: 1.0}
    assert choose_shipped("aligner", measured, ParityThresholds(), latency) is Target.TFLITE_INT8


def test_tflite_latency_is_a_positive_median_of_real_invocations():
    from types import SimpleNamespace

    from glassfinder_export.runners import tflite_latency_ms

    model = SimpleNamespace(path=Path(__file__).resolve().parents[1] / "fixtures" / "tiny_embedder.tflite", outputs=(SimpleNamespace(name="embedding"),))
    ms = tflite_latency_ms(model, repeats=5, warmup=1)
    assert 0.0 < ms < 1000.0
