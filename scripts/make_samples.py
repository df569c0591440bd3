"""Render the committed sample photos (samples/*.jpg) used by the README's demo.

    python scripts/make_samples.py

Synthetic on purpose: the real photos in ../shared may not be committed. Each sample is a gallery
SKU on a QUERY face (never used for enrollment) through the query camera, so the demo search is
an honest open-set query; `bare_face.jpg` has no glasses and shows the refusal.
"""
from pathlib import Path

import numpy as np

from glassfinder.camera import QUERY_CAMERA
from glassfinder.catalog import CatalogConfig, build_catalog
from glassfinder.faces import make_face
from glassfinder.renderer import render_scene

OUT = Path(__file__).resolve().parent.parent / "samples"
# (file, gallery row, query face index): picked for variety (family, lens, skin tone, pose).
SAMPLES = (("query.jpg", 7, 3), ("sunglasses.jpg", None, 11), ("bare_face.jpg", -1, 5))


def main() -> None:
    gallery = build_catalog(CatalogConfig(seed=0)).by_split("gallery")
    sunglasses = next(i for i, s in enumerate(gallery) if s.is_sunglasses)
    OUT.mkdir(exist_ok=True)
    for name, row, face_index in SAMPLES:
        row = sunglasses if row is None else row
        sku = None if row < 0 else gallery[row]
        rng = np.random.default_rng(face_index)
        scene = render_scene(sku, make_face(face_index, split="query", size=384), rng, camera=QUERY_CAMERA)
        scene.image.save(OUT / name, quality=90)
        print(f"{OUT / name}: {'bare face' if sku is None else sku.sku_id + ' ' + sku.display_name}")


if __name__ == "__main__":
    main()
