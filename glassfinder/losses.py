"""Metric-learning losses behind one interface.

Shaped after pytorch-metric-learning (PML) 2.9.0 (`BaseMetricLossFunction`, `BaseDistance`,
`BaseReducer`), with typed returns instead of PML's string-keyed loss dicts:

- a `Distance` says whether higher means closer (`is_inverted`) and turns "x is farther than y"
  into one signed number (`margin`), so a loss is written once for distances and similarities;
- a `Reducer` turns the per-element loss terms into the scalar that is back-propagated;
- `MetricLoss.forward` checks shapes, calls the subclass hook `compute_loss` -> (m,) terms, reduces.

The formulas match PML's implementations; tests/glassfinder/test_losses.py checks the values
against PML. They are written out here (a few lines each) so that every loss has the same typed
interface and so that the trainable proxies are ordinary parameters of one module (DDP syncs them).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from glassfinder_runtime.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Distances


class Distance(ABC):
    """Pairwise distance or similarity between two sets of embeddings."""

    is_inverted: bool  # True: higher value = closer (a similarity); False: lower = closer (a distance)

    @abstractmethod
    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (n, d), y: (m, d) -> (n, m)."""

    def margin(self, x: torch.Tensor | float, y: torch.Tensor | float) -> torch.Tensor | float:
        """How much farther apart pair-value x is than pair-value y (positive = x is the farther one)."""
        return y - x if self.is_inverted else x - y


class CosineSimilarity(Distance):
    """Cosine similarity of the L2-normalised vectors (higher = closer)."""

    is_inverted = True

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(y, dim=1).t()


class EuclideanDistance(Distance):
    """Euclidean distance, of the L2-normalised vectors unless normalize=False (lower = closer)."""

    is_inverted = False

    def __init__(self, normalize: bool = True):
        self.normalize = normalize

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
        # Written out rather than torch.cdist so that the gradient at distance 0 is finite.
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ y.t() + (y * y).sum(1)[None, :]
        return d2.clamp_min(1e-12).sqrt()


# ---------------------------------------------------------------------------------------------
# Reducers


class Reducer(ABC):
    @abstractmethod
    def __call__(self, terms: torch.Tensor) -> torch.Tensor:
        """(m,) per-element loss terms -> () scalar. m may be 0 (then the loss is 0, still in the graph)."""


class MeanReducer(Reducer):
    """Mean over all terms."""

    def __call__(self, terms: torch.Tensor) -> torch.Tensor:
        return terms.mean() if terms.numel() else terms.sum()


class AvgNonZeroReducer(Reducer):
    """Mean over the terms that are > 0 (e.g. triplets that still violate the margin)."""

    def __call__(self, terms: torch.Tensor) -> torch.Tensor:
        active = terms > 0
        n = int(active.sum())
        return terms.sum() / n if n else terms.sum()


# ---------------------------------------------------------------------------------------------
# Miners


@dataclass(frozen=True)
class PairIndices:
    """Positive pairs (a1[i], p[i]) and negative pairs (a2[j], n[j]), int64 index tensors."""

    a1: torch.Tensor
    p: torch.Tensor
    a2: torch.Tensor
    n: torch.Tensor


def all_pairs(labels: torch.Tensor) -> PairIndices:
    """Every positive pair (same label, not itself) and every negative pair of a batch."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    a1, p = torch.where(same & ~eye)
    a2, n = torch.where(~same)
    return PairIndices(a1, p, a2, n)


class Miner(ABC):
    @abstractmethod
    def mine(self, mat: torch.Tensor, labels: torch.Tensor, distance: Distance) -> PairIndices:
        """mat: (n, n) pairwise values of the batch (no gradient needed); labels: (n,)."""


class MultiSimilarityMiner(Miner):
    """Wang et al. 2019 pair mining (PML's MultiSimilarityMiner): keep a positive if it is farther
    than the closest negative minus epsilon, a negative if it is closer than the farthest positive plus epsilon."""

    def __init__(self, epsilon: float = 0.1):
        self.epsilon = epsilon

    def mine(self, mat: torch.Tensor, labels: torch.Tensor, distance: Distance) -> PairIndices:
        mat = mat.detach()
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos, neg = same & ~eye, ~same
        s = mat if distance.is_inverted else -mat  # work in "higher = closer"
        inf = torch.finfo(s.dtype).max
        hardest_neg = s.masked_fill(~neg, -inf).amax(1, keepdim=True)  # closest negative per anchor
        hardest_pos = s.masked_fill(~pos, inf).amin(1, keepdim=True)  # farthest positive per anchor
        a1, p = torch.where(pos & (s - self.epsilon < hardest_neg))
        a2, n = torch.where(neg & (s + self.epsilon > hardest_pos))
        return PairIndices(a1, p, a2, n)


# ---------------------------------------------------------------------------------------------
# Losses


class MetricLoss(nn.Module, ABC):
    """Base class: `forward(embeddings (n, d), labels (n,)) -> scalar loss`.

    Subclasses implement `compute_loss` and return the (m,) per-element terms; the reducer makes
    the scalar. A loss with trainable parameters (proxies, class centres) holds them as ordinary
    nn.Parameters: optimise and checkpoint them together with the model.
    """

    def __init__(self, distance: Distance | None = None, reducer: Reducer | None = None):
        super().__init__()
        self.distance = distance if distance is not None else CosineSimilarity()
        self.reducer = reducer if reducer is not None else MeanReducer()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or not embeddings.is_floating_point():
            raise ValueError(f"embeddings must be a (n, d) float tensor, got {tuple(embeddings.shape)} "
                             f"{embeddings.dtype}")
        if labels.shape != (embeddings.shape[0],) or labels.dtype != torch.int64:
            raise ValueError(f"labels must be an ({embeddings.shape[0]},) int64 tensor, got {tuple(labels.shape)} "
                             f"{labels.dtype}")
        terms = self.compute_loss(embeddings, labels)
        return self.reducer(terms)

    @abstractmethod
    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(n, d), (n,) -> (m,) loss terms."""


def _masked_logsumexp_add_one(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log(1 + sum_{j: mask} exp(x_ij)); 0 for rows with an empty mask. (n, m) -> (n,)."""
    x = x.masked_fill(~mask, float("-inf"))
    x = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
    return torch.logsumexp(x, dim=1).masked_fill(~mask.any(1), 0.0)


class MultiSimilarityLoss(MetricLoss):
    """Multi-similarity loss (Wang et al. 2019), one term per anchor:

    1/alpha * log(1 + sum_pos exp(-alpha (s - base))) + 1/beta * log(1 + sum_neg exp(beta (s - base))),
    over the pairs the miner keeps (all pairs without a miner). Needs K >= 2 samples per class in a batch.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                 miner: Miner | None = MultiSimilarityMiner(0.1),
                 distance: Distance | None = None, reducer: Reducer | None = None):
        super().__init__(distance, reducer)
        self.alpha, self.beta, self.base = alpha, beta, base
        self.miner = miner

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mat = self.distance.pairwise(embeddings, embeddings)
        pairs = self.miner.mine(mat, labels, self.distance) if self.miner is not None else all_pairs(labels)
        pos_mask = torch.zeros_like(mat, dtype=torch.bool)
        neg_mask = torch.zeros_like(mat, dtype=torch.bool)
        pos_mask[pairs.a1, pairs.p] = True
        neg_mask[pairs.a2, pairs.n] = True
        pos = _masked_logsumexp_add_one(self.alpha * self.distance.margin(mat, self.base), pos_mask)
        neg = _masked_logsumexp_add_one(self.beta * self.distance.margin(self.base, mat), neg_mask)
        return pos / self.alpha + neg / self.beta


class SubCenterArcFaceLoss(MetricLoss):
    """Sub-center ArcFace (Deng et al. 2020): softmax over classes with an additive angular margin,
    each class holding `sub_centers` proxies (the closest one counts), so label noise and visually
    different renders of one class need not collapse onto a single centre. One term per sample.

    Parameter W: (embedding_dim, num_classes * sub_centers), column c * sub_centers + j = class c, centre j
    (PML's layout). Cosine similarity only.
    """

    def __init__(self, num_classes: int, embedding_dim: int, margin_deg: float = 28.6, scale: float = 64.0,
                 sub_centers: int = 3, distance: Distance | None = None, reducer: Reducer | None = None,
                 seed: int = 0):
        super().__init__(distance, reducer)
        if not isinstance(self.distance, CosineSimilarity):
            raise ConfigError("SubCenterArcFaceLoss works on cosine similarity only")
        if num_classes < 2 or sub_centers < 1:
            raise ConfigError(f"SubCenterArcFaceLoss needs num_classes >= 2 and sub_centers >= 1, "
                              f"got {num_classes}, {sub_centers}")
        self.num_classes, self.sub_centers = num_classes, sub_centers
        self.margin = math.radians(margin_deg)
        self.scale = scale
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(embedding_dim, num_classes * sub_centers, generator=g))

    def class_cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, num_classes): cosine to the closest sub-centre of each class."""
        cos = self.distance.pairwise(embeddings, self.W.t())
        return cos.view(-1, self.num_classes, self.sub_centers).amax(2)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {int(labels.min())}..{int(labels.max())}")
        cos = self.class_cosine(embeddings)
        target = cos.gather(1, labels[:, None])[:, 0]
        # Clamp inside (-1, 1): acos has an infinite gradient at +-1.
        angle = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
        m = self.margin
        # cos(theta + m) while theta + m <= pi; beyond, a linear continuation keeps the loss monotonic.
        with_margin = torch.where(angle <= math.pi - m, torch.cos(angle + m), target - m * math.sin(m))
        logits = cos.scatter(1, labels[:, None], with_margin[:, None]) * self.scale
        return F.cross_entropy(logits, labels, reduction="none")


class TripletMarginLoss(MetricLoss):
    """Triplet loss with batch-hard mining (Hermans et al. 2017): for each anchor, its farthest
    positive and closest negative; term = relu(margin(d_ap, d_an) + margin). Averaged over non-zero terms."""

    def __init__(self, margin: float = 0.1, distance: Distance | None = None, reducer: Reducer | None = None):
        super().__init__(distance, reducer if reducer is not None else AvgNonZeroReducer())
        self.triplet_margin = margin

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mat = self.distance.pairwise(embeddings, embeddings)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos, neg = same & ~eye, ~same
        valid = pos.any(1) & neg.any(1)
        s = mat if self.distance.is_inverted else -mat  # "higher = closer"
        inf = torch.finfo(s.dtype).max
        hard_pos = torch.where(pos, s, torch.full_like(s, inf)).amin(1)
        hard_neg = torch.where(neg, s, torch.full_like(s, -inf)).amax(1)
        # Back in the distance's own units: margin(ap, an) = how much farther the positive is.
        sign = 1.0 if self.distance.is_inverted else -1.0
        d_ap, d_an = sign * hard_pos[valid], sign * hard_neg[valid]
        return F.relu(self.distance.margin(d_ap, d_an) + self.triplet_margin)


LOSS_NAMES: tuple[str, ...] = ("subcenter-arcface", "multi-similarity", "triplet")


def build_loss(name: str, num_classes: int, embedding_dim: int) -> MetricLoss:
    """The losses `glassfinder train embedder --loss` offers, with their default hyper-parameters."""
    if name == "subcenter-arcface":
        return SubCenterArcFaceLoss(num_classes, embedding_dim)
    if name == "multi-similarity":
        return MultiSimilarityLoss()
    if name == "triplet":
        return TripletMarginLoss()
    raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
