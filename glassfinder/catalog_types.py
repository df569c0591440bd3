"""The catalog's data contract: what a SKU is. The renderer reads only these fields.

All lengths are millimetres on the frame front, as a real catalog lists them
("52-18-140": lens width 52, bridge 18, temple 140). Colours are sRGB 0-255 triples.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Family(str, Enum):
    RECTANGLE = "rectangle"
    SQUARE = "square"
    ROUND = "round"
    OVAL = "oval"
    AVIATOR = "aviator"
    CAT_EYE = "cat-eye"
    WAYFARER = "wayfarer"
    BROWLINE = "browline"
    GEOMETRIC = "geometric"
    RIMLESS = "rimless"
    HALF_RIM = "half-rim"


class RimStyle(str, Enum):
    FULL = "full"  # closed rim around each lens
    HALF = "half"  # rim on the top only, lens edge below (nylon cord)
    RIMLESS = "rimless"  # bare lens edge, metal bridge and hinges only


class BridgeStyle(str, Enum):
    SADDLE = "saddle"  # acetate bridge resting on the nose, one arc
    KEYHOLE = "keyhole"  # keyhole-shaped arc
    STRAIGHT = "straight"  # thin straight metal bar
    DOUBLE = "double"  # aviator double bridge: a second bar above


class Material(str, Enum):
    ACETATE = "acetate"  # solid colour plastic, glossy
    TORTOISE = "tortoise"  # mottled brown/amber pattern
    METAL = "metal"  # thin wire, specular sheen
    TWO_TONE = "two-tone"  # top of the rim in the primary colour, bottom in the secondary


class LensType(str, Enum):
    CLEAR = "clear"
    TINTED = "tinted"
    GRADIENT = "gradient"  # tint fading from top to bottom
    MIRROR = "mirror"


@dataclass(frozen=True)
class FrameShape:
    """Geometry of the frame front; identical for every colourway of a model."""

    family: Family
    lens_width_mm: float  # horizontal lens size (the "52" of 52-18)
    lens_height_mm: float  # vertical lens size
    bridge_width_mm: float  # gap between the lenses (the "18" of 52-18)
    corner_radius: float  # 0 = sharp corners, 1 = fully rounded (ellipse-like)
    top_curve: float  # -1..1: bows the top edge (positive = arched up, e.g. aviator/browline flat top < 0)
    bottom_curve: float  # -1..1: bows the bottom edge (positive = sagging down, e.g. aviator teardrop)
    outer_lift: float  # -1..1: raises the outer upper corner (cat-eye > 0), in units of lens height
    slant: float  # -1..1: trapezoid lean, wider at top (> 0, wayfarer) or bottom (< 0)
    facets: int  # 0 = smooth outline; 5..8 = geometric polygon with that many sides
    rim_style: RimStyle
    rim_thickness_mm: float  # visible rim width on the front (0 for rimless)
    browline_thickness_mm: float  # extra thickness on the top bar (browline); 0 otherwise
    bridge_style: BridgeStyle
    wrap_deg: float  # face-form wrap of each lens towards the temples, degrees


@dataclass(frozen=True)
class Colourway:
    """Colours of one colourway of a model."""

    name: str  # display colour name, e.g. "Matte Black", "Havana Tortoise"
    material: Material
    primary_rgb: tuple[int, int, int]  # main frame colour
    secondary_rgb: tuple[int, int, int]  # tortoise spots / two-tone bottom / metal highlight
    gloss: float  # 0 = matte, 1 = high gloss (specular strength)
    lens: LensType
    lens_rgb: tuple[int, int, int]  # lens tint colour (ignored for CLEAR)
    lens_opacity: float  # 0 = fully clear, 1 = opaque; sunglasses ~0.7-0.9, clear lenses ~0.05


@dataclass(frozen=True)
class Sku:
    """One orderable item: a model in one colourway and one size."""

    sku_id: str  # stable id, e.g. "GF-M00421-C2-52"
    model_id: str  # e.g. "GF-M00421": one frame shape, all colourways and sizes
    group_id: str  # model + colourway: SKUs of one group differ only in size (visually identical)
    display_name: str  # e.g. "Aviator M00421 Gold / Green 58"
    size: str  # e.g. "52-18-140"
    split: str  # "train", "val" or "gallery" (disjoint by model, so no shape leaks across splits)
    shape: FrameShape  # size-specific dimensions already applied
    colourway: Colourway

    @property
    def is_sunglasses(self) -> bool:
        """Dark lenses that hide the eyes; the gate calls these 'sunglasses'."""
        return self.colourway.lens_opacity >= 0.5
