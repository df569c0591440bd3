"""`glassfinder bench latency`: per-stage and end-to-end latency of one query, on ONE thread.

The same pipeline code (glassfinder_runtime.pipeline.GlassFinder) runs with four kinds of model
runners, in one process and one run, taking turns (ROUND repeats each), so the ratios are fair on a
noisy machine:
LiteRT int8 (the bundle), LiteRT float32 and onnxruntime float32 (bundle/reference/), and torch
float eager (the committed weights). Medians over repeated searches of the same photos.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from glassfinder_runtime.errors import BundleError
from glassfinder_runtime.manifest import ModelRole
from glassfinder_runtime.pipeline import GlassFinder, ModelFn, SearchOptions, preprocess

STAGES = ("detect", "align", "crop", "gate", "embed", "search", "total")


def _nchw(x: np.ndarray) -> np.ndarray:
    """The runtime's (1, H, W, C) model input as the (1, C, H, W) the ONNX and torch references take."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def litert_float_runners(bundle_dir: Path, bundle) -> dict[ModelRole, ModelFn]:
    from ai_edge_litert.interpreter import Interpreter

    runners = {}
    for role in ModelRole:
        path = bundle_dir / "reference" / f"{role.value}_tflite_fp32.tflite"
        if not path.is_file():
            raise BundleError(f"{path}: missing float reference model (rebuild the bundle with `glassfinder export`)")
        interp = Interpreter(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]
        names = [o.name for o in bundle.model(role).outputs]
        outs = {d["name"]: d["index"] for d in interp.get_output_details()}
        order = [outs[n] for n in names] if all(n in outs for n in names) else list(outs.values())
        spec = bundle.model(role).input  # the float references share the shipped model's input contract

        def run(pixels, interp=interp, inp=inp, order=order, spec=spec):
            interp.set_tensor(inp["index"], preprocess(pixels, spec))
            interp.invoke()
            return [interp.get_tensor(i) for i in order]

        runners[role] = run
    return runners


def onnx_runners(bundle_dir: Path, bundle) -> dict[ModelRole, ModelFn]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    runners = {}
    for role in ModelRole:
        path = bundle_dir / "reference" / f"{role.value}_onnx.onnx"
        if not path.is_file():
            raise BundleError(f"{path}: missing ONNX reference model (rebuild the bundle with `glassfinder export`)")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        spec = bundle.model(role).input
        runners[role] = lambda px, s=sess, n=name, spec=spec: s.run(None, {n: _nchw(preprocess(px, spec))})
    return runners


def torch_runners(bundle) -> dict[ModelRole, ModelFn]:
    import torch

    from glassfinder_export.bundle import load_default_models

    torch.set_num_threads(1)
    m = load_default_models()
    modules = {ModelRole.DETECTOR: m.detector, ModelRole.ALIGNER: m.aligner, ModelRole.GATE: m.gate,
               ModelRole.EMBEDDER: m.embedder.export_module()}
    runners = {}
    for role, module in modules.items():
        spec = bundle.model(role).input

        @torch.no_grad()
        def run(px, module=module, spec=spec):
            out = module(torch.from_numpy(_nchw(preprocess(px, spec))))
            return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

        runners[role] = run
    return runners


ROUND = 5  # repeats a variant runs before the next takes its turn (keeps its models warm in the caches)


def _median_stages(finders: dict[str, GlassFinder], images: list, repeats: int) -> dict[str, dict[str, float]]:
    """Median ms per stage for each variant. The variants take turns, ROUND repeats at a time, so a
    burst of load on a shared machine hits them all alike (one variant after the other skews the ratios)."""
    per_stage = {v: {s: [] for s in STAGES} for v in finders}
    for finder in finders.values():
        finder.search(images[0])  # warm-up: first invoke allocates
    for start in range(0, repeats, ROUND):
        for v, finder in finders.items():
            for _ in range(min(ROUND, repeats - start)):
                for im in images:
                    t = finder.search(im).timings_ms
                    for s in STAGES:
                        per_stage[v][s].append(t.get(s, 0.0))
    return {v: {s: float(np.median(x)) for s, x in stages.items()} for v, stages in per_stage.items()}


def bench_latency(bundle_dir: Path, images: list, repeats: int = 20,
                  variants: tuple[str, ...] = ("int8", "litert_float", "onnx_float", "torch_float")) -> dict:
    """Median ms per stage and end to end for each variant; images are PIL RGB photos with one face."""
    bundle_dir = Path(bundle_dir)
    base = GlassFinder.create_from_bundle(bundle_dir, SearchOptions(num_threads=1))
    makers: dict[str, Callable[[], dict | None]] = {
        "int8": lambda: None,
        "litert_float": lambda: litert_float_runners(bundle_dir, base.bundle),
        "onnx_float": lambda: onnx_runners(bundle_dir, base.bundle),
        "torch_float": lambda: torch_runners(base.bundle),
    }
    finders = {v: base if v == "int8" else GlassFinder(base.bundle, SearchOptions(num_threads=1), runners=makers[v]())
               for v in variants}
    stages = _median_stages(finders, images, repeats)
    report = {f"e2e_ms_{v}": stages[v]["total"] for v in variants}
    report["stages"] = stages
    if "torch_float" in stages:
        report["speedup_vs_torch"] = stages["torch_float"]["total"] / stages["int8"]["total"]
    report.update(repeats=repeats, images=len(images), threads=1, machine=platform.machine(),
                  cpu_count=os.cpu_count(), load_avg_1m=os.getloadavg()[0], time=time.strftime("%Y-%m-%d %H:%M:%S"))
    return report
