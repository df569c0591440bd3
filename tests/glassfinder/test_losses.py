"""Losses: values against pytorch-metric-learning's implementations and small loop references,
the shared interface's shape checks, and that each loss actually trains a toy problem."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from glassfinder.losses import (
    LOSS_NAMES,
    CosineSimilarity,
    EuclideanDistance,
    MultiSimilarityLoss,
    MultiSimilarityMiner,
    SubCenterArcFaceLoss,
    TripletMarginLoss,
    all_pairs,
    build_loss,
)
from glassfinder_runtime.errors import ConfigError

LOSS_ATOL = 1e-5  # float64 inputs: ours and PML's must agree to rounding


def _batch(n_classes: int = 6, k: int = 4, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(k)
    emb = torch.randn(n_classes * k, d, generator=g, dtype=torch.float64)
    return emb, labels


def test_multi_similarity_matches_pml_with_and_without_miner():
    emb, labels = _batch()
    for eps in (0.1, 0.5):
        ours = MultiSimilarityLoss(miner=MultiSimilarityMiner(eps))(emb, labels)
        pml_pairs = pml_miners.MultiSimilarityMiner(epsilon=eps)(emb, labels)
        ref = pml_losses.MultiSimilarityLoss()(emb, labels, pml_pairs)
        assert abs(float(ours) - float(ref)) < LOSS_ATOL
    ours_all = MultiSimilarityLoss(miner=None)(emb, labels)
    ref_all = pml_losses.MultiSimilarityLoss()(emb, labels)
    assert abs(float(ours_all) - float(ref_all)) < LOSS_ATOL


def test_multi_similarity_matches_loop_reference():
    emb, labels = _batch(n_classes=3, k=3, d=8, seed=1)
    alpha, beta, base = 2.0, 50.0, 0.5
    x = torch.nn.functional.normalize(emb, dim=1).numpy()
    s = x @ x.T
    lab = labels.numpy()
    terms = []
    for i in range(len(x)):
        pos = [s[i, j] for j in range(len(x)) if lab[j] == lab[i] and j != i]
        neg = [s[i, j] for j in range(len(x)) if lab[j] != lab[i]]
        terms.append(math.log(1 + sum(math.exp(-alpha * (v - base)) for v in pos)) / alpha
                     + math.log(1 + sum(math.exp(beta * (v - base)) for v in neg)) / beta)
    ours = MultiSimilarityLoss(alpha, beta, base, miner=None)(emb, labels)
    assert abs(float(ours) - np.mean(terms)) < LOSS_ATOL


def test_miner_matches_pml_pairs():
    emb, labels = _batch(seed=3)
    for distance, pml_distance in ((CosineSimilarity(), None), (EuclideanDistance(), "lp")):
        mat = distance.pairwise(emb, emb)
        ours = MultiSimilarityMiner(0.1).mine(mat, labels, distance)
        kwargs = {}
        if pml_distance == "lp":
            from pytorch_metric_learning.distances import LpDistance
            kwargs["distance"] = LpDistance()
        a1, p, a2, n = pml_miners.MultiSimilarityMiner(epsilon=0.1, **kwargs)(emb, labels)
        assert set(zip(ours.a1.tolist(), ours.p.tolist())) == set(zip(a1.tolist(), p.tolist()))
        assert set(zip(ours.a2.tolist(), ours.n.tolist())) == set(zip(a2.tolist(), n.tolist()))
        assert len(ours.a1) > 0 and len(ours.a2) > 0


def test_subcenter_arcface_matches_pml():
    emb, labels = _batch(n_classes=5, k=3, d=16, seed=2)
    ours = SubCenterArcFaceLoss(num_classes=5, embedding_dim=16, sub_centers=3).double()
    ref = pml_losses.SubCenterArcFaceLoss(num_classes=5, embedding_size=16, sub_centers=3).double()
    with torch.no_grad():
        ref.W.copy_(ours.W)
    a, b = float(ours(emb, labels).detach()), float(ref(emb, labels).detach())
    assert a > 0.1 and abs(a - b) < LOSS_ATOL


def test_triplet_batch_hard_matches_loop_reference():
    emb, labels = _batch(n_classes=4, k=3, d=8, seed=4)
    for distance in (CosineSimilarity(), EuclideanDistance()):
        margin = 0.2
        mat = distance.pairwise(emb, emb).numpy()
        lab = labels.numpy()
        terms = []
        for i in range(len(lab)):
            pos = [mat[i, j] for j in range(len(lab)) if lab[j] == lab[i] and j != i]
            neg = [mat[i, j] for j in range(len(lab)) if lab[j] != lab[i]]
            if distance.is_inverted:
                terms.append(max(0.0, max(neg) - min(pos) + margin))
            else:
                terms.append(max(0.0, max(pos) - min(neg) + margin))
        nonzero = [t for t in terms if t > 0]
        expected = np.mean(nonzero) if nonzero else 0.0
        ours = TripletMarginLoss(margin, distance=distance)(emb, labels)
        assert abs(float(ours) - expected) < LOSS_ATOL


def test_all_pairs_counts():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    pairs = all_pairs(labels)
    assert len(pairs.a1) == 2 + 6  # ordered positive pairs: class 0 gives 2, class 1 gives 6
    assert len(pairs.a2) == 36 - 6 - 8


def test_interface_checks_shapes():
    loss = MultiSimilarityLoss()
    with pytest.raises(ValueError):
        loss(torch.randn(4, 8), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError):
        loss(torch.randn(4, 8, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError):
        loss(torch.randn(4, 8), torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ConfigError):
        SubCenterArcFaceLoss(4, 8, distance=EuclideanDistance())
    with pytest.raises(ConfigError):
        build_loss("contrastive", 4, 8)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_each_loss_trains_a_toy_problem(name: str):
    """A linear map trained with the loss must separate noisy class clusters: loss down, recall@1 up."""
    g = torch.Generator().manual_seed(0)
    n_classes, k, d_in, d = 8, 4, 32, 16
    centres = torch.randn(n_classes, d_in, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(k)

    def sample():
        return centres[labels] + 1.5 * torch.randn(len(labels), d_in, generator=g)

    torch.manual_seed(0)
    net = torch.nn.Linear(d_in, d)
    loss_fn = build_loss(name, n_classes, d)
    opt = torch.optim.Adam(list(net.parameters()) + list(loss_fn.parameters()), lr=0.01)

    def recall_at_1() -> float:
        with torch.no_grad():
            e = torch.nn.functional.normalize(net(sample()), dim=1)
            s = e @ e.t()
            s.fill_diagonal_(-2)
            return float((labels[s.argmax(1)] == labels).float().mean())

    first = [float(loss_fn(net(sample()), labels).detach()) for _ in range(5)]
    r0 = recall_at_1()
    for _ in range(150):
        loss = loss_fn(net(sample()), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = [float(loss_fn(net(sample()), labels).detach()) for _ in range(5)]
    assert np.mean(last) < 0.7 * np.mean(first)
    assert recall_at_1() > max(r0, 0.8)
