"""Tiny, seeded, random-weight models that have the real models' export contracts.

They let the export chain and the parity gates be tested in seconds, before (and without)
the trained detector/aligner/gate/embedder. Same conventions as the real models:
`forward(x)` takes the *normalised* NCHW float32 input ((pixel/255 - mean) / std, RGB), and
each model carries a frozen config dataclass with its input contract.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TinyEmbedderConfig:
    # architecture
    widths: tuple[int, ...] = (16, 32, 64)  # channels of the three stride-2 conv blocks
    embedding_dim: int = 128  # output vector length
    # input contract
    input_height: int = 64  # crop height in pixels
    input_width: int = 128  # crop width in pixels
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel mean of pixel/255
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)  # per-channel std of pixel/255
    channel_order: str = "RGB"
    layout: str = "NCHW"
    # head
    l2_normalize: bool = True  # forward() returns unit vectors
    seed: int = 0  # weight init seed


class TinyEmbedder(nn.Module):
    """3 conv blocks (conv-BN-ReLU, stride 2) -> global average pool -> linear -> L2-norm."""

    def __init__(self, cfg: TinyEmbedderConfig = TinyEmbedderConfig()):
        super().__init__()
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        layers: list[nn.Module] = []
        c_in = 3
        for c in cfg.widths:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, cfg.embedding_dim)
        # Random but non-trivial BN statistics, so folding BN into the conv is exercised.
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(0.0, 0.3)  # positive: keeps most ReLUs alive on random weights
        self.eval()

    def forward_export(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) normalised -> (n, d) embedding before the L2-norm (the int8 graph's output)."""
        z = self.features(x).mean(dim=(2, 3))
        return self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.forward_export(x)
        return F.normalize(z, dim=1) if self.cfg.l2_normalize else z


@dataclass(frozen=True)
class TinyDetectorConfig:
    # architecture
    widths: tuple[int, ...] = (16, 24, 32, 48)  # four stride-2 blocks: 128 -> 8x8 grid
    anchors_per_cell: int = 2
    num_keypoints: int = 6  # BlazeFace layout: 4 box values + 6 (x, y) keypoints = 16 regressors
    # input contract
    input_height: int = 128
    input_width: int = 128
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # BlazeFace maps pixels to [-1, 1]
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    seed: int = 1


class TinyDetector(nn.Module):
    """BlazeFace-shaped SSD head: outputs regressors (1, A, 4 + 2K) and score logits (1, A, 1)."""

    def __init__(self, cfg: TinyDetectorConfig = TinyDetectorConfig()):
        super().__init__()
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        layers: list[nn.Module] = []
        c_in = 3
        for c in cfg.widths:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.n_reg = 4 + 2 * cfg.num_keypoints
        self.reg = nn.Conv2d(c_in, cfg.anchors_per_cell * self.n_reg, 1)
        self.cls = nn.Conv2d(c_in, cfg.anchors_per_cell, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        n = x.shape[0]
        # NCHW -> (n, H*W*anchors, values): the anchor order the runtime's decode expects.
        reg = self.reg(f).permute(0, 2, 3, 1).reshape(n, -1, self.n_reg)
        cls = self.cls(f).permute(0, 2, 3, 1).reshape(n, -1, 1)
        return reg, cls


def tiny_embedder(seed: int = 0) -> TinyEmbedder:
    return TinyEmbedder(TinyEmbedderConfig(seed=seed))


def tiny_detector(seed: int = 1) -> TinyDetector:
    return TinyDetector(TinyDetectorConfig(seed=seed))


def synthetic_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8 structured test images (smooth colour gradients plus a few ellipses and bars),
    deterministic from the seed. Stand-ins for rendered crops in tests: uniform noise would give every
    image nearly the same activations and hide quantization problems."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / (width + height) + 0.5
        base = c0 * (1 - t[..., None]) + c1 * t[..., None]
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(rng.integers(2, 6)):
            x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
            w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.6:
                d.ellipse([x0, y0, x0 + w, y0 + h], outline=fill, width=int(rng.integers(1, 4)))
            else:
                d.rectangle([x0, y0, x0 + w, y0 + h / 4], fill=fill)
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0)))
        noise = rng.normal(0, 4, (height, width, 3))
        out[i] = np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8)
    return out
