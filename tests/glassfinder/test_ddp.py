"""Data-parallel training: two CPU processes (gloo) train in step.

Each rank draws its own batches (per-rank data seeds), DistributedDataParallel averages the
gradients, so after every optimiser step the weights of both ranks must be identical, and they
must have moved away from the (deterministic) initial weights."""
from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from glassfinder.gate_data import ShapesCropSource
from glassfinder.models.embedder import EmbedderConfig, build_embedder
from glassfinder.train import EmbedderData, TrainConfig, train_embedder

WORLD = 2
STEPS = 3
TINY = EmbedderConfig(stem_channels=8, stages=((1, 8, 1, 1), (2, 16, 1, 2), (2, 16, 1, 2), (2, 24, 1, 2)),
                      last_channels=32, embedding_dim=16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flat(module: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().cpu().reshape(-1) for p in module.parameters()]).numpy().copy()


def _worker(rank: int, port: int, out_dir: str, loss: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    val = ShapesCropSource(6, seed=9)
    data = EmbedderData(ShapesCropSource(10, seed=0), val, val)
    cfg = TrainConfig(out_dir=out_dir, steps=STEPS, classes_per_batch=4, samples_per_class=2, warmup_steps=1,
                      eval_every=STEPS, checkpoint_every=STEPS, val_classes=6, loss=loss, device="cpu")
    snaps: list[np.ndarray] = []
    train_embedder(cfg, data, TINY, on_step=lambda step, module: snaps.append(_flat(module)))
    np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.stack(snaps))


def test_two_cpu_processes_train_in_step(tmp_path):
    for loss in ("subcenter-arcface",):  # has loss parameters too: they must stay in step as well
        out = tmp_path / loss
        out.mkdir()
        mp.spawn(_worker, args=(_free_port(), str(out), loss), nprocs=WORLD, join=True)
        r0, r1 = np.load(out / "rank0.npy"), np.load(out / "rank1.npy")
        assert r0.shape[0] == r1.shape[0] == STEPS
        assert np.array_equal(r0, r1)  # identical after every step, bit for bit
        start = _flat(build_embedder(TINY))
        model_part = slice(0, len(start))  # the embedder's parameters come first in the module
        for s in range(STEPS):
            assert not np.array_equal(r0[s, model_part], start)
            if s:
                assert not np.array_equal(r0[s], r0[s - 1])
        assert (out / "embedder.safetensors").is_file()  # rank 0 wrote the weights
