"""ONNX -> TFLite float32 / float16 / full-integer int8 with onnx2tf (one run for all three).

onnx2tf turns the NCHW ONNX graph into an NHWC TensorFlow graph (so the .tflite input is
(1, H, W, C)) and then runs the TFLite converter. Known traps handled here (TOOLCHAIN.md):
- it loads `calibration_image_sample_data_20x128x128x3_float32.npy` from the *working directory* and
  otherwise downloads it, even with custom calibration data: we run in a temp dir that holds one, and
  block any download attempt with a clear error;
- without explicit mean/std it applies ImageNet normalisation to the calibration data: we pass the
  calibration data already preprocessed and mean 0 / std 1;
- a failed full-integer conversion is only a warning in onnx2tf: we check the file exists.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
import numpy as np

from glassfinder_export.targets import ExportResult, Target, TensorInfo, path_bytes, quiet
from glassfinder_runtime.errors import ConfigError

# Keep TensorFlow's C++ logging quiet; must be set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_SAMPLE_NAME = "calibration_image_sample_data_20x128x128x3_float32.npy"
_FILES = {
    Target.TFLITE_FP32: "_float32.tflite",
    Target.TFLITE_FP16: "_float16.tflite",
    Target.TFLITE_INT8: "_full_integer_quant.tflite",
    Target.TFLITE_DYNAMIC_INT8: "_dynamic_range_quant.tflite",
}


class _NoDownload:
    """Stands in for `requests` inside onnx2tf: an attempted download is a bug here, not a retry."""

    class exceptions:  # onnx2tf catches requests.exceptions.Timeout
        Timeout = TimeoutError

    @staticmethod
    def get(url: str, *args, **kwargs):
        raise ConfigError(f"onnx2tf tried to download {url}; export never downloads (sample-data trap)")


def _log_tail(log_path: Path, n: int = 15) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def run_onnx2tf(onnx_path: Path, work: Path, calib_nhwc: np.ndarray | None, per_channel: bool = True) -> Path:
    """Convert in `work` (a scratch dir); returns the folder with the .tflite files."""
    import onnx2tf
    from onnx2tf.utils import common_functions

    # The self-check sample it would otherwise download; its content only feeds onnx2tf's dummy inference.
    np.save(work / _SAMPLE_NAME, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    calib_args = None
    if calib_nhwc is not None:
        np.save(work / "calibration_nhwc.npy", calib_nhwc.astype(np.float32))
        c = calib_nhwc.shape[-1]
        # Data is already in the graph's input space, so mean 0 / std 1 (onnx2tf defaults to ImageNet's).
        calib_args = [["input", str(work / "calibration_nhwc.npy"),
                       np.zeros((1, 1, 1, c), np.float32), np.ones((1, 1, 1, c), np.float32)]]
    out = work / "tf"
    log_path = work / "onnx2tf.log"
    real_requests = common_functions.requests
    common_functions.requests = _NoDownload
    try:
        with contextlib.chdir(work), quiet(log_path), warnings.catch_warnings():
            # onnx2tf's own checks still use tf.lite.Interpreter, which warns that it is deprecated
            warnings.simplefilter("ignore", UserWarning)
            onnx2tf.convert(
                input_onnx_file_path=str(onnx_path),
                output_folder_path=str(out),
                # -oiqt: also write the int8 variants (needs calibration data)
                output_integer_quantized_tflite=calib_nhwc is not None,
                # -cind: our calibration data, our normalisation (see calib_args)
                custom_input_op_name_np_data_path=calib_args,
                # per-channel weight scales: per-tensor loses too much on depthwise/small convs
                quant_type="per-channel" if per_channel else "per-tensor",
                # int8 I/O: a full-integer graph; the runtime quantizes with the file's scale/zero-point
                input_quant_dtype="int8",
                output_quant_dtype="int8",
                # the ONNX file is already simplified by onnx_export; a second pass only costs time
                not_use_onnxsim=True,
                # -osd: write signature defs. The runners address inputs/outputs through the signature, and
                # without it saved_model generation fails on TorchScript node names such as "/model/x/Conv"
                output_signaturedefs=True,
                # copying ONNX names into the tflite needs the external `flatc` binary: signatures carry them
                copy_onnx_input_output_names_to_tflite=False,
                non_verbose=True,
            )
    except SystemExit as exc:  # onnx2tf calls sys.exit(1) on conversion errors
        raise ConfigError(f"{onnx_path}: onnx2tf failed (exit {exc.code}):\n{_log_tail(log_path)}") from None
    finally:
        common_functions.requests = real_requests
    return out


def _op_names(path: Path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    return [op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()]


def _float_ops(path: Path) -> list[str]:
    """Ops of a quantized graph that compute in float (a float island), quantize/dequantize excluded."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    islands = []
    for op in it._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if any(tensors[i]["dtype"] == np.float32 for i in op["outputs"] if i in tensors):
            islands.append(op["op_name"])
    return islands


def _io_infos(path: Path, output_names: list[str]) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    from glassfinder_export.runners import TFLiteRunner

    r = TFLiteRunner(path, output_names)

    def info(name: str, d: dict) -> TensorInfo:
        scale, zp = d["quantization"]
        return TensorInfo(name, tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]).name,
                          float(scale) if scale else None, int(zp) if scale else None)

    inputs = (info(r.input_name, r.input),)
    outputs = tuple(info(n, d) for n, d in zip(output_names, r.output_details))
    return inputs, outputs


def export_tflite(onnx_result: ExportResult, targets: list[Target], out_dir: Path, calib=None,
                  per_channel: bool = True) -> dict[Target, ExportResult]:
    """One onnx2tf run for every requested TFLite target; files `<model>_<target>.tflite` in out_dir."""
    contract = onnx_result.contract
    want_int8 = Target.TFLITE_INT8 in targets or Target.TFLITE_DYNAMIC_INT8 in targets
    calib_nhwc = None
    if want_int8:
        if calib is None:
            raise ConfigError(f"{contract.model}: int8 TFLite targets need a calibration set")
        # The int8 graph's input space: normalised unless normalisation is inside the graph.
        calib_nhwc = calib.model_inputs(contract, normalise=not onnx_result.normalise_in_graph).transpose(0, 2, 3, 1)
    t0 = time.perf_counter()
    results: dict[Target, ExportResult] = {}
    with tempfile.TemporaryDirectory(prefix="gf_onnx2tf_") as tmp:
        work = Path(tmp)
        out = run_onnx2tf(onnx_result.path.resolve(), work, calib_nhwc, per_channel)
        seconds = time.perf_counter() - t0
        stem = onnx_result.path.stem
        output_names = [t.name for t in onnx_result.outputs]
        for t in targets:
            src = out / f"{stem}{_FILES[t]}"
            if not src.is_file():
                raise ConfigError(f"{contract.model}: onnx2tf did not write {src.name} for {t.value}:\n"
                                  f"{_log_tail(work / 'onnx2tf.log')}")
            dst = Path(out_dir) / f"{contract.model}_{t.value}.tflite"
            shutil.copyfile(src, dst)
            flex = [op for op in _op_names(dst) if op.startswith("Flex") or op == "CUSTOM"]
            if flex:
                raise ConfigError(f"{dst}: uses TensorFlow ops {sorted(set(flex))} that LiteRT builtins cannot run")
            inputs, outputs = _io_infos(dst, output_names)
            notes = [f"onnx2tf run shared by {', '.join(x.value for x in targets)} ({seconds:.1f} s)",
                     *(n for n in onnx_result.notes if "clamped" in n)]
            quant = {Target.TFLITE_FP32: "none (float32)",
                     Target.TFLITE_FP16: "float16 weights, float32 compute and I/O",
                     Target.TFLITE_DYNAMIC_INT8: "dynamic-range int8: int8 weights, float activations and I/O"}.get(t)
            sha = None
            if t is Target.TFLITE_INT8:
                scheme = "per-channel" if per_channel else "per-tensor"
                quant = (f"full-integer int8, {scheme} weights, int8 I/O, calibrated on {len(calib)} images")
                sha = calib.sha256
                islands = _float_ops(dst)
                notes.append(f"float islands: {sorted(set(islands))}" if islands else "all ops integer")
                if inputs[0].scale is None:
                    raise ConfigError(f"{dst}: int8 export has a float input: full-integer quantization failed")
            results[t] = ExportResult(
                model=contract.model, target=t, path=dst, seconds=seconds, bytes=path_bytes(dst),
                quantization=quant, layout="NHWC", inputs=inputs, outputs=outputs,
                normalise_in_graph=onnx_result.normalise_in_graph, postprocess=onnx_result.postprocess,
                contract=contract, calibration_sha256=sha, notes=tuple(notes))
    return results
