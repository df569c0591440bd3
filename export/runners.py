"""Run exported files the way the runtime will: one thread, batch 1, float boundary outside the graph.

`run_exported(result, x01)` is the parity path: it applies exactly what the ExportResult says the
runtime must do ((x - mean) / std when not in the graph, NCHW -> NHWC for TFLite, int8 quantize /
dequantize with the scale and zero-point read from the file, the L2-norm after the graph).
CoreML files cannot be run on Linux (MLModel.predict is macOS only); coreml_export verifies those.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from glassfinder_export.targets import CAPABILITIES, ExportResult, InputContract, Target
from glassfinder_runtime.errors import ConfigError
from glassfinder_runtime.pipeline import dequantize, l2_normalize, quantize


class TFLiteRunner:
    """A .tflite file on the LiteRT interpreter (ai_edge_litert), one thread, float in / float out.

    Inputs/outputs are addressed through the file's signature when it has one (onnx2tf writes one for
    the saved-model based files), else through the interpreter's tensor details; either way outputs
    come back in the ONNX output order."""

    def __init__(self, path: Path, output_names: Sequence[str] = (), num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        sigs = self.interpreter.get_signature_list()
        if len(sigs) > 1:
            raise ConfigError(f"{path}: expected at most one signature, found {list(sigs)}")
        self.runner = self.interpreter.get_signature_runner(next(iter(sigs))) if sigs else None
        if self.runner is not None:
            inputs = self.runner.get_input_details()
            out = self.runner.get_output_details()
        else:
            self.interpreter.allocate_tensors()
            inputs = {d["name"]: d for d in self.interpreter.get_input_details()}
            out = {d["name"]: d for d in self.interpreter.get_output_details()}
        if len(inputs) != 1:
            raise ConfigError(f"{path}: expected one input, found {list(inputs)}")
        self.input_name, self.input = next(iter(inputs.items()))
        # onnx2tf keeps the ONNX output names in float signatures, but names int8 signature outputs
        # output_0..N-1 and signature-less outputs Identity, Identity_1..., all in the ONNX output order.
        if output_names and set(out) == set(output_names):
            keys = list(output_names)
        elif all(re.fullmatch(r"output_\d+", k) for k in out):
            keys = sorted(out, key=lambda k: int(k.split("_")[1]))
        elif all(re.fullmatch(r"Identity(_\d+)?", k) for k in out):
            keys = sorted(out, key=lambda k: int(k.split("_")[1]) if "_" in k else 0)
        else:
            raise ConfigError(f"{path}: cannot match outputs {list(out)} to {list(output_names)}")
        self.output_keys = keys
        self.output_details = [out[k] for k in keys]

    @staticmethod
    def _quant(detail: dict) -> tuple[float, int] | None:
        scale, zp = detail["quantization"]
        return (float(scale), int(zp)) if scale != 0 else None

    @property
    def input_quant(self) -> tuple[float, int] | None:
        return self._quant(self.input)

    def output_quant(self, i: int) -> tuple[float, int] | None:
        return self._quant(self.output_details[i])

    def __call__(self, x: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        """x: the graph's float input (1, H, W, C) -> float outputs in ONNX order."""
        q = self.input_quant
        feed = quantize(x, *q, self.input["dtype"]) if q else x.astype(self.input["dtype"])
        if self.runner is not None:
            res = self.runner(**{self.input_name: feed})
            raw = [res[k] for k in self.output_keys]
        else:
            self.interpreter.set_tensor(self.input["index"], feed)
            self.interpreter.invoke()
            raw = [self.interpreter.get_tensor(d["index"]) for d in self.output_details]
        outs = []
        for i, r in enumerate(raw):
            qo = self.output_quant(i)
            outs.append(dequantize(r, *qo) if qo else r.astype(np.float32))
        return outs


class OnnxRunner:
    """An .onnx file (float or NNCF QDQ int8) on onnxruntime's CPU provider, one thread."""

    def __init__(self, path: Path, num_threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        return [np.asarray(o, np.float32) for o in self.session.run(None, {self.input_name: x.astype(np.float32)})]


def make_runner(result: ExportResult):
    family = CAPABILITIES[result.target].family
    if family == "tflite":
        return TFLiteRunner(result.path, [t.name for t in result.outputs])
    if family == "onnx":
        return OnnxRunner(result.path)
    raise ConfigError(f"{result.path}: {result.target.value} files cannot be run on this platform "
                      "(CoreML prediction is macOS only)")


def run_exported(result: ExportResult, x01: npt.NDArray[np.float32], runner=None) -> list[npt.NDArray[np.float32]]:
    """x01: (n, C, H, W) float32 pixels / 255 -> list of (n, ...) float outputs, post-processed as the runtime
    will (L2-norm outside the graph). Batch 1 per call, as exported."""
    runner = runner or make_runner(result)
    x = x01 if result.normalise_in_graph else result.contract.normalise(x01)
    if result.layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    per_item = [runner(np.ascontiguousarray(x[i:i + 1])) for i in range(len(x))]
    outs = [np.concatenate([p[j] for p in per_item], axis=0) for j in range(len(per_item[0]))]
    for j, (o, info) in enumerate(zip(outs, result.outputs)):
        if o.shape[1:] != tuple(info.shape[1:]):
            raise ConfigError(f"{result.path}: output {info.name} has shape {o.shape[1:]}, manifest says "
                              f"{tuple(info.shape[1:])}")
    if "l2_normalize" in result.postprocess:
        outs = [l2_normalize(o) for o in outs]
    return outs


def tflite_latency_ms(result: ExportResult, repeats: int = 30, warmup: int = 3) -> float:
    """Median ms of one call (quantize, invoke, dequantize) of an exported .tflite on one LiteRT
    thread, on a zero input (the time of these graphs does not depend on the values)."""
    runner = TFLiteRunner(result.path, [t.name for t in result.outputs])
    x = np.zeros(tuple(runner.input["shape"]), np.float32)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        runner(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def run_torch(model, contract: InputContract, x01: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    """The float reference: model.forward on the normalised input, batch 1 per call like the exported file."""
    import torch

    x = contract.normalise(x01)
    outs: list[list[np.ndarray]] = []
    with torch.no_grad():
        for i in range(len(x)):
            o = model(torch.from_numpy(x[i:i + 1]))
            outs.append([t.numpy() for t in (o if isinstance(o, (tuple, list)) else (o,))])
    return [np.concatenate([p[j] for p in outs], axis=0).astype(np.float32) for j in range(len(outs[0]))]


def measure_parity(model, contract: InputContract, results: Mapping[Target, ExportResult],
                   x01: npt.NDArray[np.float32], metrics_fn: Callable[[list, list], dict[str, float]],
                   simulations: Mapping[Target, Callable[[np.ndarray], list]] | None = None,
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, list[np.ndarray]]]:
    """Run torch float and every exported file on the held-out images x01 (n, C, H, W) in [0, 1].

    metrics_fn(ref_outputs, test_outputs) -> metrics (e.g. parity.embedder_metrics on output 0).
    simulations: Linux stand-ins for files this platform cannot run (CoreML W8A8: the fake-quantized
    torch model), called with x01. Other unrunnable targets are recorded as skipped, with the reason.
    Returns ({target: metrics}, {target: outputs}) with the torch outputs under "torch".
    """
    simulations = simulations or {}
    ref = run_torch(model, contract, x01)
    measured: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list[np.ndarray]] = {"torch": ref}
    for t, r in results.items():
        if CAPABILITIES[t].runs_here:
            outs = run_exported(r, x01)
        elif t in simulations:
            outs = simulations[t](x01)
        else:
            measured[t.value] = {"skipped": "CoreML prediction needs macOS; names, shapes, ops and "
                                            "decompressed weights were verified instead"}
            continue
        outputs[t.value] = outs
        measured[t.value] = metrics_fn(ref, outs)
        if t in simulations:
            measured[t.value]["note"] = "measured on a torch simulation of the file (no CoreML runtime here)"
    return measured, outputs
