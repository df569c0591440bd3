"""MediaPipe face mesh (468 landmarks) in PyTorch, weights imported from `face_landmark.tflite`.

Architecture read from the .tflite op graph (mediapipe==0.10.21): a 3x3 stride-2 conv + PReLU,
then PReLU BlazeBlocks down to a 6x6x128 trunk, which splits into two heads:
- landmarks: 3 blocks (the first stride 2, to 3x3), a 1x1 projection to 32 ch + PReLU, one
  32-ch block, then a 3x3 VALID conv to 1404 = 468 x (x, y, z) in 192-pixel crop units;
- face flag: 1 stride-2 block, 1x1 projection to 32 + PReLU, one 32-ch block, 3x3 VALID conv
  to one logit (sigmoid -> face presence).
Output contract: (landmarks (B, 1404), face_flag (B, 1) logit). Decoding, the rotated face crop
and the projection back to the photo are numpy (glassfinder_runtime.landmarks).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glassfinder.models.detector import BlazeBlock, make_act, make_blocks, same_pad
from glassfinder.models.embedder import WEIGHTS_DIR, input_contract
from glassfinder_runtime.errors import ConfigError
from glassfinder_runtime.landmarks import MeshOptions

DEFAULT_ALIGNER_WEIGHTS = WEIGHTS_DIR / "aligner.safetensors"

# The pipeline's face-presence threshold (MediaPipe's own graphs use 0.5). At 0.5 the aligner turned
# away 56 of 800 VAL scenes (val SKUs on val faces, query camera), mostly dark or blurred faces whose
# mesh sat on the true face; 0.1 takes 22 of them (21 then pass the gate) without admitting any badly
# aligned face or any VAL negative. 0.02 would keep 9 more, but the floor of 0.1 is a judgment: VAL
# cannot measure what a lower score lets through from real non-face photos (its synthetic negatives
# never reach presence 0.01), and a non-face that passes still meets the gate.
FACE_PRESENCE_THRESHOLD = 0.1


@dataclass(frozen=True)
class AlignerConfig:
    """Face-mesh landmark model; every field is what the .tflite has (checked by the converter)."""

    # --- architecture ---
    stem_channels: int = 16  # 3x3 stride-2 conv
    # Trunk BlazeBlocks (out_channels, stride): 192 -> 96 -> ... -> 6x6x128.
    trunk: tuple[tuple[int, int], ...] = (
        (16, 1), (16, 1), (32, 2), (32, 1), (32, 1), (64, 2), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1),
        (128, 2), (128, 1), (128, 1),
    )
    landmark_blocks: tuple[tuple[int, int], ...] = ((128, 2), (128, 1), (128, 1))  # 6x6 -> 3x3
    flag_blocks: tuple[tuple[int, int], ...] = ((128, 2),)
    head_channels: int = 32  # 1x1 projection before the last block of each head
    activation: str = "prelu"
    # --- input contract (what export copies into the manifest) ---
    input_size: int = 192  # square rotated face crop (runtime.landmarks.face_roi)
    channel_order: str = "RGB"
    layout: str = "NCHW"  # torch; the .tflite is NHWC
    # Normalisation: x = (pixel / 255 - mean) / std, i.e. [0, 1] (MediaPipe's landmark graph).
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # --- head ---
    num_landmarks: int = 468  # x, y, z each, in input pixels
    # Crop + decode options for the runtime (the manifest's aligner.mesh).
    mesh: MeshOptions = field(default_factory=lambda: MeshOptions(presence_threshold=FACE_PRESENCE_THRESHOLD))

    def __post_init__(self) -> None:
        if self.layout != "NCHW" or self.channel_order != "RGB":
            raise ConfigError("AlignerConfig supports layout NCHW and channel_order RGB only")
        if self.mesh.input_size != self.input_size or self.mesh.num_landmarks != self.num_landmarks:
            raise ConfigError("AlignerConfig.mesh must agree with input_size and num_landmarks")

    def input_contract(self) -> dict[str, Any]:
        return input_contract(self.input_size, self.input_size, self.mean, self.std, self.layout, self.channel_order)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("trunk", "landmark_blocks", "flag_blocks"):
            d[k] = [list(b) for b in getattr(self, k)]
        for k in ("mean", "std"):
            d[k] = list(d[k])
        d["mesh"] = self.mesh.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AlignerConfig":
        d = dict(d)
        for k in ("trunk", "landmark_blocks", "flag_blocks"):
            d[k] = tuple(tuple(b) for b in d[k])
        for k in ("mean", "std"):
            d[k] = tuple(d[k])
        d["mesh"] = MeshOptions.from_dict(d["mesh"])
        return cls(**d)


class _Head(nn.Module):
    """blocks -> 1x1 projection + act -> one block -> 3x3 VALID conv to `out` values."""

    def __init__(self, cin: int, blocks: tuple[tuple[int, int], ...], mid: int, out: int, act: str, size: int):
        super().__init__()
        self.blocks, c, size = make_blocks(cin, blocks, act, size)
        self.proj = nn.Conv2d(c, mid, 1)
        self.proj_act = make_act(act, mid)
        self.block = BlazeBlock(mid, mid, 1, act, size)
        self.out = nn.Conv2d(mid, out, 3)
        if size != 3:
            raise ConfigError(f"aligner head ends on a {size}x{size} map, the 3x3 output conv needs 3x3")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.proj_act(self.proj(self.blocks(x))))
        return self.out(x).flatten(1)


class FaceMesh(nn.Module):
    """(B, 3, 192, 192) RGB in [0, 1] -> (landmarks (B, 1404), face_flag logit (B, 1))."""

    def __init__(self, cfg: AlignerConfig):
        super().__init__()
        self.cfg = cfg
        s = cfg.input_size
        self.stem_pad = same_pad(3, 2, s)
        self.stem = nn.Conv2d(3, cfg.stem_channels, 3, 2, 0)
        self.stem_act = make_act(cfg.activation, cfg.stem_channels)
        self.trunk, c, size = make_blocks(cfg.stem_channels, cfg.trunk, cfg.activation, s // 2)
        self.landmarks = _Head(c, cfg.landmark_blocks, cfg.head_channels, 3 * cfg.num_landmarks, cfg.activation, size)
        self.flag = _Head(c, cfg.flag_blocks, cfg.head_channels, 1, cfg.activation, size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, e = self.stem_pad
        x = self.trunk(self.stem_act(self.stem(F.pad(x, (b, e, b, e)))))
        return self.landmarks(x), self.flag(x)


def build_aligner(cfg: AlignerConfig = AlignerConfig()) -> FaceMesh:
    return FaceMesh(cfg)


def load_aligner(path: str | Path = DEFAULT_ALIGNER_WEIGHTS) -> FaceMesh:
    """The aligner with its committed weights (config from the JSON sidecar), in eval mode."""
    from glassfinder.models.embedder import build_from_weights, read_weights

    state, side = read_weights(path)
    return build_from_weights(path, "aligner", state, side, AlignerConfig, build_aligner)
