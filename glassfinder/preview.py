"""Contact sheet of gallery SKUs rendered on varied faces, each tile labelled: the quick visual check
that the renderer's frames read as real eyewear (families distinct, believable materials, lenses
that show the eyes)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from glassfinder.catalog_types import Sku
from glassfinder.face_types import FaceSample
from glassfinder.renderer import render_scene

TILE_W, TILE_H = 240, 180  # the eye region of each render, 4:3
LABEL_H = 40  # three lines of Pillow's default font under each tile


def pick_preview_skus(skus: Sequence[Sku], n: int, seed: int = 0) -> list[Sku]:
    """n SKUs that cover the families in turn (shuffled within each family by the seed), at most one
    SKU per model while the families last, so the sheet shows variety rather than sizes."""
    rng = np.random.default_rng(seed)
    by_family: dict[str, list[Sku]] = {}
    for s in skus:
        by_family.setdefault(s.shape.family.value, []).append(s)
    queues = []
    for fam in sorted(by_family):
        items = by_family[fam]
        order = rng.permutation(len(items))
        seen, first, rest = set(), [], []
        for i in order:
            (rest if items[i].model_id in seen else first).append(items[i])
            seen.add(items[i].model_id)
        queues.append(first + rest)
    picked: list[Sku] = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def _eye_region(image: Image.Image, keypoints: np.ndarray) -> Image.Image:
    """The TILE_W x TILE_H region around the glasses: twice the outer-eye-corner span wide, level."""
    kp = np.asarray(keypoints, np.float64)
    span = float(np.linalg.norm(kp[3] - kp[0]))
    centre = kp[:4].mean(0)
    angle = math.atan2(kp[3, 1] - kp[0, 1], kp[3, 0] - kp[0, 0])
    w = 2.1 * span
    s = w / TILE_W
    c, si = math.cos(angle) * s, math.sin(angle) * s
    # Output pixel (x, y) -> source: rotate/scale about the tile centre, placed slightly above the eye line.
    ox, oy = TILE_W / 2, TILE_H * 0.45
    data = (c, -si, centre[0] - c * ox + si * oy, si, c, centre[1] - si * ox - c * oy)
    return image.transform((TILE_W, TILE_H), Image.Transform.AFFINE, data=data, resample=Image.Resampling.BICUBIC)


def contact_sheet(
    skus: Sequence[Sku],
    faces: Sequence[FaceSample],
    colour_names: Mapping[str, tuple[str, str]] | None = None,
    cols: int = 6,
    seed: int = 0,
) -> Image.Image:
    """Render skus[i] on faces[i % len(faces)] and lay the tiles out in a labelled grid:
    (cols * TILE_W) x (rows * (TILE_H + LABEL_H)) pixels."""
    if not skus or not faces:
        raise ValueError("contact_sheet needs at least one SKU and one face")
    rows = math.ceil(len(skus) / cols)
    sheet = Image.new("RGB", (cols * TILE_W, rows * (TILE_H + LABEL_H)), (250, 250, 248))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    rng = np.random.default_rng(seed)
    for i, sku in enumerate(skus):
        face = faces[i % len(faces)]
        scene = render_scene(sku, face, rng)
        x, y = (i % cols) * TILE_W, (i // cols) * (TILE_H + LABEL_H)
        sheet.paste(_eye_region(scene.image, face.keypoints), (x, y))
        frame_name, lens_name = (colour_names or {}).get(sku.sku_id, (sku.colourway.name, sku.colourway.lens.value))
        cw = sku.colourway
        lines = (
            sku.sku_id,
            f"{sku.shape.family.value} | {cw.material.value} | {sku.shape.rim_style.value}",
            f"{frame_name} / {lens_name} lens",
        )
        for j, text in enumerate(lines):
            draw.text((x + 4, y + TILE_H + 1 + 13 * j), text, fill=(20, 20, 20), font=font)
    return sheet


def build_preview(n: int = 24, cols: int = 6, seed: int = 0, catalog_seed: int = 0, face_size: int = 384) -> Image.Image:
    """The `glassfinder preview` sheet: n gallery SKUs of the catalog on procedural gallery-split faces."""
    from glassfinder.catalog import CatalogConfig, build_catalog
    from glassfinder.faces import FaceConfig, make_face

    catalog = build_catalog(CatalogConfig(seed=catalog_seed))
    skus = pick_preview_skus(catalog.by_split("gallery"), n, seed)
    cfg = FaceConfig(seed=seed)
    faces = [make_face(i, split="gallery", size=face_size, cfg=cfg) for i in range(min(n, 12))]
    return contact_sheet(skus, faces, catalog.colour_names, cols=cols, seed=seed)
