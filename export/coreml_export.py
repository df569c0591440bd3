"""torch -> CoreML mlprogram: fp16, int8 weights, and W8A8 (int8 weights and activations).

Linux cannot run CoreML models (MLModel.predict is macOS only), so every export is verified here
with what Linux can read (`MLModel(path, skip_model_load=True)`): input/output names, shapes and
dtypes, the op histogram, the package size, and the weights decompressed back to float compared
with the float reference weights (torch, BatchNorm folded, read from a float ONNX export).
W8A8 is calibrated in torch (coremltools.optimize.torch LinearQuantizer observers on the calibration
set), because post-conversion activation calibration needs prediction, i.e. macOS; the same
fake-quantized torch model is the Linux-side simulation of the W8A8 numerics.
"""
from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from glassfinder_export.targets import (ExportOptions, ExportResult, InputContract, Target, TensorInfo, path_bytes,
                                        quiet, timed_export)
from glassfinder_runtime.errors import ConfigError

# Decompressed weights vs float reference, max |w - w_ref| / max |w_ref| per tensor.
FP16_WEIGHT_RTOL = 2e-3  # float16 has an 11-bit mantissa: 2^-11 ~ 5e-4 per value
INT8_WEIGHT_RTOL = 1.2e-2  # symmetric int8: half a step is max/254 ~ 4e-3; fp16 storage of scales adds a little
_MIL_TYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "INT32": "int32", "DOUBLE": "float64"}


def _ct():
    """Import coremltools with its Linux-only warnings (no native runtime, untested versions) silenced."""
    with warnings.catch_warnings(), quiet():  # "Failed to load _MLModelProxy" lines: no native runtime on Linux
        warnings.simplefilter("ignore")
        import coremltools as ct
    # coremltools warns at every conversion that torch/TF/sklearn versions are untested (they ran fine here).
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    return ct


def _convert(module: torch.nn.Module, contract: InputContract, output_names: tuple[str, ...]):
    ct = _ct()
    x = torch.zeros(contract.shape_nchw)
    with torch.no_grad(), warnings.catch_warnings(), quiet():  # coremltools draws progress bars
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), x)
        return ct.convert(
            traced,
            # float32 input: the app feeds float pixels; CoreML casts to fp16 inside the graph
            inputs=[ct.TensorType(name="input", shape=contract.shape_nchw, dtype=np.float32)],
            # float32 outputs too: every platform's runtime reads float32 (the cast is one op at the end)
            outputs=[ct.TensorType(name=n, dtype=np.float32) for n in output_names],
            convert_to="mlprogram",  # the neuralnetwork format has no int8 activations and is legacy
            minimum_deployment_target=ct.target.iOS17,  # iOS17 ops: per-channel int8 constexpr and W8A8 quantize
            compute_precision=ct.precision.FLOAT16,  # fp16 compute on GPU/ANE; what every target here runs
        )


# Calibrated W8A8 modules by wrapped model: export and the parity simulation share one calibration run.
_W8A8_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def w8a8_simulation(module: torch.nn.Module, contract: InputContract, calib, normalise_in_graph: bool,
                    options: ExportOptions) -> torch.nn.Module:
    """A fake-quantized (int8 weights and activations) copy of `module`, calibrated on the set.

    It is what coremltools converts to W8A8, and on Linux it stands in for running the W8A8 model.
    Cached per wrapped model, calibration set and options (the model must not change in between)."""
    key = (calib.sha256, normalise_in_graph, options, contract)
    per_model = _W8A8_CACHE.setdefault(module.model, {})
    if key not in per_model:
        per_model[key] = _w8a8_calibrate(module, contract, calib, normalise_in_graph, options)
    return per_model[key]


def _w8a8_calibrate(module: torch.nn.Module, contract: InputContract, calib, normalise_in_graph: bool,
                    options: ExportOptions) -> torch.nn.Module:
    _ct()  # the quiet import
    from coremltools.optimize.torch.quantization import (LinearQuantizer, LinearQuantizerConfig,
                                                          ModuleLinearQuantizerConfig)

    per_channel = options.per_channel is not False
    global_cfg = ModuleLinearQuantizerConfig(
        quantization_scheme="symmetric",  # zero-point 0 weights: what the ANE/GPU int8 kernels expect
        weight_per_channel=per_channel,
        milestones=None,  # observers and fake-quant on from the first batch: pure calibration, no training
    )
    # float_layers: torch module names (relative to the model); the export wrapper holds the model as "model".
    module_cfgs = {f"model.{name}": None for name in options.float_layers}
    names = {n for n, _ in module.named_modules()}
    missing = [n for n in module_cfgs if n not in names]
    if missing:
        raise ConfigError(f"{contract.model}: float_layers {missing} are not modules of the model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer = LinearQuantizer(copy.deepcopy(module).eval(),
                                    LinearQuantizerConfig(global_config=global_cfg, module_name_configs=module_cfgs))
        prepared = quantizer.prepare(example_inputs=(torch.zeros(contract.shape_nchw),), inplace=True)
        prepared.eval()  # BatchNorm uses its running statistics; the observers still record ranges
        x = calib.model_inputs(contract, normalise=not normalise_in_graph)
        with torch.no_grad():
            for i in range(len(x)):
                prepared(torch.from_numpy(x[i:i + 1]))
        return quantizer.finalize(inplace=False).eval()


def _quantize_weights(mlmodel, per_channel: bool):
    ct = _ct()
    config = ct.optimize.coreml.OptimizationConfig(global_config=ct.optimize.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric",  # zero-point 0: cheapest decompression on device
        dtype="int8",
        granularity="per_channel" if per_channel else "per_tensor",
        weight_threshold=0,  # the default (2048 elements) silently skips small layers; quantize them all
    ))
    with quiet():
        return ct.optimize.coreml.linear_quantize_weights(mlmodel, config=config)


@dataclass(frozen=True)
class CoreMLCheck:
    """What Linux can verify about an .mlpackage."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    op_histogram: dict[str, int]
    weight_rel_errors: tuple[float, ...]  # per conv/linear weight, vs the float reference, in graph order
    bytes: int


def _feature_info(f) -> TensorInfo:
    t = f.type.multiArrayType
    dtype = _MIL_TYPES.get(type(t).ArrayDataType.Name(t.dataType), str(t.dataType))
    return TensorInfo(f.name, tuple(int(s) for s in t.shape), dtype)


def reference_weights(module: torch.nn.Module, contract: InputContract) -> list[np.ndarray]:
    """Float weights of every Conv/Gemm in graph order, BatchNorm folded (via a temporary ONNX export)."""
    import onnx
    from onnx import numpy_helper

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "ref.onnx"
        torch.onnx.export(module.eval(), (torch.zeros(contract.shape_nchw),), str(path), dynamo=False,
                          opset_version=17, do_constant_folding=True)
        graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [inits[n.input[1]].astype(np.float32) for n in graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits]


def verify_mlpackage(path: Path, contract: InputContract, output_names: tuple[str, ...],
                     ref_weights: list[np.ndarray], rtol: float) -> CoreMLCheck:
    """Check an .mlpackage without loading it into a CoreML runtime; raise ConfigError on any mismatch."""
    ct = _ct()
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    inputs = tuple(_feature_info(f) for f in spec.description.input)
    outputs = tuple(_feature_info(f) for f in spec.description.output)
    if [i.name for i in inputs] != ["input"] or inputs[0].shape != contract.shape_nchw:
        raise ConfigError(f"{path}: inputs {inputs} do not match the contract {contract.shape_nchw}")
    if tuple(o.name for o in outputs) != tuple(output_names):
        raise ConfigError(f"{path}: outputs {[o.name for o in outputs]} != {list(output_names)}")
    blocks = list(spec.mlProgram.functions["main"].block_specializations.values())
    hist = Counter(op.type for blk in blocks for op in blk.operations)
    # Weight names feeding conv/linear, in graph order; decompress constexpr (int8) weights back to float.
    weight_names = [op.inputs["weight"].arguments[0].name for blk in blocks for op in blk.operations
                    if op.type in ("conv", "linear", "matmul") and "weight" in op.inputs]
    with warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")
        decompressed = ct.optimize.coreml.decompress_weights(mlmodel)
        meta = ct.optimize.coreml.get_weights_metadata(decompressed, weight_threshold=0)
    weights = [np.asarray(meta[n].val, np.float32) for n in weight_names if n in meta]
    if len(weights) != len(ref_weights):
        raise ConfigError(f"{path}: {len(weights)} conv/linear weights, the float model has {len(ref_weights)}")
    errors = []
    for i, (w, r) in enumerate(zip(weights, ref_weights)):
        if w.ndim == 2 and w.shape != r.shape and w.T.shape == r.shape:
            w = w.T  # ONNX MatMul keeps a bias-free Linear's weight as (in, out); Core ML's linear as (out, in)
        if w.shape != r.shape:
            raise ConfigError(f"{path}: weight {i} has shape {w.shape}, the float model {r.shape}")
        errors.append(float(np.abs(w - r).max() / max(np.abs(r).max(), 1e-12)))
    if errors and max(errors) > rtol:
        raise ConfigError(f"{path}: decompressed weight {int(np.argmax(errors))} differs from the float model by "
                          f"{max(errors):.4f} (relative), more than {rtol}")
    return CoreMLCheck(inputs, outputs, dict(hist), tuple(errors), path_bytes(path))


@timed_export
def export_coreml(boundary, contract: InputContract, target: Target, out_dir: Path, calib,
                  options: ExportOptions) -> ExportResult:
    """Convert the float-boundary module to one CoreML target, save `<model>_<target>.mlpackage`, verify it."""
    if target not in (Target.COREML_FP16, Target.COREML_INT8W, Target.COREML_W8A8):
        raise ConfigError(f"{target.value} is not a CoreML target")
    per_channel = options.per_channel is not False
    module = boundary.module
    if target is Target.COREML_W8A8:
        if calib is None:
            raise ConfigError(f"{contract.model}: coreml_w8a8 needs a calibration set")
        module = w8a8_simulation(module, contract, calib, boundary.normalise_in_graph, options)
    mlmodel = _convert(module, contract, boundary.output_names)
    scheme = "per-channel" if per_channel else "per-tensor"
    quant = "float16 compute and weights (mlprogram), float32 I/O"
    if target is Target.COREML_INT8W:
        mlmodel = _quantize_weights(mlmodel, per_channel)
        quant = f"int8 symmetric {scheme} weights, float16 activations, float32 I/O"
    elif target is Target.COREML_W8A8:
        quant = f"W8A8: int8 symmetric {scheme} weights and int8 activations, calibrated on {len(calib)} images"
        if options.float_layers:
            quant += f", kept in float: {', '.join(options.float_layers)}"
    path = Path(out_dir) / f"{contract.model}_{target.value}.mlpackage"
    if path.exists():
        shutil.rmtree(path)
    with warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")
        mlmodel.save(str(path))
    rtol = FP16_WEIGHT_RTOL if target is Target.COREML_FP16 else INT8_WEIGHT_RTOL
    check = verify_mlpackage(path, contract, boundary.output_names, reference_weights(boundary.module, contract), rtol)
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(check.op_histogram.items()) if k != "const")
    return ExportResult(
        model=contract.model, target=target, path=path, seconds=0.0, bytes=check.bytes, quantization=quant,
        layout="NCHW", inputs=check.inputs, outputs=check.outputs, normalise_in_graph=boundary.normalise_in_graph,
        postprocess=boundary.postprocess, contract=contract,
        calibration_sha256=calib.sha256 if target is Target.COREML_W8A8 else None,
        notes=(f"verified on Linux without prediction: ops {ops}",
               f"max decompressed weight error {max(check.weight_rel_errors, default=0):.2e} (relative)",
               *(f"output {i} clamped to +-{b:g} in the graph" for i, b in options.clip_outputs)))


def w8a8_runner(boundary, contract: InputContract, calib, options: ExportOptions = ExportOptions()):
    """Linux stand-in for running the coreml_w8a8 file: x01 (n, C, H, W) in [0, 1] -> outputs, with the
    same float boundary as the exported package (normalisation and L2-norm outside when they are)."""
    from glassfinder_runtime.pipeline import l2_normalize

    sim = w8a8_simulation(boundary.module, contract, calib, boundary.normalise_in_graph, options)

    def run(x01: np.ndarray) -> list[np.ndarray]:
        x = x01 if boundary.normalise_in_graph else contract.normalise(x01)
        per_item = []
        with torch.no_grad():
            for i in range(len(x)):
                o = sim(torch.from_numpy(np.ascontiguousarray(x[i:i + 1])))
                per_item.append([t.numpy() for t in (o if isinstance(o, (tuple, list)) else (o,))])
        outs = [np.concatenate([p[j] for p in per_item]).astype(np.float32) for j in range(len(per_item[0]))]
        return [l2_normalize(o) for o in outs] if "l2_normalize" in boundary.postprocess else outs

    return run
