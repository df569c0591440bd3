"""Float ONNX -> NNCF int8 QDQ ONNX: the desktop quantized reference, run on onnxruntime.

It answers "is an int8 parity miss the quantization scheme or the TFLite converter?" with a second,
independent int8 implementation on the same calibration set.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import onnx

from glassfinder_export.targets import ExportOptions, ExportResult, Target, path_bytes, quiet
from glassfinder_runtime.errors import ConfigError


def _tokens(name: str) -> list[str]:
    """Scope tokens with consecutive repeats collapsed: "/model/blocks8/blocks8.4/pw/Conv" ->
    ["model", "blocks8", "4", "pw"] (the op type at the end is dropped)."""
    out: list[str] = []
    for t in name.replace("/", ".").split(".")[:-1]:
        if t and (not out or out[-1] != t):
            out.append(t)
    return out


def onnx_node_names(onnx_path: Path, torch_module: str) -> list[str]:
    """ONNX nodes the TorchScript exporter emitted for a torch module such as "features.0" or "blocks8.4.pw".

    Node names are scopes like "/features/features.0/Conv" (a Sequential child repeats its parent's
    name); the module's dotted path must appear as a contiguous run of the scope's tokens."""
    want = torch_module.split(".")
    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    hits = []
    for n in nodes:
        toks = _tokens(n.name)
        if any(toks[i:i + len(want)] == want for i in range(len(toks) - len(want) + 1)):
            hits.append(n.name)
    return hits


def export_nncf(boundary, onnx_result: ExportResult, out_dir: Path, calib, options: ExportOptions) -> ExportResult:
    """Quantize onnx_result's file with NNCF post-training quantization on the calibration set."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    logging.getLogger("nncf").setLevel(logging.ERROR)
    contract = onnx_result.contract
    if calib is None:
        raise ConfigError(f"{contract.model}: onnx_int8_nncf needs a calibration set")
    t0 = time.perf_counter()
    model = onnx.load(str(onnx_result.path))
    x = calib.model_inputs(contract, normalise=not onnx_result.normalise_in_graph)
    dataset = nncf.Dataset([{onnx_result.inputs[0].name: x[i:i + 1]} for i in range(len(x))])
    ignored = []
    for name in options.float_layers:
        nodes = onnx_node_names(onnx_result.path, name)
        if not nodes:
            raise ConfigError(f"{contract.model}: float_layers names {name!r}, which matches no ONNX node")
        ignored += nodes
    per_channel = options.per_channel is not False
    with quiet():  # NNCF draws progress bars on stdout
        quantized = nncf.quantize(
            model, dataset,
            # symmetric int8 weights and activations: what TFLite int8 and CoreML W8A8 use too
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(x),  # every calibration image, not NNCF's default 300-sample draw
            ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
            advanced_parameters=AdvancedQuantizationParameters(
                weights_quantization_params=QuantizationParameters(per_channel=per_channel)),
        )
    path = Path(out_dir) / f"{contract.model}_{Target.ONNX_INT8_NNCF.value}.onnx"
    onnx.save(quantized, str(path))
    quant = (f"int8 QDQ (NNCF PTQ, symmetric), {'per-channel' if per_channel else 'per-tensor'} weights, "
             f"float I/O, calibrated on {len(x)} images")
    if options.float_layers:
        quant += f", kept in float: {', '.join(options.float_layers)}"
    n_q = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
    return ExportResult(
        model=contract.model, target=Target.ONNX_INT8_NNCF, path=path, seconds=time.perf_counter() - t0,
        bytes=path_bytes(path), quantization=quant, layout="NCHW", inputs=onnx_result.inputs,
        outputs=onnx_result.outputs, normalise_in_graph=onnx_result.normalise_in_graph,
        postprocess=onnx_result.postprocess, contract=contract, calibration_sha256=calib.sha256,
        notes=(f"{n_q} QuantizeLinear nodes", *(n for n in onnx_result.notes if "clamped" in n)))
