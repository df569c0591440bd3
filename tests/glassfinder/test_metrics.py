"""Retrieval metrics vs plain-loop references."""
import numpy as np
import pytest

from glassfinder.metrics import map_at_r, retrieval_report, size_blind_top1_ceiling, topk_accuracy

EXACT = 1e-12


def loop_topk(I, lq, ldb, k):
    return np.mean([any(j >= 0 and ldb[j] == lq[i] for j in I[i, :k]) for i in range(len(I))])


def loop_map_at_r(I, lq, ldb):
    aps = []
    for i in range(len(I)):
        R = sum(1 for x in ldb if x == lq[i])
        hits, s = 0, 0.0
        for rank, j in enumerate(I[i, :R], 1):
            if j >= 0 and ldb[j] == lq[i]:
                hits += 1
                s += hits / rank
        aps.append(s / R if R else 0.0)
    return np.mean(aps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_loop_references(seed):
    rng = np.random.default_rng(seed)
    ldb = rng.integers(0, 30, size=80)
    lq = rng.integers(0, 32, size=50)  # some labels absent from the gallery
    I = np.stack([rng.permutation(80)[:20] for _ in range(50)])
    I[rng.random(I.shape) < 0.05] = -1  # "no result" slots never count
    for k in (1, 5, 10):
        assert abs(topk_accuracy(I, lq, ldb, k) - loop_topk(I, lq, ldb, k)) < EXACT
    assert abs(map_at_r(I, lq, ldb) - loop_map_at_r(I, lq, ldb)) < EXACT


def test_perfect_and_worst_rankings():
    ldb = np.array([0, 0, 1, 2])
    lq = np.array([0, 1])
    perfect = np.array([[0, 1, 2, 3], [2, 0, 1, 3]])
    assert map_at_r(perfect, lq, ldb) == 1.0
    assert topk_accuracy(perfect, lq, ldb, 1) == 1.0
    worst = np.array([[3, 2, 1, 0], [3, 1, 0, 2]])
    assert topk_accuracy(worst, lq, ldb, 1) == 0.0
    assert map_at_r(worst, lq, ldb) == 0.0


def test_report_distinguishes_strict_and_size_insensitive():
    sku_db = np.array([10, 11, 12])
    group_db = np.array([1, 1, 2])  # SKUs 10 and 11 are two sizes of one frame
    I = np.array([[1, 0, 2] + [-1] * 7])  # the other size ranked first; -1: no more results
    r = retrieval_report(I, [10], sku_db, [1], group_db)
    assert r["top1"] == 0.0 and r["top5"] == 1.0
    assert r["top1_size_insensitive"] == 1.0


def test_bad_shapes_and_out_of_range_rows_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        topk_accuracy([[5]], [0], [0, 1], 1)
    with pytest.raises(ValueError, match="need I"):
        topk_accuracy([0, 1], [0], [0, 1], 1)
    with pytest.raises(ValueError, match="at least 5"):
        topk_accuracy([[0]], [0], [0], 5)


def test_size_blind_ceiling_is_the_mean_inverse_group_size():
    group_db = [0, 0, 1, 2, 2, 2]  # groups of 2, 1 and 3 sizes
    assert size_blind_top1_ceiling([0, 1, 2], group_db) == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    assert size_blind_top1_ceiling([1, 1], group_db) == 1.0
    with pytest.raises(ValueError, match="gallery"):
        size_blind_top1_ceiling([3], group_db)
