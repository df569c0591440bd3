"""CLI smoke tests of `glassfinder tryon`, `glassfinder preview` and `glassfinder bench render`,
checking what they write (images, grid size, JSON), not just the exit codes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from glassfinder.catalog import CatalogConfig, build_catalog
from glassfinder.cli import main
from glassfinder.faces import make_face
from glassfinder.preview import LABEL_H, TILE_H, TILE_W

# Mean absolute difference (0-255) allowed far from the eyes: only the output JPEG's own noise.
FAR_DIFF_MAX = 3.0
# Mean absolute difference required over the eye region: the frame is really drawn.
NEAR_DIFF_MIN = 12.0


@pytest.fixture(scope="module")
def frontal_face():
    """The first procedural query face that looks roughly at the camera."""
    for i in range(50):
        face = make_face(i, split="query", size=256)
        if abs(face.pose.yaw) < 12 and abs(face.pose.roll) < 12:
            return face
    raise AssertionError("no frontal face among the first 50 query faces")


@pytest.fixture(scope="module")
def sku_id() -> str:
    skus = build_catalog(CatalogConfig()).by_split("gallery")
    return next(s.sku_id for s in skus if s.shape.family.value == "rectangle" and not s.is_sunglasses)


def test_tryon_cli_draws_only_around_the_eyes(tmp_path, frontal_face, sku_id):
    src = tmp_path / "face.png"
    frontal_face.image.save(src)
    out = tmp_path / "tryon.jpg"
    kp = ",".join(f"{v:.2f}" for v in frontal_face.keypoints.reshape(-1))
    assert main(["tryon", str(src), "--sku", sku_id, "--out", str(out), "--keypoints", kp]) == 0
    with Image.open(out) as im:
        assert im.format == "JPEG"
        result = np.asarray(im.convert("RGB"), np.float32)
    before = np.asarray(frontal_face.image, np.float32)
    assert result.shape == before.shape
    diff = np.abs(result - before).mean(-1)
    kp_arr = frontal_face.keypoints
    span = float(np.linalg.norm(kp_arr[3] - kp_arr[0]))
    centre = kp_arr[:4].mean(0)
    ys, xs = np.mgrid[0 : diff.shape[0], 0 : diff.shape[1]]
    # Glasses are ~1.6 outer-eye spans wide and about half a span tall: everything beyond 1.5 spans
    # from the eye centre is untouched; the band between the eyes' outer corners is changed.
    dist = np.maximum(np.abs(xs - centre[0]) / 1.5, np.abs(ys - centre[1]) / 0.9) / span
    assert diff[dist > 1.0].mean() < FAR_DIFF_MAX
    near = (np.abs(xs - centre[0]) < 0.6 * span) & (np.abs(ys - centre[1]) < 0.3 * span)
    assert diff[near].mean() > NEAR_DIFF_MIN


def test_tryon_cli_rejects_bad_keypoints(tmp_path, frontal_face, sku_id, capsys):
    src = tmp_path / "face.png"
    frontal_face.image.save(src)
    code = main(["tryon", str(src), "--sku", sku_id, "--out", str(tmp_path / "x.jpg"), "--keypoints", "1,2,3"])
    assert code == 2
    assert "--keypoints needs 10" in capsys.readouterr().err
    assert not (tmp_path / "x.jpg").exists()
    code = main(["tryon", str(tmp_path / "missing.png"), "--sku", sku_id, "--out", str(tmp_path / "x.jpg"),
                 "--keypoints", ",".join(["10"] * 10)])
    assert code == 2
    assert "missing.png" in capsys.readouterr().err


def test_tryon_cli_unknown_sku(tmp_path, frontal_face, capsys):
    src = tmp_path / "face.png"
    frontal_face.image.save(src)
    kp = ",".join(f"{v:.2f}" for v in frontal_face.keypoints.reshape(-1))
    assert main(["tryon", str(src), "--sku", "NOPE-1", "--out", str(tmp_path / "x.jpg"), "--keypoints", kp]) == 2
    assert "NOPE-1" in capsys.readouterr().err


def test_preview_cli_writes_the_grid(tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["preview", "--out", str(out), "--n", "4", "--cols", "2", "--seed", "1"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (2 * TILE_W, 2 * (TILE_H + LABEL_H))
        sheet = np.asarray(im.convert("RGB"), np.float32)
    # Four different tiles (different SKUs on different faces), each with a dark label text.
    tiles = [sheet[r * (TILE_H + LABEL_H) : r * (TILE_H + LABEL_H) + TILE_H, c * TILE_W : (c + 1) * TILE_W]
             for r in range(2) for c in range(2)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(tiles[i] - tiles[j]).mean() > 5
    labels = sheet[TILE_H : TILE_H + LABEL_H]
    assert labels.min() < 80


def test_bench_render_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "render", "--json", str(out), "--n", "64", "--scenes", "4", "--faces", "4", "--batch", "32"]) == 0
    r = json.loads(out.read_text())
    assert r["crops_per_s"] > 0 and r["scenes_per_s"] > 0
    assert r["n_crops"] == 64 and r["batch_size"] == 32
    printed = capsys.readouterr().out
    assert "crops_per_s" in printed and "scenes_per_s" in printed
