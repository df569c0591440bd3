"""Checkpoints: exact round trip and resume, and no unpickling of anything (issue 7 item 3)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from glassfinder.checkpoint import load_checkpoint, save_checkpoint
from glassfinder_runtime.errors import GlassfinderError


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_round_trip_is_exact(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99))
    train_steps(model, opt, 3, seed=1)
    meta = {"task": "embedder", "step": 3, "history": [{"step": 3, "recall@1": 0.5}],
            "train_config": {"size": (64, 128), "lr": 1e-2, "note": None, "nan": float("nan")}}
    path = save_checkpoint(tmp_path / "ckpt" / "checkpoint.safetensors", model.state_dict(), opt.state_dict(), meta)
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.safetensors"]  # no temp file left
    state, opt_state, meta2 = load_checkpoint(path)
    assert list(state) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v) and state[k].dtype == v.dtype
    ref = opt.state_dict()
    assert opt_state["param_groups"] == ref["param_groups"]  # tuples (betas) and int ids intact
    assert set(opt_state["state"]) == set(ref["state"]) and all(isinstance(k, int) for k in opt_state["state"])
    for pid, s in ref["state"].items():
        for name, v in s.items():
            assert torch.equal(opt_state["state"][pid][name], v)
    nan = meta2["train_config"].pop("nan")
    assert nan != nan and meta2 == {**meta, "train_config": {k: v for k, v in meta["train_config"].items() if k != "nan"}}
    assert meta2["train_config"]["size"] == (64, 128)  # a tuple, not a list


def test_resume_continues_bit_for_bit(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_steps(model, opt, 2, seed=1)
    save_checkpoint(tmp_path / "c.safetensors", model.state_dict(), opt.state_dict(), {"step": 2})
    train_steps(model, opt, 2, seed=2)

    resumed = tiny_model()
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    state, opt_state, meta = load_checkpoint(tmp_path / "c.safetensors")
    resumed.load_state_dict(state)
    opt2.load_state_dict(opt_state)
    train_steps(resumed, opt2, 2, seed=2)
    assert meta == {"step": 2}
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_tied_weights_can_be_saved(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight  # shared storage: plain safetensors save_file refuses it
    save_checkpoint(tmp_path / "t.safetensors", model.state_dict(), {}, {})
    state, _, _ = load_checkpoint(tmp_path / "t.safetensors")
    assert torch.equal(state["0.weight"], state["1.weight"])


class _Payload:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_payloads_are_refused_without_running(tmp_path, writer):
    marker = tmp_path / "code_ran"
    path = tmp_path / "checkpoint.safetensors"  # the name does not make it safe
    if writer == "pickle":
        path.write_bytes(pickle.dumps({"state": _Payload(marker)}, protocol=4))
    else:
        torch.save({"state": _Payload(marker)}, path)
    with pytest.raises(GlassfinderError, match="pickle / torch.save file") as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(path))
    assert not marker.exists()


def test_foreign_truncated_and_missing_files(tmp_path):
    weights = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    with pytest.raises(GlassfinderError, match="not a glassfinder checkpoint"):
        load_checkpoint(weights)
    good = save_checkpoint(tmp_path / "good.safetensors", {"w": torch.ones(1000)}, {}, {"step": 1})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(GlassfinderError, match="truncated or corrupt"):
        load_checkpoint(cut)
    with pytest.raises(GlassfinderError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(TypeError, match="cannot store a object"):
        save_checkpoint(tmp_path / "bad.safetensors", {}, {}, {"x": object()})
