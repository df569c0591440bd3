"""The embedder: aligned glasses crop -> 128-d L2-normalised vector for retrieval.

A small MobileNetV2-style CNN built to survive full-integer int8 conversion:
- conv -> BN -> ReLU6 everywhere (BN folds into the conv; ReLU6 bounds activations, so per-tensor
  activation scales stay tight; no hard-swish, no squeeze-excite, no GeM power);
- a global depthwise convolution (GDC, as in MobileFaceNet) instead of average pooling: the crop is
  aligned, so *where* a feature sits (bridge, outer corner of a lens) carries information that a
  plain average throws away; it is still one depthwise conv, which int8 handles well;
- the graph that gets exported (`forward_features`) takes the already normalised input and returns
  the raw 128-d vector: input mean/std and the final L2-norm stay outside the int8 graph, at the
  float boundaries, where the runtime applies them from the manifest;
- optionally (`size_bins` > 0) the last dimensions of that vector spell out the frame's *size*.
  The sizes of a frame differ only in scale, so the metric loss, trained on model + colourway
  groups, learns to ignore them. A small regression head reads the lens width from the crop (the
  try-on fits frames at a fixed eye distance, so millimetres show as pixels relative to the eyes),
  and encodes it as overlapping triangles over fixed lens-width bins. Their dot product falls
  smoothly with the width difference, so plain cosine search over the whole vector prefers the
  right size within a group, and the runtime, bundle and gallery formats stay unchanged. The
  triangles are built from a subtraction, a scaling and ReLUs only, which int8 handles.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from glassfinder_runtime.errors import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# The size head regresses (lens width mm - SIZE_REF_MM) / SIZE_UNIT_MM: about unit variance on the catalog.
SIZE_REF_MM = 54.0
SIZE_UNIT_MM = 5.0
DEFAULT_EMBEDDER_WEIGHTS = WEIGHTS_DIR / "embedder.safetensors"


@dataclass(frozen=True)
class EmbedderConfig:
    """Everything needed to rebuild the embedder; written next to the weights and into the manifest."""

    # --- architecture ---
    stem_channels: int = 16  # output channels of the first 3x3 stride-2 conv
    # Inverted-residual stages: (expansion, out_channels, repeats, stride of the first block).
    stages: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (4, 24, 2, 2),
        (4, 40, 3, 2),
        (4, 80, 3, 2),
        (4, 112, 2, 1),
    )
    last_channels: int = 384  # 1x1 conv before pooling
    pooling: str = "gdc"  # "gdc" (global depthwise conv over the aligned map) or "avg"
    # --- input contract (what export copies into the manifest) ---
    input_height: int = 64  # aligned crop height in pixels (runtime/geometry.py CropTemplate)
    input_width: int = 128  # aligned crop width in pixels
    channel_order: str = "RGB"
    layout: str = "NCHW"  # torch layout; TFLite converters turn it into NHWC
    # Normalisation: x = (pixel / 255 - mean) / std, per channel.
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    # --- head ---
    embedding_dim: int = 128  # output vector size; L2-normalised outside the int8 graph
    # --- size read-out (0 bins: off) ---
    # The last size_bins of the embedding_dims are triangles over lens widths size_min_mm + i * size_step_mm,
    # each size_radius_bins bins wide on either side, times size_scale (their weight against the
    # appearance part, whose norm is about sqrt(embedding_dim - size_bins) after the head's BN).
    size_bins: int = 0
    size_min_mm: float = 39.5
    size_step_mm: float = 1.5
    size_radius_bins: int = 3
    size_scale: float = 2.5
    # --- inference ---
    # Embed the crop and its mirror image and average them (appearance and size) in eval mode, inside
    # the exported graph: the template is left-right symmetric and so are frames, and the average
    # is steadier (VAL SKU recall@1 0.525 -> 0.554 with the stage-11 weights). Training sees single
    # crops (the renderer already mirrors half of them). Costs a second pass of the backbone.
    flip_average: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in ("gdc", "avg"):
            raise ConfigError(f"EmbedderConfig.pooling must be 'gdc' or 'avg', got {self.pooling!r}")
        if self.layout != "NCHW" or self.channel_order != "RGB":
            raise ConfigError("EmbedderConfig supports layout NCHW and channel_order RGB only")
        if self.input_height % 16 or self.input_width % 16:
            raise ConfigError("EmbedderConfig input size must be a multiple of 16 (four stride-2 steps)")
        if not 0 <= self.size_bins < self.embedding_dim or self.size_step_mm <= 0 or self.size_radius_bins < 1:
            raise ConfigError("EmbedderConfig needs 0 <= size_bins < embedding_dim, size_step_mm > 0, "
                              "size_radius_bins >= 1")

    @property
    def appearance_dim(self) -> int:
        """Dimensions the metric loss trains (the rest encode the size)."""
        return self.embedding_dim - self.size_bins

    def size_centres_mm(self) -> npt.NDArray[np.float64]:
        """(size_bins,) lens widths at the centres of the size triangles."""
        return self.size_min_mm + self.size_step_mm * np.arange(self.size_bins, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmbedderConfig":
        return cls(**_tuples(cls, d))

    def input_contract(self) -> dict[str, Any]:
        """Input description for the manifest: the exported graph's input after normalisation."""
        return input_contract(self.input_height, self.input_width, self.mean, self.std,
                              self.layout, self.channel_order)


# A few-thousand-parameter embedder for unit tests and smoke runs: the same code paths, milliseconds a step.
TINY_EMBEDDER = EmbedderConfig(stem_channels=8, stages=((1, 8, 1, 1), (2, 16, 1, 2), (2, 24, 1, 2), (2, 32, 1, 2)),
                               last_channels=48, embedding_dim=16)


def _tuples(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples into lists; turn them back and refuse unknown keys (fail loudly)."""
    names = set(cls.__dataclass_fields__)
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")

    def conv(v: Any) -> Any:
        return tuple(conv(x) for x in v) if isinstance(v, list) else v

    return {k: conv(v) for k, v in d.items()}


def input_contract(height: int, width: int, mean: tuple[float, ...], std: tuple[float, ...],
                   layout: str, channel_order: str) -> dict[str, Any]:
    return {
        "shape": [1, 3, height, width] if layout == "NCHW" else [1, height, width, 3],
        "dtype": "float32",
        "layout": layout,
        "channel_order": channel_order,
        "pixel_scale": 1.0 / 255.0,  # x = (pixel * pixel_scale - mean) / std
        "mean": list(mean),
        "std": list(std),
    }


# ---------------------------------------------------------------------------------------------
# Building blocks (shared with the gate)


class ConvBNReLU6(nn.Sequential):
    """conv -> BN -> ReLU6 (BN folds into the conv at export)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear project (+ identity)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU6(cin, hidden, k=1))
        layers += [ConvBNReLU6(hidden, hidden, k=3, stride=stride, groups=hidden),
                   ConvBNReLU6(hidden, cout, k=1, act=False)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


def init_weights(module: nn.Module, seed: int = 0) -> None:
    """Deterministic init from a private generator (same weights on every rank and every run)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01, generator=g)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------


class Embedder(nn.Module):
    """Input: (n, 3, H, W) float32, already normalised (see EmbedderConfig). Output: (n, D)."""

    def __init__(self, cfg: EmbedderConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [ConvBNReLU6(3, cfg.stem_channels, k=3, stride=2)]
        cin = cfg.stem_channels
        for expand, cout, repeats, stride in cfg.stages:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(ConvBNReLU6(cin, cfg.last_channels, k=1))
        self.backbone = nn.Sequential(*layers)
        total_stride = 2 * int(np.prod([s[3] for s in cfg.stages]))
        fh, fw = cfg.input_height // total_stride, cfg.input_width // total_stride
        if cfg.pooling == "gdc":
            # One depthwise kernel covering the whole feature map: a learned spatial weighting per channel.
            c = cfg.last_channels
            self.pool: nn.Module = nn.Sequential(nn.Conv2d(c, c, (fh, fw), groups=c, bias=False), nn.BatchNorm2d(c))
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
        # Linear head + BN (BN folds into the linear layer at export); no activation: the output is a vector.
        self.head = nn.Linear(cfg.last_channels, cfg.appearance_dim, bias=False)
        self.head_bn = nn.BatchNorm1d(cfg.appearance_dim)
        # Column indices W-1 .. 0 for cfg.flip_average's mirror image (a constant, not a weight).
        self.register_buffer("mirror_columns", torch.arange(cfg.input_width - 1, -1, -1), persistent=False)
        if cfg.size_bins:
            # Its own spatial pooling: the size is where the frame's edges sit relative to the eyes.
            c = cfg.last_channels
            self.size_pool = nn.Sequential(nn.Conv2d(c, c, (fh, fw), groups=c, bias=False), nn.BatchNorm2d(c))
            self.size_fc = nn.Linear(c, 1)
            # Triangle k: d_k = (u - centre_k) / half-width, in the regression's units; fixed, from the config.
            self.size_half_width = cfg.size_radius_bins * cfg.size_step_mm / SIZE_UNIT_MM
            centres = (cfg.size_centres_mm() - SIZE_REF_MM) / SIZE_UNIT_MM
            self.register_buffer("size_centres", torch.tensor(centres, dtype=torch.float32), persistent=False)

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised image (n, 3, H, W) -> (appearance (n, appearance_dim) raw, size (n, 1) or None).

        size is the regressed lens width in units: (mm - SIZE_REF_MM) / SIZE_UNIT_MM. With
        cfg.flip_average, in eval mode: the mean of both over the crop and its mirror image."""
        if self.training or not self.cfg.flip_average:
            return self._parts(x)
        # The mirror as a gather of reversed columns: onnx2tf turned torch.flip's negative-step Slice
        # into a wrong graph for the trained weights (TFLite float32 cosine 0.97 to torch; random
        # weights came out right), a Gather it converts exactly (tests/export/test_flip_export.py).
        mirror = torch.index_select(x, 3, self.mirror_columns)
        appearance, size = self._parts(torch.cat([x, mirror], dim=0))  # one batch of 2n

        def mean_of_halves(t: torch.Tensor) -> torch.Tensor:  # chunk, not t[:n]: no shape arithmetic in the graph
            a, b = t.chunk(2, dim=0)
            return 0.5 * (a + b)

        return mean_of_halves(appearance), None if size is None else mean_of_halves(size)

    def _parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = self.backbone(x)
        appearance = self.head_bn(self.head(self.pool(f).flatten(1)))
        if not self.cfg.size_bins:
            return appearance, None
        return appearance, self.size_fc(self.size_pool(f).flatten(1))

    def size_triangles(self, size: torch.Tensor) -> torch.Tensor:
        """(n, 1) regressed size -> (n, size_bins) triangles max(0, 1 - |d|), d = distance to each bin's
        centre in half-widths."""
        # Broadcast sub/mul rather than a linear layer: exporters then see no extra weight matrix.
        d = (size - self.size_centres) * (1.0 / self.size_half_width)
        return F.relu(1.0 - F.relu(d) - F.relu(-d))  # |d| as two ReLUs: int8-friendly

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The int8 graph: normalised image (n, 3, H, W) -> raw embedding (n, D), not L2-normalised."""
        appearance, size = self.forward_parts(x)
        if size is None:
            return appearance
        return torch.cat([appearance, self.cfg.size_scale * self.size_triangles(size)], dim=1)

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(n, 3, H, W) normalised image -> (n, D) embedding, L2-normalised unless normalize=False."""
        if x.ndim != 4 or x.shape[1:] != (3, self.cfg.input_height, self.cfg.input_width):
            raise ValueError(f"embedder expects (n, 3, {self.cfg.input_height}, {self.cfg.input_width}), "
                             f"got {tuple(x.shape)}")
        z = self.forward_features(x)
        return F.normalize(z, dim=1) if normalize else z

    def export_module(self) -> nn.Module:
        """The module export converts: no input normalisation, no L2-norm (both stay float)."""
        return _FeaturesOnly(self)


class _FeaturesOnly(nn.Module):
    def __init__(self, model: Embedder):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def build_embedder(cfg: EmbedderConfig = EmbedderConfig()) -> Embedder:
    """Build the embedder with deterministic initial weights."""
    model = Embedder(cfg)
    init_weights(model)
    return model


# ---------------------------------------------------------------------------------------------
# Preprocessing and inference helpers (the float reference for export parity)


def images_to_tensor(images: npt.NDArray[np.uint8], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(n, H, W, 3) uint8 RGB crops -> (n, 3, H, W) float32 normalised tensor."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (n, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float().div_(255.0)  # copy: may be read-only
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def _map_batches(model: Embedder, images: npt.NDArray[np.uint8], fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
                 widths: tuple[int, ...], batch_size: int = 256) -> tuple[npt.NDArray[np.float32], ...]:
    """fn over (n, H, W, 3) uint8 crops, normalised and batched, in eval mode (the mode is restored):
    its outputs concatenated as float32 arrays, (n, widths[k]) each ((0, widths[k]) when n = 0)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: list[tuple[torch.Tensor, ...]] = []
    for i in range(0, len(images), batch_size):
        x = images_to_tensor(images[i:i + batch_size], model.cfg.mean, model.cfg.std).to(device)
        parts.append(tuple(t.float().cpu() for t in fn(x)))
    model.train(was_training)
    if not parts:
        return tuple(np.zeros((0, w), np.float32) for w in widths)
    return tuple(torch.cat(ts).numpy() for ts in zip(*parts))


def embed_images(model: Embedder, images: npt.NDArray[np.uint8], batch_size: int = 256) -> npt.NDArray[np.float32]:
    """(n, H, W, 3) uint8 aligned crops -> (n, D) float32 L2-normalised embeddings (eval mode)."""
    return _map_batches(model, images, lambda x: (model(x),), (model.cfg.embedding_dim,), batch_size)[0]


def embed_parts(model: Embedder, images: npt.NDArray[np.uint8], batch_size: int = 256) -> tuple[
        npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(n, H, W, 3) crops -> (appearance (n, A) raw, size triangles (n, size_bins) at size_scale 1)."""
    def parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        appearance, size = model.forward_parts(x)
        return appearance, model.size_triangles(size)

    cfg = model.cfg
    return _map_batches(model, images, parts, (cfg.appearance_dim, cfg.size_bins), batch_size)  # type: ignore[return-value]


def size_units(lens_mm: torch.Tensor) -> torch.Tensor:
    """Lens widths in mm -> the size head's regression target (predict_lens_width inverts it)."""
    return (lens_mm.float() - SIZE_REF_MM) / SIZE_UNIT_MM


def predict_lens_width(model: Embedder, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """(n, H, W, 3) uint8 aligned crops -> (n,) lens widths in mm read by the size head (eval mode)."""
    if not model.cfg.size_bins:
        raise ConfigError("this embedder has no size read-out (size_bins = 0)")
    size = _map_batches(model, images, lambda x: (model.forward_parts(x)[1],), (1,))[0]
    return SIZE_REF_MM + SIZE_UNIT_MM * size[:, 0]


# ---------------------------------------------------------------------------------------------
# Weights on disk: <name>.safetensors + <name>.json sidecar (config + training record)


def save_weights(module: nn.Module, config: Any, path: str | Path, meta: dict[str, Any]) -> None:
    """Write module's state dict as safetensors and {config, input contract, **meta} as the JSON sidecar."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))
    # The input contract is derived from the config; written out too so a reader needs no code.
    sidecar = {"config": config.to_dict(), "input": config.input_contract(), **meta}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read (state_dict, sidecar) from <name>.safetensors and <name>.json."""
    from safetensors.torch import load_file

    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    if not side.is_file():
        raise ConfigError(f"{side}: JSON sidecar with the model config not found next to the weights")
    try:
        sidecar = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{side}: not valid JSON ({exc})") from exc
    if "config" not in sidecar:
        raise ConfigError(f"{side}: has no 'config' entry")
    return load_file(str(path)), sidecar


def build_from_weights(path: str | Path, kind: str, state: dict[str, torch.Tensor], sidecar: dict[str, Any],
                       config_cls: Any, build: Callable[[Any], nn.Module]) -> nn.Module:
    """The model of read_weights(path)'s (state, sidecar), in eval mode. Weights of another model (or
    of a config this code does not know) are a ConfigError naming the file, not a torch traceback."""
    try:
        model = build(config_cls.from_dict(sidecar["config"]))
        model.load_state_dict(state)
    except (ConfigError, RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not {kind} weights ({str(exc).splitlines()[0]})") from exc
    return model.eval()


def load_embedder(path: str | Path = DEFAULT_EMBEDDER_WEIGHTS) -> tuple[Embedder, dict[str, Any]]:
    """Load trained weights (eval mode). Returns (model, sidecar dict with 'config' and training record)."""
    state, sidecar = read_weights(path)
    return build_from_weights(path, "embedder", state, sidecar, EmbedderConfig, build_embedder), sidecar


def sizeless_state(state: dict[str, torch.Tensor], cfg: EmbedderConfig) -> dict[str, torch.Tensor]:
    """Weights of an embedder without the size read-out -> a starting point for one with it: the
    head keeps its first appearance_dim outputs; the size head is left to its initial weights
    (load with strict=False)."""
    rows = {"head.weight", "head_bn.weight", "head_bn.bias", "head_bn.running_mean", "head_bn.running_var"}
    return {k: v[: cfg.appearance_dim] if k in rows else v for k, v in state.items()}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
