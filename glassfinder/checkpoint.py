"""Training checkpoints without pickle: one safetensors file holds every tensor, its header the rest.

`save_checkpoint(path, model_state, optimizer_state, meta)` writes
- every tensor of the model state dict, the optimizer state dict and `meta` into one
  `.safetensors` file (keys "model/<name>", "optimizer/<i>", "meta/<i>");
- everything else (the nesting, optimizer hyper-parameters, step, history...) as JSON in the
  safetensors header metadata, under "glassfinder.tree", with tensors replaced by their keys.

Loading never unpickles: safetensors parses a JSON header and raw arrays, so a checkpoint from an
untrusted source cannot run code. A pickle or `torch.save` file is recognised and refused with a
message saying so (issue 7 item 3). Python values round-trip exactly, tuples and non-string dict
keys (the optimizer's integer parameter ids) included.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from glassfinder_runtime.errors import GlassfinderError

CHECKPOINT_FORMAT = "glassfinder-checkpoint"
CHECKPOINT_VERSION = "1"
_TREE_KEY = "glassfinder.tree"
# JSON tags for what JSON cannot say directly.
_TENSOR, _TUPLE, _DICT, _FLOAT = "__tensor__", "__tuple__", "__dict__", "__float__"
_TAGS = (_TENSOR, _TUPLE, _DICT, _FLOAT)


def _store(tensors: dict[str, torch.Tensor], key: str, t: Any) -> dict[str, str]:
    """Put a CPU copy of `t` under `key` and return its JSON reference."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"checkpoint entry {key!r} is a {type(t).__name__}, not a tensor")
    # A copy: safetensors refuses tensors that share memory (tied weights, views).
    tensors[key] = t.detach().to("cpu", copy=True).contiguous()
    return {_TENSOR: key}


def _encode(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of `value`; its tensors go to `tensors` under "<prefix>/<i>"."""
    if isinstance(value, torch.Tensor):
        return _store(tensors, f"{prefix}/{len(tensors)}", value)
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, prefix, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, prefix, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: _encode(v, prefix, tensors) for k, v in value.items()}
        return {_DICT: [[_encode(k, prefix, tensors), _encode(v, prefix, tensors)] for k, v in value.items()]}
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT: repr(value)}  # "nan", "inf", "-inf": strict JSON has no spelling for them
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint (tensors, numbers, strings, "
                    "None, lists, tuples and dicts only)")


def _decode(value: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, used) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)) in _TAGS:
        tag, inner = next(iter(value.items()))
        if tag == _TENSOR:
            if inner not in tensors:
                raise KeyError(f"tensor {inner!r} is referenced but not stored")
            used.add(inner)
            return tensors[inner]
        if tag == _TUPLE:
            return tuple(_decode(v, tensors, used) for v in inner)
        if tag == _FLOAT:
            return float(inner)
        return {_decode(k, tensors, used): _decode(v, tensors, used) for k, v in inner}
    return {k: _decode(v, tensors, used) for k, v in value.items()}


def save_checkpoint(path: str | os.PathLike, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any],
                    meta: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (temporary file + rename): a crash leaves the previous one intact.

    model_state: a module's state_dict(); optimizer_state: an optimizer's state_dict();
    meta: step, history, config... (JSON-like values; tuples and tensors are kept as such).
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = {
        # Model tensors keep their state-dict names in the file (readable with any safetensors tool).
        "model": {name: _store(tensors, f"model/{name}", t) for name, t in model_state.items()},
        "optimizer": _encode(optimizer_state, "optimizer", tensors),
        "meta": _encode(meta, "meta", tensors),
    }
    metadata = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                _TREE_KEY: json.dumps(tree, allow_nan=False)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _refuse_pickle(path: Path, head: bytes) -> None:
    """torch.save writes a ZIP of pickles (or, legacy, a bare pickle): never load those.

    A safetensors file starts with its 8-byte header length and then "{"; anything else that
    starts like a ZIP or a pickle (PROTO opcode 0x80 + protocol 2..5) is named as such.
    """
    if head[8:9] == b"{":
        return
    if head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        raise GlassfinderError(
            f"{path}: this is a pickle / torch.save file, not a safetensors checkpoint; it is refused "
            "because unpickling an untrusted file can run arbitrary code. Re-save it with "
            "glassfinder.checkpoint.save_checkpoint from a trusted environment.")


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read (model_state, optimizer_state, meta) written by save_checkpoint; never unpickles.

    Raises GlassfinderError naming the file for a missing, truncated, foreign or pickle file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise GlassfinderError(f"{path}: no such checkpoint file") from None
    except OSError as exc:
        raise GlassfinderError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    _refuse_pickle(path, head)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != CHECKPOINT_FORMAT or _TREE_KEY not in metadata:
                raise GlassfinderError(f"{path}: a safetensors file, but not a glassfinder checkpoint "
                                       "(no checkpoint header: is it a weights file?)")
            if metadata.get("version") != CHECKPOINT_VERSION:
                raise GlassfinderError(f"{path}: checkpoint version {metadata.get('version')!r} is not "
                                       f"supported (this code reads {CHECKPOINT_VERSION!r})")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except GlassfinderError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ValueError...
        raise GlassfinderError(f"{path}: not a readable safetensors checkpoint (truncated or corrupt: "
                               f"{str(exc).strip()[:200]})") from None
    try:
        tree = json.loads(metadata[_TREE_KEY])
        used: set[str] = set()
        out = tuple(_decode(tree[part], tensors, used) for part in ("model", "optimizer", "meta"))
    except (ValueError, KeyError, TypeError) as exc:
        raise GlassfinderError(f"{path}: corrupt checkpoint header ({exc})") from None
    if used != set(tensors):
        raise GlassfinderError(f"{path}: corrupt checkpoint: {len(set(tensors) - used)} stored tensors are "
                               "not referenced by its header")
    return out  # type: ignore[return-value]
