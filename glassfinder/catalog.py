"""The parametric eyewear catalog: models, colourways and sizes, deterministic from a seed.

Structure (as in a real retailer's catalog):
- a *model* has one frame shape (family + outline parameters) and a frame kind (plastic, metal or
  a combination such as a browline's acetate top on a metal lower rim);
- it comes in 1-4 *colourways* (frame colour, material, lens) and 1-3 *sizes* (lens width in 2 mm
  steps, bridge +1 mm per step, height scaled with the width: the shape is otherwise identical);
- a *SKU* is one (model, colourway, size); the *group* of a SKU is its model + colourway, so the
  SKUs of a group are visually identical apart from scale (evaluation reports size-insensitive hits
  by group).

Determinism and stable ids:
- model number `i` is drawn from its own generator `np.random.default_rng([seed, i])`, so a model's
  shape, colourways and sizes never depend on how many other models are built;
- its split comes from the first draw of that generator (P_GALLERY / P_VAL / rest train); a split
  takes models in increasing model number until its quota is met and ignores later models drawn
  for it. The gallery and val splits are cut to exactly `n_gallery` / `n_val` SKUs by dropping the
  trailing SKUs of their last model; train takes whole models until it has >= `n_train` SKUs.
  So raising `n_train` only appends train models: every existing SKU id stays the same.
- splits are disjoint by model (open set: a gallery model's shape never appears in train).

Frequencies follow a realistic catalog: black and near-black acetate and tortoise frames dominate
(many colourways with different names but near-identical colours), metal frames come in gold,
silver, gunmetal and black, and about a quarter of the SKUs are sunglasses.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from glassfinder.catalog_types import (
    BridgeStyle,
    Colourway,
    Family,
    FrameShape,
    LensType,
    Material,
    RimStyle,
    Sku,
)
from glassfinder_runtime.errors import ConfigError, GlassfinderError

SPLITS: tuple[str, ...] = ("train", "val", "gallery")
# Probability that a model number is drawn for the gallery / val split (the rest is train). Both are
# above the splits' share at the default sizes so that gallery and val fill within the first models.
P_GALLERY = 0.26
P_VAL = 0.07
METADATA_SCHEMA_VERSION = 1
ID_PREFIX = "GF"


@dataclass(frozen=True)
class CatalogConfig:
    """How big the catalog is and which seed it comes from."""

    seed: int = 0  # every model is drawn from default_rng([seed, model_number])
    n_train: int = 10_000  # train split: at least this many SKUs (whole models)
    n_val: int = 800  # val split: exactly this many SKUs
    n_gallery: int = 3_200  # gallery split (reference open-set gallery): exactly this many SKUs

    def validate(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"catalog seed must be >= 0, got {self.seed}")
        for name in ("n_train", "n_val", "n_gallery"):
            if getattr(self, name) < 0:
                raise ConfigError(f"catalog {name} must be >= 0, got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------------
# Palettes: (name, rgb, secondary rgb, gloss, relative frequency)

@dataclass(frozen=True)
class _Paint:
    name: str
    material: Material
    rgb: tuple[int, int, int]
    rgb2: tuple[int, int, int]
    gloss: float
    weight: float


def _p(name: str, material: Material, rgb, rgb2, gloss: float, weight: float) -> _Paint:
    return _Paint(name, material, tuple(rgb), tuple(rgb2), gloss, weight)


_A, _T, _M, _2 = Material.ACETATE, Material.TORTOISE, Material.METAL, Material.TWO_TONE
_CRYSTAL = (214, 214, 208)

# Plastic frames: solid acetate (black family dominates), tortoise, two-tone acetate.
PLASTIC_PAINTS: tuple[_Paint, ...] = (
    _p("Black", _A, (18, 18, 20), (60, 60, 64), 0.80, 10.0),
    _p("Shiny Black", _A, (12, 12, 14), (70, 70, 75), 0.95, 6.0),
    _p("Matte Black", _A, (30, 30, 32), (55, 55, 58), 0.12, 9.0),
    _p("Jet Black", _A, (8, 8, 10), (60, 60, 62), 0.90, 4.0),
    _p("Black Onyx", _A, (22, 20, 25), (62, 60, 66), 0.70, 3.0),
    _p("Charcoal", _A, (48, 48, 52), (90, 90, 95), 0.50, 3.0),
    _p("Dark Grey", _A, (72, 72, 76), (110, 110, 115), 0.40, 2.0),
    _p("Grey Crystal", _A, (150, 150, 156), (200, 200, 205), 0.85, 2.0),
    _p("Crystal Clear", _A, _CRYSTAL, (240, 240, 238), 0.90, 3.0),
    _p("Champagne Crystal", _A, (208, 188, 158), (235, 220, 195), 0.85, 1.0),
    _p("Blue Crystal", _A, (118, 148, 188), (170, 195, 225), 0.85, 0.8),
    _p("Navy", _A, (28, 36, 70), (60, 70, 110), 0.70, 3.0),
    _p("Dark Navy", _A, (20, 26, 50), (50, 58, 90), 0.60, 2.0),
    _p("Burgundy", _A, (92, 22, 36), (140, 50, 65), 0.80, 2.0),
    _p("Wine", _A, (112, 28, 48), (160, 60, 80), 0.75, 1.0),
    _p("Dark Brown", _A, (58, 36, 24), (95, 65, 45), 0.60, 2.0),
    _p("Brown", _A, (96, 62, 40), (140, 100, 70), 0.60, 1.5),
    _p("Olive", _A, (85, 88, 50), (125, 128, 85), 0.50, 1.0),
    _p("Dark Green", _A, (30, 60, 45), (65, 100, 80), 0.60, 1.0),
    _p("Blush Pink", _A, (220, 170, 165), (240, 205, 200), 0.70, 1.0),
    _p("Red", _A, (170, 30, 35), (210, 80, 80), 0.80, 0.7),
    _p("White", _A, (235, 235, 230), (250, 250, 248), 0.70, 0.5),
    _p("Havana Tortoise", _T, (120, 70, 30), (45, 25, 12), 0.80, 7.0),
    _p("Dark Tortoise", _T, (70, 40, 20), (25, 15, 8), 0.80, 6.0),
    _p("Classic Tortoise", _T, (110, 65, 30), (40, 22, 10), 0.75, 5.0),
    _p("Light Tortoise", _T, (170, 120, 60), (90, 55, 25), 0.80, 3.0),
    _p("Amber Tortoise", _T, (180, 110, 40), (80, 45, 15), 0.85, 2.0),
    _p("Blonde Tortoise", _T, (200, 160, 100), (130, 90, 50), 0.80, 1.5),
    _p("Green Tortoise", _T, (70, 80, 50), (30, 35, 20), 0.70, 0.8),
    _p("Grey Tortoise", _T, (110, 105, 100), (50, 48, 45), 0.70, 0.8),
    _p("Black / Crystal", _2, (18, 18, 20), _CRYSTAL, 0.80, 3.0),
    _p("Tortoise / Crystal", _2, (110, 65, 30), (215, 208, 196), 0.80, 2.0),
    _p("Navy / Crystal", _2, (28, 36, 70), _CRYSTAL, 0.75, 1.0),
    _p("Black / Grey", _2, (18, 18, 20), (120, 120, 125), 0.70, 1.0),
    _p("Burgundy / Crystal", _2, (92, 22, 36), _CRYSTAL, 0.75, 0.7),
)

# Metal frames: secondary is the highlight colour of the specular sheen.
METAL_PAINTS: tuple[_Paint, ...] = (
    _p("Gold", _M, (200, 165, 80), (255, 236, 170), 0.90, 6.0),
    _p("Shiny Gold", _M, (212, 176, 86), (255, 242, 185), 0.95, 2.0),
    _p("Antique Gold", _M, (168, 134, 74), (225, 200, 140), 0.60, 2.0),
    _p("Rose Gold", _M, (200, 140, 120), (250, 210, 195), 0.85, 2.0),
    _p("Silver", _M, (185, 185, 190), (245, 245, 250), 0.90, 5.0),
    _p("Gunmetal", _M, (75, 75, 80), (150, 150, 156), 0.70, 5.0),
    _p("Matte Black", _M, (30, 30, 32), (90, 90, 95), 0.20, 6.0),
    _p("Black", _M, (20, 20, 22), (100, 100, 105), 0.70, 3.0),
    _p("Bronze", _M, (125, 90, 55), (200, 160, 115), 0.70, 1.5),
    _p("Matte Navy", _M, (35, 45, 75), (95, 105, 140), 0.25, 1.0),
)

# Combination frames (browline; some half-rims): acetate top (primary), metal lower rim (secondary).
COMBO_PAINTS: tuple[_Paint, ...] = (
    _p("Black / Gold", _2, (18, 18, 20), (200, 165, 80), 0.80, 5.0),
    _p("Black / Silver", _2, (18, 18, 20), (185, 185, 190), 0.80, 4.0),
    _p("Matte Black / Gunmetal", _2, (30, 30, 32), (75, 75, 80), 0.20, 2.0),
    _p("Tortoise / Gold", _2, (110, 65, 30), (200, 165, 80), 0.80, 4.0),
    _p("Havana / Silver", _2, (120, 70, 30), (185, 185, 190), 0.80, 2.0),
    _p("Navy / Silver", _2, (28, 36, 70), (185, 185, 190), 0.70, 1.0),
    _p("Burgundy / Gold", _2, (92, 22, 36), (200, 165, 80), 0.75, 0.8),
)

PALETTES: dict[str, tuple[_Paint, ...]] = {"plastic": PLASTIC_PAINTS, "metal": METAL_PAINTS, "combo": COMBO_PAINTS}


@dataclass(frozen=True)
class _LensPaint:
    name: str
    lens: LensType
    rgb: tuple[int, int, int]
    opacity: tuple[float, float]  # range drawn per colourway
    weight: float


_SUN_LENSES: tuple[_LensPaint, ...] = (
    _LensPaint("Grey", LensType.TINTED, (58, 58, 60), (0.70, 0.88), 10.0),
    _LensPaint("Dark Grey", LensType.TINTED, (38, 38, 40), (0.80, 0.92), 4.0),
    _LensPaint("G-15 Green", LensType.TINTED, (55, 72, 52), (0.72, 0.88), 5.0),
    _LensPaint("Brown", LensType.TINTED, (96, 64, 40), (0.68, 0.85), 6.0),
    _LensPaint("Blue", LensType.TINTED, (40, 62, 104), (0.65, 0.82), 1.5),
    _LensPaint("Rose", LensType.TINTED, (165, 92, 92), (0.55, 0.70), 1.0),
    _LensPaint("Yellow", LensType.TINTED, (190, 160, 50), (0.55, 0.65), 0.5),
    _LensPaint("Grey Gradient", LensType.GRADIENT, (52, 52, 55), (0.70, 0.85), 6.0),
    _LensPaint("Brown Gradient", LensType.GRADIENT, (100, 66, 40), (0.68, 0.82), 4.0),
    _LensPaint("Blue Gradient", LensType.GRADIENT, (44, 66, 110), (0.65, 0.80), 1.0),
    _LensPaint("Silver Mirror", LensType.MIRROR, (192, 196, 202), (0.85, 0.95), 3.0),
    _LensPaint("Blue Mirror", LensType.MIRROR, (60, 112, 192), (0.85, 0.95), 2.0),
    _LensPaint("Gold Mirror", LensType.MIRROR, (212, 170, 70), (0.85, 0.95), 1.5),
    _LensPaint("Red Mirror", LensType.MIRROR, (202, 72, 52), (0.85, 0.95), 1.0),
    _LensPaint("Green Mirror", LensType.MIRROR, (70, 150, 92), (0.85, 0.95), 0.8),
)
_CLEAR_LENS = _LensPaint("Clear", LensType.CLEAR, (236, 242, 244), (0.03, 0.08), 1.0)

# ---------------------------------------------------------------------------------------------
# Families: frequency, frame kinds and sunglasses probability

@dataclass(frozen=True)
class _FamilySpec:
    weight: float  # share of models
    kinds: tuple[tuple[str, float], ...]  # frame kind -> probability
    p_sun: float  # probability that a model is sold as sunglasses


FAMILY_SPECS: dict[Family, _FamilySpec] = {
    Family.RECTANGLE: _FamilySpec(0.20, (("plastic", 0.7), ("metal", 0.3)), 0.15),
    Family.SQUARE: _FamilySpec(0.12, (("plastic", 0.75), ("metal", 0.25)), 0.15),
    Family.ROUND: _FamilySpec(0.10, (("plastic", 0.55), ("metal", 0.45)), 0.25),
    Family.OVAL: _FamilySpec(0.07, (("plastic", 0.65), ("metal", 0.35)), 0.15),
    Family.AVIATOR: _FamilySpec(0.08, (("metal", 0.9), ("plastic", 0.1)), 0.65),
    Family.CAT_EYE: _FamilySpec(0.09, (("plastic", 0.85), ("metal", 0.15)), 0.35),
    Family.WAYFARER: _FamilySpec(0.10, (("plastic", 1.0),), 0.45),
    Family.BROWLINE: _FamilySpec(0.06, (("combo", 0.85), ("plastic", 0.15)), 0.15),
    Family.GEOMETRIC: _FamilySpec(0.06, (("metal", 0.5), ("plastic", 0.5)), 0.25),
    Family.RIMLESS: _FamilySpec(0.05, (("metal", 1.0),), 0.05),
    Family.HALF_RIM: _FamilySpec(0.07, (("metal", 0.55), ("plastic", 0.35), ("combo", 0.10)), 0.15),
}
_FAMILIES: tuple[Family, ...] = tuple(FAMILY_SPECS)
_FAMILY_P = np.array([FAMILY_SPECS[f].weight for f in _FAMILIES]) / sum(s.weight for s in FAMILY_SPECS.values())
N_COLOURWAYS_P = (0.25, 0.35, 0.25, 0.15)  # 1..4 colourways per model
N_SIZES_P = (0.45, 0.35, 0.20)  # 1..3 sizes per model
SIZE_STEP_MM = 2  # lens width step between sizes
TEMPLE_MM = (135, 140, 145)  # temple length by size index


# ---------------------------------------------------------------------------------------------
# Model generation

@dataclass(frozen=True)
class _Model:
    number: int
    split: str
    base_shape: FrameShape  # at the smallest size
    colourways: tuple[tuple[Colourway, str, str], ...]  # (colourway, frame colour name, lens colour name)
    n_sizes: int


def _r(x: float, nd: int = 3) -> float:
    """Round drawn parameters so the JSON metadata is short and round-trips exactly."""
    return float(round(float(x), nd))


def _choice(rng: np.random.Generator, items, weights) -> Any:
    w = np.asarray(weights, dtype=np.float64)
    return items[int(rng.choice(len(items), p=w / w.sum()))]


def _draw_shape(rng: np.random.Generator, family: Family, kind: str) -> FrameShape:
    """Family-specific outline parameters (smallest size). Ranges follow real frames of each family."""
    u = rng.uniform
    metal = kind == "metal"
    # Defaults: a plain full-rim frame.
    p: dict[str, Any] = dict(
        corner_radius=u(0.15, 0.45), top_curve=u(-0.03, 0.08), bottom_curve=u(0.0, 0.10),
        outer_lift=u(0.0, 0.04), slant=u(-0.03, 0.08), facets=0, rim_style=RimStyle.FULL,
        browline_thickness_mm=0.0, wrap_deg=u(2.0, 8.0),
    )
    rim = u(1.0, 1.8) if metal else u(3.5, 6.0)
    bridge = (_choice(rng, (BridgeStyle.STRAIGHT, BridgeStyle.KEYHOLE), (0.8, 0.2)) if metal
              else _choice(rng, (BridgeStyle.SADDLE, BridgeStyle.KEYHOLE), (0.7, 0.3)))
    if family is Family.RECTANGLE:
        w = rng.integers(50, 56); h = w * u(0.58, 0.72); bw = rng.integers(16, 20)
    elif family is Family.SQUARE:
        w = rng.integers(47, 53); h = w * u(0.82, 0.95); bw = rng.integers(17, 21)
        p["corner_radius"] = u(0.15, 0.40)
    elif family is Family.ROUND:
        w = rng.integers(44, 51); h = w * u(0.88, 1.0); bw = rng.integers(19, 23)
        p.update(corner_radius=1.0, top_curve=0.0, bottom_curve=0.0, outer_lift=0.0, slant=0.0)
    elif family is Family.OVAL:
        w = rng.integers(48, 55); h = w * u(0.64, 0.78); bw = rng.integers(17, 21)
        p.update(corner_radius=u(0.80, 1.0), outer_lift=u(0.0, 0.03), slant=u(-0.02, 0.04))
    elif family is Family.AVIATOR:
        # Teardrop: flat top, deep sagging bottom dropping towards the nose, double bridge.
        w = rng.integers(55, 62); h = w * u(0.80, 0.90); bw = rng.integers(13, 17)
        p.update(corner_radius=u(0.60, 0.85), top_curve=u(-0.06, 0.04), bottom_curve=u(0.25, 0.45),
                 outer_lift=u(-0.08, 0.0), slant=u(-0.12, -0.02))
        bridge = _choice(rng, (BridgeStyle.DOUBLE, BridgeStyle.STRAIGHT if metal else BridgeStyle.SADDLE), (0.85, 0.15))
        rim = u(0.9, 1.4) if metal else u(3.0, 4.5)
    elif family is Family.CAT_EYE:
        w = rng.integers(50, 56); h = w * u(0.66, 0.80); bw = rng.integers(16, 20)
        p.update(corner_radius=u(0.30, 0.70), outer_lift=u(0.15, 0.40), slant=u(0.05, 0.20),
                 top_curve=u(0.0, 0.10))
    elif family is Family.WAYFARER:
        # Trapezoid leaning out at the top, thick acetate, slightly lifted outer corners.
        w = rng.integers(50, 56); h = w * u(0.74, 0.84); bw = rng.integers(18, 22)
        p.update(corner_radius=u(0.15, 0.35), slant=u(0.15, 0.30), top_curve=u(0.0, 0.05),
                 outer_lift=u(0.05, 0.12), bottom_curve=u(0.0, 0.08))
        rim = u(5.0, 7.0)
    elif family is Family.BROWLINE:
        # Thick upper "brow" bar (acetate), thin metal lower rim.
        w = rng.integers(49, 55); h = w * u(0.74, 0.84); bw = rng.integers(19, 23)
        p.update(corner_radius=u(0.40, 0.70), top_curve=u(-0.05, 0.05), browline_thickness_mm=u(3.0, 6.0))
        rim = u(1.0, 1.5)
        bridge = _choice(rng, (BridgeStyle.STRAIGHT, BridgeStyle.KEYHOLE), (0.6, 0.4))
    elif family is Family.GEOMETRIC:
        w = rng.integers(47, 54); h = w * u(0.80, 0.95); bw = rng.integers(18, 22)
        p.update(facets=int(rng.integers(5, 9)), corner_radius=u(0.0, 0.2), top_curve=0.0,
                 bottom_curve=0.0, outer_lift=u(0.0, 0.05), slant=u(-0.03, 0.05))
    elif family is Family.RIMLESS:
        # Drilled lenses: any soft outline, straight metal bridge, no rim.
        w = rng.integers(49, 56); h = w * u(0.58, 0.80); bw = rng.integers(17, 20)
        p.update(corner_radius=u(0.3, 1.0), rim_style=RimStyle.RIMLESS)
        rim = 0.0
        bridge = BridgeStyle.STRAIGHT
    elif family is Family.HALF_RIM:
        w = rng.integers(50, 57); h = w * u(0.56, 0.70); bw = rng.integers(16, 20)
        p.update(corner_radius=u(0.35, 0.70), rim_style=RimStyle.HALF)
        rim = u(1.5, 2.5) if metal else u(3.0, 5.0)
        bridge = BridgeStyle.STRAIGHT if metal else _choice(rng, (BridgeStyle.SADDLE, BridgeStyle.STRAIGHT), (0.6, 0.4))
    else:  # pragma: no cover - every Family member is handled above
        raise AssertionError(family)
    return FrameShape(
        family=family,
        lens_width_mm=float(w),
        lens_height_mm=_r(h, 1),
        bridge_width_mm=float(bw),
        corner_radius=_r(p["corner_radius"]),
        top_curve=_r(p["top_curve"]),
        bottom_curve=_r(p["bottom_curve"]),
        outer_lift=_r(p["outer_lift"]),
        slant=_r(p["slant"]),
        facets=int(p["facets"]),
        rim_style=p["rim_style"],
        rim_thickness_mm=_r(rim, 2),
        browline_thickness_mm=_r(p["browline_thickness_mm"], 2),
        bridge_style=bridge,
        wrap_deg=_r(p["wrap_deg"], 2),
    )


def _jitter_rgb(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 3) -> tuple[int, int, int]:
    """Small per-colourway colour drift: two 'Black' frames of different models are near-identical, not equal."""
    d = rng.integers(-amount, amount + 1, size=3).tolist()
    return tuple(min(255, max(0, c + dc)) for c, dc in zip(rgb, d))  # type: ignore[return-value]


def _draw_colourways(rng: np.random.Generator, kind: str, sun: bool, n: int) -> tuple[tuple[Colourway, str, str], ...]:
    """n colourways with distinct frame colour names (and lenses for sunglasses)."""
    paints = PALETTES[kind]
    weights = np.array([pt.weight for pt in paints])
    idx = rng.choice(len(paints), size=min(n, len(paints)), replace=False, p=weights / weights.sum())
    out = []
    for i in idx:
        pt = paints[int(i)]
        if sun:
            lp = _choice(rng, _SUN_LENSES, [lp.weight for lp in _SUN_LENSES])
        else:
            lp = _CLEAR_LENS
        opacity = _r(rng.uniform(*lp.opacity), 3)
        name = f"{pt.name} / {lp.name}" if sun else pt.name
        cw = Colourway(
            name=name,
            material=pt.material,
            primary_rgb=_jitter_rgb(rng, pt.rgb),
            secondary_rgb=_jitter_rgb(rng, pt.rgb2),
            gloss=_r(min(1.0, max(0.0, pt.gloss + rng.uniform(-0.05, 0.05))), 3),
            lens=lp.lens,
            lens_rgb=_jitter_rgb(rng, lp.rgb, 2) if lp.lens is not LensType.CLEAR else lp.rgb,
            lens_opacity=opacity,
        )
        out.append((cw, pt.name, lp.name))
    return tuple(out)


def _split_of(u: float) -> str:
    if u < P_GALLERY:
        return "gallery"
    if u < P_GALLERY + P_VAL:
        return "val"
    return "train"


def draw_model(seed: int, number: int) -> _Model:
    """Model number `number` of the catalog with `seed`: depends on nothing else (stable ids)."""
    rng = np.random.default_rng([seed, number])
    split = _split_of(float(rng.random()))  # first draw: the split, so it never depends on the shape code
    family = _FAMILIES[int(rng.choice(len(_FAMILIES), p=_FAMILY_P))]
    spec = FAMILY_SPECS[family]
    kind = _choice(rng, [k for k, _ in spec.kinds], [p for _, p in spec.kinds])
    sun = bool(rng.random() < spec.p_sun)
    shape = _draw_shape(rng, family, kind)
    n_cw = 1 + int(rng.choice(len(N_COLOURWAYS_P), p=N_COLOURWAYS_P))
    n_sizes = 1 + int(rng.choice(len(N_SIZES_P), p=N_SIZES_P))
    colourways = _draw_colourways(rng, kind, sun, n_cw)
    return _Model(number, split, shape, colourways, n_sizes)


def sized_shape(base: FrameShape, size_index: int) -> FrameShape:
    """The shape at size `size_index`: lens width + 2 mm per step, bridge + 1 mm, height scaled with the
    width (same aspect), everything else identical, so sizes of a colourway are visually identical."""
    w = base.lens_width_mm + SIZE_STEP_MM * size_index
    return FrameShape(**{
        **_shape_fields(base),
        "lens_width_mm": float(w),
        "lens_height_mm": _r(base.lens_height_mm * w / base.lens_width_mm, 1),
        "bridge_width_mm": float(base.bridge_width_mm + size_index),
    })


def _shape_fields(shape: FrameShape) -> dict[str, Any]:
    return {f: getattr(shape, f) for f in FrameShape.__dataclass_fields__}


def model_id(number: int) -> str:
    return f"{ID_PREFIX}-M{number:05d}"


def _model_skus(m: _Model) -> list[tuple[Sku, str, str]]:
    """All SKUs of a model, ordered colourway-major then size, with (frame colour, lens colour) names."""
    mid = model_id(m.number)
    family_title = m.base_shape.family.value.replace("-", " ").title().replace(" ", "-")
    out = []
    for c, (cw, frame_name, lens_name) in enumerate(m.colourways, start=1):
        for s in range(m.n_sizes):
            shape = sized_shape(m.base_shape, s)
            size = f"{shape.lens_width_mm:.0f}-{shape.bridge_width_mm:.0f}-{TEMPLE_MM[s]}"
            sku = Sku(
                sku_id=f"{mid}-C{c}-{shape.lens_width_mm:.0f}",
                model_id=mid,
                group_id=f"{mid}-C{c}",
                display_name=f"{family_title} M{m.number:05d} {cw.name} {shape.lens_width_mm:.0f}",
                size=size,
                split=m.split,
                shape=shape,
                colourway=cw,
            )
            out.append((sku, frame_name, lens_name))
    return out


# ---------------------------------------------------------------------------------------------
# The catalog

@dataclass(frozen=True)
class Catalog:
    """All SKUs of all splits, in model-number order. `colour_names[sku_id]` = (frame colour, lens colour)."""

    config: CatalogConfig
    skus: tuple[Sku, ...]
    colour_names: dict[str, tuple[str, str]] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def _index(self) -> dict[str, Sku]:
        return {s.sku_id: s for s in self.skus}

    def get(self, sku_id: str) -> Sku:
        try:
            return self._index[sku_id]
        except KeyError:
            raise GlassfinderError(f"unknown SKU id {sku_id!r} (catalog seed {self.config.seed})") from None

    def by_split(self, name: str) -> tuple[Sku, ...]:
        if name not in SPLITS:
            raise GlassfinderError(f"unknown catalog split {name!r}; expected one of {', '.join(SPLITS)}")
        return tuple(s for s in self.skus if s.split == name)

    @cached_property
    def groups(self) -> dict[str, str]:
        """sku_id -> group_id (model + colourway): SKUs of one group differ only in size."""
        return {s.sku_id: s.group_id for s in self.skus}

    def __len__(self) -> int:
        return len(self.skus)


def build_catalog(cfg: CatalogConfig = CatalogConfig()) -> Catalog:
    """Draw models in increasing number and fill each split's quota (see the module docstring)."""
    cfg.validate()
    quota = {"train": cfg.n_train, "val": cfg.n_val, "gallery": cfg.n_gallery}
    have = {s: 0 for s in SPLITS}
    skus: list[Sku] = []
    names: dict[str, tuple[str, str]] = {}
    number = 0
    while any(have[s] < quota[s] for s in SPLITS):
        m = draw_model(cfg.seed, number)
        number += 1
        need = quota[m.split] - have[m.split]
        if need <= 0:
            continue
        rows = _model_skus(m)
        if m.split != "train":
            rows = rows[:need]  # exact size: trailing SKUs of the last model are dropped
        for sku, frame_name, lens_name in rows:
            skus.append(sku)
            names[sku.sku_id] = (frame_name, lens_name)
        have[m.split] += len(rows)
    return Catalog(cfg, tuple(skus), names)


# ---------------------------------------------------------------------------------------------
# Metadata JSON

def sku_to_dict(sku: Sku, colour_names: tuple[str, str] | None = None) -> dict[str, Any]:
    """JSON-ready SKU record: ids, names and every shape/colour parameter (round-trips exactly)."""
    shape = {k: (v.value if hasattr(v, "value") else v) for k, v in _shape_fields(sku.shape).items()}
    cw = asdict(sku.colourway)
    cw["material"] = sku.colourway.material.value
    cw["lens"] = sku.colourway.lens.value
    for k in ("primary_rgb", "secondary_rgb", "lens_rgb"):
        cw[k] = list(cw[k])
    frame_name, lens_name = colour_names or (sku.colourway.name, sku.colourway.lens.value)
    return {
        "id": sku.sku_id,
        "model": sku.model_id,
        "group": sku.group_id,
        "split": sku.split,
        "family": sku.shape.family.value,
        "display_name": sku.display_name,
        "size": sku.size,
        "colour_name": sku.colourway.name,
        "frame_colour": frame_name,
        "lens_colour": lens_name,
        "material": sku.colourway.material.value,
        "lens": sku.colourway.lens.value,
        "sunglasses": sku.is_sunglasses,
        "shape": shape,
        "colourway": cw,
    }


def sku_from_dict(d: dict[str, Any]) -> Sku:
    sh = dict(d["shape"])
    sh["family"] = Family(sh["family"])
    sh["rim_style"] = RimStyle(sh["rim_style"])
    sh["bridge_style"] = BridgeStyle(sh["bridge_style"])
    cw = dict(d["colourway"])
    cw["material"] = Material(cw["material"])
    cw["lens"] = LensType(cw["lens"])
    for k in ("primary_rgb", "secondary_rgb", "lens_rgb"):
        cw[k] = tuple(int(c) for c in cw[k])
    return Sku(
        sku_id=d["id"], model_id=d["model"], group_id=d["group"], display_name=d["display_name"],
        size=d["size"], split=d["split"], shape=FrameShape(**sh), colourway=Colourway(**cw),
    )


def catalog_to_json(catalog: Catalog) -> str:
    """The metadata document: a small header, then one compact SKU record per line (greppable, diffable)."""
    head = {
        "schema_version": METADATA_SCHEMA_VERSION,
        "config": asdict(catalog.config),
        "counts": {s: sum(1 for k in catalog.skus if k.split == s) for s in SPLITS},
    }
    lines = [json.dumps(sku_to_dict(s, catalog.colour_names.get(s.sku_id)), separators=(",", ":")) for s in catalog.skus]
    return json.dumps(head)[:-1] + ', "skus": [\n' + ",\n".join(lines) + "\n]}\n"


def _check_writable(path: Path) -> None:
    if not path.parent.is_dir():
        raise GlassfinderError(f"cannot write catalog metadata to {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise GlassfinderError(f"cannot write catalog metadata to {path}: it is a folder")


def save_metadata(catalog: Catalog, path: str | Path) -> Path:
    """Write the SKU metadata JSON (deterministic bytes for a given config)."""
    path = Path(path)
    _check_writable(path)
    path.write_text(catalog_to_json(catalog), encoding="utf-8")
    return path


def write_catalog(cfg: CatalogConfig, path: str | Path) -> Catalog:
    """Build the catalog for `cfg` and write its metadata to `path` (checked before the build)."""
    path = Path(path)
    _check_writable(path)
    catalog = build_catalog(cfg)
    save_metadata(catalog, path)
    return catalog


def load_metadata(path: str | Path) -> Catalog:
    """Read a file written by save_metadata back into an identical Catalog."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GlassfinderError(f"catalog metadata file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GlassfinderError(f"catalog metadata file {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != METADATA_SCHEMA_VERSION:
        raise GlassfinderError(
            f"catalog metadata file {path} has schema_version {doc.get('schema_version') if isinstance(doc, dict) else None!r}; "
            f"this reader understands {METADATA_SCHEMA_VERSION}")
    try:
        cfg = CatalogConfig(**doc["config"])
        skus = tuple(sku_from_dict(d) for d in doc["skus"])
        names = {d["id"]: (d["frame_colour"], d["lens_colour"]) for d in doc["skus"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise GlassfinderError(f"catalog metadata file {path} is malformed: {exc!r}") from None
    return Catalog(cfg, skus, names)


# ---------------------------------------------------------------------------------------------
# Statistics

def catalog_summary(catalog: Catalog) -> dict[str, dict[str, int]]:
    """Counts per split, family, material, lens type, frame colour (SKUs) and models per split."""
    out: dict[str, Counter] = {k: Counter() for k in ("split", "models", "family", "material", "lens", "frame_colour")}
    seen_models: set[str] = set()
    for s in catalog.skus:
        out["split"][s.split] += 1
        if s.model_id not in seen_models:
            seen_models.add(s.model_id)
            out["models"][s.split] += 1
        out["family"][s.shape.family.value] += 1
        out["material"][s.colourway.material.value] += 1
        out["lens"][s.colourway.lens.value] += 1
        out["frame_colour"][catalog.colour_names.get(s.sku_id, (s.colourway.name, ""))[0]] += 1
    return {k: dict(v.most_common()) for k, v in out.items()}
