"""Retrieval metrics: pure functions over (n, k) int64 neighbour arrays.

The same arrays come from exact search, PQ search and the on-device runtime, so one function
scores all of them. -1 in a neighbour array means "no result" (never a hit).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt


def _check(I: npt.ArrayLike, labels_q: npt.ArrayLike, labels_db: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    I = np.asarray(I, dtype=np.int64)
    labels_q = np.asarray(labels_q)
    labels_db = np.asarray(labels_db)
    if I.ndim != 2 or labels_q.shape != (I.shape[0],):
        raise ValueError(f"need I (n, k) and labels_q (n,), got {I.shape} and {labels_q.shape}")
    if I.size and I.max() >= len(labels_db):
        raise ValueError(f"neighbour index {I.max()} out of range for {len(labels_db)} gallery items")
    hits = np.where(I >= 0, labels_db[np.clip(I, 0, None)] == labels_q[:, None], False)
    return I, hits


def _gallery_counts(labels_q: npt.ArrayLike, labels_db: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """(n,) number of gallery items (m,) sharing each query's label; 0 where the label is absent."""
    labels_q = np.asarray(labels_q)
    uniq, counts = np.unique(np.asarray(labels_db), return_counts=True)
    R = np.zeros(len(labels_q), dtype=np.int64)
    if len(uniq):
        pos = np.searchsorted(uniq, labels_q)
        found = (pos < len(uniq)) & (uniq[np.clip(pos, 0, len(uniq) - 1)] == labels_q)
        R[found] = counts[pos[found]]
    return R


def topk_accuracy(I: npt.ArrayLike, labels_q: npt.ArrayLike, labels_db: npt.ArrayLike, k: int) -> float:
    """Fraction of queries with a correct label among their first k neighbours.

    I: (n, >=k) gallery rows, best first; labels_q: (n,); labels_db: (m,) label of each gallery row.
    """
    I, hits = _check(I, labels_q, labels_db)
    if I.shape[1] < k:
        raise ValueError(f"need at least {k} neighbours, got {I.shape[1]}")
    return float(hits[:, :k].any(axis=1).mean()) if len(I) else 0.0


def map_at_r(I: npt.ArrayLike, labels_q: npt.ArrayLike, labels_db: npt.ArrayLike) -> float:
    """Mean average precision at R (Musgrave et al. 2020), R = gallery items sharing the query's label.

    Needs at least max(R) neighbours per query; queries whose label is absent from the gallery count 0.
    """
    I, hits = _check(I, labels_q, labels_db)
    R = _gallery_counts(labels_q, labels_db)
    if R.max(initial=0) > I.shape[1]:
        raise ValueError(f"mAP@R needs {R.max()} neighbours per query, got {I.shape[1]}")
    ranks = np.arange(1, I.shape[1] + 1)
    precision = np.cumsum(hits, axis=1) / ranks
    within = ranks[None, :] <= R[:, None]
    ap = (precision * hits * within).sum(axis=1) / np.maximum(R, 1)
    return float(ap.mean()) if len(I) else 0.0


def retrieval_report(I: npt.ArrayLike, sku_q: npt.ArrayLike, sku_db: npt.ArrayLike,
                     group_q: npt.ArrayLike, group_db: npt.ArrayLike) -> dict[str, float]:
    """top-1/5/10 strict (SKU) and size-insensitive (model + colourway group), and mAP@R for both."""
    out = {f"top{k}": topk_accuracy(I, sku_q, sku_db, k) for k in (1, 5, 10)}
    out.update({f"top{k}_size_insensitive": topk_accuracy(I, group_q, group_db, k) for k in (1, 5, 10)})
    out["map_at_r"] = map_at_r(I, sku_q, sku_db)
    out["map_at_r_size_insensitive"] = map_at_r(I, group_q, group_db)
    return out


def size_blind_top1_ceiling(group_q: npt.ArrayLike, group_db: npt.ArrayLike) -> float:
    """Expected top-1 (SKU level) of a search that always finds the right model + colourway but
    cannot tell its sizes apart, ranking them at random: the mean of 1 / (sizes of the query's group
    in the gallery). Sizes of a colourway differ only in scale (catalog.sized_shape) and the embedder
    is trained size-invariant (its classes are model + colourway groups), so this bounds its top-1
    until something reads the frame's size."""
    counts = _gallery_counts(group_q, group_db)
    if (counts == 0).any():
        raise ValueError("every query group must be in the gallery")
    return float(np.mean(1.0 / counts)) if len(counts) else 0.0
