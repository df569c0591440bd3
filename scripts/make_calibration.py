"""Render the committed calibration and held-out parity sets in calibration_data/ with the try-on engine.

Each set is exactly what the runtime feeds that model (see calibration_data/README.md):
  detector  128x128 letterboxed procedural scenes (faces with and without glasses, some non-faces)
  aligner   192x192 rotated face crops (the runtime's face_roi from the scene's face box and eyes)
  gate      64x128 aligned crops: glasses worn, bare faces, objects and textures
  embedder  64x128 aligned crops of catalog SKUs worn on procedural faces
Calibration uses "train" faces; the parity set uses "val" faces and another seed, so the parity
gates are measured on images the quantizer never saw. Deterministic from --seed.

    .venv/bin/python scripts/make_calibration.py                 # all four models, default counts
    .venv/bin/python scripts/make_calibration.py --model embedder --count 256 --parity-count 128
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from glassfinder_export import calibration

# (calibration, parity) images per set: the loader's minimums (calibration.MIN_COUNT / MIN_PARITY_COUNT),
# which keeps the committed files small (about 15 MB for all eight).
DEFAULT_COUNTS: dict[str, tuple[int, int]] = {
    m: (calibration.MIN_COUNT[m], calibration.MIN_PARITY_COUNT[m]) for m in ("detector", "aligner", "gate", "embedder")}


def _skus(n: int, seed: int):
    """n SKUs drawn from the training part of a small catalog (any SKU works for calibration)."""
    from glassfinder.catalog import CatalogConfig, build_catalog

    cat = build_catalog(CatalogConfig(seed=0, n_train=max(n, 64), n_val=0, n_gallery=0))
    rng = np.random.default_rng(seed)
    return [cat.skus[i] for i in rng.integers(0, len(cat.skus), n)]


def _scenes(n: int, split: str, seed: int, p_bare: float = 0.25):
    """n full procedural scenes (PIL images) with their faces; a quarter without glasses."""
    from glassfinder.camera import QUERY_CAMERA
    from glassfinder.faces import make_face
    from glassfinder.renderer import render_scene

    rng = np.random.default_rng(seed)
    skus = _skus(n, seed)
    out = []
    for i in range(n):
        face = make_face(i, split=split)
        sku = None if rng.random() < p_bare else skus[i]
        out.append((render_scene(sku, face, rng, camera=QUERY_CAMERA), face))
    return out


def detector_set(n: int, split: str, seed: int) -> np.ndarray:
    from glassfinder.gate_data import random_objects
    from glassfinder_runtime.detect import letterbox
    from PIL import Image

    n_other = n // 8  # a few non-face images: the detector sees those too
    imgs = [letterbox(scene.image, 128)[0] for scene, _ in _scenes(n - n_other, split, seed)]
    rng = np.random.default_rng(seed + 1)
    for obj in random_objects(n_other, rng, 96, 128):
        imgs.append(letterbox(Image.fromarray(obj), 128)[0])
    return np.stack(imgs)


def aligner_set(n: int, split: str, seed: int) -> np.ndarray:
    from glassfinder_runtime.landmarks import crop_face, face_roi, roi_matrix

    imgs = []
    for scene, face in _scenes(n, split, seed):
        roi = face_roi(face.face_box, face.eye_centres[0], face.eye_centres[1])
        imgs.append(crop_face(scene.image, roi_matrix(roi, 192), 192))
    return np.stack(imgs)


def _crops(n: int, split: str, seed: int, p_bare: float) -> np.ndarray:
    from glassfinder.camera import QUERY_CAMERA
    from glassfinder.renderer import FaceCropCache, render_crop_batch

    rng = np.random.default_rng(seed)
    faces = FaceCropCache.from_split(split, n=min(64, n), seed=0)
    skus = [None if rng.random() < p_bare else s for s in _skus(n, seed)]
    return render_crop_batch(skus, faces, rng, camera=QUERY_CAMERA)


def embedder_set(n: int, split: str, seed: int) -> np.ndarray:
    return _crops(n, split, seed, p_bare=0.0)


def gate_set(n: int, split: str, seed: int) -> np.ndarray:
    from glassfinder.gate_data import random_objects, random_textures

    rng = np.random.default_rng(seed + 2)
    n_obj, n_tex = n // 8, n // 8
    worn = _crops(n - n_obj - n_tex, split, seed, p_bare=0.25)
    x = np.concatenate([worn, random_objects(n_obj, rng), random_textures(n_tex, rng)])
    return x[rng.permutation(len(x))]


GENERATORS = {"detector": detector_set, "aligner": aligner_set, "gate": gate_set, "embedder": embedder_set}


def make_sets(model: str, count: int, parity_count: int, seed: int, root: Path) -> list[Path]:
    paths = []
    for split, n, face_split, s in (("calibration", count, "train", seed),
                                    ("parity", parity_count, "val", seed + 1000)):
        images = GENERATORS[model](n, face_split, s)
        meta = {"generator": f"scripts/make_calibration.py:{GENERATORS[model].__name__}", "seed": s,
                "face_split": face_split, "split": split}
        cset = calibration.make_set(model, images, meta)
        paths.append(calibration.save_set(calibration.set_path(model, split, root), cset))
        print(f"{model} {split}: {len(cset)} images {images.shape[1]}x{images.shape[2]}, "
              f"sha256 {cset.sha256[:16]}..., {paths[-1].stat().st_size / 1e6:.2f} MB -> {paths[-1]}")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=list(GENERATORS), action="append",
                   help="which set(s) to render (default: all four)")
    p.add_argument("--count", type=int, help="calibration images (default: per model, see DEFAULT_COUNTS)")
    p.add_argument("--parity-count", type=int, help="held-out parity images (default: per model)")
    p.add_argument("--seed", type=int, default=0, help="rendering seed (default %(default)s)")
    p.add_argument("--out", type=Path, default=calibration.CALIBRATION_DIR, help="folder (default calibration_data/)")
    args = p.parse_args(argv)
    for model in args.model or list(GENERATORS):
        count, parity_count = DEFAULT_COUNTS[model]
        make_sets(model, args.count or count, args.parity_count or parity_count, args.seed, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
