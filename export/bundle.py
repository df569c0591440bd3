"""Build the on-device bundle from the committed weights: `glassfinder export --out DIR`.

    bundle/
      models/<role>_<q>.tflite      the four models the phone runs: for each, the first of full-integer
                                    int8 / dynamic-range int8 / fp16 whose parity passes (q says which)
      models/<role>.mlpackage       Core ML (int8 weights) for iOS, when coreml=True
      gallery.gfpq                  PQ-compressed gallery (runtime/gallery.py format)
      skus.json                     SKU metadata, indexed by gallery id
      thumbs/<sku>.jpg              one small render per SKU, for result lists
      golden/golden.txt             golden vectors for the Kotlin and Swift stubs
      reference/                    float TFLite + ONNX of each model (benchmarks, not shipped)
      parity.json, parity.md        float vs quantized, per model and end to end
      parity/<role>.npz             parity images + float outputs, for `glassfinder parity` on any machine
      manifest.json                 written LAST: an interrupted export leaves no manifest

Everything is written into DIR.partial first and renamed at the end, and nothing is renamed when a
parity threshold is missed: the export fails with a message naming the model, metric and threshold.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from glassfinder.evaluation import ENROLL_JITTER, RENDERS_PER_SKU
from glassfinder_export import parity as P
from glassfinder_export.bundle_parity import metrics_fns, save_parity_set
from glassfinder_export.calibration import load_set
from glassfinder_export.pipeline import ParitySpec, export_checked
from glassfinder_export.runners import run_exported, tflite_latency_ms
from glassfinder_export.model_zoo import DETECTOR_LOGIT_CLIP
from glassfinder_export.targets import ExportOptions, ExportResult, InputContract, Target
from glassfinder_runtime.errors import ConfigError
from glassfinder_runtime.gallery import parse_spec, write_gallery
from glassfinder_runtime.geometry import DEFAULT_TEMPLATE
from glassfinder_runtime.manifest import (AlignerSettings, CalibrationSet, DetectorSettings, EmbedderSettings, FileRef,
                                          GalleryEntry, GateSettings, Manifest, ModelEntry, TemplateSpec,
                                          parse_section)
from glassfinder_runtime.pipeline import REFUSAL_MESSAGE

ROLES = ("detector", "aligner", "gate", "embedder")
# What the phone runs, in order of preference: full-integer int8 where its parity passes, else
# dynamic-range int8 (int8 weights, float activations), else float16 weights (what MediaPipe ships
# for these face models). The choice and every measurement are recorded in parity.json.
SHIP_PREFERENCE = (Target.TFLITE_INT8, Target.TFLITE_DYNAMIC_INT8, Target.TFLITE_FP16)
# A parity-passing candidate is skipped when another passing one is clearly faster on LiteRT (one
# thread): more than SLOWER_SHARE slower AND more than SLOWER_MS ms slower (so that timing noise on
# sub-millisecond models never flips the choice). Why: XNNPACK runs float and most full-int8 graphs,
# but dynamic-range (hybrid) kernels and int8 ops it lacks fall back to slower reference kernels;
# measured here on the aligner: fp16 1.63 ms, dynamic int8 1.97 ms, full int8 9.9 ms.
SLOWER_SHARE = 0.10
SLOWER_MS = 0.10
SHIPPED_SUFFIX = {Target.TFLITE_INT8: "int8", Target.TFLITE_DYNAMIC_INT8: "dynamic_int8", Target.TFLITE_FP16: "fp16"}
REFERENCE = (Target.TFLITE_FP32, Target.ONNX)  # float references for benchmarks, not in the manifest


@dataclass(frozen=True)
class BundleConfig:
    """What goes into the bundle."""

    catalog_seed: int = 0  # glassfinder.catalog.CatalogConfig seed
    n_gallery: int = 3200  # gallery-split SKUs enrolled (3,200 = the whole reference gallery)
    renders_per_sku: int = RENDERS_PER_SKU  # K enrollment renders per SKU on gallery faces, averaged
    enroll_jitter: float = ENROLL_JITTER  # enrolment crops misaligned like the aligner's, times this
    gallery_faces: int = 256  # procedural gallery faces used for enrollment
    # PQ spec, metric explicit. On real query crops of 800 gallery SKUs (top-1): exact 0.4575, PQ16x8
    # 0.329, OPQ16 0.365, OPQ16 + SQ8 re-ranking of a 64-row shortlist 0.4625 (3,200 SKUs: exact
    # 0.311, OPQ16 0.216, + refine 0.306) for 144 bytes per SKU (0.46 MB at 3,200 SKUs).
    spec: str = "OPQ16,PQ16x8,IP,Refine(SQ8)"
    coreml: bool = True  # also write Core ML packages (int8 weights) for the iOS stub
    n_parity_queries: int = 600  # query scenes for the end-to-end parity (float pipeline vs bundle)
    # PQ codebooks are trained on renders of TRAIN-split SKUs: the 3,200 gallery vectors alone are
    # too few for 256 centroids per sub-space, and new SKUs must encode well without retraining.
    pq_train_vectors: int = 8192
    thumbnails: bool = True
    reference: bool = True  # keep float TFLite + ONNX in reference/ (for `glassfinder bench latency`)
    parity_images: int = 32  # parity images (+ float outputs) per model kept for `glassfinder parity`
    seed: int = 0


@dataclass
class BundleModels:
    """The float torch models a bundle is exported from (eval mode) and the gate's threshold."""

    detector: Any
    aligner: Any
    gate: Any
    embedder: Any
    gate_threshold: float


def load_default_models() -> BundleModels:
    """The committed default weights (glassfinder/weights/)."""
    from glassfinder.models.aligner import load_aligner
    from glassfinder.models.detector import load_detector
    from glassfinder.models.embedder import load_embedder
    from glassfinder.models.gate import load_gate

    gate, meta = load_gate()
    return BundleModels(detector=load_detector().eval(), aligner=load_aligner().eval(), gate=gate,
                        embedder=load_embedder()[0], gate_threshold=float(meta["threshold"]))


# ---------------------------------------------------------------------------------------------


def choose_shipped(role: str, measured: dict[str, Any], thresholds: P.ParityThresholds,
                   latency_ms: dict[str, float] | None = None) -> Target:
    """The first target of SHIP_PREFERENCE whose parity passes and that is not clearly slower than
    another passing one (SLOWER_SHARE, SLOWER_MS; latency_ms: median ms per target value). When
    nothing passes, the first preference, so that the verdict fails naming it."""
    passing = [t for t in SHIP_PREFERENCE
               if t.value in measured and P.check_parity({role: {t.value: measured[t.value]}}, thresholds)["passed"]]
    if not passing:
        return SHIP_PREFERENCE[0]
    if latency_ms:
        fastest = min(latency_ms[t.value] for t in passing)
        limit = max(fastest * (1 + SLOWER_SHARE), fastest + SLOWER_MS)
        passing = [t for t in passing if latency_ms[t.value] <= limit]
    return passing[0]


def _model_entry(result: ExportResult, file: str) -> ModelEntry:
    """The manifest entry; a TFLite model's tensors are named as the interpreter names them (what the
    runtime and the stubs look up), in the ONNX output order."""
    d = result.to_manifest()
    d.update(file=file, sha256="")
    if result.path.suffix == ".tflite":
        from glassfinder_export.runners import TFLiteRunner

        r = TFLiteRunner(result.path, [o.name for o in result.outputs])
        d["input"]["name"] = r.input["name"]
        for out, detail in zip(d["outputs"], r.output_details):
            out["name"] = detail["name"]
    return parse_section(ModelEntry, d, f"models.{result.model}")


def _embed_with(result: ExportResult) -> Callable[[np.ndarray], np.ndarray]:
    """(n, H, W, 3) uint8 crops -> (n, d) unit vectors through an exported file (as the phone would)."""
    from glassfinder_runtime.pipeline import l2_normalize

    def embed(crops: np.ndarray) -> np.ndarray:
        x01 = crops.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return l2_normalize(run_exported(result, x01)[0])

    return embed


def pq_training_vectors(skus, embed: Callable[[np.ndarray], np.ndarray], n: int, seed: int,
                        batch: int = 256) -> npt.NDArray[np.float32]:
    """(n, d) embeddings of single renders of the given (train-split) SKUs on train faces."""
    from glassfinder.renderer import FaceCropCache, render_crop_batch

    faces = FaceCropCache.from_split("train", n=64, seed=seed)
    rng = np.random.default_rng([seed, 7])
    picks = rng.choice(len(skus), size=n, replace=n > len(skus))
    return np.concatenate([embed(render_crop_batch([skus[i] for i in picks[j:j + batch]], faces, rng))
                           for j in range(0, n, batch)]).astype(np.float32)


def _sku_record(sku) -> dict[str, Any]:
    c = sku.colourway
    return {"sku": sku.sku_id, "name": sku.display_name, "model": sku.model_id, "group": sku.group_id,
            "family": sku.shape.family.value, "colour": c.name, "material": c.material.value,
            "lens": c.lens.value, "size": sku.size}


def _write_thumbnails(skus, out: Path, seed: int, progress: bool) -> None:
    from PIL import Image
    from tqdm import tqdm

    from glassfinder.renderer import FaceCropCache, render_crop_batch

    out.mkdir(parents=True, exist_ok=True)
    faces = FaceCropCache.from_split("gallery", n=1, seed=seed)
    rng = np.random.default_rng([seed, 9])
    for sku in tqdm(skus, desc="thumbnails", unit="sku", disable=not progress):
        crop = render_crop_batch([sku], faces, rng, face_index=[0], flip=False)[0]
        Image.fromarray(crop).save(out / f"{sku.sku_id}.jpg", quality=80)


def end_to_end_parity(stage: Path, models: BundleModels, skus, xb_float: npt.NDArray[np.float32],
                      cfg: BundleConfig, progress: bool) -> dict[str, float]:
    """The torch float pipeline + exact search vs the staged bundle (its TFLite models + PQ gallery)
    on the same query scenes (gallery SKUs on QUERY faces, query camera).

    Gated: top-1 retention (bundle top-1 / float top-1, a collapse guard), size-insensitive because
    the sizes of one frame are visually identical and their order is arbitrary on both sides.
    Reported: the top-1 drop in points (the DESIGN target is within 1.0 point), strict top-1 of each
    side, and top-1 agreement / top-10 overlap of the two rankings at frame (group) level."""
    from tqdm import tqdm

    from glassfinder.evaluation import FloatPipeline, exact_topk, query_scenes, ranked, run_queries
    from glassfinder_runtime.pipeline import GlassFinder, SearchOptions

    k = min(10, len(skus))
    queries = query_scenes(skus, cfg.n_parity_queries, cfg.seed + 1)
    images = [im for im, _ in queries]
    rows = np.array([r for _, r in queries])
    float_pipe = FloatPipeline(embedder=models.embedder, gate=models.gate, gate_threshold=models.gate_threshold)
    ref_I = ranked(run_queries(float_pipe, images, progress, "parity: float"), lambda xq, kk: exact_topk(xb_float, xq, kk), k)
    test_I = np.full((len(images), k), -1, np.int64)
    with GlassFinder.create_from_bundle(stage, SearchOptions(top_k=k)) as finder:
        for i, im in enumerate(tqdm(images, desc="parity: bundle", unit="img", disable=not progress)):
            res = finder.search(im)
            test_I[i, :len(res.results)] = [h.index for h in res.results]
    groups = np.unique([s.group_id for s in skus], return_inverse=True)[1]
    as_groups = lambda I: np.where(I >= 0, groups[np.clip(I, 0, None)], -1)  # noqa: E731
    ref_G, test_G, true_G = as_groups(ref_I), as_groups(test_I), groups[rows]
    top1 = {"float": float(np.mean(ref_G[:, 0] == true_G)), "bundle": float(np.mean(test_G[:, 0] == true_G))}
    rank = P.retrieval_metrics(ref_G, test_G, k)
    return {"top1_retention": top1["bundle"] / max(top1["float"], 1e-9),
            "top1_drop_points": 100 * (top1["float"] - top1["bundle"]),
            "top1_size_insensitive_float": top1["float"], "top1_size_insensitive_bundle": top1["bundle"],
            "top1_float": float(np.mean(ref_I[:, 0] == rows)), "top1_bundle": float(np.mean(test_I[:, 0] == rows)),
            "top1_agreement_groups": rank["top1_agreement"], "top10_overlap_groups": rank["top10_overlap"],
            "queries": float(len(images))}


def build_bundle(out: str | Path, models: BundleModels | None = None, cfg: BundleConfig = BundleConfig(),
                 calibration_root: Path | None = None, progress: bool = True, force: bool = False,
                 thresholds: P.ParityThresholds = P.ParityThresholds()) -> dict:
    """Export, enroll, check parity and write the bundle; returns a summary (sizes, parity, timings).

    thresholds: the parity gate (DESIGN.md targets by default; recorded in parity.json)."""
    from glassfinder.catalog import CatalogConfig, build_catalog
    from glassfinder.evaluation import EvalConfig, enroll_gallery
    from glassfinder.models.embedder import embed_images
    from glassfinder_export.gallery import build_gallery
    from glassfinder_runtime.bundle import write_manifest
    from glassfinder_runtime.golden import write_golden

    out = Path(out)
    if (out / "manifest.json").exists() and not force:
        raise ConfigError(f"{out}: a bundle is already there (use --force to replace it)")
    spec = parse_spec(cfg.spec)
    t_start = time.perf_counter()
    models = models or load_default_models()
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "models").mkdir(parents=True)
    timings: dict[str, float] = {}

    # 1. Models: export, measure parity per model, ship the preferred TFLite that passes (+ Core ML).
    module = {"detector": models.detector, "aligner": models.aligner, "gate": models.gate, "embedder": models.embedder}
    det_spec = models.detector.cfg.runtime_spec()
    fns = metrics_fns(det_spec, models.gate_threshold)
    targets = list(dict.fromkeys([*SHIP_PREFERENCE, *REFERENCE])) + ([Target.COREML_INT8W] if cfg.coreml else [])
    exported: dict[str, dict[Target, ExportResult]] = {}
    measured: dict[str, dict[str, Any]] = {}
    calib_sets = []
    for role in ROLES:
        t0 = time.perf_counter()
        m = module[role]
        contract = InputContract.from_config(role, m.cfg)
        calib = load_set(role, contract, root=calibration_root)
        pset = load_set(role, contract, split="parity", root=calibration_root)
        options = ExportOptions(clip_outputs=((1, DETECTOR_LOGIT_CLIP),) if role == "detector" else ())
        results, parity, outputs = export_checked(m, contract, targets, stage / "reference", calib,
                                                  ParitySpec(x01=pset.model_inputs(contract, normalise=False),
                                                             metrics_fn=fns[role], thresholds=thresholds), options)
        n = min(cfg.parity_images, len(pset))
        save_parity_set(stage, role, pset.images[:n], [o[:n] for o in outputs["torch"]])
        exported[role], measured[role] = results, parity
        calib_sets.append(CalibrationSet(model=role, sha256=calib.sha256, count=len(calib)))
        timings[f"export_{role}_s"] = time.perf_counter() - t0
        if progress:
            print(f"exported {role} in {timings[f'export_{role}_s']:.0f} s", flush=True)

    latency = {role: {t.value: tflite_latency_ms(exported[role][t]) for t in SHIP_PREFERENCE} for role in ROLES}
    shipped = {role: choose_shipped(role, measured[role], thresholds, latency[role]) for role in ROLES}
    entries = []
    for role in ROLES:
        r = exported[role][shipped[role]]
        file = f"models/{role}_{SHIPPED_SUFFIX[shipped[role]]}.tflite"
        shutil.move(r.path, stage / file)
        exported[role][shipped[role]] = dataclasses.replace(r, path=stage / file)
        entries.append(_model_entry(exported[role][shipped[role]], file))
        if cfg.coreml:
            c = exported[role][Target.COREML_INT8W]
            file = f"models/{role}.mlpackage"
            shutil.move(c.path, stage / file)
            entries.append(_model_entry(dataclasses.replace(c, path=stage / file), file))

    # 2. Gallery: K renders per SKU on gallery faces, embedded by the shipped embedder (as the
    # phone enrolls new SKUs), averaged, PQ-encoded. The float gallery is kept for the parity check.
    t0 = time.perf_counter()
    catalog = build_catalog(CatalogConfig(seed=cfg.catalog_seed))
    skus = catalog.by_split("gallery")[: cfg.n_gallery]
    ecfg = EvalConfig(catalog_seed=cfg.catalog_seed, n_gallery=len(skus), renders_per_sku=cfg.renders_per_sku,
                      enroll_jitter=cfg.enroll_jitter, gallery_faces=cfg.gallery_faces, seed=cfg.seed)
    embed_shipped = _embed_with(exported["embedder"][shipped["embedder"]])
    xb_int8, xb_float = enroll_gallery(skus, [embed_shipped, lambda crops: embed_images(models.embedder, crops)],
                                       ecfg, progress)
    xt = pq_training_vectors(catalog.by_split("train"), embed_shipped, cfg.pq_train_vectors, cfg.seed)
    gallery = build_gallery(xb_int8, None, spec, seed=cfg.seed, train_vectors=xt)
    write_gallery(gallery, stage / "gallery.gfpq")
    (stage / "skus.json").write_text(json.dumps({"skus": [_sku_record(s) for s in skus]}, indent=1) + "\n")
    timings["gallery_s"] = time.perf_counter() - t0
    if cfg.thumbnails:
        _write_thumbnails(skus, stage / "thumbs", cfg.seed, progress)
    write_golden(stage / "golden")

    manifest = Manifest(
        created_by="glassfinder export 0.1.0",
        models=tuple(entries),
        detector=DetectorSettings(anchors=det_spec.anchors, decode=det_spec.decode),
        aligner=AlignerSettings(template=TemplateSpec.from_template(DEFAULT_TEMPLATE), mesh=models.aligner.cfg.mesh),
        gate=GateSettings(class_names=tuple(models.gate.cfg.classes), accept_classes=("eyeglasses", "sunglasses"),
                          threshold=models.gate_threshold, refusal_message=REFUSAL_MESSAGE),
        embedder=EmbedderSettings(dim=models.embedder.cfg.embedding_dim, l2_normalize=True),
        gallery=GalleryEntry(file="gallery.gfpq", sha256="", spec=str(spec), d=gallery.d, n=gallery.n,
                             code_size=spec.code_size, sku_file="skus.json", sku_sha256=""),
        calibration=tuple(calib_sets),
        golden=FileRef(file="golden/golden.txt", sha256=""),
    )
    write_manifest(stage, manifest)  # provisional: the end-to-end check runs the staged bundle itself

    # 3. End-to-end parity on query scenes, then the verdict over everything.
    t0 = time.perf_counter()
    e2e = end_to_end_parity(stage, models, skus, xb_float, cfg, progress)
    timings["e2e_parity_s"] = time.perf_counter() - t0
    # The verdict covers what ships (each model's shipped file, the end-to-end search); every other
    # measured target (float references, the int8 variant not shipped, Core ML) is reported alongside.
    verdict = {role: {shipped[role].value: measured[role][shipped[role].value]} for role in ROLES}
    verdict["end_to_end"] = {"bundle+pq": e2e}
    report = P.check_parity(verdict, thresholds)
    report["shipped"] = {role: shipped[role].value for role in ROLES}
    report["latency_ms"] = {role: {k: round(v, 3) for k, v in latency[role].items()} for role in ROLES}
    report["all_targets"] = P.check_parity(measured, thresholds)["models"]
    P.write_parity(report, stage)
    if not report["passed"]:
        (stage / "manifest.json").unlink()  # a failed bundle must not be loadable
        P.enforce_parity(report)  # raises ParityError naming model, metric and threshold

    if not cfg.reference:
        shutil.rmtree(stage / "reference")
    shutil.rmtree(out, ignore_errors=True)
    stage.rename(out)
    sizes = {e.file: _size(out / e.file) for e in entries}
    phone_bytes = sum(v for k, v in sizes.items() if k.endswith(".tflite")) + _size(out / "gallery.gfpq")
    summary = {"bundle": str(out), "bytes_models_and_gallery": phone_bytes, "shipped": report["shipped"],
               "latency_ms": report["latency_ms"], "files": sizes,
               "gallery": {"n": gallery.n, "spec": str(spec), "bytes": _size(out / "gallery.gfpq")},
               "parity_passed": report["passed"], "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "seconds": round(time.perf_counter() - t_start, 1)}
    (out / "export_report.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_manifest(out, manifest)  # once more, so that it is the last file written
    return summary


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
