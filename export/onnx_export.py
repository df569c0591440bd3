"""torch -> ONNX (static batch 1, one file) -> onnxsim, behind an explicit float-boundary wrapper.

The wrapper fixes the export-time contract (like ultralytics' IOSDetectModel): what the graph's
input is (normalised or [0, 1] pixels) and whether the embedder's L2-norm is inside. Everything
downstream (TFLite, NNCF) starts from the one ONNX file written here.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

from glassfinder_export.targets import ExportOptions, ExportResult, InputContract, Target, TensorInfo, timed_export
from glassfinder_runtime.errors import ConfigError

INPUT_NAME = "input"
# Methods that return forward()'s outputs minus the float-boundary L2-norm, in order of preference
# (the embedder calls it forward_features; the tiny test models forward_export).
EXPORT_HEADS = ("forward_export", "forward_features")
# forward_export() must equal forward() up to the L2-norm to this tolerance (float32 round-off).
_L2_CHECK_ATOL = 1e-5


class FloatBoundary(nn.Module):
    """The graph that is exported: optional (x - mean) / std, then forward() or forward_export()."""

    def __init__(self, model: nn.Module, contract: InputContract, normalise_in_graph: bool, head: str | None,
                 clip_outputs: tuple[tuple[int, float], ...] = ()):
        super().__init__()
        self.model = model
        self.normalise_in_graph = normalise_in_graph
        self.head = head  # name of the export-graph method, or None for forward()
        self.clip_outputs = dict(clip_outputs)  # output index -> bound
        self.register_buffer("mean", torch.tensor(contract.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(contract.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor):
        if self.normalise_in_graph:
            x = (x - self.mean) / self.std
        out = getattr(self.model, self.head)(x) if self.head else self.model(x)
        if not self.clip_outputs:
            return out
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        for i, b in self.clip_outputs.items():
            outs[i] = outs[i].clamp(-b, b)
        return tuple(outs) if isinstance(out, (tuple, list)) else outs[0]


@dataclass(frozen=True)
class Boundary:
    """The wrapped model plus what the runtime must do around it."""

    module: FloatBoundary
    normalise_in_graph: bool
    postprocess: tuple[str, ...]  # e.g. ("l2_normalize",): applied by the runtime in float
    output_names: tuple[str, ...]


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def export_boundary(model: nn.Module, contract: InputContract, options: ExportOptions) -> Boundary:
    """Wrap `model` for export and work out (numerically) what post-processing moves to the runtime."""
    model = model.eval()
    head = next((getattr(model, n) for n in EXPORT_HEADS if hasattr(model, n)), None)
    use_head = head is not None and not options.l2_in_graph
    postprocess: tuple[str, ...] = ()
    x = torch.from_numpy(contract.normalise(np.random.default_rng(0).random(contract.shape_nchw, np.float32)))
    with torch.no_grad():
        ref = _as_tuple(model(x))
        if use_head:
            raw = _as_tuple(head(x))
            if len(raw) != len(ref) or any(r.shape != q.shape for r, q in zip(raw, ref)):
                raise ConfigError(f"{contract.model}: {head.__name__}() and forward() return different shapes")
            if all(torch.allclose(r, q, atol=_L2_CHECK_ATOL) for r, q in zip(raw, ref)):
                use_head = False  # nothing is taken out: export forward() itself
            elif len(raw) == 1 and torch.allclose(F.normalize(raw[0], dim=-1), ref[0], atol=_L2_CHECK_ATOL):
                postprocess = ("l2_normalize",)
            else:
                raise ConfigError(f"{contract.model}: {head.__name__}() must equal forward() without its final "
                                  "L2-norm; it differs by more than that")
    names = tuple(getattr(model, "output_names", None) or
                  (("embedding",) if postprocess else tuple(f"output_{i}" for i in range(len(ref)))))
    if len(names) != len(ref):
        raise ConfigError(f"{contract.model}: output_names has {len(names)} names for {len(ref)} outputs")
    if any(not 0 <= i < len(ref) for i, _ in options.clip_outputs):
        raise ConfigError(f"{contract.model}: clip_outputs {options.clip_outputs} names an output the model "
                          f"does not have ({len(ref)} outputs)")
    module = FloatBoundary(model, contract, options.normalise_in_graph, head.__name__ if use_head else None,
                           options.clip_outputs).eval()
    return Boundary(module, options.normalise_in_graph, postprocess, names)


def onnx_io(path: Path) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """Input and output names/shapes/dtypes read back from an ONNX file (config-vs-reality)."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def info(v) -> TensorInfo:
        t = v.type.tensor_type
        return TensorInfo(v.name, tuple(d.dim_value for d in t.shape.dim),
                          onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name)

    inits = {i.name for i in graph.initializer}
    return (tuple(info(v) for v in graph.input if v.name not in inits), tuple(info(v) for v in graph.output))


@timed_export
def export_onnx(boundary: Boundary, contract: InputContract, path: Path, options: ExportOptions) -> ExportResult:
    """Write a single-file, static-batch, simplified ONNX model at `path`."""
    import onnxsim

    path = Path(path)
    t0 = time.perf_counter()
    x = torch.zeros(contract.shape_nchw)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter (dynamo=False) is deprecated but writes one self-contained file with our
        # names; the dynamo exporter writes weights to a separate .onnx.data file and renames the input.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            boundary.module, (x,), str(path),
            dynamo=False,
            opset_version=options.opset,  # 17: verified with onnxsim, onnx2tf and NNCF here
            input_names=[INPUT_NAME],
            output_names=list(boundary.output_names),
            dynamic_axes=None,  # static batch 1: onnx2tf fails on a dynamic batch
            do_constant_folding=True,  # folds BatchNorm into conv weights before quantization sees them
        )
    model = onnx.load(str(path))
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ConfigError(f"{contract.model}: onnxsim could not validate the simplified graph of {path}")
    onnx.checker.check_model(simplified, full_check=True)
    onnx.save(simplified, str(path))
    inputs, outputs = onnx_io(path)
    return ExportResult(
        model=contract.model, target=Target.ONNX, path=path, seconds=time.perf_counter() - t0, bytes=0,
        quantization="none (float32)", layout="NCHW", inputs=inputs, outputs=outputs,
        normalise_in_graph=boundary.normalise_in_graph, postprocess=boundary.postprocess, contract=contract,
        notes=(f"opset {options.opset}, onnxsim",
               *(f"output {i} clamped to +-{b:g} in the graph" for i, b in options.clip_outputs)))
