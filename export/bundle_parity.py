"""Model parity that travels with the bundle: `glassfinder parity --bundle DIR` (app teams' CI).

At export, each model's held-out parity images and the torch float outputs on them are saved in
bundle/parity/<role>.npz. On any machine, the bundle's own int8 models are run on those images by
the runtime and scored with the same metric functions and thresholds as at export. Needs numpy and
LiteRT only (no torch, no TensorFlow).
"""
from __future__ import annotations

from pathlib import Path
import numpy as np

from glassfinder_export import parity as P
from glassfinder_runtime import detect as D
from glassfinder_runtime.errors import BundleError

PARITY_DIR = "parity"


def metrics_fns(spec: D.DetectorSpec, gate_threshold: float) -> dict[str, P.MetricsFn]:
    """The parity metric of each model (export/parity.py), from values the manifest carries."""
    return {"detector": P.detector_parity(spec), "aligner": P.aligner_parity,
            "gate": P.gate_parity(gate_threshold), "embedder": embedder_metrics}


def embedder_metrics(ref: list, test: list) -> dict[str, float]:
    """Embedding cosine after the runtime's float L2-norm (stored and device outputs may be raw)."""
    from glassfinder_runtime.pipeline import l2_normalize

    return P.embedder_parity([l2_normalize(ref[0])], [l2_normalize(test[0])])


def save_parity_set(bundle_dir: Path, role: str, images: np.ndarray, ref_outputs: list[np.ndarray]) -> Path:
    """images: (n, H, W, 3) uint8 model-input pixels; ref_outputs: the float model's outputs on them."""
    path = Path(bundle_dir) / PARITY_DIR / f"{role}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images, **{f"out{i}": o for i, o in enumerate(ref_outputs)})
    return path


def check_bundle_parity(bundle_dir: str | Path) -> dict:
    """Re-run each model's parity on this machine: the bundle's TFLite models vs the stored float outputs,
    against the thresholds the bundle was exported with."""
    from glassfinder_runtime.bundle import open_bundle
    from glassfinder_runtime.manifest import ModelRole
    from glassfinder_runtime.pipeline import TfliteModel, preprocess

    bundle = open_bundle(bundle_dir)
    m = bundle.manifest
    det = bundle.model(ModelRole.DETECTOR).input
    spec = D.DetectorSpec(input_size=m.detector.anchors.input_size, mean=det.mean, std=det.std,
                          anchors=m.detector.anchors, decode=m.detector.decode)
    fns = metrics_fns(spec, m.gate.threshold)
    thresholds = export_thresholds(Path(bundle_dir))
    measured = {}
    for role in ModelRole:
        path = Path(bundle_dir) / PARITY_DIR / f"{role.value}.npz"
        if not path.is_file():
            raise BundleError(f"{path}: missing parity set (bundles written by `glassfinder export` have one)")
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            ref = [z[f"out{i}"] for i in range(sum(k.startswith("out") for k in z.files))]
        model = TfliteModel(bundle, role)
        outs = [model(preprocess(im, model.entry.input)) for im in images]
        test = [np.concatenate([o[j].reshape(1, *ref[j].shape[1:]) for o in outs]) for j in range(len(ref))]
        measured[role.value] = {model.entry.quantization.value: fns[role.value](ref, test)}
    report = P.check_parity(measured, thresholds)
    report["custom_thresholds"] = thresholds != P.ParityThresholds()
    return report


def export_thresholds(bundle_dir: Path) -> P.ParityThresholds:
    """The thresholds the bundle was exported against (its parity.json), so that this machine is held
    to the same bar; the design's defaults when the file has none."""
    import dataclasses
    import json

    path = bundle_dir / "parity.json"
    try:
        recorded = json.loads(path.read_text())["thresholds"]
        return P.ParityThresholds(**{f.name: float(recorded[f.name]) for f in dataclasses.fields(P.ParityThresholds)
                                     if f.name in recorded})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: cannot read the export's parity thresholds ({exc})") from None
