"""Export one model to its targets, measure parity, apply the known int8 remedies, record all of it.

This is the per-model step a bundle builder calls: it returns the files (ExportResult, manifest-ready)
and the model's parity entries; the builder adds the end-to-end entry, runs `parity.check_parity`,
writes parity.json / parity.md and calls `parity.enforce_parity` before writing anything else.

Remedies for an int8 miss, in the order they are applied (each recorded in the report):
1. float boundary: normalisation and L2-norm outside the int8 graph (the default export);
2. per-channel weight scales (the default for every int8 target);
3. first and last layer kept in float, plus any layer whose input has an outlier channel (measured
   on the calibration set), for targets that can (onnx_int8_nncf, coreml_w8a8); re-exported only
   when 1-2 were not enough;
4. better calibration data: cannot be automated; the failure message says so.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import numpy.typing as npt
from torch import nn

from glassfinder_export.parity import ParityThresholds, check_parity
from glassfinder_export.runners import measure_parity
from glassfinder_export.targets import (CAPABILITIES, ExportOptions, ExportResult, InputContract, Target,
                                        export_targets)

BOUNDARY_REMEDY = "normalisation and L2-norm at the float boundary (outside the int8 graph)"
PER_CHANNEL_REMEDY = "per-channel weight scales"
# An input channel this many times wider than the median channel marks a layer to keep in float.
OUTLIER_RATIO = 50.0
CALIBRATION_HINT = ("still below threshold: try better calibration data (more images, closer to real queries; "
                    "see calibration_data/README.md)")


@dataclass(frozen=True)
class ParitySpec:
    """How one model's parity is measured."""

    x01: npt.NDArray[np.float32]  # (n, C, H, W) held-out images in [0, 1] (calibration_data/<model>_parity.npz)
    metrics_fn: Callable[[list, list], dict[str, float]]  # (torch outputs, exported outputs) -> metrics
    thresholds: ParityThresholds = ParityThresholds()


def first_last_layers(model: nn.Module) -> tuple[str, ...]:
    """Names of the first Conv/Linear module and of the last one on every output path (a detector has
    a box and a score head, the aligner a landmark and a face-flag head): the layers int8 hurts most
    (raw pixels in; boxes, landmarks or the embedding out). Output paths come from a torch.fx trace;
    a model fx cannot trace (data-dependent checks in forward) falls back to the last module."""
    import torch.fx

    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not names:
        raise ValueError("model has no Conv2d/Linear layer")
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any trace failure means "use the simple rule"
        return names[0], names[-1]
    layer_nodes = [n for n in graph.nodes if n.op == "call_module" and n.target in set(names)]

    def feeds_a_layer(node) -> bool:
        seen, todo = set(), list(node.users)
        while todo:
            u = todo.pop()
            if u in seen:
                continue
            seen.add(u)
            if u.op == "call_module" and u.target in set(names):
                return True
            todo.extend(u.users)
        return False

    last = [n.target for n in layer_nodes if not feeds_a_layer(n)]
    return (names[0], *[n for n in last if n != names[0]])


def outlier_layers(model: nn.Module, x: npt.NDArray[np.float32], min_ratio: float = OUTLIER_RATIO,
                   ) -> list[tuple[str, float]]:
    """Conv/Linear modules whose *input* has an outlier channel on the images x (the model's normalised
    input, (n, C, H, W)): ratio = largest per-channel |activation| max / median channel max.

    One channel 100x wider than the others leaves the rest a few int8 steps: the classic reason a
    per-tensor activation scale collapses. Returns [(module name, ratio)], worst first."""
    import torch

    absmax: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(_m, inputs, _out, name=name):
                a = inputs[0].detach().abs()
                a = a.amax(dim=tuple(d for d in range(a.ndim) if d != 1))  # per channel (dim 1)
                absmax[name] = torch.maximum(absmax[name], a) if name in absmax else a
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for i in range(0, len(x), 16):
                model(torch.from_numpy(np.ascontiguousarray(x[i:i + 16])))
    finally:
        for h in hooks:
            h.remove()
    ratios = [(n, float(a.max() / a.median().clamp_min(1e-12))) for n, a in absmax.items() if a.numel() > 1]
    return sorted([r for r in ratios if r[1] >= min_ratio], key=lambda r: -r[1])


def _quantized(t: Target) -> bool:
    return CAPABILITIES[t].needs_calibration or t in (Target.COREML_INT8W,)


def _simulations(model: nn.Module, contract: InputContract, targets: list[Target], calib,
                 options: ExportOptions) -> dict[Target, Callable]:
    """Linux stand-ins for files that cannot run here (CoreML W8A8: its fake-quantized torch model)."""
    if Target.COREML_W8A8 not in targets:
        return {}
    from glassfinder_export.coreml_export import w8a8_runner
    from glassfinder_export.onnx_export import export_boundary

    return {Target.COREML_W8A8: w8a8_runner(export_boundary(model, contract, options), contract, calib, options)}


def export_checked(model: nn.Module, contract: InputContract, targets: list[Target], out_dir: Path, calib,
                   spec: ParitySpec, options: ExportOptions = ExportOptions(), apply_remedies: bool = True,
                   ) -> tuple[dict[Target, ExportResult], dict[str, dict[str, Any]], dict[str, list[np.ndarray]]]:
    """Export, measure and (for int8 misses) remediate one model.

    Returns (results, parity entries {target: metrics + "remedies"}, outputs {target: outputs}) where the
    parity entries go under the model's name in `check_parity`'s input."""
    results = export_targets(model, contract, targets, out_dir, calib, options)
    measured, outputs = measure_parity(model, contract, results, spec.x01, spec.metrics_fn,
                                       _simulations(model, contract, targets, calib, options))
    for t in targets:
        if not _quantized(t) or "skipped" in measured[t.value]:
            continue
        applied = []
        if not (options.normalise_in_graph or options.l2_in_graph):
            applied.append(BOUNDARY_REMEDY)
        if options.per_channel is not False:
            applied.append(PER_CHANNEL_REMEDY)
        report = check_parity({contract.model: {t.value: measured[t.value]}}, spec.thresholds)
        if not report["passed"] and apply_remedies and "float_layers" in CAPABILITIES[t].options \
                and not options.float_layers:
            keep = tuple(first_last_layers(model))
            x = calib.model_inputs(contract, normalise=True)
            outliers = [(n, r) for n, r in outlier_layers(model, x) if n not in keep]
            opt = dataclasses.replace(options, float_layers=keep + tuple(n for n, _ in outliers))
            with tempfile.TemporaryDirectory(prefix="gf_remedy_") as tmp:
                retry = export_targets(model, contract, [t], tmp, calib, opt)
                m2, o2 = measure_parity(model, contract, retry, spec.x01, spec.metrics_fn,
                                        _simulations(model, contract, [t], calib, opt))
                report2 = check_parity({contract.model: {t.value: m2[t.value]}}, spec.thresholds)
                what = f"first/last layer kept in float: {', '.join(keep)}"
                if outliers:
                    what += ("; layers with an outlier input channel kept in float: "
                             + ", ".join(f"{n} ({r:.0f}x the median channel range)" for n, r in outliers))
                if len(report2["failures"]) < len(report["failures"]):
                    # Better: it replaces the first file (same name) and its measurement.
                    dst = results[t].path
                    shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
                    shutil.move(str(retry[t].path), str(dst))
                    results[t] = dataclasses.replace(retry[t], path=dst)
                    measured[t.value], outputs[t.value] = m2[t.value], o2[t.value]
                    report = report2
                    applied.append(what)
                else:
                    applied.append(f"tried, no better ({len(report2['failures'])} misses vs "
                                   f"{len(report['failures'])}), not kept: {what}")
        if not report["passed"]:
            applied.append(CALIBRATION_HINT)
        measured[t.value]["remedies"] = applied
    return results, measured, outputs
