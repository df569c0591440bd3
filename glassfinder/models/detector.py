"""BlazeFace short-range face detector in PyTorch (weights imported from MediaPipe).

The architecture is read from the op graph of `face_detection_short_range.tflite`
(mediapipe==0.10.21): a 5x5 stride-2 conv, then BlazeBlocks (depthwise 3x3 + pointwise 1x1,
residual; on stride 2 the residual is max-pooled and zero-padded in channels), ReLU after
every add; two SSD heads on the 16x16 (88 ch, 2 anchors/cell) and 8x8 (96 ch, 6 anchors/cell)
maps. Output contract, as the .tflite: regressors (B, 896, 16) and classificators (B, 896, 1)
logits, anchors in row-major cell order. Decoding is numpy (glassfinder_runtime.detect).

Static shapes and no data-dependent control flow, so torch -> ONNX -> TFLite/CoreML works.
TFLite SAME padding on stride-2 convs pads right/bottom more than left/top: explicit F.pad.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glassfinder.models.embedder import WEIGHTS_DIR, input_contract
from glassfinder_runtime.detect import AnchorOptions, DecodeOptions, DetectorSpec
from glassfinder_runtime.errors import ConfigError

DEFAULT_DETECTOR_WEIGHTS = WEIGHTS_DIR / "detector.safetensors"


@dataclass(frozen=True)
class DetectorConfig:
    """BlazeFace short-range; every field is what the .tflite has (checked by the converter)."""

    # --- architecture ---
    stem_channels: int = 24  # 5x5 stride-2 conv
    # BlazeBlocks as (out_channels, stride); the first 11 end on the 16x16 map, the rest on 8x8.
    blocks: tuple[tuple[int, int], ...] = (
        (24, 1), (28, 1), (32, 2), (36, 1), (42, 1), (48, 2), (56, 1), (64, 1), (72, 1), (80, 1), (88, 1),
        (96, 2), (96, 1), (96, 1), (96, 1), (96, 1),
    )
    num_blocks_16: int = 11  # blocks feeding the 16x16 head
    activation: str = "relu"  # "relu" (this model) or "prelu"
    # --- input contract (what export copies into the manifest) ---
    input_size: int = 128  # square, letterboxed (keep aspect ratio, black border)
    channel_order: str = "RGB"
    layout: str = "NCHW"  # torch; the .tflite is NHWC
    # Normalisation: x = (pixel / 255 - mean) / std, i.e. [-1, 1] (MediaPipe output_tensor_float_range).
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # --- head ---
    anchors_per_cell: tuple[int, int] = (2, 6)  # on the 16x16 and 8x8 maps -> 896 anchors
    anchors: AnchorOptions = field(default_factory=AnchorOptions)
    decode: DecodeOptions = field(default_factory=DecodeOptions)

    def __post_init__(self) -> None:
        if self.layout != "NCHW" or self.channel_order != "RGB":
            raise ConfigError("DetectorConfig supports layout NCHW and channel_order RGB only")
        if self.activation not in ("relu", "prelu"):
            raise ConfigError(f"DetectorConfig.activation must be relu or prelu, got {self.activation!r}")

    @property
    def num_anchors(self) -> int:
        s16, s8 = self.input_size // 8, self.input_size // 16
        return s16 * s16 * self.anchors_per_cell[0] + s8 * s8 * self.anchors_per_cell[1]

    def input_contract(self) -> dict[str, Any]:
        return input_contract(self.input_size, self.input_size, self.mean, self.std, self.layout, self.channel_order)

    def runtime_spec(self) -> DetectorSpec:
        return DetectorSpec(self.input_size, self.mean, self.std, self.anchors, self.decode)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = [list(b) for b in self.blocks]
        d["anchors"] = self.anchors.to_dict()
        d["decode"] = self.decode.to_dict()
        for k in ("mean", "std", "anchors_per_cell"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorConfig":
        d = dict(d)
        d["blocks"] = tuple(tuple(b) for b in d["blocks"])
        d["anchors"] = AnchorOptions.from_dict(d["anchors"])
        d["decode"] = DecodeOptions.from_dict(d["decode"])
        for k in ("mean", "std", "anchors_per_cell"):
            d[k] = tuple(d[k])
        return cls(**d)


def same_pad(k: int, stride: int, size: int) -> tuple[int, int]:
    """TFLite SAME padding (before, after) along one axis: the extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def make_act(kind: str, channels: int) -> nn.Module:
    return nn.PReLU(channels) if kind == "prelu" else nn.ReLU()


class BlazeBlock(nn.Module):
    """act(residual + pointwise(depthwise3x3(x))); on stride 2 the residual is a 2x2 max-pool, and
    it is zero-padded at the end of the channels when cout > cin (the .tflite's PAD op)."""

    def __init__(self, cin: int, cout: int, stride: int, act: str, size: int):
        super().__init__()
        if stride not in (1, 2) or cout < cin:
            raise ConfigError(f"BlazeBlock needs stride 1|2 and cout >= cin, got {cin}->{cout}/{stride}")
        self.stride, self.extra = stride, cout - cin
        # Stride 1: SAME is symmetric, let the conv pad; stride 2: explicit asymmetric F.pad.
        self.pad = same_pad(3, stride, size) if stride == 2 else (0, 0)
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1 if stride == 1 else 0, groups=cin)
        self.pw = nn.Conv2d(cin, cout, 1)
        self.act = make_act(act, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, e = self.pad
        y = self.pw(self.dw(F.pad(x, (b, e, b, e)) if self.stride == 2 else x))
        if self.stride == 2:
            x = F.max_pool2d(x, 2, 2)
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return self.act(x + y)


def make_blocks(cin: int, spec: tuple[tuple[int, int], ...], act: str, size: int) -> tuple[nn.Sequential, int, int]:
    """Sequential of BlazeBlocks; returns it, its output channels and spatial size."""
    layers = []
    for cout, stride in spec:
        layers.append(BlazeBlock(cin, cout, stride, act, size))
        cin, size = cout, size // stride
    return nn.Sequential(*layers), cin, size


class BlazeFace(nn.Module):
    """(B, 3, 128, 128) normalised RGB -> (regressors (B, 896, 16), classificators (B, 896, 1))."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        s = cfg.input_size
        self.stem_pad = same_pad(5, 2, s)
        self.stem = nn.Conv2d(3, cfg.stem_channels, 5, 2, 0)
        self.stem_act = make_act(cfg.activation, cfg.stem_channels)
        self.blocks16, c16, s16 = make_blocks(cfg.stem_channels, cfg.blocks[:cfg.num_blocks_16], cfg.activation, s // 2)
        self.blocks8, c8, s8 = make_blocks(c16, cfg.blocks[cfg.num_blocks_16:], cfg.activation, s16)
        if (s16, s8) != (s // 8, s // 16):
            raise ConfigError(f"DetectorConfig.blocks give feature maps {s16}, {s8}, expected {s // 8}, {s // 16}")
        a16, a8 = cfg.anchors_per_cell
        k = cfg.decode.num_coords
        self.cls16 = nn.Conv2d(c16, a16, 1)
        self.reg16 = nn.Conv2d(c16, a16 * k, 1)
        self.cls8 = nn.Conv2d(c8, a8, 1)
        self.reg8 = nn.Conv2d(c8, a8 * k, 1)
        self.n16, self.n8 = s16 * s16 * a16, s8 * s8 * a8

    @staticmethod
    def _flat(t: torch.Tensor, n: int, per_anchor: int) -> torch.Tensor:
        # NCHW -> NHWC -> (B, n anchors, per_anchor): the .tflite's reshape order. Python-int sizes
        # (batch -1) keep Shape/Gather ops out of the exported graph.
        return t.permute(0, 2, 3, 1).reshape(-1, n, per_anchor)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, e = self.stem_pad
        x = self.stem_act(self.stem(F.pad(x, (b, e, b, e))))
        f16 = self.blocks16(x)
        f8 = self.blocks8(f16)
        k = self.cfg.decode.num_coords
        reg = torch.cat([self._flat(self.reg16(f16), self.n16, k), self._flat(self.reg8(f8), self.n8, k)], dim=1)
        cls = torch.cat([self._flat(self.cls16(f16), self.n16, 1), self._flat(self.cls8(f8), self.n8, 1)], dim=1)
        return reg, cls


def build_detector(cfg: DetectorConfig = DetectorConfig()) -> BlazeFace:
    return BlazeFace(cfg)


def load_detector(path: str | Path = DEFAULT_DETECTOR_WEIGHTS) -> BlazeFace:
    """The detector with its committed weights (config from the JSON sidecar), in eval mode."""
    from glassfinder.models.embedder import build_from_weights, read_weights

    state, side = read_weights(path)
    return build_from_weights(path, "detector", state, side, DetectorConfig, build_detector)
