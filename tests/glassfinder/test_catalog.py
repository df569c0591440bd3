"""Catalog: determinism, stable ids, disjoint splits, size groups, realistic frequencies, metadata round trip."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import replace

import pytest

from glassfinder.catalog import (
    SPLITS,
    Catalog,
    CatalogConfig,
    build_catalog,
    catalog_summary,
    catalog_to_json,
    load_metadata,
    save_metadata,
)
from glassfinder.catalog_types import BridgeStyle, Family, LensType, Material, RimStyle
from glassfinder_runtime.errors import GlassfinderError

# Frequency bands (share of SKUs) that a realistic catalog stays within.
SUNGLASSES_SHARE = (0.18, 0.32)
CLEAR_LENS_SHARE = (0.65, 0.82)
BLACKISH_SHARE_MIN = 0.20  # black and near-black frames are the most common colour
TORTOISE_SHARE = (0.08, 0.30)
FAMILY_SHARE = (0.03, 0.30)  # every family present, none dominating
MIN_DISTINCT_COLOUR_NAMES = 30


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog(CatalogConfig())


def test_same_seed_same_bytes_and_other_seed_differs(catalog: Catalog) -> None:
    again = build_catalog(CatalogConfig())
    assert catalog_to_json(again) == catalog_to_json(catalog)
    other = build_catalog(CatalogConfig(seed=1, n_train=300, n_val=50, n_gallery=100))
    assert [s.shape for s in other.skus[:20]] != [s.shape for s in catalog.skus[:20]]


def test_split_sizes(catalog: Catalog) -> None:
    assert len(catalog.by_split("gallery")) == 3200
    assert len(catalog.by_split("val")) == 800
    assert len(catalog.by_split("train")) >= 10_000
    assert len(catalog) == sum(len(catalog.by_split(s)) for s in SPLITS)


def test_splits_disjoint_by_model_and_sku(catalog: Catalog) -> None:
    models = {s: {k.model_id for k in catalog.by_split(s)} for s in SPLITS}
    ids = {s: {k.sku_id for k in catalog.by_split(s)} for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not models[a] & models[b], (a, b)
                assert not ids[a] & ids[b], (a, b)
    assert len({k.sku_id for k in catalog.skus}) == len(catalog.skus)
    # No gallery frame shape appears in train, even under another model id (open set).
    train_shapes = {k.shape for k in catalog.by_split("train")}
    assert not any(k.shape in train_shapes for k in catalog.by_split("gallery"))


def test_ids_stable_when_train_grows() -> None:
    small = build_catalog(CatalogConfig(seed=2, n_train=1_000, n_val=100, n_gallery=300))
    bigger = build_catalog(CatalogConfig(seed=2, n_train=3_000, n_val=100, n_gallery=300))
    assert len(bigger.by_split("train")) >= 3_000
    for split in ("gallery", "val"):
        assert bigger.by_split(split) == small.by_split(split)
    small_train = small.by_split("train")
    assert bigger.by_split("train")[: len(small_train)] == small_train


def test_groups_differ_only_in_size(catalog: Catalog) -> None:
    by_group: dict[str, list] = defaultdict(list)
    for s in catalog.skus:
        assert catalog.groups[s.sku_id] == s.group_id
        assert s.group_id.startswith(s.model_id)
        by_group[s.group_id].append(s)
    multi = [g for g in by_group.values() if len(g) > 1]
    assert len(multi) > 500  # many groups have several sizes
    for group in multi:
        first = group[0]
        assert len({s.size for s in group}) == len(group)
        for s in group[1:]:
            assert s.colourway == first.colourway
            assert s.split == first.split
            a, b = first.shape, s.shape
            assert b.lens_width_mm != a.lens_width_mm
            # Same aspect ratio (visually identical apart from scale), within the 0.1 mm rounding.
            assert b.lens_height_mm / b.lens_width_mm == pytest.approx(a.lens_height_mm / a.lens_width_mm, abs=0.003)
            assert replace(b, lens_width_mm=0, lens_height_mm=0, bridge_width_mm=0) == replace(
                a, lens_width_mm=0, lens_height_mm=0, bridge_width_mm=0)
    # Colourways of one model share the shape at equal size, and differ in name.
    by_model: dict[str, list] = defaultdict(list)
    for s in catalog.skus:
        by_model[s.model_id].append(s)
    for skus in by_model.values():
        names = {s.group_id: s.colourway.name for s in skus}
        assert len(set(names.values())) == len(names)


def test_size_strings_match_shape(catalog: Catalog) -> None:
    for s in catalog.skus[:2000]:
        lens, bridge, temple = (int(x) for x in s.size.split("-"))
        assert lens == s.shape.lens_width_mm and bridge == s.shape.bridge_width_mm
        assert 130 <= temple <= 150
        assert s.sku_id.endswith(f"-{lens}") and s.sku_id.startswith(s.group_id)
        assert s.colourway.name in s.display_name


def test_frequencies_realistic(catalog: Catalog) -> None:
    n = len(catalog)
    fam = Counter(s.shape.family for s in catalog.skus)
    assert set(fam) == set(Family)
    for f, c in fam.items():
        assert FAMILY_SHARE[0] <= c / n <= FAMILY_SHARE[1], (f, c / n)
    sun = sum(s.is_sunglasses for s in catalog.skus) / n
    assert SUNGLASSES_SHARE[0] <= sun <= SUNGLASSES_SHARE[1]
    lens = Counter(s.colourway.lens for s in catalog.skus)
    assert set(lens) == set(LensType)
    assert CLEAR_LENS_SHARE[0] <= lens[LensType.CLEAR] / n <= CLEAR_LENS_SHARE[1]
    mat = Counter(s.colourway.material for s in catalog.skus)
    assert set(mat) == set(Material)
    assert TORTOISE_SHARE[0] <= mat[Material.TORTOISE] / n <= TORTOISE_SHARE[1]
    blackish = sum(max(s.colourway.primary_rgb) <= 40 for s in catalog.skus) / n
    assert blackish >= BLACKISH_SHARE_MIN
    summary = catalog_summary(catalog)
    top_colour = next(iter(summary["frame_colour"]))
    assert "Black" in top_colour
    assert len(summary["frame_colour"]) >= MIN_DISTINCT_COLOUR_NAMES
    # Clear lenses are nearly transparent; sunglasses lenses are dark (the gate relies on it).
    for s in catalog.skus:
        assert (s.colourway.lens is LensType.CLEAR) == (not s.is_sunglasses)


def test_family_specific_shapes(catalog: Catalog) -> None:
    by_fam: dict[Family, list] = defaultdict(list)
    for s in catalog.skus:
        by_fam[s.shape.family].append(s)
    aviators = by_fam[Family.AVIATOR]
    assert sum(s.shape.bridge_style is BridgeStyle.DOUBLE for s in aviators) / len(aviators) > 0.7
    assert sum(s.colourway.material is Material.METAL for s in aviators) / len(aviators) > 0.7
    assert all(s.shape.bottom_curve >= 0.25 for s in aviators)
    assert all(s.shape.outer_lift >= 0.15 for s in by_fam[Family.CAT_EYE])
    assert all(s.shape.slant >= 0.15 and s.shape.rim_thickness_mm >= 5 for s in by_fam[Family.WAYFARER])
    assert all(s.shape.browline_thickness_mm >= 3 and s.shape.rim_thickness_mm < 2 for s in by_fam[Family.BROWLINE])
    assert all(5 <= s.shape.facets <= 8 for s in by_fam[Family.GEOMETRIC])
    assert all(s.shape.facets == 0 for f, v in by_fam.items() if f is not Family.GEOMETRIC for s in v)
    assert all(s.shape.rim_style is RimStyle.RIMLESS and s.shape.rim_thickness_mm == 0 for s in by_fam[Family.RIMLESS])
    assert all(s.shape.rim_style is RimStyle.HALF for s in by_fam[Family.HALF_RIM])
    assert all(s.shape.corner_radius == 1.0 for s in by_fam[Family.ROUND])
    for s in catalog.skus:
        assert 40 <= s.shape.lens_width_mm <= 66 and 24 <= s.shape.lens_height_mm <= 60
        assert 12 <= s.shape.bridge_width_mm <= 26


def test_metadata_round_trip(catalog: Catalog, tmp_path) -> None:
    path = save_metadata(catalog, tmp_path / "catalog.json")
    back = load_metadata(path)
    assert back == catalog
    assert back.colour_names == catalog.colour_names
    doc = json.loads(path.read_text())
    rec = doc["skus"][0]
    for key in ("id", "model", "group", "family", "colour_name", "frame_colour", "lens_colour", "size",
                "lens", "display_name", "split", "shape", "colourway"):
        assert key in rec
    assert doc["counts"]["gallery"] == 3200


def test_metadata_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GlassfinderError, match="bad.json"):
        load_metadata(bad)
    with pytest.raises(GlassfinderError, match="missing.json"):
        load_metadata(tmp_path / "missing.json")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema_version": 999, "skus": []}))
    with pytest.raises(GlassfinderError, match="schema_version"):
        load_metadata(old)


def test_lookup_and_bad_config(catalog: Catalog) -> None:
    s = catalog.by_split("gallery")[7]
    assert catalog.get(s.sku_id) is s
    with pytest.raises(GlassfinderError, match="GF-NOPE"):
        catalog.get("GF-NOPE")
    with pytest.raises(GlassfinderError, match="test"):
        catalog.by_split("test")
    with pytest.raises(GlassfinderError, match="n_gallery"):
        build_catalog(CatalogConfig(n_gallery=-1))


def test_cli_writes_metadata_and_summary(tmp_path, capsys) -> None:
    from glassfinder.cli import main

    out = tmp_path / "cat.json"
    rc = main(["catalog", "--out", str(out), "--seed", "3", "--n-train", "200", "--n-val", "30",
               "--n-gallery", "64", "--summary"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["config"] == {"seed": 3, "n_train": 200, "n_val": 30, "n_gallery": 64}
    splits = Counter(r["split"] for r in doc["skus"])
    assert splits["gallery"] == 64 and splits["val"] == 30 and splits["train"] >= 200
    expected = build_catalog(CatalogConfig(seed=3, n_train=200, n_val=30, n_gallery=64))
    assert out.read_text() == catalog_to_json(expected)
    printed = capsys.readouterr().out
    assert "gallery" in printed and "family" in printed and "lens type" in printed
    assert f"wrote {len(doc['skus'])} SKUs" in printed


def test_cli_reports_user_mistakes(tmp_path, capsys) -> None:
    from glassfinder.cli import main

    rc = main(["catalog", "--out", str(tmp_path / "nope" / "cat.json")])
    assert rc == 2
    assert "nope" in capsys.readouterr().err
    rc = main(["catalog", "--out", str(tmp_path / "c.json"), "--n-gallery", "-5"])
    assert rc == 2
    assert "n_gallery" in capsys.readouterr().err
