"""`glassfinder gallery bench`: PQ gallery accuracy, size and single-thread speed, with faiss as anchor.

Accuracy is measured on the reference gallery size (3,200 SKUs) and again on the large one;
speed on one thread at 3,200 and at `n_1m` (1M by default) vectors. faiss is imported here
only, as a speed and correctness anchor: its IndexPQ gets OUR codebooks, so both search the
same codes of the same data in the same run.

Every number is measured twice on the same codebooks and codes: PQ alone (the spec without
its refine suffix; keys without prefix) and PQ + Refine(SQ8), the ADC shortlist re-ranked with
int8 codes of the same vectors (keys prefixed `refine_`).

Without real embeddings (`vectors`), the data is synthetic: L2-normalised 128-d vectors in
clusters of `items_per_centre` SKUs ("models" whose colourways/sizes look alike), and queries
that are noisy copies of known gallery items (a photo is not the render it was enrolled from).
Isotropic noise is a pessimistic case for PQ: real embeddings have fewer effective dimensions.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from glassfinder_export.gallery import add_to_gallery, build_gallery, with_refine
from glassfinder_runtime.errors import GalleryError
from glassfinder_runtime.gallery import (DEFAULT_SHORTLIST, Gallery, Metric, exact_search, gallery_to_bytes,
                                         parse_spec, pq_search)


@dataclass(frozen=True)
class GalleryBenchConfig:
    """What `glassfinder gallery bench` measures, and on which data."""

    spec: str = "PQ16x8,IP"  # the PQ under test (a ",Refine(...)" suffix picks the refine kind)
    shortlist: int = DEFAULT_SHORTLIST  # ADC rows re-ranked by the refine stage
    d: int = 128  # embedding dimension (synthetic data)
    n_ref: int = 3200  # reference gallery size: recall, top-1, search_ms_3200
    n_1m: int = 1_000_000  # large gallery: search_ms_1m, faiss_search_ms_1m, recall_at_10_1m
    k: int = 10  # neighbours returned (recall@k)
    n_queries: int = 1000  # accuracy queries on the reference gallery
    n_queries_1m: int = 200  # accuracy queries on the large gallery (exact search is the cost)
    n_added: int = 320  # SKUs enrolled one-shot after the reference gallery was built
    # Codebooks of the reference gallery are trained on this many vectors of OTHER SKUs (as the
    # embedder's training split would give); 0 trains on the gallery itself (overfits 3,200).
    n_train: int = 65536
    n_timing: int = 50  # single-query searches per timing; the median is reported
    items_per_centre: int = 8  # synthetic: SKUs per cluster centre
    cluster_spread: float = 0.75  # synthetic: in-cluster noise; SKU-SKU cosine ~ 1 / (1 + s^2)
    query_noise: float = 0.5  # query noise; query-SKU cosine ~ 1 / sqrt(1 + t^2)
    seed: int = 0
    niter: int = 25  # k-means iterations


def synthetic_embeddings(n: int, d: int, items_per_centre: int, spread: float,
                         rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """(n, d) float32 unit vectors: random unit centres plus isotropic noise of norm ~spread."""
    n_centres = max(1, n // items_per_centre)
    centres = _normalise(rng.standard_normal((n_centres, d), dtype=np.float32))
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 65536):  # chunks keep the temporaries small at 1M
        rows = min(65536, n - start)
        x = centres[rng.integers(0, n_centres, rows)]
        x += rng.standard_normal((rows, d), dtype=np.float32) * np.float32(spread / np.sqrt(d))
        out[start:start + rows] = _normalise(x)
    return out


def noisy_queries(xb: npt.NDArray[np.float32], n_queries: int, noise: float,
                  rng: np.random.Generator) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """(nq, d) unit queries near random gallery rows, and (nq,) the positions they came from."""
    truth = rng.integers(0, xb.shape[0], n_queries)
    xq = xb[truth] + rng.standard_normal((n_queries, xb.shape[1]), dtype=np.float32) * np.float32(
        noise / np.sqrt(xb.shape[1]))
    return _normalise(xq), truth.astype(np.int64)


def _normalise(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall_at_k(I: npt.NDArray[np.int64], I_exact: npt.NDArray[np.int64]) -> float:
    """faiss's 1-recall@k: fraction of queries whose exact nearest neighbour is in the top k."""
    return float((I == I_exact[:, :1]).any(axis=1).mean())


def intersection_at_k(I: npt.NDArray[np.int64], I_exact: npt.NDArray[np.int64]) -> float:
    """k-recall@k: mean fraction of the exact top k found in the top k."""
    k = I.shape[1]
    return float(np.mean([np.intersect1d(a, b).size / k for a, b in zip(I, I_exact)]))


def _median_ms(search, xq: npt.NDArray[np.float32]) -> tuple[float, float]:
    """Median (wall, thread CPU) time in ms of `search(one_query)` over the rows of xq.

    The CPU time of the calling thread is what the search itself costs; on a shared machine
    the wall time also counts the waits for a core, so both are reported.
    """
    search(xq[:1])  # warm-up: caches the transposed codes
    wall, cpu = [], []
    for i in range(xq.shape[0]):
        t0, c0 = time.perf_counter(), time.thread_time()
        search(xq[i:i + 1])
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return float(np.median(wall) * 1e3), float(np.median(cpu) * 1e3)


def _accuracy(gallery: Gallery, xb: npt.NDArray[np.float32], xq: npt.NDArray[np.float32],
              truth: npt.NDArray[np.int64], k: int) -> dict[str, float]:
    """PQ vs exact on one gallery whose ids are the row positions of xb."""
    _, I_pq = pq_search(gallery, xq, k)
    _, I_exact = exact_search(xb, xq, k, gallery.spec.metric)
    return {"recall": recall_at_k(I_pq, I_exact), "intersection": intersection_at_k(I_pq, I_exact),
            "top1_pq": float((I_pq[:, 0] == truth).mean()),
            "top1_exact": float((I_exact[:, 0] == truth).mean())}


def run_gallery_bench(cfg: GalleryBenchConfig, vectors: npt.NDArray[np.float32] | None = None,
                      train_vectors: npt.NDArray[np.float32] | None = None,
                      progress: bool = True) -> dict:
    """Measure the PQ gallery; returns the JSON-ready numbers (see module docstring).

    vectors: optional (n, d) real embeddings for the reference gallery (the first n_ref rows);
    the large gallery stays synthetic with the same d, because speed does not depend on the data.
    train_vectors: optional (m, d) embeddings of other SKUs to train the reference codebooks on
    (default: cfg.n_train synthetic ones from other clusters; with `vectors`, the gallery itself).
    """
    import faiss  # benchmark anchor only

    full_spec = parse_spec(cfg.spec)
    spec, refine_kind = full_spec.without_refine(), full_spec.refine or "SQ8"
    rng = np.random.default_rng(cfg.seed)
    if vectors is not None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] < max(spec.ksub, 2):
            raise GalleryError(f"benchmark vectors must be (n >= {spec.ksub}, d), got {vectors.shape}")
    d = cfg.d if vectors is None else vectors.shape[1]
    spec.dsub(d)
    steps = tqdm(total=7, desc="gallery bench", unit="step", disable=not progress)

    # Reference size: accuracy and the phone-sized search time. The rows after n_ref are
    # enrolled one-shot afterwards (codebooks never saw them) and measured on their own.
    xb_all = (synthetic_embeddings(cfg.n_ref + cfg.n_added, d, cfg.items_per_centre,
                                   cfg.cluster_spread, rng)
              if vectors is None else vectors[:cfg.n_ref + cfg.n_added])
    xb_ref = xb_all[:cfg.n_ref]
    if train_vectors is None and vectors is None and cfg.n_train > 0:
        train_vectors = synthetic_embeddings(cfg.n_train, d, cfg.items_per_centre, cfg.cluster_spread, rng)
    trained_on = "gallery" if train_vectors is None else f"{len(train_vectors)} vectors of other SKUs"
    gallery_ref = build_gallery(xb_ref, None, spec, seed=cfg.seed, niter=cfg.niter,
                                train_vectors=train_vectors)
    xq_ref, truth_ref = noisy_queries(xb_ref, cfg.n_queries, cfg.query_noise, rng)
    refine_ref = with_refine(gallery_ref, xb_ref, refine_kind, cfg.shortlist)
    acc_ref = _accuracy(gallery_ref, xb_ref, xq_ref, truth_ref, cfg.k)
    acc_ref_r = _accuracy(refine_ref, xb_ref, xq_ref, truth_ref, cfg.k)
    acc_added = acc_added_r = None
    if xb_all.shape[0] > xb_ref.shape[0]:
        x_added = xb_all[xb_ref.shape[0]:]
        xq_add, truth_add = noisy_queries(x_added, cfg.n_queries, cfg.query_noise, rng)
        acc_added = _accuracy(add_to_gallery(gallery_ref, x_added, None), xb_all, xq_add,
                              truth_add + xb_ref.shape[0], cfg.k)
        # Added SKUs are SQ8-encoded with the build's scales (no rebuild), as on the phone.
        acc_added_r = _accuracy(add_to_gallery(refine_ref, x_added, None), xb_all, xq_add,
                                truth_add + xb_ref.shape[0], cfg.k)
    steps.update()

    # Large gallery: train on a sample, encode all, same queries for numpy and faiss.
    xb_big = synthetic_embeddings(cfg.n_1m, d, cfg.items_per_centre, cfg.cluster_spread, rng)
    steps.update()
    gallery_big = build_gallery(xb_big, None, spec, seed=cfg.seed, niter=cfg.niter)
    steps.update()
    xq_big, truth_big = noisy_queries(xb_big, max(cfg.n_queries_1m, cfg.n_timing), cfg.query_noise, rng)
    acc_big = _accuracy(gallery_big, xb_big, xq_big[:cfg.n_queries_1m], truth_big[:cfg.n_queries_1m], cfg.k)
    steps.update()
    refine_big = with_refine(gallery_big, xb_big, refine_kind, cfg.shortlist)
    acc_big_r = _accuracy(refine_big, xb_big, xq_big[:cfg.n_queries_1m], truth_big[:cfg.n_queries_1m], cfg.k)
    steps.update()

    index = faiss.IndexPQ(d, spec.M, spec.nbits,
                          faiss.METRIC_INNER_PRODUCT if spec.metric is Metric.IP else faiss.METRIC_L2)
    faiss.copy_array_to_vector(gallery_big.codebooks.ravel(), index.pq.centroids)
    index.is_trained = True
    xb_faiss = xb_big if gallery_big.rotation is None else xb_big @ gallery_big.rotation.T
    index.add(xb_faiss)
    # faiss packs codes of nbits < 8 into fewer bytes: compare byte codes only for nbits == 8.
    code_agreement = (float((faiss.vector_to_array(index.codes).reshape(-1, spec.M) == gallery_big.codes).mean())
                      if spec.nbits == 8 else None)
    steps.update()

    xq_time_ref, xq_time_big = xq_ref[:cfg.n_timing], xq_big[:cfg.n_timing]
    xq_faiss = xq_time_big if gallery_big.rotation is None else xq_time_big @ gallery_big.rotation.T
    faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1):
        ms_ref = _median_ms(lambda q: pq_search(gallery_ref, q, cfg.k), xq_time_ref)
        ms_big = _median_ms(lambda q: pq_search(gallery_big, q, cfg.k), xq_time_big)
        ms_ref_r = _median_ms(lambda q: pq_search(refine_ref, q, cfg.k), xq_time_ref)
        ms_big_r = _median_ms(lambda q: pq_search(refine_big, q, cfg.k), xq_time_big)
        ms_faiss = _median_ms(lambda q: index.search(q, cfg.k), xq_faiss)
        ms_exact = _median_ms(lambda q: exact_search(xb_big, q, cfg.k, spec.metric), xq_time_big[:10])
    load_average = os.getloadavg()[0]
    _, I_np = pq_search(gallery_big, xq_time_big, cfg.k)
    _, I_faiss = index.search(xq_faiss, cfg.k)
    steps.update()
    steps.close()
    refine_bytes = refine_ref.spec.bytes_per_vector(d)

    return {
        "recall_at_10": acc_ref["recall"],
        "top1_delta": acc_ref["top1_pq"] - acc_ref["top1_exact"],
        "bytes_per_sku": spec.code_size,
        "compression_ratio": 4 * d / spec.code_size,
        "search_ms_3200": ms_ref[0],
        "search_ms_1m": ms_big[0],
        "faiss_search_ms_1m": ms_faiss[0],
        # Context for the numbers above.
        "recall_definition": "fraction of queries whose exact top-1 is in the PQ top-10 (faiss 1-recall@10)",
        "intersection_at_10": acc_ref["intersection"],
        "top1_exact": acc_ref["top1_exact"],
        "top1_pq": acc_ref["top1_pq"],
        # Queries of SKUs added one-shot after the build (None: no vectors left to add).
        "recall_at_10_added": None if acc_added is None else acc_added["recall"],
        "top1_delta_added": None if acc_added is None else acc_added["top1_pq"] - acc_added["top1_exact"],
        "n_added": xb_all.shape[0] - xb_ref.shape[0],
        "recall_at_10_1m": acc_big["recall"],
        "intersection_at_10_1m": acc_big["intersection"],
        "top1_delta_1m": acc_big["top1_pq"] - acc_big["top1_exact"],
        "exact_search_ms_1m": ms_exact[0],
        # Thread CPU time of the same runs, and the machine load while they ran.
        "search_cpu_ms_3200": ms_ref[1],
        "search_cpu_ms_1m": ms_big[1],
        "faiss_search_cpu_ms_1m": ms_faiss[1],
        "exact_search_cpu_ms_1m": ms_exact[1],
        "load_average_1min": load_average,
        "faiss_code_agreement_1m": code_agreement,
        "faiss_top1_agreement_1m": float((I_np[:, 0] == I_faiss[:, 0]).mean()),
        "file_bytes_per_sku_3200": len(gallery_to_bytes(gallery_ref)) / gallery_ref.n,
        "n_ref": gallery_ref.n,
        "n_1m": gallery_big.n,
        "d": d,
        "spec": str(spec),
        "threads": 1,
        "data": "synthetic" if vectors is None else "vectors (reference gallery); synthetic (large)",
        "codebooks_trained_on": trained_on,
        # The same data, codebooks and codes with the refine stage (faiss's IndexRefine).
        "refine_spec": str(refine_ref.spec),
        "shortlist": cfg.shortlist,
        "refine_recall_at_10": acc_ref_r["recall"],
        "refine_top1_delta": acc_ref_r["top1_pq"] - acc_ref_r["top1_exact"],
        "refine_bytes_per_sku": refine_bytes,
        "refine_compression_ratio": 4 * d / refine_bytes,
        "refine_search_ms_3200": ms_ref_r[0],
        "refine_search_ms_1m": ms_big_r[0],
        "refine_intersection_at_10": acc_ref_r["intersection"],
        "refine_top1": acc_ref_r["top1_pq"],
        "refine_recall_at_10_added": None if acc_added_r is None else acc_added_r["recall"],
        "refine_top1_delta_added": (None if acc_added_r is None
                                    else acc_added_r["top1_pq"] - acc_added_r["top1_exact"]),
        "refine_recall_at_10_1m": acc_big_r["recall"],
        "refine_intersection_at_10_1m": acc_big_r["intersection"],
        "refine_top1_delta_1m": acc_big_r["top1_pq"] - acc_big_r["top1_exact"],
        "refine_search_cpu_ms_3200": ms_ref_r[1],
        "refine_search_cpu_ms_1m": ms_big_r[1],
        "refine_file_bytes_per_sku_3200": len(gallery_to_bytes(refine_ref)) / refine_ref.n,
        "config": asdict(cfg),
    }
