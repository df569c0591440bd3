"""Training: `train_embedder(cfg)` and `train_gate(cfg)`.

Batches are rendered on the fly (no data set on disk): the embedder sees P classes x K renders per
step, a class being a SKU *group* (model + colourway; the sizes of a group look identical), from
the TRAIN split of the catalog on TRAIN faces. Validation uses the VAL split (neither train nor
gallery): recall@1 of query renders against enrolled renders of the same val groups on other
faces, with exact cosine search.

The loop is the same for both models and for 1..N processes:
- AdamW, linear warm-up then cosine decay, computed from the step (no scheduler state to save);
- the data of step s on rank r is drawn from `np.random.default_rng([seed, r, s])`, so a resumed
  run continues bit for bit: a checkpoint needs only the weights, the optimiser state and the step;
- under torchrun (WORLD_SIZE > 1) it runs DistributedDataParallel (gloo on CPU, nccl on CUDA);
  each rank draws its own batches, gradients are averaged, only rank 0 validates and writes.

Where the pixels come from is behind two small protocols (`CropSource`, `GateSource`), so the loop
runs on the real renderer or on the coloured-shapes stand-in the tests use.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from glassfinder.evaluation import ENROLL_JITTER, RENDERS_PER_SKU
from glassfinder.losses import LOSS_NAMES, MetricLoss, build_loss
from glassfinder.models.embedder import (
    Embedder,
    EmbedderConfig,
    build_embedder,
    embed_images,
    embed_parts,
    images_to_tensor,
    predict_lens_width,
    read_weights,
    save_weights,
    size_units,
    sizeless_state,
)
from glassfinder.models.gate import NONE_CLASS, Gate, GateConfig, build_gate, gate_scores
from glassfinder_runtime.errors import ConfigError

DEFAULT_LOSS = "multi-similarity"  # the measured winner (glassfinder/weights/TRAINING.md)
CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The same fields drive the embedder and the gate."""

    out_dir: str = "out/train"  # checkpoints, log.jsonl and the final <model>.safetensors + .json
    steps: int = 3000  # optimiser steps in total (a resumed run continues up to this)
    classes_per_batch: int = 16  # P: classes per embedder batch (gate: batch = P * K samples)
    samples_per_class: int = 4  # K: renders per class in a batch (multi-similarity needs K >= 2)
    lr: float = 2e-3  # peak AdamW learning rate
    loss_lr_mult: float = 10.0  # learning-rate multiplier for a loss's own parameters (ArcFace centres)
    weight_decay: float = 0.02  # AdamW decay on conv/linear weights (not on BN and biases)
    warmup_steps: int = 100  # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.02
    loss: str = DEFAULT_LOSS  # embedder only: one of glassfinder.losses.LOSS_NAMES
    log_every: int = 10  # steps between log.jsonl lines
    eval_every: int = 250  # steps between validations (and at the end)
    checkpoint_every: int = 100  # steps between checkpoints (and at the end)
    seed: int = 0  # data seed: step s on rank r draws from default_rng([seed, r, s])
    val_seed: int = 12345  # seed of the fixed validation set
    val_classes: int = 300  # embedder: val groups enrolled and queried at validation
    val_enroll: int = 2  # embedder: renders enrolled per val group (mean vector, like the gallery)
    val_size: int = 1200  # gate: validation crops
    max_val_fpr: float = 0.01  # gate: threshold = lowest P(glasses) cut-off with val FPR <= this
    resume: bool = False  # continue from out_dir/checkpoint.safetensors
    real_faces_dir: str | None = None  # folder of real face photos (no glasses) added to the train faces
    real_face_share: float = 0.5  # with real faces: share of renders drawn on them (the rest procedural)
    init_weights: str | None = None  # start from these <model>.safetensors (fine-tuning; fresh optimiser)
    # Training crops misaligned like the aligner's (glassfinder.renderer.ALIGNER_JITTER times this);
    # 0: perfectly aligned crops, which the models never get at query time.
    crop_jitter: float = 1.0
    # Skin texture on the training faces: renderer.SkinTexture() times this (0: off). The gate
    # otherwise learns "textured = glasses" from smooth procedural skin and accepts real bare faces.
    skin_texture: float = 0.0
    # Share of training crops turned black-and-white (camera.CameraConfig.greyscale_p): old photos
    # and monochrome filters; without it the gate refused 11 % of greyscale VAL glasses.
    greyscale: float = 0.0
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    # Embedder with a size read-out (EmbedderConfig.size_bins > 0): weight of the lens-width
    # regression (mean squared error in units of SIZE_UNIT_MM) added to the metric loss.
    size_loss_weight: float = 1.0
    # Embedder: of the P classes in a batch, this many come from one frame family (hard negatives:
    # the benchmark's most common miss is another model of the same family); 0: all P at random.
    same_family: int = 0

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def __post_init__(self) -> None:
        if self.steps < 1 or self.classes_per_batch < 1 or self.samples_per_class < 1:
            raise ConfigError("steps, classes_per_batch and samples_per_class must be >= 1")
        if self.loss not in LOSS_NAMES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSS_NAMES)}")
        if not 0.0 <= self.real_face_share <= 1.0:
            raise ConfigError(f"real_face_share must be in [0, 1], got {self.real_face_share}")
        if not 0.0 <= self.crop_jitter <= 2.0:
            raise ConfigError(f"crop_jitter must be in [0, 2] (times the aligner's error), got {self.crop_jitter}")
        if not 0.0 <= self.skin_texture <= 2.0:
            raise ConfigError(f"skin_texture must be in [0, 2] (times renderer.SkinTexture()), got {self.skin_texture}")
        if not 0.0 <= self.greyscale <= 1.0:
            raise ConfigError(f"greyscale must be a share in [0, 1], got {self.greyscale}")
        if not 0 <= self.same_family <= self.classes_per_batch:
            raise ConfigError(f"same_family must be in [0, classes_per_batch={self.classes_per_batch}], "
                              f"got {self.same_family}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")


# Fields that must match between a checkpoint and the config resuming it (others may change).
_RESUME_KEYS = ("classes_per_batch", "samples_per_class", "lr", "loss_lr_mult", "weight_decay",
                "warmup_steps", "min_lr_ratio", "loss", "seed", "steps", "same_family")


# ---------------------------------------------------------------------------------------------
# Data protocols


class CropSource(Protocol):
    """Renders aligned crops of labelled classes."""

    num_classes: int  # labels are 0 .. num_classes - 1

    def render(self, labels: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
        """(n,) class labels -> (n, H, W, 3) uint8 RGB crops, one fresh render per label."""
        ...


class SizedCropSource(CropSource, Protocol):
    """A CropSource that also says how large each rendered frame is (for the embedder's size head)."""

    def render_sized(self, labels: npt.NDArray[np.int64], rng: np.random.Generator) -> tuple[
            npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
        """(n,) class labels -> (n, H, W, 3) uint8 crops, (n,) lens widths in mm of the frames drawn."""
        ...


class GateSource(Protocol):
    """Draws labelled gate crops (GATE_CLASSES order: eyeglasses, sunglasses, none)."""

    def sample(self, n: int, rng: np.random.Generator) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        """-> (n, H, W, 3) uint8 crops, (n,) int64 labels."""
        ...


@dataclass(frozen=True)
class EmbedderData:
    train: CropSource  # TRAIN split groups on TRAIN faces
    val_enroll: CropSource  # VAL split groups on the faces used for enrolment
    val_query: CropSource  # the same VAL groups (same label order) on other faces, with a camera shift
    val_query_jittered: CropSource | None = None  # val_query with aligner-like crop misalignment (optional)
    # For a size read-out: VAL classes that are single SKUs (sizes apart), to choose size_scale on.
    val_skus: SkuValData | None = None
    # (train.num_classes,) frame family of each train class; needed by TrainConfig.same_family.
    train_families: npt.NDArray[np.int64] | None = None


@dataclass(frozen=True)
class SkuValData:
    enroll: CropSource  # class i = VAL SKU i, on the enrolment faces (gallery camera)
    query: CropSource  # the same SKUs on the query faces, query camera, misaligned like the aligner's crops
    groups: npt.NDArray[np.int64]  # (n_skus,) group of each SKU: sizes of one frame share a group


@dataclass(frozen=True)
class GateData:
    train: GateSource
    val: GateSource
    val_jittered: GateSource | None = None  # val with aligner-like crop misalignment (optional)


# ---------------------------------------------------------------------------------------------
# Small pure pieces


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr_ratio * cfg.lr at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    lo = cfg.min_lr_ratio
    return cfg.lr * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def step_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The data generator of one step on one rank: a pure function of (seed, rank, step)."""
    return np.random.default_rng([seed, rank, step])


def pk_labels(num_classes: int, p: int, k: int, rng: np.random.Generator,
              families: npt.NDArray[np.int64] | None = None, same_family: int = 0) -> npt.NDArray[np.int64]:
    """P distinct classes (fewer if there are fewer) x K samples each: (P*K,) int64, grouped by class.

    families: (num_classes,) family of each class; with same_family > 0, that many of the P classes
    (fewer if the family is smaller) share the family of one class drawn at random, the rest are
    drawn from all other classes."""
    p = min(p, num_classes)
    if families is None or same_family == 0:
        return np.repeat(rng.choice(num_classes, size=p, replace=False), k).astype(np.int64)
    family = families[rng.integers(num_classes)]
    members = np.flatnonzero(families == family)
    hard = rng.choice(members, size=min(same_family, len(members)), replace=False)
    rest = np.setdiff1d(np.arange(num_classes), hard)
    chosen = np.concatenate([hard, rng.choice(rest, size=p - len(hard), replace=False)])
    return np.repeat(chosen, k).astype(np.int64)


def recall_at_k(gallery: npt.NDArray[np.float32], gallery_labels: npt.NDArray[np.int64],
                queries: npt.NDArray[np.float32], query_labels: npt.NDArray[np.int64],
                ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Exact cosine search of (nq, d) L2-normalised queries in (ng, d) gallery vectors.

    recall@k = fraction of queries whose label is among the labels of the k most similar gallery rows.
    """
    S = queries @ gallery.T
    order = np.argsort(-S, axis=1, kind="stable")
    hits = gallery_labels[order] == query_labels[:, None]
    return {f"recall@{k}": float(hits[:, :k].any(1).mean()) for k in ks}


def enroll(embeddings: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> tuple[
        npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Mean of each class's (n, d) embeddings, re-normalised: (c, d) vectors and their (c,) labels."""
    classes = np.unique(labels)
    means = np.stack([embeddings[labels == c].mean(0) for c in classes]).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True) + 1e-12
    return means, classes


def choose_threshold(neg_scores: npt.NDArray[np.float32], max_fpr: float) -> float:
    """Lowest threshold t on a score (accept when score >= t) whose false-positive rate on the
    (n,) negative scores is <= max_fpr."""
    if len(neg_scores) == 0:
        raise ConfigError("cannot choose a gate threshold without validation negatives")
    allowed = int(math.floor(max_fpr * len(neg_scores) + 1e-9))  # negatives that may pass
    s = np.sort(np.asarray(neg_scores, dtype=np.float32))[::-1]
    if allowed >= len(s):
        return 0.0
    # The next float32 above the (allowed+1)-th highest negative: it and all below are refused.
    # float32, because that is what the runtime compares (a float64 step would round away).
    return float(np.nextafter(s[allowed], np.float32(np.inf)))


def rates(pos_scores: npt.NDArray[np.float32], neg_scores: npt.NDArray[np.float32], t: float) -> dict[str, float]:
    """TPR on positives and FPR on negatives when accepting score >= t."""
    pos, neg = np.asarray(pos_scores, np.float32), np.asarray(neg_scores, np.float32)
    t32 = np.float32(t)
    return {"tpr": float(np.mean(pos >= t32)) if len(pos) else float("nan"),
            "fpr": float(np.mean(neg >= t32)) if len(neg) else float("nan")}


# ---------------------------------------------------------------------------------------------
# Distributed / device setup


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    device: torch.device
    initialised_here: bool


def _setup(cfg: TrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device")
    if world <= 1:
        return _Dist(0, 1, torch.device("cuda" if want_cuda else "cpu"), False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        # Share the cores between the local processes instead of oversubscribing them.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
        here = True
    return _Dist(dist.get_rank(), dist.get_world_size(), device, here)


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# Checkpoints (glassfinder.checkpoint: safetensors, no pickle)


def _save_checkpoint(out: Path, module: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    from glassfinder.checkpoint import save_checkpoint

    save_checkpoint(out / CHECKPOINT_NAME, module.state_dict(), opt.state_dict(), meta)


def _check_paths(cfg: TrainConfig) -> None:
    """Fail before the slow data set-up when a path the run needs is missing."""
    if cfg.resume and not (Path(cfg.out_dir) / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"{Path(cfg.out_dir) / CHECKPOINT_NAME}: no checkpoint to resume from "
                          "(train without --resume first)")
    if cfg.real_faces_dir is not None and not Path(cfg.real_faces_dir).is_dir():
        raise ConfigError(f"{cfg.real_faces_dir}: real-face folder not found")
    if cfg.init_weights is not None and not Path(cfg.init_weights).is_file():
        raise ConfigError(f"{cfg.init_weights}: weights to start from not found")


def _load_checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    from glassfinder.checkpoint import load_checkpoint

    path = out / CHECKPOINT_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint to resume from (train without --resume first)")
    return load_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# The shared loop


class _EmbedderWithLoss(nn.Module):
    """Model + loss in one module, so DDP averages the gradients of both (ArcFace centres too).

    The metric loss sees the appearance part only; with a size head, targets are (labels, lens
    widths in mm) and the size regression's squared error is added with weight size_weight."""

    def __init__(self, model: Embedder, loss: MetricLoss, size_weight: float = 0.0):
        super().__init__()
        self.model, self.loss, self.size_weight = model, loss, size_weight

    def forward(self, x: torch.Tensor, targets: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        labels, lens_mm = targets if isinstance(targets, tuple) else (targets, None)
        appearance, size = self.model.forward_parts(x)
        loss = self.loss(nn.functional.normalize(appearance, dim=1), labels)
        if size is not None and lens_mm is not None:
            loss = loss + self.size_weight * nn.functional.mse_loss(size[:, 0], size_units(lens_mm))
        return loss


class _GateWithLoss(nn.Module):
    def __init__(self, model: Gate):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.model(x), labels)


def _param_groups(module: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Decay conv/linear weights only; the loss's own parameters get loss_lr_mult x the lr."""
    decay, no_decay, loss_params = [], [], []
    for name, p in module.named_parameters():
        if name.startswith("loss."):
            loss_params.append(p)
        elif p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0, "lr_mult": cfg.loss_lr_mult})
    return groups


StepCallback = Callable[[int, nn.Module], None]
# A batch's targets: (n,) int64 labels, or (labels, (n,) float32 lens widths in mm) for the size head.
Targets = npt.NDArray[np.int64] | tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]


def _run(cfg: TrainConfig, name: str, module: nn.Module, preprocess: Callable[[npt.NDArray[np.uint8]], torch.Tensor],
         make_batch: Callable[[np.random.Generator], tuple[npt.NDArray[np.uint8], Targets]],
         validate: Callable[[], dict[str, float]], d: _Dist, extra_meta: dict[str, Any],
         on_step: StepCallback | None) -> tuple[int, list[dict[str, Any]]]:
    """Train `module` (model + loss) from its checkpoint or from scratch up to cfg.steps.

    Returns (final step, history of validation records)."""
    out = Path(cfg.out_dir)
    module.to(d.device)
    opt = torch.optim.AdamW(_param_groups(module, cfg), lr=cfg.lr)
    start, history = 0, []
    if cfg.resume:
        state, opt_state, meta = _load_checkpoint(out)
        saved = meta.get("train_config", {})
        diff = [k for k in _RESUME_KEYS if k in saved and saved[k] != getattr(cfg, k)]
        if meta.get("task") != name or diff:
            raise ConfigError(f"{out / CHECKPOINT_NAME}: was written by a different run "
                              f"(task {meta.get('task')!r}, differing options: {', '.join(diff) or 'none'})")
        saved_model = meta.get("model_config")  # absent in checkpoints of runs that record none
        if saved_model is not None and saved_model != extra_meta.get("model_config"):
            raise ConfigError(f"{out / CHECKPOINT_NAME}: was written for a different model config "
                              f"({meta['model_config']}); resume with the same one")
        module.load_state_dict(state)
        opt.load_state_dict(opt_state)
        start, history = int(meta["step"]), list(meta.get("history", []))
    if d.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    wrapped: nn.Module = module
    if d.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            module, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    module.train()

    def checkpoint(step: int) -> None:
        if d.rank == 0:
            meta = {"task": name, "step": step, "history": history, "train_config": asdict(cfg), **extra_meta}
            _save_checkpoint(out, module, opt, meta)
        _barrier(d)

    # A fresh run starts a fresh log; a resumed one appends to it.
    log = (out / "log.jsonl").open("a" if cfg.resume else "w") if d.rank == 0 else None
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {name}", disable=d.rank != 0, file=sys.stderr,
               dynamic_ncols=True)
    t0, smooth = time.time(), None
    try:
        for step in range(start, cfg.steps):
            lr = learning_rate(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_mult"]
            images, targets = make_batch(step_rng(cfg.seed, d.rank, step))
            x = preprocess(images).to(d.device, non_blocking=True)
            y = (tuple(torch.from_numpy(t).to(d.device) for t in targets) if isinstance(targets, tuple)
                 else torch.from_numpy(targets).to(d.device))
            loss = wrapped(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
            done = step + 1
            if on_step is not None:
                on_step(done, module)
            bar.update(1)
            bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{lr:.2e}")
            if log is not None and (done % cfg.log_every == 0 or done == cfg.steps):
                log.write(json.dumps({"step": done, "loss": value, "loss_smooth": smooth, "lr": lr,
                                      "elapsed_s": round(time.time() - t0, 2)}) + "\n")
                log.flush()
            if done % cfg.eval_every == 0 or done == cfg.steps:
                if d.rank == 0:
                    record = {"step": done, **validate()}
                    history.append(record)
                    bar.write(f"[{name}] step {done}: " + ", ".join(
                        f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float)), file=sys.stderr)
                    if log is not None:
                        log.write(json.dumps({"val": record}) + "\n")
                        log.flush()
                module.train()
                _barrier(d)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint(done)
    finally:
        bar.close()
        if log is not None:
            log.close()
    return max(start, cfg.steps), history


def _finish(d: _Dist) -> None:
    if d.initialised_here:
        dist.destroy_process_group()


def _init_from(model: nn.Module, model_cfg: Any, path: str | None) -> dict[str, Any]:
    """Load starting weights for fine-tuning; returns their sidecar's training record ({} when none).

    An embedder without a size read-out may start one that has it (the size head starts fresh)."""
    if path is None:
        return {}
    state, side = read_weights(path)
    source_cfg = type(model_cfg).from_dict(side["config"])
    if isinstance(model_cfg, EmbedderConfig) and source_cfg.size_bins == 0 and model_cfg.size_bins > 0 \
            and replace(model_cfg, **_size_fields(source_cfg)) == source_cfg:
        model.load_state_dict(sizeless_state(state, model_cfg), strict=False)
    elif source_cfg != model_cfg:
        raise ConfigError(f"{path}: its config differs from the model being trained; cannot start from it")
    else:
        model.load_state_dict(state)
    return {"weights": str(path), "train": side.get("train", {}), "validation": side.get("validation", {})}


def _size_fields(cfg: EmbedderConfig) -> dict[str, Any]:
    """The size read-out's fields of an EmbedderConfig (all named size_*)."""
    return {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k.startswith("size_")}


# ---------------------------------------------------------------------------------------------
# Embedder


@dataclass(frozen=True)
class TrainResult:
    weights: Path | None  # the final <model>.safetensors (rank 0), None on other ranks
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)  # validation records


def train_embedder(cfg: TrainConfig, data: EmbedderData | None = None,
                   model_cfg: EmbedderConfig = EmbedderConfig(), on_step: StepCallback | None = None) -> TrainResult:
    """Train the embedder; writes out_dir/embedder.safetensors + embedder.json (config, val numbers).

    data: where the crops come from; default: the catalog renderer (`default_embedder_data`).
    on_step(step, module): called after every optimiser step (tests use it to watch the weights).
    """
    if cfg.samples_per_class < 2 and cfg.loss != "subcenter-arcface":
        raise ConfigError(f"--loss {cfg.loss} needs at least 2 renders per class in a batch")
    _check_paths(cfg)
    d = _setup(cfg)
    try:
        data = data if data is not None else default_embedder_data(cfg)
        sized = model_cfg.size_bins > 0
        if sized and not all(hasattr(s, "render_sized") for s in (data.train, data.val_query)):
            raise ConfigError("an embedder with a size read-out needs crop sources that report frame sizes")
        if cfg.same_family and data.train_families is None:
            raise ConfigError("same_family batches need the train classes' frame families "
                              "(EmbedderData.train_families)")
        model = build_embedder(model_cfg)
        init = _init_from(model, model_cfg, cfg.init_weights)
        loss = build_loss(cfg.loss, data.train.num_classes, model_cfg.appearance_dim)
        module = _EmbedderWithLoss(model, loss, cfg.size_loss_weight if sized else 0.0)
        val_set: dict[str, Any] = {}

        def preprocess(images: npt.NDArray[np.uint8]) -> torch.Tensor:
            return images_to_tensor(images, model_cfg.mean, model_cfg.std)

        def make_batch(rng: np.random.Generator) -> tuple[npt.NDArray[np.uint8], Targets]:
            labels = pk_labels(data.train.num_classes, cfg.classes_per_batch, cfg.samples_per_class, rng,
                               data.train_families, cfg.same_family)
            if sized:
                images, lens_mm = data.train.render_sized(labels, rng)
                return images, (labels, lens_mm.astype(np.float32))
            return data.train.render(labels, rng), labels

        def validate() -> dict[str, float]:
            if not val_set:  # rendered once, lazily, from a fixed seed
                val_set.update(_embedder_val_set(data, cfg, sized))
            g = embed_images(model, val_set["enroll"])
            gallery, glabels = enroll(g, val_set["enroll_labels"])
            out = recall_at_k(gallery, glabels, embed_images(model, val_set["query"]), val_set["query_labels"])
            if "query_jittered" in val_set:  # the same queries, misaligned as the aligner would
                q = embed_images(model, val_set["query_jittered"])
                out.update({f"jittered_{k}": v for k, v in
                            recall_at_k(gallery, glabels, q, val_set["query_labels"]).items()})
            if sized:
                for key, prefix in (("query", ""), ("query_jittered", "jittered_")):
                    if f"{key}_lens_mm" in val_set:
                        errors = size_errors(predict_lens_width(model, val_set[key]), val_set[f"{key}_lens_mm"])
                        out.update({prefix + k: v for k, v in errors.items()})
            return out

        step, history = _run(cfg, "embedder", module, preprocess, make_batch, validate, d,
                             {"num_classes": data.train.num_classes, "model_config": model_cfg.to_dict()}, on_step)
        weights = None
        if d.rank == 0:
            weights = Path(cfg.out_dir) / "embedder.safetensors"
            model.cpu()
            size_choice: dict[str, Any] = {}
            if sized and data.val_skus is not None:  # like the gate threshold: chosen on VAL, stored with the weights
                size_choice["size_scale_choice"] = size_scale_choice(model, data.val_skus, cfg.val_seed)[0]
            save_weights(model, model.cfg, weights, {
                "train": {"loss": cfg.loss, "steps": step, "batch": cfg.batch_size, "lr": cfg.lr,
                          "warmup_steps": cfg.warmup_steps,
                          "classes_per_batch": cfg.classes_per_batch, "samples_per_class": cfg.samples_per_class,
                          "seed": cfg.seed, "num_classes": data.train.num_classes, "crop_jitter": cfg.crop_jitter,
                          "skin_texture": cfg.skin_texture, "greyscale": cfg.greyscale,
                          "size_loss_weight": cfg.size_loss_weight if sized else 0.0,
                          "same_family": cfg.same_family},
                "validation": history[-1] if history else {},
                "validation_split": "val (catalog VAL split; enrolment and query renders on disjoint faces, "
                                    "queries through the query camera with a whole scene's blur; "
                                    "jittered_*: the queries misaligned by renderer.ALIGNER_JITTER)",
                "init": init,
                **size_choice,
            })
        return TrainResult(weights, step, history)
    finally:
        _finish(d)


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform average of state dicts of one architecture; integer buffers (BN step counts) are the first's."""
    return {k: torch.stack([st[k].float() for st in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}


def soup_embedder(paths: list[str], out_dir: str, val: SkuValData | None = None,
                  seed: int = TrainConfig().val_seed, flip_average: bool | None = None) -> Path:
    """A "model soup": the uniform weight average of embedders fine-tuned from one start (different data
    seeds or batch rules), which validates better than each. Writes out_dir/embedder.safetensors + .json;
    a size read-out gets its size_scale chosen on VAL again (val: default_sku_val_data()).
    flip_average: set EmbedderConfig.flip_average on the soup (None: as in the first file).

    Runs that do not share a start average into noise; the VAL numbers in the sidecar show it."""
    if len(paths) < 2:
        raise ConfigError("a soup needs at least two embedder weight files")
    states, sides = zip(*(read_weights(p) for p in paths))
    cfgs = [EmbedderConfig.from_dict(side["config"]) for side in sides]
    inference_only = dict(size_scale=0.0, flip_average=False)  # not the weights' business: may differ
    for p, c in zip(paths[1:], cfgs[1:]):
        if replace(c, **inference_only) != replace(cfgs[0], **inference_only):
            raise ConfigError(f"{p}: a different architecture from {paths[0]}; only weights of one config average")
    flip = cfgs[0].flip_average if flip_average is None else flip_average
    model = build_embedder(replace(cfgs[0], flip_average=flip))
    model.load_state_dict(average_states(list(states)))
    meta: dict[str, Any] = {"soup": {"of": [str(p) for p in paths], "rule": "uniform average of the weights"}}
    if model.cfg.size_bins:
        record, row = size_scale_choice(model, val if val is not None else default_sku_val_data(), seed)
        meta.update(size_scale_choice=record, validation=row)
    weights = Path(out_dir) / "embedder.safetensors"
    save_weights(model, model.cfg, weights, meta)
    return weights


# Candidate size_scale values (weight of the size triangles against the appearance part); 0 = ignore size.
SIZE_SCALES = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)
# Renders enrolled per VAL SKU when choosing size_scale (mean vector): as many as the gallery enrols.
# The best weight depends on it: with the six-run soup, 2.5 at K = 4 and 1.5 at K = 16 (VAL, 2 seeds).
SKU_VAL_ENROLL = RENDERS_PER_SKU
# Queries per VAL SKU when choosing size_scale: with one (800 queries) the pick moved with the seed.
SKU_VAL_QUERIES = 3


def with_size_scale(appearance: npt.NDArray[np.float32], triangles: npt.NDArray[np.float32],
                    scale: float) -> npt.NDArray[np.float32]:
    """(n, A) and (n, K) parts -> (n, A + K) unit embeddings with the triangles weighted by scale."""
    z = np.concatenate([appearance, scale * triangles], axis=1)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def choose_size_scale(model: Embedder, val: SkuValData, seed: int,
                      scales: tuple[float, ...] = SIZE_SCALES) -> tuple[float, list[dict[str, float]]]:
    """size_scale picked (`pick_size_scale`) from the SKU-level recall of misaligned VAL queries
    (SKU_VAL_QUERIES per SKU) among all VAL SKUs (sibling sizes compete), and the table of every
    candidate (SKU and group recall@1, @10)."""
    rng = np.random.default_rng(seed)
    skus = np.arange(val.enroll.num_classes, dtype=np.int64)
    labels = np.repeat(skus, SKU_VAL_ENROLL)
    enrolled = embed_parts(model, val.enroll.render(labels, rng))
    asked = np.repeat(skus, SKU_VAL_QUERIES)
    queries = embed_parts(model, val.query.render(asked, rng))
    table = []
    for scale in scales:
        gallery, glabels = enroll(with_size_scale(*enrolled, scale), labels)
        q = with_size_scale(*queries, scale)
        sku = recall_at_k(gallery, glabels, q, asked, ks=(1, 10))
        group = recall_at_k(gallery, val.groups[glabels], q, val.groups[asked], ks=(1, 10))
        table.append({"size_scale": scale, "sku_recall@1": sku["recall@1"], "sku_recall@10": sku["recall@10"],
                      "group_recall@1": group["recall@1"], "group_recall@10": group["recall@10"]})
    return pick_size_scale(table), table


def size_scale_choice(model: Embedder, val: SkuValData, seed: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Choose size_scale on VAL and set it on `model.cfg`: (the sidecar record of the choice, the
    chosen row of its table)."""
    scale, table = choose_size_scale(model, val, seed)
    model.cfg = replace(model.cfg, size_scale=scale)
    row = next(r for r in table if r["size_scale"] == scale)
    print(f"[embedder] size_scale {scale}: VAL SKU recall@1 {row['sku_recall@1']:.4f}, "
          f"@10 {row['sku_recall@10']:.4f}", file=sys.stderr)
    return {"chosen": scale, "rule": "best SKU recall@1 + recall@10 (train.pick_size_scale)",
            "split": "val (all VAL SKUs, misaligned queries on other faces)", "table": table}, row


def pick_size_scale(table: list[dict[str, float]]) -> float:
    """The size_scale with the best SKU recall@1 + recall@10 (ties: the smaller weight). A heavier size
    code ranks the right size first more often but pushes a group's other sizes, and with them the
    right frame when its size was misread, out of the top 10; both count."""
    best = max(table, key=lambda r: (r["sku_recall@1"] + r["sku_recall@10"], -r["size_scale"]))
    return float(best["size_scale"])


def size_errors(predicted_mm: npt.NDArray[np.float32], true_mm: npt.NDArray[np.float32]) -> dict[str, float]:
    """(n,) read-out and true lens widths -> mean absolute error and the share within 1 mm (sizes
    of a frame are 2 mm apart, so within 1 mm picks the right one)."""
    err = np.abs(np.asarray(predicted_mm, np.float64) - np.asarray(true_mm, np.float64))
    return {"size_mae_mm": float(err.mean()), "size_within_1mm": float((err < 1.0).mean())}


def _embedder_val_set(data: EmbedderData, cfg: TrainConfig, sized: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(cfg.val_seed)
    n = min(cfg.val_classes, data.val_enroll.num_classes)
    classes = np.sort(rng.choice(data.val_enroll.num_classes, size=n, replace=False)).astype(np.int64)
    enroll_labels = np.repeat(classes, cfg.val_enroll)
    out = {"enroll": data.val_enroll.render(enroll_labels, rng), "enroll_labels": enroll_labels,
           "query_labels": classes}

    def queries(key: str, source: CropSource, rng: np.random.Generator) -> None:
        # The sized render draws the same random numbers, so the val set is the same either way.
        if sized:
            out[key], out[f"{key}_lens_mm"] = source.render_sized(classes, rng)
        else:
            out[key] = source.render(classes, rng)

    queries("query", data.val_query, rng)
    if data.val_query_jittered is not None:  # its own generator: the clean set stays as it was
        queries("query_jittered", data.val_query_jittered, np.random.default_rng([cfg.val_seed, 1]))
    return out


# ---------------------------------------------------------------------------------------------
# Gate


def train_gate(cfg: TrainConfig, data: GateData | None = None, model_cfg: GateConfig = GateConfig(),
               on_step: StepCallback | None = None) -> TrainResult:
    """Train the gate; writes out_dir/gate.safetensors + gate.json with the threshold chosen on val
    (the lowest P(glasses) cut-off whose FPR on val negatives is <= cfg.max_val_fpr)."""
    _check_paths(cfg)
    d = _setup(cfg)
    try:
        data = data if data is not None else default_gate_data(cfg)
        model = build_gate(model_cfg)
        init = _init_from(model, model_cfg, cfg.init_weights)
        module = _GateWithLoss(model)
        val_set: dict[str, Any] = {}

        def preprocess(images: npt.NDArray[np.uint8]) -> torch.Tensor:
            return images_to_tensor(images, model_cfg.mean, model_cfg.std)

        def make_batch(rng: np.random.Generator) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
            return data.train.sample(cfg.batch_size, rng)

        def validate() -> dict[str, float]:
            if not val_set:
                images, labels = data.val.sample(cfg.val_size, np.random.default_rng(cfg.val_seed))
                val_set.update(images=images, labels=labels)
                if data.val_jittered is not None:
                    images, labels = data.val_jittered.sample(cfg.val_size, np.random.default_rng([cfg.val_seed, 1]))
                    val_set.update(jittered_images=images, jittered_labels=labels)
            probs = gate_scores(model, val_set["images"])
            if "jittered_images" not in val_set:
                return gate_metrics(probs, val_set["labels"], cfg.max_val_fpr)
            # The threshold is chosen on the misaligned crops: those are what the aligner gives it.
            jittered = gate_metrics(gate_scores(model, val_set["jittered_images"]), val_set["jittered_labels"],
                                    cfg.max_val_fpr)
            out = gate_metrics(probs, val_set["labels"], cfg.max_val_fpr, threshold=jittered["threshold"])
            return {**out, "jittered_tpr": jittered["tpr"], "jittered_fpr": jittered["fpr"]}

        step, history = _run(cfg, "gate", module, preprocess, make_batch, validate, d, {}, on_step)
        weights = None
        if d.rank == 0:
            final = history[-1] if history else {}
            weights = Path(cfg.out_dir) / "gate.safetensors"
            model.cpu()
            save_weights(model, model_cfg, weights, {
                "threshold": final.get("threshold", 0.5),
                "threshold_rule": f"lowest P(glasses) with FPR <= {cfg.max_val_fpr} on val negatives"
                                  + (" (the jittered val set)" if data.val_jittered is not None else ""),
                "score": "P(glasses) = 1 - softmax(logits)[none]",
                "train": {"steps": step, "batch": cfg.batch_size, "seed": cfg.seed, "lr": cfg.lr,
                          "real_faces_dir": cfg.real_faces_dir, "real_face_share": cfg.real_face_share,
                          "crop_jitter": cfg.crop_jitter, "skin_texture": cfg.skin_texture,
                          "greyscale": cfg.greyscale},
                "validation": final,
                "validation_split": "val (catalog VAL split glasses on val faces; val bare faces and procedural "
                                    "negatives; query camera with a whole scene's blur; jittered_*: the same "
                                    "with the faces misaligned by renderer.ALIGNER_JITTER)",
                "init": init,
            })
        return TrainResult(weights, step, history)
    finally:
        _finish(d)


def gate_metrics(probs: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], max_fpr: float,
                 threshold: float | None = None) -> dict[str, float]:
    """(n, 3) class probabilities and (n,) labels -> threshold on P(glasses) (chosen here for
    max_fpr unless given), TPR, FPR, 3-class accuracy."""
    score = 1.0 - probs[:, NONE_CLASS]
    pos, neg = score[labels != NONE_CLASS], score[labels == NONE_CLASS]
    t = choose_threshold(neg, max_fpr) if threshold is None else threshold
    r = rates(pos, neg, t)
    worn = labels != NONE_CLASS
    # Among accepted glasses: eyeglasses vs sunglasses right?
    kind_acc = float(np.mean(probs[worn, :NONE_CLASS].argmax(1) == labels[worn])) if worn.any() else float("nan")
    return {"threshold": t, "tpr": r["tpr"], "fpr": r["fpr"], "accuracy": float(np.mean(probs.argmax(1) == labels)),
            "kind_accuracy": kind_acc}


# ---------------------------------------------------------------------------------------------
# Default data: the catalog renderer on procedural (and optionally real) faces

TRAIN_FACES = 400  # procedural TRAIN faces cached as aligned crops (about 0.1 s each to build)
VAL_FACES = 120  # procedural VAL faces: the first half enrols, the second half queries


class RenderedCropSource:
    """A CropSource over catalog groups: label c is groups[c]; each render takes a random size
    (SKU) of the group, a random cached face, the renderer's fit jitter and mirroring, the crop
    misalignment `jitter` (a renderer.CropJitter; None: off), the face texture `skin` (a
    renderer.SkinTexture; None: off), and then one of `cameras` (a camera model drawn per sample;
    none: clean renders)."""

    def __init__(self, groups: list[list[Any]], faces: Any, cameras: tuple[Any, ...] = (), real_share: float = 0.5,
                 jitter: Any = None, skin: Any = None):
        self.groups, self.faces, self.cameras, self.jitter, self.skin = groups, faces, cameras, jitter, skin
        self.num_classes = len(groups)
        self.pick_faces = face_picker(faces.face_ids, real_share)

    def render(self, labels: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
        return self.render_sized(labels, rng)[0]

    def render_sized(self, labels: npt.NDArray[np.int64], rng: np.random.Generator) -> tuple[
            npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
        from glassfinder.renderer import render_crop_batch

        skus = [self.groups[c][int(rng.integers(len(self.groups[c])))] for c in labels]
        crops = render_crop_batch(skus, self.faces, rng, face_index=self.pick_faces(len(skus), rng),
                                  jitter=self.jitter, skin=self.skin)
        return _camera(crops, self.cameras, rng), np.array([s.shape.lens_width_mm for s in skus], np.float32)


def _train_jitter(cfg: TrainConfig) -> Any:
    """The training crops' misalignment: the aligner's measured error times cfg.crop_jitter."""
    from glassfinder.renderer import ALIGNER_JITTER

    return ALIGNER_JITTER.scaled(cfg.crop_jitter)


def _train_skin(cfg: TrainConfig) -> Any:
    """The training faces' texture: renderer.SkinTexture() times cfg.skin_texture (0: None, off)."""
    from glassfinder.renderer import SkinTexture

    return SkinTexture().scaled(cfg.skin_texture) if cfg.skin_texture > 0 else None


def face_picker(face_ids: list[str], real_share: float) -> Callable[[int, np.random.Generator], npt.NDArray[np.int64]]:
    """Face indices for n renders: a few real photos among hundreds of procedural faces would
    hardly be seen, so when both kinds are there a `real_share` of the renders uses a real one."""
    real = np.array([f.startswith("real-") for f in face_ids])
    ri, pi = np.flatnonzero(real), np.flatnonzero(~real)

    def pick(n: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        if len(ri) == 0 or len(pi) == 0:
            return rng.integers(0, len(face_ids), size=n)
        use_real = rng.random(n) < real_share
        return np.where(use_real, ri[rng.integers(len(ri), size=n)], pi[rng.integers(len(pi), size=n)])

    return pick


def _camera(images: npt.NDArray[np.uint8], cameras: tuple[Any, ...], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    if not cameras or len(images) == 0:
        return images
    from glassfinder.camera import apply_camera

    picks = rng.integers(len(cameras), size=len(images))
    return np.stack([apply_camera(img, rng, cameras[int(k)]) for img, k in zip(images, picks)])


def group_skus(skus: Any) -> list[list[Any]]:
    """SKUs grouped by group_id (sizes of one model + colourway), groups in first-seen order."""
    groups: dict[str, list[Any]] = {}
    for s in skus:
        groups.setdefault(s.group_id, []).append(s)
    return list(groups.values())


def _val_faces() -> list[Any]:
    from glassfinder.faces import make_face

    return [make_face(i, "val") for i in range(VAL_FACES)]


def _faces(real_faces_dir: str | None) -> tuple[Any, list[Any]]:
    """(TRAIN faces as a FaceCropCache, with the real photos when given; VAL FaceSamples)."""
    from glassfinder.faces import make_face
    from glassfinder.renderer import FaceCropCache

    train = [make_face(i, "train") for i in tqdm(range(TRAIN_FACES), desc="train faces", file=sys.stderr,
                                                  disable=_rank() != 0)]
    if real_faces_dir:
        from glassfinder.faces import load_real_faces
        from glassfinder.landmarks import default_landmarker

        train += load_real_faces(real_faces_dir, default_landmarker(), split="train")
    return FaceCropCache(train), _val_faces()


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _cameras(greyscale: float = 0.0) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(training cameras, query camera): training mixes the gallery preset and the query preset as a
    query's aligned crop sees it (camera.QUERY_CAMERA_AT_CROP: the blur of a whole scene), with a
    `greyscale` share of black-and-white photos; val queries use the latter as it is (the camera
    shift the evaluation protocol asks for)."""
    from glassfinder.camera import GALLERY_CAMERA, QUERY_CAMERA_AT_CROP

    train = tuple(replace(c, greyscale_p=greyscale) for c in (GALLERY_CAMERA, QUERY_CAMERA_AT_CROP))
    return train, (QUERY_CAMERA_AT_CROP,)


def default_embedder_data(cfg: TrainConfig) -> EmbedderData:
    """TRAIN split groups on TRAIN faces; VAL split groups enrolled and queried on disjoint VAL faces."""
    from glassfinder.catalog import build_catalog
    from glassfinder.camera import GALLERY_CAMERA

    from glassfinder.renderer import ALIGNER_JITTER

    catalog = build_catalog()
    train_faces, val_faces = _faces(cfg.real_faces_dir)
    train_cams, query_cams = _cameras(cfg.greyscale)
    val_groups = group_skus(catalog.by_split("val"))
    enroll_faces, query_faces = _enroll_and_query_faces(val_faces)
    train_groups = group_skus(catalog.by_split("train"))
    family_names = [g[0].shape.family.value for g in train_groups]
    return EmbedderData(
        train=RenderedCropSource(train_groups, train_faces, train_cams, cfg.real_face_share, _train_jitter(cfg),
                                 _train_skin(cfg)),
        train_families=np.unique(family_names, return_inverse=True)[1].astype(np.int64),
        val_enroll=RenderedCropSource(val_groups, enroll_faces, (GALLERY_CAMERA,)),
        val_query=RenderedCropSource(val_groups, query_faces, query_cams),
        # Gallery crops are aligned on ground truth; query crops come from the aligner.
        val_query_jittered=RenderedCropSource(val_groups, query_faces, query_cams, jitter=ALIGNER_JITTER),
        val_skus=_sku_val_data(val_groups, enroll_faces, query_faces),
    )


def _sku_val_data(val_groups: list[list[Any]], enroll_faces: Any, query_faces: Any) -> SkuValData:
    """One class per VAL SKU (sizes apart), enrolled as the gallery is (gallery camera, misaligned
    by evaluation.ENROLL_JITTER) and queried misaligned with the query camera on the other faces."""
    from glassfinder.camera import GALLERY_CAMERA
    from glassfinder.renderer import ALIGNER_JITTER

    val_skus = [[sku] for group in val_groups for sku in group]
    return SkuValData(
        enroll=RenderedCropSource(val_skus, enroll_faces, (GALLERY_CAMERA,),
                                  jitter=ALIGNER_JITTER.scaled(ENROLL_JITTER)),
        query=RenderedCropSource(val_skus, query_faces, _cameras()[1], jitter=ALIGNER_JITTER),
        groups=np.repeat(np.arange(len(val_groups)), [len(g) for g in val_groups]).astype(np.int64))


def _enroll_and_query_faces(val_faces: list[Any]) -> tuple[Any, Any]:
    """VAL faces -> (FaceCropCache of the first half, which enrols; of the second half, which queries)."""
    from glassfinder.renderer import FaceCropCache

    half = len(val_faces) // 2
    return FaceCropCache(val_faces[:half]), FaceCropCache(val_faces[half:])


def default_sku_val_data() -> SkuValData:
    """The VAL SKUs as training chooses size_scale on them."""
    from glassfinder.catalog import build_catalog

    return _sku_val_data(group_skus(build_catalog().by_split("val")), *_enroll_and_query_faces(_val_faces()))


def _gate_source(skus: Any, faces: Any, cameras: tuple[Any, ...], real_share: float = 0.5, jitter: Any = None,
                 skin: Any = None) -> Any:
    from glassfinder.gate_data import MixedGateSource
    from glassfinder.renderer import render_crop_batch

    eyeglasses = [s for s in skus if not s.is_sunglasses]
    sunglasses = [s for s in skus if s.is_sunglasses]
    pick_faces = face_picker(faces.face_ids, real_share)

    def render(items: list[Any], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
        if not items:
            return np.zeros((0, *faces.crops.shape[1:]), np.uint8)
        crops = render_crop_batch(items, faces, rng, face_index=pick_faces(len(items), rng),
                                  jitter=jitter, skin=skin)
        return _camera(crops, cameras, rng)

    def glasses(n: int, sun: bool, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
        pool = sunglasses if sun else eyeglasses
        return render([pool[int(i)] for i in rng.integers(len(pool), size=n)], rng)

    def bare(n: int, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
        return render([None] * n, rng)

    return MixedGateSource(glasses, bare)


def default_gate_data(cfg: TrainConfig) -> GateData:
    """Positives: TRAIN split glasses on TRAIN faces (val: VAL split on VAL faces); negatives: bare
    faces of the same face split, textures and objects (glassfinder.gate_data)."""
    from glassfinder.catalog import build_catalog

    from glassfinder.renderer import ALIGNER_JITTER, FaceCropCache

    catalog = build_catalog()
    train_faces, val_faces = _faces(cfg.real_faces_dir)
    train_cams, query_cams = _cameras(cfg.greyscale)
    val_cache = FaceCropCache(val_faces)
    # Validated (and the threshold chosen) on crops as the pipeline's queries are: query camera.
    return GateData(train=_gate_source(catalog.by_split("train"), train_faces, train_cams, cfg.real_face_share,
                                       _train_jitter(cfg), _train_skin(cfg)),
                    val=_gate_source(catalog.by_split("val"), val_cache, query_cams),
                    val_jittered=_gate_source(catalog.by_split("val"), val_cache, query_cams, jitter=ALIGNER_JITTER))


def gate_val_source(jitter: Any = None) -> Any:
    """The gate's synthetic validation source alone (VAL split glasses on VAL faces + negatives);
    jitter: a renderer.CropJitter misaligning the face crops (None: aligned on ground truth)."""
    from glassfinder.catalog import build_catalog
    from glassfinder.renderer import FaceCropCache

    return _gate_source(build_catalog().by_split("val"), FaceCropCache(_val_faces()), _cameras()[1], jitter=jitter)


def config_with(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy with some fields changed (CLI overrides)."""
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})
