"""Manifest schema: strict parsing, version policy, cross-field consistency, exact round trip.

tests/fixtures/manifest_example.json is a complete four-model manifest (also the reference the
Kotlin/Swift stubs can read); every test below mutates one thing in it and checks the error
names the file and the field.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from glassfinder_runtime.errors import BundleError
from glassfinder_runtime.geometry import DEFAULT_TEMPLATE, KEYPOINT_NAMES
from glassfinder_runtime.manifest import (
    MANIFEST_KIND,
    READER_VERSION,
    SCHEMA_VERSION,
    CalibrationSet,
    ModelEntry,
    ModelFormat,
    ModelRole,
    TemplateSpec,
    manifest_to_dict,
    manifest_to_json,
    parse_manifest,
    parse_section,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "manifest_example.json"
SOURCE = "bundle/manifest.json"


def example() -> dict[str, Any]:
    return json.loads(EXAMPLE.read_text())


def parse_error(data: Any) -> str:
    with pytest.raises(BundleError) as info:
        parse_manifest(data, source=SOURCE)
    msg = str(info.value)
    assert msg.startswith(f"{SOURCE}: "), msg
    return msg


def test_example_parses_and_round_trips_exactly():
    text = EXAMPLE.read_text()
    m = parse_manifest(json.loads(text))
    assert manifest_to_json(m) == text  # byte-exact: the writer's format is pinned
    assert manifest_to_dict(m) == json.loads(text)
    assert parse_manifest(manifest_to_dict(m)) == m
    assert (m.kind, m.schema_version, m.min_reader_version) == (MANIFEST_KIND, SCHEMA_VERSION, READER_VERSION)


def test_example_contents_are_typed():
    m = parse_manifest(example())
    emb = m.model(ModelRole.EMBEDDER)
    assert emb.format is ModelFormat.TFLITE and emb.input.shape == (1, 64, 128, 3)
    assert (emb.input.height, emb.input.width, emb.input.channels) == (64, 128, 3)
    coreml = m.model("embedder", "mlpackage")
    assert (coreml.input.height, coreml.input.width, coreml.input.channels) == (64, 128, 3)
    assert m.detector.num_anchors == 896 and m.detector.decode.box_format.value == "xywh_center"
    assert m.aligner.template.to_template() == DEFAULT_TEMPLATE
    assert m.gallery.sku_ref.file == "gallery/skus.json"
    assert [label for label, _ in m.file_refs()] == [
        "models[0] (detector)", "models[1] (aligner)", "models[2] (gate)", "models[3] (embedder)",
        "models[4] (embedder)", "gallery", "gallery.sku_file", "golden"]
    with pytest.raises(BundleError, match="no gate model in onnx format"):
        m.model("gate", "onnx")


def test_geometry_template_dict_is_the_manifest_template():
    """CropTemplate.to_dict() (runtime/geometry.py) is exactly what the manifest stores."""
    spec = TemplateSpec.from_template(DEFAULT_TEMPLATE)
    assert manifest_to_dict(spec) == json.loads(json.dumps(DEFAULT_TEMPLATE.to_dict()))
    assert spec.keypoints == KEYPOINT_NAMES


def test_version_policy():
    newer_reader = example() | {"min_reader_version": READER_VERSION + 1}
    msg = parse_error(newer_reader)
    assert "upgrade" in msg and f"reads version {READER_VERSION}" in msg
    # A newer reader requirement is reported even if the rest of the layout is unknown to us.
    assert "upgrade" in parse_error(newer_reader | {"brand_new_field": 1})
    assert "unknown schema_version 99" in parse_error(example() | {"schema_version": 99})
    assert "schema_version: expected an integer >= 1" in parse_error(example() | {"schema_version": "1"})
    assert "min_reader_version: expected an integer >= 1" in parse_error(example() | {"min_reader_version": True})
    assert "not a glassfinder bundle manifest" in parse_error(example() | {"kind": "something-else"})
    assert "not a glassfinder bundle manifest" in parse_error({"name": "a random JSON file"})
    assert "expected a JSON object" in parse_error([1, 2, 3])


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value
    return mutate


def _delete(path: tuple) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        for key in path[:-1]:
            d = d[key]
        del d[path[-1]]
    return mutate


MUTATIONS = [
    # unknown and missing fields, named by their path
    (_set(("models", 3, "input", "meen"), [0.5]), "manifest.models[3].input: unknown field 'meen'"),
    (_set(("surprise",), 1), "manifest: unknown field 'surprise'"),
    (_delete(("gate", "threshold")), "manifest.gate.threshold: missing field"),
    (_delete(("models", 0, "sha256")), "manifest.models[0].sha256: missing field"),
    (_delete(("created_by",)), "manifest.created_by: missing field"),
    # types
    (_set(("gate", "threshold"), "0.5"), "manifest.gate.threshold: expected a number, got a string"),
    (_set(("gate", "threshold"), 10**400), "manifest.gate.threshold: expected a finite number"),
    (_set(("detector", "anchors", "input_size"), 10**400), "more than the limit of 100000 anchors"),
    (_set(("models", 0, "input", "shape"), [1, 128, True, 3]), "manifest.models[0].input.shape[2]: expected an integer"),
    (_set(("models", 0, "input", "shape"), [1, 128.0, 128, 3]), "manifest.models[0].input.shape[1]: expected an integer"),
    (_set(("models", 0, "outputs"), {"name": "x"}), "manifest.models[0].outputs: expected a list, got an object"),
    (_set(("embedder",), [128]), "manifest.embedder: expected an object, got a list"),
    (_set(("detector", "anchors", "fixed_anchor_size"), 1), "manifest.detector.anchors.fixed_anchor_size: expected true or false"),
    (_set(("detector", "decode", "box_format"), "xyxy"), "manifest.detector.decode.box_format: unknown value 'xyxy'"),
    (_set(("models", 0, "input", "normalization"), "both"), "manifest.models[0].input.normalization: unknown value"),
    (_set(("models", 2, "quantization"), "int4"), "manifest.models[2].quantization: unknown value 'int4'"),
    (_set(("models", 2, "format"), "pt"), "manifest.models[2].format: unknown value 'pt'"),
    (_set(("aligner", "template", "points", 0), [30.0]), "manifest.aligner.template.points[0]: expected 2 values, got 1"),
    (_set(("detector", "decode", "min_score"), float("nan")), "expected a finite number"),
    (_set(("detector", "decode", "min_score"), 1.5), "decode.min_score must be in [0, 1]"),
    (_set(("models", 2, "outputs", 0, "scale"), None), "scale and zero_point go together"),
    (_delete(("models", 2, "outputs", 0, "scale")), "manifest.models[2].outputs[0].scale: missing field"),
    (_delete(("golden",)), "manifest.golden: missing field"),
    # values
    (_set(("models", 0, "input", "mean"), [0.5]), "mean and std need 3 values"),
    (_set(("models", 0, "input", "std"), [0.5, 0.0, 0.5]), "std must be > 0"),
    (_set(("models", 0, "input", "shape"), [1, 128, 3]), "an image input must be 4-D"),
    (_set(("models", 0, "outputs", 0, "shape"), [1, 0, 16]), "every dimension >= 1"),
    (_set(("models", 0, "sha256"), "ABC"), "sha256 must be 64 lowercase hex digits"),
    (_set(("models", 0, "sha256"), ""), "manifest.models[0] (detector): sha256 of models/detector.tflite is missing"),
    (_set(("models", 0, "file"), "../outside.tflite"), "must stay inside the bundle folder"),
    (_set(("models", 0, "file"), "/etc/detector.tflite"), "must stay inside the bundle folder"),
    (_set(("models", 0, "file"), "./models/detector.tflite"), "must stay inside the bundle folder"),
    (_set(("models", 0, "file"), "models//detector.tflite"), "must stay inside the bundle folder"),
    (_set(("models", 0, "file"), "models\\detector.tflite"), "'/' separators"),
    (_set(("models", 0, "file"), "models/detector.onnx"), "a tflite model file must end with .tflite"),
    (_set(("gallery", "sku_file"), "models/detector.tflite"), "duplicate file 'models/detector.tflite'"),
    (_set(("models", 4), {**example()["models"][3], "file": "models/embedder2.tflite"}), "duplicate model (name, format)"),
    (_set(("gate", "threshold"), 1.5), "threshold must be in [0, 1]"),
    (_set(("gate", "accept_classes"), ["hat"]), "accept_classes must be a non-empty subset"),
    (_set(("gate", "refusal_message"), ""), "refusal_message is empty"),
    (_set(("gallery", "spec"), "IVF256,PQ16"), "PQ spec 'IVF256,PQ16' is invalid"),
    (_set(("gallery", "spec"), "PQ16x8"), "PQ spec 'PQ16x8' is invalid"),
    (_set(("gallery", "code_size"), 32), "code_size=32 disagrees with PQ16x8,IP (16 bytes)"),
    (_set(("gallery", "d"), 100), "M=16 must divide the vector dimension d=100"),
    (_set(("aligner", "mesh", "keypoint_indices", 4), 468), "must be in [0, 468)"),
    (_set(("aligner", "mesh", "keypoint_indices"), [33, 133]), "needs 5 indices"),
    (_set(("aligner", "template", "keypoints", 0), "left_eye"), "template keypoints must be"),
    (_set(("detector", "decode", "num_coords"), 18), "num_coords=18 must be 4 box values + 2 * 6 keypoints"),
    (_set(("detector", "anchors", "strides"), [8, 16, 16]), "num_layers=4 strides"),
    (_set(("detector", "anchors", "strides"), [1, 1, 1, 1]), "more than the limit of 100000 anchors"),
    (_set(("calibration", 0, "count"), 0), "count must be >= 1"),
    (_set(("calibration", 1, "model"), "gate"), "duplicate calibration model"),
    # stage settings vs the outputs declared for the stage's models
    (_set(("detector", "anchors", "strides"), [8, 16, 16, 8]), "no output ends with (num_anchors, num_coords) = (1280, 16)"),
    (_set(("gate", "class_names"), ["eyeglasses", "sunglasses", "none", "goggles"]), "no output has 4 classes"),
    (_set(("embedder", "dim"), 64), "embedder models/embedder.tflite: no output has dim=64"),
    (_set(("gallery", "d"), 256), "gallery d=256 disagrees with embedder dim=128"),
    (_set(("gate",), None), "gate: a model and its 'gate' settings must come together"),
]


@pytest.mark.parametrize(("mutate", "fragment"), MUTATIONS, ids=[f for _, f in MUTATIONS])
def test_invalid_manifests_name_the_field(mutate, fragment):
    data = copy.deepcopy(example())
    mutate(data)
    assert fragment in parse_error(data)


def test_stage_without_its_model_is_refused():
    data = example()
    data["models"] = [m for m in data["models"] if m["name"] != "aligner"]
    assert "aligner: a model and its 'aligner' settings must come together" in parse_error(data)


def test_optional_sections_may_be_null():
    data = example()
    data["models"] = [m for m in data["models"] if m["name"] == "embedder"]
    for key in ("detector", "aligner", "gate", "gallery", "golden"):
        data[key] = None
    data["calibration"] = []
    m = parse_manifest(data)
    assert m.gate is None and m.calibration == () and len(m.models) == 2
    assert parse_manifest(json.loads(manifest_to_json(m))) == m


def test_python_built_sections_accept_the_json_spelling():
    """Exporters may pass "embedder" for ModelRole.EMBEDDER and lists for tuples: same object as parsed."""
    typed = CalibrationSet(model=ModelRole.GATE, sha256="a" * 64, count=3)
    assert CalibrationSet(model="gate", sha256="a" * 64, count=3) == typed
    spec = TemplateSpec(width=128, height=64, keypoints=list(KEYPOINT_NAMES), points=[list(p) for p in DEFAULT_TEMPLATE.points])
    assert spec == TemplateSpec.from_template(DEFAULT_TEMPLATE) and isinstance(spec.points[0], tuple)
    with pytest.raises(ValueError, match="'goat' is not a valid ModelRole"):
        CalibrationSet(model="goat", sha256="a" * 64, count=3)


def test_parse_section_is_strict_and_names_the_place():
    entry = example()["models"][3]
    assert parse_section(ModelEntry, entry, "models.embedder") == parse_manifest(example()).models[3]
    with pytest.raises(BundleError, match=r"^models\.embedder\.input: missing field"):
        parse_section(ModelEntry, {k: v for k, v in entry.items() if k != "input"}, "models.embedder")
