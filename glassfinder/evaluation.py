"""The open-set retrieval benchmark (DESIGN.md "Evaluation protocol").

- gallery: every SKU of the catalog's gallery split (models never seen in training), each enrolled
  as the mean of K aligned-crop renders on GALLERY faces with the gallery camera;
- queries: full scene images of gallery SKUs on disjoint QUERY faces, with the query camera
  (blur, noise, colour cast, small faces, strong JPEG): the domain shift;
- negatives (gate FPR): bare QUERY faces and non-face images;
- the query path is the full pipeline: detector -> aligner -> crop -> gate -> embedder -> search.
  A query refused by the gate counts as a miss.

`FloatPipeline` runs the torch float models; the same benchmark scores the on-device runtime
(int8 TFLite + PQ gallery) through `glassfinder_runtime.pipeline.GlassFinder`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from glassfinder.metrics import retrieval_report, size_blind_top1_ceiling
from glassfinder_runtime.geometry import DEFAULT_TEMPLATE, CropTemplate


# Enrolment renders per SKU (K), averaged into its gallery vector: the bundle's gallery and the
# benchmark's both use it. On VAL (800 val SKUs, 3 misaligned queries each, 2 seeds, embedder stage 13)
# SKU recall@1 was 0.600 at K = 8, 0.617 at 16 and 0.616 at 32 (same size_scale); 16 doubles the
# enrolment time of 8, 32 doubles it again for nothing at that size_scale.
RENDERS_PER_SKU = 16
# Enrolment renders are misaligned as the aligner misaligns a query's crop (renderer.ALIGNER_JITTER
# times this; 0: aligned on ground truth), so a SKU's mean vector sits where its queries fall.
# VAL (800 val SKUs, K = 16, 3 misaligned queries each, 2 seeds): SKU recall@1 0.621 aligned -> 0.630.
# The benchmark moved less: top-1 +0.1, top-10 +0.3, size-insensitive top-1 -0.8 points (TRAINING.md).
ENROLL_JITTER = 1.0


@dataclass(frozen=True)
class EvalConfig:
    """What the benchmark renders. Defaults are the reference protocol (3,200 SKUs, 3,200 queries)."""

    catalog_seed: int = 0  # glassfinder.catalog.CatalogConfig seed
    n_gallery: int = 3200  # gallery SKUs (the first n of the gallery split; 3,200 = all)
    renders_per_sku: int = RENDERS_PER_SKU  # K enrollment renders per SKU, averaged
    enroll_jitter: float = ENROLL_JITTER  # enrolment crops misaligned like the aligner's, times this
    gallery_faces: int = 256  # procedural GALLERY faces the enrollment renders use
    n_queries: int = 3200  # query scenes (gallery SKUs in turn) on QUERY faces
    n_negatives: int = 400  # bare query faces + non-face images for the gate FPR
    seed: int = 0  # rendering seed
    top_k: int = 10


@dataclass(frozen=True)
class QueryOutcome:
    """What one pipeline did with one photo."""

    accepted: bool  # the gate accepted (a face with glasses)
    reason: str | None  # None, "no_face" or "no_glasses"
    vector: npt.NDArray[np.float32] | None  # (d,) unit embedding when accepted


# One photo -> outcome. FloatPipeline is one; evaluate_runtime wraps GlassFinder as another.
Pipeline = Callable[[Image.Image], QueryOutcome]


class FloatPipeline:
    """The torch float pipeline: Landmarker (detector + aligner), aligned crop, gate, embedder."""

    def __init__(self, landmarker=None, embedder=None, gate=None, gate_threshold: float | None = None,
                 template: CropTemplate = DEFAULT_TEMPLATE):
        from glassfinder.landmarks import default_landmarker
        from glassfinder.models.embedder import load_embedder
        from glassfinder.models.gate import load_gate

        self.landmarker = landmarker or default_landmarker()
        self.embedder = embedder if embedder is not None else load_embedder()[0]
        if gate is None:
            gate, meta = load_gate()
            gate_threshold = float(meta["threshold"]) if gate_threshold is None else gate_threshold
        if gate_threshold is None:
            raise ValueError("gate_threshold is required with an explicit gate")
        self.gate, self.threshold, self.template = gate, gate_threshold, template

    def crop(self, image: Image.Image) -> tuple[npt.NDArray[np.uint8] | None, str | None]:
        from glassfinder_runtime.align import align_crop

        face = self.landmarker(image)
        if face is None:
            return None, "no_face"
        return align_crop(image, face.keypoints, self.template)[0], None

    def __call__(self, image: Image.Image) -> QueryOutcome:
        from glassfinder.models.embedder import embed_images
        from glassfinder.models.gate import gate_scores

        from glassfinder.landmarks import one_thread

        crop, reason = self.crop(image)
        if crop is None:
            return QueryOutcome(False, reason, None)
        with one_thread():
            probs = gate_scores(self.gate, crop[None])[0]
            if 1.0 - probs[-1] < self.threshold:  # P(glasses) = 1 - P(none)
                return QueryOutcome(False, "no_glasses", None)
            return QueryOutcome(True, None, embed_images(self.embedder, crop[None])[0])


def enroll_gallery(skus: Sequence, embeds: Sequence[Callable[[np.ndarray], np.ndarray]], cfg: EvalConfig,
                   progress: bool = True) -> list[npt.NDArray[np.float32]]:
    """One (n_skus, d) gallery per embedder: unit mean of K crop renders per SKU on GALLERY faces
    (gallery camera), misaligned like the aligner's crops (cfg.enroll_jitter). The crops are rendered
    once and fed to every embedder.

    embeds: each maps (n, H, W, 3) uint8 aligned crops -> (n, d) unit vectors.
    """
    from tqdm import tqdm

    from glassfinder.camera import GALLERY_CAMERA
    from glassfinder.landmarks import one_thread
    from glassfinder.renderer import ALIGNER_JITTER, FaceCropCache, render_crop_batch

    faces = FaceCropCache.from_split("gallery", n=cfg.gallery_faces, seed=cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    K, jitter = cfg.renders_per_sku, ALIGNER_JITTER.scaled(cfg.enroll_jitter)
    out: list[list[np.ndarray]] = [[] for _ in embeds]
    for sku in tqdm(skus, desc="enroll gallery", unit="sku", disable=not progress):
        crops = render_crop_batch([sku] * K, faces, rng, camera=GALLERY_CAMERA, jitter=jitter)
        with one_thread():  # K crops at a time: threads only add overhead (see one_thread)
            for rows, embed in zip(out, embeds):
                v = embed(crops).mean(axis=0)
                rows.append(v / max(np.linalg.norm(v), 1e-12))
    return [np.asarray(rows, dtype=np.float32) for rows in out]


def query_scenes(skus: Sequence, n: int, seed: int) -> list[tuple[Image.Image, int]]:
    """n (scene image, gallery row) pairs: SKU i % len(skus) on query face i, with the query camera."""
    from glassfinder.camera import QUERY_CAMERA
    from glassfinder.faces import make_face
    from glassfinder.renderer import render_scene

    rng = np.random.default_rng([seed, 2])
    out = []
    for i in range(n):
        row = i % len(skus)
        scene = render_scene(skus[row], make_face(i, split="query"), rng, camera=QUERY_CAMERA)
        out.append((scene.image, row))
    return out


def negative_images(n: int, seed: int) -> list[Image.Image]:
    """n gate negatives: half bare QUERY faces (query camera), half non-face images."""
    from glassfinder.camera import QUERY_CAMERA
    from glassfinder.faces import make_face
    from glassfinder.gate_data import random_objects, random_textures
    from glassfinder.renderer import render_scene

    rng = np.random.default_rng([seed, 3])
    bare = [render_scene(None, make_face(100_000 + i, split="query"), rng, camera=QUERY_CAMERA).image
            for i in range(n // 2)]
    m = n - n // 2
    scenes = np.concatenate([random_objects(m - m // 2, rng, 256, 256), random_textures(m // 2, rng, 256, 256)])
    return bare + [Image.fromarray(x) for x in scenes]


def run_queries(pipeline: Pipeline, images: Sequence[Image.Image], progress: bool = True,
                desc: str = "queries") -> list[QueryOutcome]:
    from tqdm import tqdm

    return [pipeline(im) for im in tqdm(images, desc=desc, unit="img", disable=not progress)]


def exact_topk(xb: npt.NDArray[np.float32], xq: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """(nq, k) rows of xb by descending inner product (unit vectors: cosine)."""
    from glassfinder_runtime.gallery import exact_search

    return exact_search(xb, xq, k, "IP")[1]


def ranked(outcomes: Sequence[QueryOutcome], search: Callable[[np.ndarray, int], np.ndarray],
           k: int) -> npt.NDArray[np.int64]:
    """(n, k) gallery rows per query, best first; refused queries rank nothing (-1)."""
    I = np.full((len(outcomes), k), -1, dtype=np.int64)
    ok = [i for i, o in enumerate(outcomes) if o.accepted]
    if ok:
        I[ok] = search(np.stack([outcomes[i].vector for i in ok]), k)
    return I


def _labels(I: np.ndarray, rows: Sequence[int], skus: Sequence) -> tuple:
    """retrieval_report's arguments: strict labels are gallery rows, size-insensitive ones groups."""
    rows = np.asarray(rows)
    groups = np.unique([s.group_id for s in skus], return_inverse=True)[1]
    return I, rows, np.arange(len(skus)), groups[rows], groups


def failure_sheet(images: Sequence[Image.Image], rows: Sequence[int], I: np.ndarray, skus: Sequence,
                  max_rows: int = 12, seed: int = 0) -> Image.Image:
    """Failed queries (top-1 wrong), one per line: the query photo, the true SKU, then the top-5,
    each SKU drawn on the same neutral gallery face so that only the frames differ."""
    from PIL import ImageDraw, ImageFont

    from glassfinder.renderer import FaceCropCache, render_crop_batch

    failed = [i for i in range(len(rows)) if I[i, 0] != rows[i]][:max_rows]
    faces = FaceCropCache.from_split("gallery", n=1, seed=seed)
    rng = np.random.default_rng(seed)

    def render(row: int) -> Image.Image:
        return Image.fromarray(render_crop_batch([skus[row]], faces, rng, face_index=[0], flip=False)[0])

    cw, ch, qh = 128, 64, 96
    sheet = Image.new("RGB", (qh + 10 + 6 * (cw + 8), 30 + max(1, len(failed)) * (qh + 22)), "white")
    d = ImageDraw.Draw(sheet)
    title = f"{len(failed)} failed queries shown:  query  |  true SKU  |  top-5 (red: wrong, green: right)"
    d.text((6, 6), title, fill=(0, 0, 0), font=ImageFont.load_default(size=13))  # the 10-px default loses spaces
    for line, i in enumerate(failed):
        y = 30 + line * (qh + 22)
        sheet.paste(images[i].convert("RGB").resize((qh, qh)), (0, y))
        cells = [(rows[i], "true")] + [(int(r), f"#{j + 1}") for j, r in enumerate(I[i, :5])]
        for j, (row, label) in enumerate(cells):
            x = qh + 10 + j * (cw + 8)
            if row < 0:
                d.text((x, y + 20), "refused", fill=(200, 0, 0))
                continue
            sheet.paste(render(row), (x, y))
            colour = (0, 0, 0) if label == "true" else ((0, 150, 0) if row == rows[i] else (200, 0, 0))
            d.text((x, y + ch + 2), f"{label} {skus[row].sku_id}"[:24], fill=colour)
            d.text((x, y + ch + 14), f"{skus[row].shape.family.value} / {skus[row].colourway.name}"[:24], fill=(90, 90, 90))
    return sheet


class RuntimePipeline:
    """The bundle's on-device pipeline (glassfinder_runtime: LiteRT models, numpy stages) as a Pipeline."""

    def __init__(self, finder):
        self.finder = finder  # glassfinder_runtime.pipeline.GlassFinder

    def __call__(self, image: Image.Image) -> QueryOutcome:
        res = self.finder.search(image)
        return QueryOutcome(res.status == "ok", res.reason, res.embedding)

    def embed_crops(self, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """(n, H, W, 3) aligned crops -> (n, d) unit vectors from the bundle's embedder."""
        return np.stack([self.finder.embed_crop(c) for c in crops])


def _variant(I: np.ndarray, rows: Sequence[int], skus: Sequence, outcomes: Sequence[QueryOutcome],
             negatives: Sequence[QueryOutcome]) -> dict:
    """One pipeline + search: the retrieval report, gate rates and refusals."""
    report = retrieval_report(*_labels(I, rows, skus))
    found = [o for o in outcomes if o.reason != "no_face"]
    report.update(
        gate_tpr=float(np.mean([o.accepted for o in outcomes])),
        # The gate alone: queries whose face was found (gate_tpr also counts the face finder's misses).
        gate_tpr_found_faces=float(np.mean([o.accepted for o in found])) if found else 0.0,
        gate_fpr=float(np.mean([o.accepted for o in negatives])) if negatives else 0.0,
        refused_no_face=sum(o.reason == "no_face" for o in outcomes),
        refused_no_glasses=sum(o.reason == "no_glasses" for o in outcomes))
    return report


def _check_bundle_skus(finder, skus: Sequence) -> None:
    """The bundle's gallery must hold exactly the benchmark's SKUs, in order (same catalog seed, n)."""
    from glassfinder_runtime.errors import ConfigError

    ids = [s["sku"] for s in finder.skus]
    if ids != [s.sku_id for s in skus]:
        raise ConfigError(f"{finder.bundle.root}: its gallery holds {len(ids)} SKUs that are not the benchmark's "
                          f"{len(skus)} gallery SKUs (build the bundle with the same catalog seed and --n-gallery)")


def evaluate(cfg: EvalConfig = EvalConfig(), pipeline: FloatPipeline | None = None,
             progress: bool = True, sheet: str | None = None, bundle: str | None = None) -> dict:
    """The benchmark: torch float models with exact cosine search (the top-level numbers). With
    `bundle`, the same photos also go through the bundle's on-device pipeline, reported under
    "variants" with exact search (over a gallery enrolled by the bundle's embedder) and with the
    bundle's own gallery file, and "top1_drop_points" (float minus bundle, in points).
    Returns the JSON-ready report; `sheet`: also write a picture of failed float queries."""
    from glassfinder.catalog import CatalogConfig, build_catalog
    from glassfinder.models.embedder import embed_images

    t0 = time.perf_counter()
    pipeline = pipeline or FloatPipeline()
    catalog = build_catalog(CatalogConfig(seed=cfg.catalog_seed))
    skus = catalog.by_split("gallery")[: cfg.n_gallery]
    finder = None
    if bundle is not None:
        from glassfinder_runtime.pipeline import GlassFinder, SearchOptions

        finder = GlassFinder.create_from_bundle(bundle, SearchOptions(top_k=cfg.top_k))
        _check_bundle_skus(finder, skus)
    rt = RuntimePipeline(finder) if finder is not None else None
    embeds = [lambda crops: embed_images(pipeline.embedder, crops)] + ([rt.embed_crops] if rt else [])
    xb, *xb_rt = enroll_gallery(skus, embeds, cfg, progress)
    queries = query_scenes(skus, cfg.n_queries, cfg.seed)
    images, rows = [im for im, _ in queries], [r for _, r in queries]
    neg_images = negative_images(cfg.n_negatives, cfg.seed)
    outcomes = run_queries(pipeline, images, progress)
    negatives = run_queries(pipeline, neg_images, progress, "negatives")
    I = ranked(outcomes, lambda xq, k: exact_topk(xb, xq, k), cfg.top_k)
    float_variant = _variant(I, rows, skus, outcomes, negatives)
    report = dict(float_variant)
    if sheet:
        failure_sheet(images, rows, I, skus).save(sheet)
    _, _, _, group_q, group_db = _labels(I, rows, skus)
    report.update(
        top1_ceiling_size_blind=size_blind_top1_ceiling(group_q, group_db),
        gallery_skus=len(skus), queries=len(outcomes), negatives=len(negatives),
        pipeline="torch float, exact cosine search",
        splits={"gallery_skus": "catalog split 'gallery' (models disjoint from train and val)",
                "gallery_faces": "face split 'gallery'", "query_faces": "face split 'query'",
                "negatives": "face split 'query' (bare) + procedural non-face images"},
        config=asdict(cfg))
    if rt is not None:
        from glassfinder_runtime.gallery import pq_search

        with finder:
            rt_outcomes = run_queries(rt, images, progress, "queries: bundle")
            rt_negatives = run_queries(rt, neg_images, progress, "negatives: bundle")
            variants = {"torch_float+exact": float_variant}
            for name, search in (("bundle_models+exact", lambda xq, k: exact_topk(xb_rt[0], xq, k)),
                                 ("bundle_models+bundle_gallery", lambda xq, k: pq_search(finder.gallery, xq, k)[1])):
                variants[name] = _variant(ranked(rt_outcomes, search, cfg.top_k), rows, skus, rt_outcomes, rt_negatives)
        shipped = variants["bundle_models+bundle_gallery"]
        report.update(
            bundle=str(bundle), gallery_spec=str(finder.gallery.spec), variants=variants,
            top1_drop_points=round(100 * (report["top1"] - shipped["top1"]), 2),
            top1_size_insensitive_drop_points=round(
                100 * (report["top1_size_insensitive"] - shipped["top1_size_insensitive"]), 2))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report

