"""Pictures people would rather look at than read: the search result sheet."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from glassfinder_runtime.geometry import apply_affine, invert_affine
from glassfinder_runtime.pipeline import SearchResult

PANEL_H = 256  # height of the photo panel; everything else is laid out from it
THUMB_W, THUMB_H = 128, 64  # thumbnails are aligned-crop sized renders of each SKU
GREEN, RED, GREY = (40, 170, 60), (210, 50, 40), (90, 90, 90)


def _fit(image: Image.Image, h: int) -> tuple[Image.Image, float]:
    s = h / image.height
    return image.resize((max(1, round(image.width * s)), h), Image.Resampling.BILINEAR), s


def search_sheet(photo: Image.Image, result: SearchResult, thumbs_dir: Path | None, title: str = "") -> Image.Image:
    """Photo with the detected face and glasses region, the aligned crop, and the top-k SKUs
    (thumbnail, rank, score, name). Rejected searches show the refusal message instead."""
    panel, s = _fit(photo.convert("RGB"), PANEL_H)
    draw = ImageDraw.Draw(panel)
    if result.face is not None:
        x0, y0, x1, y1 = (float(v) * s for v in result.face.box)
        draw.rectangle((x0, y0, x1, y1), outline=GREEN, width=2)
        for x, y in result.face.keypoints * s:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 220, 0))
        # The crop's outline in the photo: where the aligned glasses region came from.
        if result.crop is not None:
            h, w = result.crop.shape[:2]
            corners = apply_affine(invert_affine(result.face.crop_matrix), [(0, 0), (w, 0), (w, h), (0, h)]) * s
            draw.polygon([tuple(p) for p in corners], outline=(0, 160, 255))
    cols = 5
    rows = max(1, -(-len(result.results) // cols))
    cell_w, cell_h = THUMB_W + 16, THUMB_H + 40
    right_w = max(cols * cell_w, 2 * THUMB_W + 20)
    sheet = Image.new("RGB", (panel.width + right_w + 30, max(PANEL_H, 2 * THUMB_H + 30 + rows * cell_h) + 50), "white")
    d = ImageDraw.Draw(sheet)
    d.text((10, 8), title or "glassfinder search", fill=(0, 0, 0))
    sheet.paste(panel, (10, 40))
    x = panel.width + 20
    if result.crop is not None:
        crop = Image.fromarray(result.crop).resize((2 * THUMB_W, 2 * THUMB_H), Image.Resampling.NEAREST)
        sheet.paste(crop, (x, 40))
        d.text((x, 40 + 2 * THUMB_H + 2), "aligned crop", fill=GREY)
    y = 40 + 2 * THUMB_H + 20
    if result.status != "ok":
        d.text((x, y), result.message, fill=RED)
        return sheet
    for i, hit in enumerate(result.results):
        cx, cy = x + (i % cols) * cell_w, y + (i // cols) * cell_h
        thumb = thumbs_dir / f"{hit.sku}.jpg" if thumbs_dir is not None else None
        if thumb is not None and thumb.is_file():
            with Image.open(thumb) as im:
                sheet.paste(im.convert("RGB").resize((THUMB_W, THUMB_H)), (cx, cy))
        else:
            d.rectangle((cx, cy, cx + THUMB_W, cy + THUMB_H), outline=GREY)
        d.text((cx, cy + THUMB_H + 2), f"#{i + 1} {hit.score:.3f}", fill=GREEN if i == 0 else (0, 0, 0))
        d.text((cx, cy + THUMB_H + 14), hit.sku[:22], fill=GREY)
    return sheet


def stack_vertically(images: list[Image.Image]) -> Image.Image:
    """One picture from several sheets (batch search)."""
    w = max(im.width for im in images)
    out = Image.new("RGB", (w, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    return out
