"""Export targets: one table of what each format can do, one validation, one entry point.

`export_model(model, contract, target, out_dir, calib)` turns a torch model into one file for one
target and returns an `ExportResult` with what was *actually* applied (format, quantization, I/O
layout, what the runtime must still do at the float boundary), ready to be copied into the manifest.
`export_targets(...)` does several targets of one model and shares the expensive conversions
(one ONNX file, one onnx2tf run for all TFLite variants); a bundle builder calls it per model.

The float-boundary rule (DESIGN: quantization-friendly by design): by default the exported graph
does NOT contain the input normalisation (x - mean) / std nor the final L2-norm. The runtime applies
both in float, so every op of an int8 graph is integer and the two ops that quantize worst stay exact.
`ExportOptions(normalise_in_graph=True, l2_in_graph=True)` puts them back in (measured in parity tests).

Model convention (the same for the real and the tiny models):
- `model.forward(x)` takes the normalised NCHW float32 input and returns the torch reference outputs;
- a model with float-boundary post-processing also has `forward_export(x)` (or `forward_features(x)`, the
  embedder's name): the same outputs before that post-processing (today only the embedder's L2-norm;
  checked numerically, never assumed).
"""
from __future__ import annotations

import contextlib
import enum
import functools
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from glassfinder_runtime.errors import ConfigError

log = logging.getLogger("glassfinder.export")


class Target(str, enum.Enum):
    ONNX = "onnx"
    TFLITE_FP32 = "tflite_fp32"
    TFLITE_FP16 = "tflite_fp16"
    TFLITE_INT8 = "tflite_int8"
    TFLITE_DYNAMIC_INT8 = "tflite_dynamic_int8"
    COREML_FP16 = "coreml_fp16"
    COREML_INT8W = "coreml_int8w"
    COREML_W8A8 = "coreml_w8a8"
    ONNX_INT8_NNCF = "onnx_int8_nncf"

    @classmethod
    def parse(cls, name: str) -> "Target":
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(t.value for t in cls)
            raise ConfigError(f"unknown export target {name!r}; choose one of: {choices}") from None


# Option names a target may honour (see ExportOptions). Knobs outside a target's set are rejected.
_BOUNDARY = frozenset({"normalise_in_graph", "l2_in_graph", "opset", "clip_outputs"})
_QUANT = frozenset({"per_channel", "float_layers"})


@dataclass(frozen=True)
class Capability:
    """One row of the capability table."""

    suffix: str  # file or package suffix
    family: str  # "onnx" | "tflite" | "coreml": which exporter module runs it
    quantization: str  # what the target applies, in words (copied to the manifest)
    layout: str  # input layout of the exported file: TFLite is NHWC (onnx2tf transposes), others NCHW
    needs_calibration: bool  # int8 activations need a representative data set
    options: frozenset[str]  # ExportOptions fields this target honours
    runs_here: bool  # can this machine (Linux) execute the exported file for parity?
    manifest_format: str  # glassfinder_runtime.manifest.ModelFormat value
    manifest_quantization: str  # glassfinder_runtime.manifest.Quantization value


CAPABILITIES: dict[Target, Capability] = {
    Target.ONNX: Capability(".onnx", "onnx", "none (float32)", "NCHW", False, _BOUNDARY, True, "onnx", "float32"),
    Target.TFLITE_FP32: Capability(
        ".tflite", "tflite", "none (float32)", "NHWC", False, _BOUNDARY, True, "tflite", "float32"),
    Target.TFLITE_FP16: Capability(
        ".tflite", "tflite", "float16 weights, float32 compute and I/O", "NHWC", False, _BOUNDARY, True,
        "tflite", "float16"),
    # Full-integer: int8 I/O too, so a layer kept in float (float_layers) cannot be honoured.
    Target.TFLITE_INT8: Capability(
        ".tflite", "tflite", "full-integer int8 (weights and activations, int8 I/O), calibrated", "NHWC", True,
        _BOUNDARY | {"per_channel"}, True, "tflite", "int8"),
    # Dynamic range: int8 weights, float activations (quantized on the fly per op). Made by the same
    # onnx2tf run as full-integer int8; the fallback when a model's activations do not survive int8.
    Target.TFLITE_DYNAMIC_INT8: Capability(
        ".tflite", "tflite", "dynamic-range int8 (int8 weights, float activations and I/O)", "NHWC", True,
        _BOUNDARY | {"per_channel"}, True, "tflite", "dynamic_int8"),
    Target.COREML_FP16: Capability(
        ".mlpackage", "coreml", "float16 compute (mlprogram)", "NCHW", False, _BOUNDARY, False,
        "mlpackage", "float16"),
    Target.COREML_INT8W: Capability(
        ".mlpackage", "coreml", "int8 linear weights (symmetric), float16 activations", "NCHW", False,
        _BOUNDARY | {"per_channel"}, False, "mlpackage", "int8_weights"),
    Target.COREML_W8A8: Capability(
        ".mlpackage", "coreml", "int8 weights and int8 activations (W8A8), calibrated in torch", "NCHW", True,
        _BOUNDARY | _QUANT, False, "mlpackage", "w8a8"),
    Target.ONNX_INT8_NNCF: Capability(
        ".onnx", "onnx", "int8 QDQ (NNCF post-training quantization), calibrated", "NCHW", True,
        _BOUNDARY | _QUANT, True, "onnx", "int8"),
}


@dataclass(frozen=True)
class ExportOptions:
    """Export knobs. None / empty means "the target's default"; a knob a target cannot honour is rejected."""

    normalise_in_graph: bool = False  # put (x - mean) / std inside the graph (default: runtime does it in float)
    l2_in_graph: bool = False  # keep the embedder's final L2-norm inside the graph (default: runtime does it)
    opset: int = 17  # ONNX opset: 17 is what onnx2tf, onnxsim and NNCF were verified with
    per_channel: bool | None = None  # per-channel weight scales (default True for every int8 target)
    float_layers: tuple[str, ...] = ()  # torch module names kept in float in a quantized graph (e.g. first/last)
    # (output index, bound): clamp that output to [-bound, bound] inside the graph. For score logits whose
    # far-negative background values (-400) would otherwise set a coarse int8 output scale (2 logits per
    # step) and flip decisions near 0; sigmoid(10) = 0.99995, so decisions do not change.
    clip_outputs: tuple[tuple[int, float], ...] = ()

    def set_fields(self) -> set[str]:
        """Names of the knobs that differ from their defaults (what validation looks at)."""
        default = ExportOptions()
        return {f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}


def validate_export(target: Target, options: ExportOptions = ExportOptions(), calib: Any = None) -> None:
    """Raise ConfigError for any combination the target cannot honour (never silently rewrite it)."""
    if not isinstance(target, Target):
        raise ConfigError(f"export target must be a Target, got {target!r}")
    cap = CAPABILITIES[target]
    unsupported = sorted(options.set_fields() - cap.options)
    if unsupported:
        why = {
            "per_channel": "it has no int8 weights",
            "float_layers": ("it is full-integer (int8 input and output); use onnx_int8_nncf or coreml_w8a8 "
                             "to keep layers in float" if target is Target.TFLITE_INT8 else "it is not quantized"),
        }
        reasons = "; ".join(f"{o}: {why.get(o, 'not supported by this target')}" for o in unsupported)
        raise ConfigError(f"target {target.value} cannot honour option(s) {', '.join(unsupported)} ({reasons})")
    if any(b <= 0 for _, b in options.clip_outputs):
        raise ConfigError(f"clip_outputs bounds must be positive, got {options.clip_outputs}")
    if options.opset < 13:
        raise ConfigError(f"opset {options.opset} is too old: per-channel QDQ needs ONNX opset >= 13")
    if cap.needs_calibration and calib is None:
        raise ConfigError(f"target {target.value} quantizes activations and needs a calibration set "
                          f"(calibration_data/<model>.npz, see calibration_data/README.md)")


@dataclass(frozen=True)
class InputContract:
    """The model's input contract, copied from its frozen config dataclass into the manifest.

    The exported model sees pixels as float32 in [0, 1] (pixel / 255), RGB, then (x - mean) / std,
    either inside the graph or (default) done by the runtime.
    """

    model: str  # "detector" | "aligner" | "gate" | "embedder" (or a tiny test model's name)
    height: int  # input height in pixels
    width: int  # input width in pixels
    mean: tuple[float, ...]  # per-channel mean of pixel / 255
    std: tuple[float, ...]  # per-channel std of pixel / 255
    channel_order: str = "RGB"
    channels: int = 3

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"{self.model}: mean/std need {self.channels} values, got {self.mean} / {self.std}")
        if min(self.std) <= 0:
            raise ConfigError(f"{self.model}: std must be positive, got {self.std}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"{self.model}: channel_order must be RGB or BGR, got {self.channel_order!r}")

    @classmethod
    def from_config(cls, model: str, cfg: Any) -> "InputContract":
        """Read the contract from a model config: input_height/input_width (or input_size), mean, std,
        channel_order (default RGB) and layout (must be NCHW on the torch side)."""
        if hasattr(cfg, "input_height") and hasattr(cfg, "input_width"):
            h, w = int(cfg.input_height), int(cfg.input_width)
        elif hasattr(cfg, "input_size"):
            size = cfg.input_size
            h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
        else:
            raise ConfigError(f"{model}: config {type(cfg).__name__} has no input_height/input_width or input_size")
        for name in ("mean", "std"):
            if not hasattr(cfg, name):
                raise ConfigError(f"{model}: config {type(cfg).__name__} has no {name!r} (input contract)")
        layout = getattr(cfg, "layout", "NCHW")
        if layout != "NCHW":
            raise ConfigError(f"{model}: torch models take NCHW input, config says {layout!r}")
        return cls(model=model, height=h, width=w, mean=tuple(float(v) for v in cfg.mean),
                   std=tuple(float(v) for v in cfg.std), channel_order=getattr(cfg, "channel_order", "RGB"))

    @property
    def shape_nchw(self) -> tuple[int, int, int, int]:
        return (1, self.channels, self.height, self.width)

    def normalise(self, x01: np.ndarray) -> np.ndarray:
        """(n, C, H, W) float in [0, 1] -> (x - mean) / std, float32."""
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return ((x01 - mean) / std).astype(np.float32)


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape, dtype (and int8 quantization when the file has it) of one exported I/O tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None  # int8 I/O: real = scale * (q - zero_point), read from the file
    zero_point: int | None = None


@dataclass(frozen=True)
class ExportResult:
    """What one export produced and what was really applied; `to_manifest()` is the manifest entry."""

    model: str
    target: Target
    path: Path
    seconds: float  # wall time of the conversion (shared conversions: the shared run's time)
    bytes: int  # file size, or the package's total size for .mlpackage
    quantization: str  # what was applied, in words, including calibration count and remedies
    layout: str  # NCHW or NHWC input
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    normalise_in_graph: bool  # False: the runtime applies (x - mean) / std before the model
    postprocess: tuple[str, ...]  # float ops the runtime applies after the model, e.g. ("l2_normalize",)
    contract: InputContract
    calibration_sha256: str | None = None
    notes: tuple[str, ...] = ()

    def to_manifest(self) -> dict[str, Any]:
        """The fields of a glassfinder_runtime.manifest.ModelEntry (the bundle builder adds sha256 and the
        file path inside the bundle)."""
        c = self.contract
        cap = CAPABILITIES[self.target]

        def tensor(t: TensorInfo) -> dict[str, Any]:
            return {**asdict(t), "shape": list(t.shape)}  # JSON lists, as the manifest parser expects

        return {
            "name": self.model, "file": self.path.name, "format": cap.manifest_format,
            "quantization": cap.manifest_quantization,
            "input": {**tensor(self.inputs[0]), "layout": self.layout, "channel_order": c.channel_order,
                      "normalization": "in_graph" if self.normalise_in_graph else "runtime",
                      "mean": list(c.mean), "std": list(c.std)},
            "outputs": [tensor(t) for t in self.outputs],
        }

    def to_report(self) -> dict[str, Any]:
        """Everything else about the export, for the export report and the parity.md."""
        return {"model": self.model, "target": self.target.value, "file": str(self.path),
                "seconds": round(self.seconds, 3), "bytes": self.bytes, "quantization": self.quantization,
                "postprocess": list(self.postprocess), "calibration_sha256": self.calibration_sha256,
                "notes": list(self.notes)}


def path_bytes(path: Path) -> int:
    """Size of a file, or of every file in a package directory (.mlpackage)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def timed_export(fn: Callable[..., "ExportResult"]) -> Callable[..., "ExportResult"]:
    """Time an exporter, fill `seconds` and `bytes`, and log one line (ultralytics' try_export, minus the
    exception swallowing: a failed export raises)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> ExportResult:
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        size = path_bytes(result.path)
        log.info("exported %s %s in %.1f s, %.3f MB: %s", result.model, result.target.value, seconds,
                 size / 1e6, result.path)
        return _replace(result, seconds=seconds, bytes=size)

    return wrapper


@contextlib.contextmanager
def quiet(log_path: Path | None = None) -> Iterator[None]:
    """Send a converter's prints and progress bars (Python and C/C++ level) to a log file.

    On an exception the log's tail is logged at ERROR level so a failure is never silent."""
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gf_log_"))) / "convert.log"
        f = stack.enter_context(open(log_path, "w"))
        saved = os.dup(1), os.dup(2)
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        except BaseException:
            f.flush()
            log.error("converter output (tail):\n%s", "\n".join(Path(log_path).read_text(errors="replace")
                                                                  .splitlines()[-20:]))
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _replace(result: ExportResult, **changes: Any) -> ExportResult:
    import dataclasses
    return dataclasses.replace(result, **changes)


def export_model(model: Any, contract: InputContract, target: Target, out_dir: Path, calib: Any = None,
                 options: ExportOptions = ExportOptions()) -> ExportResult:
    """Export `model` (torch nn.Module, eval mode) to one target in out_dir; see export_targets."""
    return export_targets(model, contract, [target], out_dir, calib, options)[target]


def export_targets(model: Any, contract: InputContract, targets: list[Target], out_dir: Path,
                   calib: Any = None, options: ExportOptions = ExportOptions()) -> dict[Target, ExportResult]:
    """Export one model to several targets, sharing the ONNX file and a single onnx2tf run.

    calib: a `glassfinder_export.calibration.CalibrationSet` (required by int8-activation targets).
    Files are named `<model>_<target><suffix>` in out_dir.
    """
    # Imports here: each exporter pulls a heavy converter (TensorFlow, coremltools, NNCF) that a
    # caller exporting only ONNX should not pay for.
    from glassfinder_export import onnx_export

    targets = [Target.parse(t) if isinstance(t, str) else t for t in targets]
    for t in targets:
        validate_export(t, options, calib if CAPABILITIES[t].needs_calibration else None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[Target, ExportResult] = {}
    boundary = onnx_export.export_boundary(model, contract, options)

    needs_onnx = [t for t in targets if CAPABILITIES[t].family in ("onnx", "tflite")]
    with tempfile.TemporaryDirectory(prefix="gf_export_") as tmp:
        if needs_onnx:
            # The float ONNX file is the common parent of TFLite and NNCF; kept only when asked for.
            onnx_dir = out_dir if Target.ONNX in targets else Path(tmp)
            onnx_result = onnx_export.export_onnx(boundary, contract, onnx_dir / f"{contract.model}_onnx.onnx",
                                                  options)
            if Target.ONNX in targets:
                results[Target.ONNX] = onnx_result
            tflite_targets = [t for t in targets if CAPABILITIES[t].family == "tflite"]
            if tflite_targets:
                from glassfinder_export import tflite_export
                results.update(tflite_export.export_tflite(onnx_result, tflite_targets, out_dir, calib,
                                                           per_channel=options.per_channel is not False))
            if Target.ONNX_INT8_NNCF in targets:
                from glassfinder_export import nncf_export
                results[Target.ONNX_INT8_NNCF] = nncf_export.export_nncf(boundary, onnx_result, out_dir, calib,
                                                                         options)
    for t in targets:
        if CAPABILITIES[t].family == "coreml":
            from glassfinder_export import coreml_export
            results[t] = coreml_export.export_coreml(boundary, contract, t, out_dir, calib, options)
    return {t: results[t] for t in targets}
