"""Training side of the PQ gallery: k-means codebooks (optionally OPQ), SQ8 refine scales,
build, one-shot add.

numpy only (faiss is a benchmark anchor, never a dependency of the gallery). The file format,
encoding and search are in `glassfinder_runtime.gallery`, the same code the phone mirrors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from glassfinder_runtime.errors import GalleryError
from glassfinder_runtime.gallery import (DEFAULT_SHORTLIST, Gallery, PQSpec, check_vectors, decode,
                                         encode, sq8_encode, sq8_scales)

# faiss's default: at most 256 training points per centroid (more only costs time).
MAX_POINTS_PER_CENTROID = 256
# faiss warns below 39 points per centroid. Measured here (bench, PQ16x8, tight clusters):
# codebooks trained on the 3,200 gallery vectors lost 3.3 top-1 points on the gallery and 11
# on SKUs added later; trained on 65,536 vectors of other SKUs, 0.2 and 0.
TRAIN_POINTS_ADVICE = 39
# OPQ alternations (rotation <-> codebooks) and k-means iterations inside each.
OPQ_ITERATIONS = 20
OPQ_KMEANS_ITERATIONS = 4


@dataclass(frozen=True)
class TrainedPQ:
    """What training produces: (M, ksub, dsub) codebooks and, for OPQ, a (d, d) rotation."""

    codebooks: npt.NDArray[np.float32]
    rotation: npt.NDArray[np.float32] | None


def _assign(x: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]) -> npt.NDArray[np.intp]:
    """Index of the nearest (L2) of the (k, dsub) centroids for each row of x (n, dsub)."""
    # The same rule as runtime `encode`, so that training and enrollment agree.
    return encode(centroids[None], x)[:, 0].astype(np.intp)


def kmeans(x: npt.NDArray[np.float32], k: int, niter: int, rng: np.random.Generator,
           init: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """Lloyd's k-means on (n, dsub) float32 rows; returns (k, dsub) float32 centroids.

    Initialised like faiss with k rows drawn without replacement (or `init`, to continue). An
    empty cluster takes over half of the largest one: the largest centroid is duplicated and
    both copies nudged apart by 1/1024 of their norm (faiss's split), so none stays unused.
    """
    n, dsub = x.shape
    if n < k:
        raise GalleryError(f"k-means needs at least k={k} training vectors, got {n}: train on "
                           f"more vectors (e.g. --train-vectors) or use fewer bits")
    centroids = (x[rng.choice(n, size=k, replace=False)] if init is None else init).copy()
    for _ in range(niter):
        assign = _assign(x, centroids)
        counts = np.bincount(assign, minlength=k)
        sums = np.stack([np.bincount(assign, weights=x[:, j], minlength=k) for j in range(dsub)], 1)
        nonempty = counts > 0
        centroids[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        for empty in np.flatnonzero(~nonempty):
            big = int(np.argmax(counts))
            eps = np.float32(1.0 / 1024) * (rng.choice([-1.0, 1.0], size=dsub).astype(np.float32))
            centroids[empty] = centroids[big] * (1 + eps)
            centroids[big] = centroids[big] * (1 - eps)
            counts[empty] = counts[big] // 2
            counts[big] -= counts[empty]
    return centroids


def _train_codebooks(x: npt.NDArray[np.float32], spec: PQSpec, niter: int, rng: np.random.Generator,
                     init: npt.NDArray[np.float32] | None = None, progress: bool = False
                     ) -> npt.NDArray[np.float32]:
    """(M, ksub, dsub) codebooks: an independent k-means in each of the M sub-spaces."""
    dsub = spec.dsub(x.shape[1])
    subspaces = tqdm(range(spec.M), desc="PQ k-means", unit="subspace", disable=not progress)
    return np.stack([
        kmeans(np.ascontiguousarray(x[:, m * dsub:(m + 1) * dsub]), spec.ksub, niter, rng,
               None if init is None else init[m])
        for m in subspaces])


def _random_rotation(d: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def train_pq(xb: npt.ArrayLike, spec: PQSpec, seed: int = 0, niter: int = 25,
             progress: bool = False) -> TrainedPQ:
    """Train the PQ codebooks (and the OPQ rotation if `spec.opq`) on (n, d) vectors.

    Deterministic for a given seed. Trains on at most 256 * ksub rows, sampled with the seed.
    OPQ (Ge et al. 2013, non-parametric): alternate a few k-means steps on the rotated vectors
    with the orthogonal Procrustes rotation that best maps the vectors onto their
    reconstructions, starting from a random rotation as faiss does.
    """
    # One BLAS thread: the (rows, dsub) @ (dsub, ksub) products are too thin to split, and
    # threads made them ~7x slower on the 2-core reference machine.
    with threadpool_limits(limits=1, user_api="blas"):
        return _train_pq(xb, spec, seed, niter, progress)


def _train_pq(xb: npt.ArrayLike, spec: PQSpec, seed: int, niter: int, progress: bool) -> TrainedPQ:
    shape = np.shape(xb)
    if len(shape) != 2:
        raise GalleryError(f"training vectors must be a 2-D (n, d) array, got shape {shape}")
    x = check_vectors(xb, shape[1], "training vectors")
    spec.dsub(x.shape[1])
    rng = np.random.default_rng(seed)
    max_train = MAX_POINTS_PER_CENTROID * spec.ksub
    if x.shape[0] > max_train:
        x = x[np.sort(rng.choice(x.shape[0], size=max_train, replace=False))]
    if not spec.opq:
        return TrainedPQ(_train_codebooks(x, spec, niter, rng, progress=progress), None)
    rotation = _random_rotation(x.shape[1], rng)
    codebooks = None
    for _ in tqdm(range(OPQ_ITERATIONS), desc="OPQ", unit="iter", disable=not progress):
        xr = x @ rotation.T
        codebooks = _train_codebooks(xr, spec, OPQ_KMEANS_ITERATIONS, rng, init=codebooks)
        recon = decode(codebooks, encode(codebooks, xr))
        u, _, vt = np.linalg.svd(recon.T.astype(np.float64) @ x)
        rotation = (u @ vt).astype(np.float32)
    codebooks = _train_codebooks(x @ rotation.T, spec, niter, rng, init=codebooks, progress=progress)
    return TrainedPQ(codebooks, rotation)


def build_gallery(xb: npt.ArrayLike, ids: npt.ArrayLike | None, spec: PQSpec, seed: int = 0,
                  niter: int = 25, train_vectors: npt.ArrayLike | None = None,
                  progress: bool = False, shortlist: int = DEFAULT_SHORTLIST) -> Gallery:
    """Train codebooks (on `train_vectors`, default xb) and encode xb (n, d).

    ids: (n,) non-negative unique int64 SKU indices, default 0..n-1. With a refine spec the SQ8
    scales come from xb itself (the build vectors) and `shortlist` ADC rows are re-ranked.
    """
    trained = train_pq(xb if train_vectors is None else train_vectors, spec, seed, niter, progress)
    d = trained.codebooks.shape[0] * trained.codebooks.shape[2]
    empty = Gallery(spec=spec.without_refine(), d=d, codebooks=trained.codebooks,
                    codes=np.zeros((0, spec.M), np.uint8), ids=np.zeros(0, np.int64),
                    rotation=trained.rotation)
    if spec.refine is not None:
        empty = with_refine(empty, np.zeros((0, d), np.float32), spec.refine, shortlist,
                            scales=sq8_scales(check_vectors(xb, d, f"vectors (codebooks d={d})")))
    return add_to_gallery(empty, xb, ids)


def with_refine(gallery: Gallery, xb: npt.ArrayLike, kind: str = "SQ8",
                shortlist: int = DEFAULT_SHORTLIST,
                scales: npt.NDArray[np.float32] | None = None) -> Gallery:
    """The same PQ gallery plus a refine stage: (n, d) xb are the gallery's vectors, row by row.

    Codebooks and PQ codes are kept, so this isolates what the refine adds (the benchmark
    compares both on the same codes). scales: (d,) SQ8 scales, default computed from xb.
    """
    xb = check_vectors(xb, gallery.d, f"refine vectors (gallery d={gallery.d})")
    if xb.shape[0] != gallery.n:
        raise GalleryError(f"refine needs one vector per gallery row: {xb.shape[0]} vectors for "
                           f"{gallery.n} rows")
    spec = PQSpec(M=gallery.spec.M, nbits=gallery.spec.nbits, metric=gallery.spec.metric,
                  opq=gallery.spec.opq, refine=kind)
    scales = sq8_scales(xb) if scales is None else np.asarray(scales, dtype=np.float32)
    return Gallery(spec=spec, d=gallery.d, codebooks=gallery.codebooks, codes=gallery.codes,
                   ids=gallery.ids, rotation=gallery.rotation, refine_scales=scales,
                   refine_codes=sq8_encode(scales, xb), shortlist=shortlist)


def add_to_gallery(gallery: Gallery, x_new: npt.ArrayLike, ids_new: npt.ArrayLike | None) -> Gallery:
    """One-shot enrollment: encode (n_new, d) vectors with the existing codebooks and append.

    Earlier codes are untouched; nothing is retrained. With refine, the SQ8 codes use the
    existing scales (values beyond the build range clip to +-127). ids_new: (n_new,) int64, default
    continuing after the largest existing id. Duplicate ids (among the new ones or with the
    gallery) and a wrong dimension raise GalleryError.
    """
    x_new = check_vectors(x_new, gallery.d, f"new vectors (gallery d={gallery.d})")
    n_new = x_new.shape[0]
    if ids_new is None:
        first = int(gallery.ids.max()) + 1 if gallery.n else 0
        ids_new = np.arange(first, first + n_new, dtype=np.int64)
    ids_arr = np.asarray(ids_new)
    if ids_arr.shape != (n_new,) or not np.issubdtype(ids_arr.dtype, np.integer):
        raise GalleryError(f"ids must be {n_new} integers, one per new vector, got "
                           f"{ids_arr.dtype.name} {ids_arr.shape}")
    ids_arr = ids_arr.astype(np.int64)
    clash = np.intersect1d(ids_arr, gallery.ids)
    if clash.size:
        raise GalleryError(f"ids already in the gallery: {clash[:5].tolist()} ({clash.size} in all); "
                           f"one-shot add only appends new SKUs")
    with threadpool_limits(limits=1, user_api="blas"):  # thin matmuls, see train_pq
        codes = encode(gallery.codebooks, x_new, gallery.rotation)
    refine_codes = None
    if gallery.spec.refine is not None:
        refine_codes = np.concatenate([gallery.refine_codes, sq8_encode(gallery.refine_scales, x_new)])
    return Gallery(spec=gallery.spec, d=gallery.d, codebooks=gallery.codebooks,
                   codes=np.concatenate([gallery.codes, codes]),
                   ids=np.concatenate([gallery.ids, ids_arr]), rotation=gallery.rotation,
                   refine_scales=gallery.refine_scales, refine_codes=refine_codes,
                   shortlist=gallery.shortlist)
