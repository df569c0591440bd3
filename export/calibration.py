"""The one calibration loader, shared by TFLite int8, CoreML W8A8 and NNCF.

A set is `calibration_data/<model>.npz` (calibration) or `calibration_data/<model>_parity.npz`
(held out, for the parity gates) with:
  png, offsets: the images as lossless PNG bytes (image i is png[offsets[i]:offsets[i + 1]]): each
          (H, W, 3) uint8 RGB, exactly the model's input size (what the runtime feeds the model after
          letterbox / crop, before pixel / 255 and (x - mean) / std);
  meta:   a JSON string (generator, seed, counts, sha256 of the decoded pixels) for provenance.
Preprocessing is the model's input contract, done here once for every converter. The set's sha256
(over the pixel bytes and shape, not the zip container) goes into the manifest.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from glassfinder_export.targets import InputContract
from glassfinder_runtime.errors import ConfigError

CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "calibration_data"

# Fewer images than this give activation ranges that depend on which images were drawn
# (ultralytics warns below 300 for detection); these are the floors export accepts per model.
MIN_COUNT: dict[str, int] = {"detector": 100, "aligner": 100, "gate": 200, "embedder": 200}
MIN_PARITY_COUNT: dict[str, int] = {"detector": 50, "aligner": 50, "gate": 100, "embedder": 100}
DEFAULT_MIN_COUNT = 100


def dataset_sha256(images: npt.NDArray[np.uint8]) -> str:
    """sha256 over shape, dtype and pixel bytes: independent of how the npz was zipped."""
    h = hashlib.sha256()
    h.update(f"{images.dtype.str}{images.shape}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CalibrationSet:
    """Images in the model's input size plus provenance; converters ask it for their input layout."""

    model: str
    images: npt.NDArray[np.uint8]  # (n, H, W, 3) RGB
    sha256: str
    source: str  # file it was read from, or "memory"
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def model_inputs(self, contract: InputContract, normalise: bool) -> npt.NDArray[np.float32]:
        """(n, C, H, W) float32: pixel / 255 in the contract's channel order, then (x - mean) / std when the
        graph expects normalised input (normalise=True, i.e. normalisation is NOT inside the graph)."""
        x = self.images[..., ::-1] if contract.channel_order == "BGR" else self.images
        x01 = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32) / 255.0
        return contract.normalise(x01) if normalise else x01


def make_set(model: str, images: npt.NDArray[np.uint8], meta: dict[str, Any] | None = None) -> CalibrationSet:
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(f"{model}: calibration images must be (n, H, W, 3) uint8, got {images.shape} {images.dtype}")
    return CalibrationSet(model, images, dataset_sha256(images), "memory", dict(meta or {}))


def _encode_png(images: npt.NDArray[np.uint8]) -> tuple[np.ndarray, np.ndarray]:
    """Lossless PNG per image (about 40% smaller than deflating the raw array): (bytes, offsets (n + 1,))."""
    from PIL import Image

    blobs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "PNG", compress_level=9)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return np.concatenate(blobs), offsets


def _decode_png(png: np.ndarray, offsets: np.ndarray, where: str) -> npt.NDArray[np.uint8]:
    from PIL import Image

    if (offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(png)
            or np.any(np.diff(offsets) <= 0)):
        raise ConfigError(f"{where}: corrupt image offsets")
    out = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        with Image.open(io.BytesIO(png[a:b].tobytes())) as im:
            out.append(np.asarray(im.convert("RGB"), np.uint8))
    if len({o.shape for o in out}) != 1:
        raise ConfigError(f"{where}: images of different sizes")
    return np.stack(out)


def save_set(path: Path, cset: CalibrationSet) -> Path:
    """Write a set as npz: lossless PNG bytes + offsets, and the meta JSON with the sha256 of the pixels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(cset.meta, model=cset.model, count=len(cset), sha256=cset.sha256)
    png, offsets = _encode_png(cset.images)
    np.savez(path, png=png, offsets=offsets, meta=np.array(json.dumps(meta, sort_keys=True)))
    return path


def set_path(model: str, split: str = "calibration", root: Path | None = None) -> Path:
    if split not in ("calibration", "parity"):
        raise ConfigError(f"calibration split must be 'calibration' or 'parity', got {split!r}")
    name = f"{model}.npz" if split == "calibration" else f"{model}_parity.npz"
    return Path(root or CALIBRATION_DIR) / name


def load_set(model: str, contract: InputContract, split: str = "calibration", root: Path | None = None,
             min_count: int | None = None) -> CalibrationSet:
    """Read and check calibration_data/<model>[_parity].npz against the model's input contract.

    Fails (ConfigError naming the file) when the file is missing, has the wrong image size, or holds
    fewer images than the minimum for that model.
    """
    path = set_path(model, split, root)
    if not path.is_file():
        raise ConfigError(f"{path}: no {split} set for {model}; generate it with "
                          f"`python scripts/make_calibration.py --model {model}` (see calibration_data/README.md)")
    with np.load(path, allow_pickle=False) as z:
        if "png" in z and "offsets" in z:
            images = _decode_png(z["png"], z["offsets"], str(path))
        elif "images" in z:  # a raw (n, H, W, 3) uint8 array is accepted too
            images = z["images"]
        else:
            raise ConfigError(f"{path}: neither 'png' + 'offsets' nor 'images' arrays")
        meta = json.loads(str(z["meta"])) if "meta" in z else {}
    cset = make_set(model, images, meta)
    cset = CalibrationSet(model, cset.images, cset.sha256, str(path), cset.meta)
    h, w = images.shape[1:3]
    if (h, w) != (contract.height, contract.width):
        raise ConfigError(f"{path}: images are {h}x{w}, but {model}'s input contract is "
                          f"{contract.height}x{contract.width}")
    floor = min_count if min_count is not None else (
        (MIN_COUNT if split == "calibration" else MIN_PARITY_COUNT).get(model, DEFAULT_MIN_COUNT))
    check_count(cset, floor, str(path))
    if "sha256" in meta and meta["sha256"] != cset.sha256:
        raise ConfigError(f"{path}: recorded sha256 {meta['sha256'][:12]}... does not match the images "
                          f"({cset.sha256[:12]}...): the file was modified")
    return cset


def check_count(cset: CalibrationSet, min_count: int, where: str = "calibration set") -> None:
    if len(cset) < min_count:
        raise ConfigError(f"{where}: {len(cset)} images for {cset.model}, need at least {min_count} "
                          "for stable int8 activation ranges")
