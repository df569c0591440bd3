"""The bundle manifest: one JSON file written last by export and read first by runtime and both stubs.

`manifest.json` describes everything in a bundle folder: every file with its sha256, each model's
format, the quantization actually applied and its input/output contract, and the per-stage
settings (detector anchors and box layout, aligner template, gate threshold, PQ gallery spec,
calibration-set hashes, golden vectors). Anchor: MediaPipe `face_detector_metadata_schema.fbs`
(a file identifier, AnchorConfig, TensorsDecodingConfig, `min_parser_version`).

Parsing is strict ("fail loudly"): an unknown or missing field (every field must be present;
optional ones as null), a wrong type, a non-finite number or a value out of range raises
BundleError naming the file and the field path, e.g.
`bundle/manifest.json: manifest.gate.threshold: expected a number, got a string`.

Version policy:
- `schema_version` is the layout this manifest was written with; this reader knows
  SUPPORTED_SCHEMA_VERSIONS and refuses any other one.
- `min_reader_version` is the oldest reader that can use the bundle; a reader whose
  READER_VERSION is lower refuses it and says to upgrade. A writer bumps it whenever it writes
  something an older reader would misread.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import re
import types
from dataclasses import dataclass
from typing import Any, Iterator, TypeVar, Union, get_args, get_origin, get_type_hints

from glassfinder_runtime.detect import AnchorOptions, DecodeOptions, generate_anchors
from glassfinder_runtime.errors import BundleError, GalleryError
from glassfinder_runtime.gallery import PQSpec, parse_spec
from glassfinder_runtime.geometry import KEYPOINT_NAMES, CropTemplate
from glassfinder_runtime.landmarks import MeshOptions

# The layout written by this code, and the layouts this reader understands.
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1,)
# Version of this reader; a manifest whose min_reader_version is higher is refused.
READER_VERSION = 1
# File identifier (MediaPipe's "FD01"): tells a glassfinder manifest from any other JSON.
MANIFEST_KIND = "glassfinder-bundle"
# The manifest's file name inside a bundle folder.
MANIFEST_NAME = "manifest.json"
# sha256 placeholder accepted while building a manifest in memory; write_manifest fills it in
# and parse_manifest refuses it.
PENDING_SHA256 = ""

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Sanity bound on detector anchors (BlazeFace short range: 896, full range: 2304).
MAX_ANCHORS = 100_000


class ModelRole(enum.StrEnum):
    """The four models of the pipeline (same names in the Kotlin and Swift stubs)."""

    DETECTOR = "detector"
    ALIGNER = "aligner"
    GATE = "gate"
    EMBEDDER = "embedder"


class ModelFormat(enum.StrEnum):
    TFLITE = "tflite"
    MLPACKAGE = "mlpackage"  # a folder; its sha256 is the tree hash of bundle.sha256_path
    ONNX = "onnx"


# File suffix each format must have, so a mislabelled file is caught before it is loaded.
FORMAT_SUFFIX: dict[ModelFormat, str] = {
    ModelFormat.TFLITE: ".tflite",
    ModelFormat.MLPACKAGE: ".mlpackage",
    ModelFormat.ONNX: ".onnx",
}


class Quantization(enum.StrEnum):
    """The quantization actually applied to a model file (not what was asked for)."""

    FLOAT32 = "float32"  # no quantization
    FLOAT16 = "float16"  # float16 weights, float compute and I/O
    DYNAMIC_INT8 = "dynamic_int8"  # int8 weights, activations quantized on the fly
    INT8 = "int8"  # full integer: per-channel int8 weights and calibrated int8 activations
    INT8_WEIGHTS = "int8_weights"  # Core ML: int8 weights, fp16 compute
    W8A8 = "w8a8"  # Core ML: int8 weights and activations


class DType(enum.StrEnum):
    """Tensor element types, spelled as numpy spells them."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"
    UINT8 = "uint8"
    INT32 = "int32"
    INT64 = "int64"


class Normalization(enum.StrEnum):
    """Who applies (pixel / 255 - mean) / std to the input."""

    RUNTIME = "runtime"  # the runtime, in float, before the model (keeps an int8 graph all-integer)
    IN_GRAPH = "in_graph"  # the model itself: feed pixel / 255


class Layout(enum.StrEnum):
    NHWC = "NHWC"
    NCHW = "NCHW"


class ChannelOrder(enum.StrEnum):
    RGB = "RGB"
    BGR = "BGR"


# ---------------------------------------------------------------------------------------------
# Schema. Every dataclass is frozen and keyword-only; __post_init__ checks values (ValueError),
# the parser turns those into BundleError with the field path.


def _check_relpath(file: str) -> None:
    """A bundle path: relative, forward slashes, inside the bundle (no '..', no absolute path)."""
    if not file or "\\" in file or "\x00" in file:
        raise ValueError(f"bad file path {file!r}: use a non-empty relative path with '/' separators")
    # One spelling per file (no "./", "//" or trailing "/"), so duplicates are caught too.
    if any(part in ("", ".", "..") for part in file.split("/")):
        raise ValueError(f"bad file path {file!r}: it must stay inside the bundle folder, written plainly")


def _check_sha256(sha256: str) -> None:
    if sha256 != PENDING_SHA256 and not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")


def _check_unique(values: tuple, what: str) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate {what} {v!r}")
        seen.add(v)


_type_hints = functools.cache(get_type_hints)


def _coerce(tp: Any, value: Any) -> Any:
    """A value built in Python in its JSON spelling (an enum's string, a list for a tuple) as the typed value.

    Only equal-meaning spellings are converted; an unknown enum value still raises ValueError.
    """
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(inner, value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value)) if len(args) == len(value) else tuple(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum) and not isinstance(value, tp):
        return tp(value)
    return value


def _coerce_fields(obj: Any) -> None:
    """Run _coerce over the fields of a frozen schema dataclass (so that Python-built and parsed
    manifests compare equal and behave the same)."""
    hints = _type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        typed = _coerce(hints[f.name], value)
        if typed is not value:
            object.__setattr__(obj, f.name, typed)


@dataclass(frozen=True, kw_only=True)
class FileRef:
    """A file of the bundle and its sha256 (checked by open_bundle before the file is used)."""

    file: str  # path relative to the bundle folder, '/' separators
    sha256: str  # lowercase hex digest of the file's bytes

    def __post_init__(self) -> None:
        _coerce_fields(self)
        _check_relpath(self.file)
        _check_sha256(self.sha256)


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """One model input or output as the model file really has it (checked against the .tflite)."""

    name: str  # tensor name in the model file
    shape: tuple[int, ...]  # static shape, batch included (batch is always 1)
    dtype: DType  # element type at the model boundary
    # Quantized (int8/uint8) tensors: real = scale * (q - zero_point), as the file says (null otherwise).
    # Informative for the stubs; the runtime reads them from the interpreter, never from here.
    scale: float | None = None
    zero_point: int | None = None

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if not self.name:
            raise ValueError("tensor name is empty")
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"shape must be static with every dimension >= 1, got {list(self.shape)}")
        if (self.scale is None) != (self.zero_point is None) or (self.scale is not None and self.scale <= 0):
            raise ValueError("scale and zero_point go together, with scale > 0")


@dataclass(frozen=True, kw_only=True)
class InputSpec(TensorSpec):
    """The model's single image input: what to feed and how to normalise it.

    normalization "runtime": the value fed for pixel p (0..255) in channel c is
    (p / 255 - mean[c]) / std[c]; "in_graph": it is p / 255 and the model normalises. Then cast
    or quantized to `dtype` with the scale/zero point the interpreter reports.
    """

    layout: Layout  # NHWC (TFLite) or NCHW (ONNX/Core ML)
    channel_order: ChannelOrder  # order of the colour channels
    normalization: Normalization  # who applies mean/std
    mean: tuple[float, ...]  # per channel, in units of pixel / 255
    std: tuple[float, ...]  # per channel, in units of pixel / 255; > 0

    def __post_init__(self) -> None:
        super().__post_init__()  # coerces every field, this class's included
        if len(self.shape) != 4:
            raise ValueError(f"an image input must be 4-D ({self.layout.value}), got shape {list(self.shape)}")
        n = self.channels
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(f"mean and std need {n} values (one per channel), got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {list(self.std)}")

    @property
    def height(self) -> int:
        return self.shape[1] if self.layout is Layout.NHWC else self.shape[2]

    @property
    def width(self) -> int:
        return self.shape[2] if self.layout is Layout.NHWC else self.shape[3]

    @property
    def channels(self) -> int:
        return self.shape[3] if self.layout is Layout.NHWC else self.shape[1]


@dataclass(frozen=True, kw_only=True)
class ModelEntry(FileRef):
    """One model file: which stage it serves, its format, quantization and I/O contract."""

    name: ModelRole  # the pipeline stage this model serves
    format: ModelFormat  # file format; the same stage may ship in several formats
    quantization: Quantization  # what the exporter actually applied
    input: InputSpec  # the single image input
    outputs: tuple[TensorSpec, ...]  # in the order of their meaning (e.g. boxes, then scores), matched to the file by name

    def __post_init__(self) -> None:
        super().__post_init__()  # coerces every field, this class's included
        suffix = FORMAT_SUFFIX[self.format]
        if not self.file.endswith(suffix):
            raise ValueError(f"a {self.format.value} model file must end with {suffix}, got {self.file!r}")
        if not self.outputs:
            raise ValueError("a model needs at least one output")
        _check_unique(tuple(o.name for o in self.outputs), "output name")


@dataclass(frozen=True, kw_only=True)
class DetectorSettings:
    """How to decode the detector's raw tensors: runtime/detect.py's own option dataclasses.

    The input contract (size, mean, std) is the detector model entry's `input`.
    """

    anchors: AnchorOptions  # SSD anchor generation (MediaPipe SsdAnchorsCalculatorOptions)
    decode: DecodeOptions  # box/keypoint layout, score and NMS settings (TensorsToDetections + NMS)

    def __post_init__(self) -> None:
        _coerce_fields(self)
        a, d = self.anchors, self.decode
        if a.input_size < 1 or a.num_layers < 1 or len(a.strides) != a.num_layers or min(a.strides, default=0) < 1:
            raise ValueError(f"anchors need input_size >= 1 and num_layers={a.num_layers} strides >= 1, "
                             f"got input_size={a.input_size}, strides={list(a.strides)}")
        if not a.aspect_ratios or min(a.aspect_ratios) <= 0 or not 0 < a.min_scale <= a.max_scale:
            raise ValueError("anchors need positive aspect_ratios and 0 < min_scale <= max_scale")
        if len(d.keypoint_names) != d.num_keypoints:
            raise ValueError(f"num_keypoints={d.num_keypoints} but {len(d.keypoint_names)} keypoint_names")
        _check_unique(d.keypoint_names, "keypoint name")
        if d.num_coords != 4 + 2 * d.num_keypoints:
            raise ValueError(f"num_coords={d.num_coords} must be 4 box values + 2 * {d.num_keypoints} keypoints")
        if d.scale <= 0 or d.score_clipping < 0:
            raise ValueError("decode.scale must be > 0 and decode.score_clipping >= 0")
        for name in ("min_score", "nms_iou"):
            if not 0.0 <= getattr(d, name) <= 1.0:
                raise ValueError(f"decode.{name} must be in [0, 1], got {getattr(d, name)}")

        # Upper bound of the anchor count (every layer its own feature map, one interpolated anchor
        # each), so that a hostile manifest cannot make generate_anchors loop for minutes.
        bound = sum((-(-a.input_size // s)) ** 2 * (len(a.aspect_ratios) + 1) for s in a.strides)
        if bound > MAX_ANCHORS:
            raise ValueError(f"these anchor settings give more than the limit of {MAX_ANCHORS} anchors")

    @property
    def num_anchors(self) -> int:
        return int(generate_anchors(self.anchors).shape[0])


@dataclass(frozen=True, kw_only=True)
class TemplateSpec:
    """The glasses-crop template (runtime/geometry.CropTemplate), as CropTemplate.to_dict writes it."""

    width: int  # crop width in pixels
    height: int  # crop height in pixels
    keypoints: tuple[str, ...]  # must be geometry.KEYPOINT_NAMES, in that order
    points: tuple[tuple[float, float], ...]  # template (x, y) of each keypoint, crop pixels

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.width < 1 or self.height < 1:
            raise ValueError(f"template size must be >= 1, got {self.width}x{self.height}")
        if self.keypoints != KEYPOINT_NAMES:
            raise ValueError(f"template keypoints must be {list(KEYPOINT_NAMES)}, got {list(self.keypoints)}")
        if len(self.points) != len(self.keypoints):
            raise ValueError(f"need {len(self.keypoints)} template points, got {len(self.points)}")

    @classmethod
    def from_template(cls, template: CropTemplate) -> TemplateSpec:
        return cls(width=template.width, height=template.height, keypoints=KEYPOINT_NAMES, points=template.points)

    def to_template(self) -> CropTemplate:
        return CropTemplate(width=self.width, height=self.height, points=self.points)


@dataclass(frozen=True, kw_only=True)
class AlignerSettings:
    """Face mesh -> the five template keypoints -> the similarity crop."""

    template: TemplateSpec  # where the keypoints land in the glasses crop
    mesh: MeshOptions  # runtime/landmarks.py: face crop for the mesh model, mesh indices of the keypoints

    def __post_init__(self) -> None:
        _coerce_fields(self)
        m = self.mesh
        if m.input_size < 1 or m.num_landmarks < 1 or m.roi_scale <= 0 or not 0.0 <= m.presence_threshold <= 1.0:
            raise ValueError("mesh needs input_size >= 1, num_landmarks >= 1, roi_scale > 0, presence_threshold in [0, 1]")
        if len(m.keypoint_indices) != len(self.template.keypoints):
            raise ValueError(f"mesh.keypoint_indices needs {len(self.template.keypoints)} indices "
                             f"({', '.join(self.template.keypoints)}), got {len(m.keypoint_indices)}")
        if any(not 0 <= i < m.num_landmarks for i in m.keypoint_indices):
            raise ValueError(f"mesh.keypoint_indices {list(m.keypoint_indices)} must be in [0, {m.num_landmarks})")


@dataclass(frozen=True, kw_only=True)
class GateSettings:
    """The glasses-worn classifier on the crop, and what the app says when it refuses."""

    class_names: tuple[str, ...]  # classifier outputs, in order (e.g. eyeglasses, sunglasses, none)
    accept_classes: tuple[str, ...]  # classes that count as "glasses worn"
    threshold: float  # accept when the summed probability of accept_classes is >= this (chosen on validation data)
    refusal_message: str  # shown to the user when the gate (or the detector) refuses

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if len(self.class_names) < 2:
            raise ValueError("a gate needs at least two classes")
        _check_unique(self.class_names, "class name")
        unknown = [c for c in self.accept_classes if c not in self.class_names]
        if not self.accept_classes or unknown:
            raise ValueError(f"accept_classes must be a non-empty subset of class_names, got {list(self.accept_classes)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if not self.refusal_message:
            raise ValueError("refusal_message is empty")


@dataclass(frozen=True, kw_only=True)
class EmbedderSettings:
    dim: int  # embedding size d
    l2_normalize: bool  # True: the runtime L2-normalises the model output (the norm is outside the int8 graph)

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")


@dataclass(frozen=True, kw_only=True)
class GalleryEntry(FileRef):
    """The PQ gallery file (runtime/gallery.py .gfpq format) and the SKU metadata its ids index."""

    spec: str  # PQ spec with its metric, as runtime/gallery.py writes it, e.g. "PQ16x8,IP"
    d: int  # vector dimension (= embedder dim)
    n: int  # number of vectors in the gallery
    code_size: int  # bytes per vector
    sku_file: str  # SKU metadata file (JSON), indexed by the gallery ids
    sku_sha256: str

    def __post_init__(self) -> None:
        super().__post_init__()  # coerces every field, this class's included
        _check_relpath(self.sku_file)
        _check_sha256(self.sku_sha256)
        try:
            spec = parse_spec(self.spec)
            spec.dsub(self.d)
        except GalleryError as exc:
            raise ValueError(str(exc)) from None
        if str(spec) != self.spec:
            raise ValueError(f"spec {self.spec!r} is not in canonical form {str(spec)!r}")
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        if self.code_size != spec.code_size:
            raise ValueError(f"code_size={self.code_size} disagrees with {self.spec} ({spec.code_size} bytes)")

    @property
    def pq_spec(self) -> PQSpec:
        return parse_spec(self.spec)

    @property
    def sku_ref(self) -> FileRef:
        return FileRef(file=self.sku_file, sha256=self.sku_sha256)


@dataclass(frozen=True, kw_only=True)
class CalibrationSet:
    """Hash of the int8 calibration set a model was quantized with (so a re-export can be compared)."""

    model: ModelRole
    sha256: str  # glassfinder_export.calibration.dataset_sha256: over the (n, H, W, 3) uint8 pixels + shape
    count: int  # number of calibration samples

    def __post_init__(self) -> None:
        _coerce_fields(self)
        _check_sha256(self.sha256)
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A whole bundle. Stage specs are present exactly when a model of that stage is."""

    kind: str = MANIFEST_KIND  # file identifier
    schema_version: int = SCHEMA_VERSION  # layout of this manifest
    min_reader_version: int = READER_VERSION  # oldest reader that can use this bundle
    created_by: str  # tool and version that wrote the bundle
    models: tuple[ModelEntry, ...]
    detector: DetectorSettings | None = None
    aligner: AlignerSettings | None = None
    gate: GateSettings | None = None
    embedder: EmbedderSettings | None = None
    gallery: GalleryEntry | None = None
    calibration: tuple[CalibrationSet, ...] = ()
    golden: FileRef | None = None  # golden test vectors written by runtime/, checked by both stubs

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.kind != MANIFEST_KIND:
            raise ValueError(f"kind must be {MANIFEST_KIND!r}, got {self.kind!r}")
        if not self.created_by:
            raise ValueError("created_by is empty")
        _check_unique(tuple((m.name.value, m.format.value) for m in self.models), "model (name, format)")
        _check_unique(tuple(ref.file for _, ref in self.file_refs()), "file")
        roles = {m.name for m in self.models}
        for role in ModelRole:
            spec = getattr(self, role.value)
            if (role in roles) != (spec is not None):
                raise ValueError(f"{role.value}: a model and its '{role.value}' settings must come together")
        self._check_against_outputs()
        if self.gallery is not None and self.embedder is not None and self.gallery.d != self.embedder.dim:
            raise ValueError(f"gallery d={self.gallery.d} disagrees with embedder dim={self.embedder.dim}")
        _check_unique(tuple(c.model.value for c in self.calibration), "calibration model")

    def _check_against_outputs(self) -> None:
        """Stage settings must agree with the output shapes declared for that stage's models."""
        for m in self.models:
            last = [o.shape[-1] for o in m.outputs]
            if m.name is ModelRole.DETECTOR and self.detector is not None:
                want = (self.detector.num_anchors, self.detector.decode.num_coords)
                if not any(tuple(o.shape[-2:]) == want for o in m.outputs):
                    raise ValueError(f"detector {m.file}: no output ends with (num_anchors, num_coords) = {want}")
            if m.name is ModelRole.GATE and self.gate is not None and len(self.gate.class_names) not in last:
                raise ValueError(f"gate {m.file}: no output has {len(self.gate.class_names)} classes in its last dimension")
            if m.name is ModelRole.EMBEDDER and self.embedder is not None and self.embedder.dim not in last:
                raise ValueError(f"embedder {m.file}: no output has dim={self.embedder.dim} in its last dimension")

    def model(self, name: ModelRole | str, format: ModelFormat | str = ModelFormat.TFLITE) -> ModelEntry:
        """The entry of stage `name` in `format`; BundleError if the bundle has none."""
        for m in self.models:
            if m.name == name and m.format == format:
                return m
        have = ", ".join(f"{m.name.value}/{m.format.value}" for m in self.models) or "none"
        raise BundleError(f"{MANIFEST_NAME}: no {name} model in {format} format (the bundle has: {have})")

    def file_refs(self) -> Iterator[tuple[str, FileRef]]:
        """Every file the bundle lists, with a label for messages (models first)."""
        for i, m in enumerate(self.models):
            yield f"models[{i}] ({m.name.value})", m
        if self.gallery is not None:
            yield "gallery", self.gallery
            yield "gallery.sku_file", self.gallery.sku_ref
        if self.golden is not None:
            yield "golden", self.golden


# ---------------------------------------------------------------------------------------------
# JSON <-> dataclasses. One generic, type-driven parser instead of hand-written per-class code.


_T = TypeVar("_T")


class _SchemaError(Exception):
    """Raised inside the parser with the field path; parse_manifest adds the source file."""


def _kind_of(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _parse_value(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):  # only `X | None` is used in the schema
        if value is None:
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _parse_value(inner, value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise _SchemaError(f"{path}: expected a list, got {_kind_of(value)}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _SchemaError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(_parse_value(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if not isinstance(value, str):
            raise _SchemaError(f"{path}: expected a string, got {_kind_of(value)}")
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(repr(e.value) for e in tp)
            raise _SchemaError(f"{path}: unknown value {value!r} (expected one of {allowed})") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise _SchemaError(f"{path}: expected true or false, got {_kind_of(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _SchemaError(f"{path}: expected an integer, got {_kind_of(value)} {value!r}"[:300])
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _SchemaError(f"{path}: expected a number, got {_kind_of(value)}")
        try:
            number = float(value)  # an integer beyond 1e308 cannot be a float
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise _SchemaError(f"{path}: expected a finite number, got {str(value)[:40]}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise _SchemaError(f"{path}: expected a string, got {_kind_of(value)}")
        return value
    raise TypeError(f"manifest schema uses an unsupported type {tp!r} at {path}")  # a bug in this file


def _parse_dataclass(cls: type, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise _SchemaError(f"{path}: expected an object, got {_kind_of(value)}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise _SchemaError(f"{path}: unknown field {str(unknown[0])[:100]!r} (known: {', '.join(fields)})")
    kwargs = {}
    for name in fields:  # every field is required: a default would hide a writer's omission
        if name not in value:
            raise _SchemaError(f"{path}.{name}: missing field")
        kwargs[name] = _parse_value(hints[name], value[name], f"{path}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise _SchemaError(f"{path}: {exc}") from None


def parse_section(cls: type[_T], data: Any, where: str) -> _T:
    """Strictly parse one schema dataclass (e.g. a ModelEntry from an exporter's dict).

    `where` starts the field paths in messages; raises BundleError like parse_manifest.
    """
    try:
        return _parse_dataclass(cls, data, where)
    except _SchemaError as exc:
        raise BundleError(str(exc)) from None


def _check_versions(data: dict) -> None:
    """Version and identity checks, before the rest is parsed (a newer layout may not parse)."""
    kind = data.get("kind")
    if kind != MANIFEST_KIND:
        raise _SchemaError(f"not a glassfinder bundle manifest (kind is {str(kind)[:60]!r}, expected {MANIFEST_KIND!r})")
    for name in ("min_reader_version", "schema_version"):
        v = data.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _SchemaError(f"manifest.{name}: expected an integer >= 1, got {str(v)[:60]!r}")
    if data["min_reader_version"] > READER_VERSION:
        raise _SchemaError(
            f"this bundle needs reader version {data['min_reader_version']} or newer; this glassfinder_runtime "
            f"reads version {READER_VERSION}: upgrade glassfinder to open it")
    if data["schema_version"] not in SUPPORTED_SCHEMA_VERSIONS:
        raise _SchemaError(
            f"unknown schema_version {data['schema_version']} (this reader knows "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}): was it written by a newer or foreign tool?")


def parse_manifest(data: Any, source: str = MANIFEST_NAME) -> Manifest:
    """Validate a decoded manifest.json object into a Manifest.

    `source` names the file in error messages. Raises BundleError for anything that is not a
    complete, consistent manifest of a supported version; never anything else.
    """
    try:
        if not isinstance(data, dict):
            raise _SchemaError(f"expected a JSON object at the top level, got {_kind_of(data)}")
        _check_versions(data)
        manifest = _parse_dataclass(Manifest, data, "manifest")
        for label, ref in manifest.file_refs():
            if ref.sha256 == PENDING_SHA256:
                raise _SchemaError(f"manifest.{label}: sha256 of {ref.file} is missing")
        for i, c in enumerate(manifest.calibration):
            if c.sha256 == PENDING_SHA256:
                raise _SchemaError(f"manifest.calibration[{i}].sha256 is missing")
    except _SchemaError as exc:
        raise BundleError(f"{source}: {exc}") from None
    return manifest


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    return value


def manifest_to_dict(manifest: Manifest) -> dict:
    """The JSON object for `manifest` (field order as in the dataclasses); parse_manifest inverts it."""
    return _to_jsonable(manifest)


def _dump(value: Any, level: int) -> str:
    """JSON with objects and lists of objects indented, and lists of numbers/strings on one line."""
    pad = "  " * level
    if isinstance(value, dict) and value:
        items = [f"{pad}  {json.dumps(k)}: {_dump(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        items = [f"{pad}  {_dump(v, level + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value, allow_nan=False)


def manifest_to_json(manifest: Manifest) -> str:
    """manifest.json text: deterministic, readable (short lists on one line), newline-terminated."""
    return _dump(manifest_to_dict(manifest), 0) + "\n"
