"""The gate: is this aligned crop a face wearing eyeglasses, sunglasses, or neither?

A tiny depthwise-separable CNN on the same aligned crop the embedder sees. It is what refuses a
cup, a fork, a texture or a bare face before the search. The runtime accepts a crop when
P(glasses) = P(eyeglasses) + P(sunglasses) >= threshold; the threshold is chosen on validation data
by training and stored in the weights' JSON sidecar (and from there in the manifest).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from glassfinder.models.embedder import (
    WEIGHTS_DIR,
    ConvBNReLU6,
    _tuples,
    build_from_weights,
    images_to_tensor,
    init_weights,
    input_contract,
    read_weights,
)
from glassfinder_runtime.errors import ConfigError

DEFAULT_GATE_WEIGHTS = WEIGHTS_DIR / "gate.safetensors"
GATE_CLASSES: tuple[str, str, str] = ("eyeglasses", "sunglasses", "none")
NONE_CLASS = 2  # index of "none" in GATE_CLASSES


@dataclass(frozen=True)
class GateConfig:
    """Everything needed to rebuild the gate; written next to the weights and into the manifest."""

    # --- architecture ---
    stem_channels: int = 16  # first 3x3 stride-2 conv
    # Depthwise-separable blocks: (out_channels, stride).
    blocks: tuple[tuple[int, int], ...] = ((24, 2), (32, 2), (64, 2), (64, 1), (96, 2), (96, 1))
    # --- input contract (what export copies into the manifest) ---
    input_height: int = 64  # aligned crop height in pixels (same crop as the embedder)
    input_width: int = 128  # aligned crop width in pixels
    channel_order: str = "RGB"
    layout: str = "NCHW"
    # Normalisation: x = (pixel / 255 - mean) / std, per channel.
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    # --- head ---
    classes: tuple[str, ...] = GATE_CLASSES  # logits order; "none" must be last

    def __post_init__(self) -> None:
        if tuple(self.classes) != GATE_CLASSES:
            raise ConfigError(f"GateConfig.classes must be {GATE_CLASSES}, got {self.classes}")
        if self.layout != "NCHW" or self.channel_order != "RGB":
            raise ConfigError("GateConfig supports layout NCHW and channel_order RGB only")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GateConfig":
        return cls(**_tuples(cls, d))

    def input_contract(self) -> dict[str, Any]:
        return input_contract(self.input_height, self.input_width, self.mean, self.std,
                              self.layout, self.channel_order)


class Gate(nn.Module):
    """Input: (n, 3, H, W) float32, normalised. Output: (n, 3) logits in GATE_CLASSES order."""

    def __init__(self, cfg: GateConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [ConvBNReLU6(3, cfg.stem_channels, k=3, stride=2)]
        cin = cfg.stem_channels
        for cout, stride in cfg.blocks:
            layers += [ConvBNReLU6(cin, cin, k=3, stride=stride, groups=cin), ConvBNReLU6(cin, cout, k=1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, len(cfg.classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (3, self.cfg.input_height, self.cfg.input_width):
            raise ValueError(f"gate expects (n, 3, {self.cfg.input_height}, {self.cfg.input_width}), "
                             f"got {tuple(x.shape)}")
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build_gate(cfg: GateConfig = GateConfig()) -> Gate:
    """Build the gate with deterministic initial weights."""
    model = Gate(cfg)
    init_weights(model)
    return model


def glasses_probability(logits: torch.Tensor) -> torch.Tensor:
    """(n, 3) logits -> (n,) P(eyeglasses) + P(sunglasses) = 1 - P(none)."""
    return 1.0 - torch.softmax(logits.float(), dim=1)[:, NONE_CLASS]


@torch.no_grad()
def gate_scores(model: Gate, images: npt.NDArray[np.uint8], batch_size: int = 256) -> npt.NDArray[np.float32]:
    """(n, H, W, 3) uint8 aligned crops -> (n, 3) float32 class probabilities (eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images_to_tensor(images[i:i + batch_size], model.cfg.mean, model.cfg.std).to(device)
        out.append(torch.softmax(model(x).float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.cfg.classes)), np.float32)


def load_gate(path: str | Path = DEFAULT_GATE_WEIGHTS) -> tuple[Gate, dict[str, Any]]:
    """Load trained weights (eval mode). Returns (model, sidecar with 'config', 'threshold', training record)."""
    state, sidecar = read_weights(path)
    if "threshold" not in sidecar:
        raise ConfigError(f"{Path(path).with_suffix('.json')}: gate sidecar has no 'threshold'")
    return build_from_weights(path, "gate", state, sidecar, GateConfig, build_gate), sidecar
