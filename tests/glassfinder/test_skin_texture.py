"""SkinTexture: texture on the training faces, so the gate cannot read "textured" as "glasses"; and the
gate's training defaults (texture, black-and-white share)."""
from __future__ import annotations

import numpy as np
import pytest

from glassfinder.catalog import build_catalog
from glassfinder.faces import make_face
from glassfinder.renderer import FaceCropCache, SkinTexture, render_crop_batch, skin_texture_field
from glassfinder.cli import build_parser
from glassfinder.cli.train_cmd import GATE_GREYSCALE, GATE_SKIN_TEXTURE, _config
from glassfinder.train import TrainConfig, _train_skin
from glassfinder_runtime.errors import ConfigError

N_FIELDS = 400
STRENGTH_TOL = 0.01  # a part's std is drawn uniform in [0, bound]: the mean of N_FIELDS draws is near bound/2
MEAN_TOL = 0.005  # |mean - 1| of the mean field over N_FIELDS draws
FRAME_STD_SLACK = 2.0  # grey levels: anti-aliasing and shading of the frame itself


@pytest.fixture(scope="module")
def cache() -> FaceCropCache:
    return FaceCropCache([make_face(i, "val") for i in range(2)])


def _high_pass_energy(images: np.ndarray) -> float:
    """Mean squared difference between horizontally neighbouring pixels (fine texture)."""
    x = images.astype(np.float64)
    return float(np.mean((x[:, :, 1:] - x[:, :, :-1]) ** 2))


@pytest.mark.parametrize("tex", [SkinTexture(fine=0.1, shading=0.0), SkinTexture(fine=0.0, shading=0.1)])
def test_field_statistics_follow_the_config(tex):
    rng = np.random.default_rng(0)
    fields = np.stack([skin_texture_field(rng, 64, 128, tex) for _ in range(N_FIELDS)])
    assert fields.shape == (N_FIELDS, 64, 128) and fields.dtype == np.float32
    assert abs(fields.mean() - 1.0) < MEAN_TOL
    assert fields.std(axis=(1, 2)).mean() == pytest.approx(0.05, abs=STRENGTH_TOL)
    assert fields.std(axis=(1, 2)).max() <= 0.1 + STRENGTH_TOL


def test_fine_noise_varies_faster_than_shading():
    """Neighbouring pixels of the fine part differ more than those of the broad shading."""
    rng = np.random.default_rng(3)
    fine = np.stack([skin_texture_field(rng, 64, 128, SkinTexture(shading=0.0)) for _ in range(50)])
    broad = np.stack([skin_texture_field(rng, 64, 128, SkinTexture(fine=0.0)) for _ in range(50)])

    def roughness(f):  # neighbour difference relative to the field's spread
        return float(np.mean((f[:, :, 1:] - f[:, :, :-1]) ** 2) / np.mean((f - 1.0) ** 2))

    assert roughness(fine) > 5 * roughness(broad)


def test_field_is_deterministic_from_the_seed():
    a = skin_texture_field(np.random.default_rng(5), 64, 128, SkinTexture())
    b = skin_texture_field(np.random.default_rng(5), 64, 128, SkinTexture())
    c = skin_texture_field(np.random.default_rng(6), 64, 128, SkinTexture())
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_textured_faces_carry_more_fine_detail(cache):
    """Same faces, same fit: only the texture differs, and it adds fine (pixel-to-pixel) contrast."""
    n = 16
    plain = render_crop_batch([None] * n, cache, np.random.default_rng(1), face_index=[0] * n, flip=False)
    rough = render_crop_batch([None] * n, cache, np.random.default_rng(1), face_index=[0] * n, flip=False,
                              skin=SkinTexture())
    assert (plain == plain[0]).all()  # no texture: every render of one bare face is the same
    assert _high_pass_energy(rough) > 1.5 * _high_pass_energy(plain)


def test_glasses_are_drawn_over_the_texture(cache):
    """The texture is laid on the face before the glasses: the opaque frame stays as smooth as without
    it while the skin around it turns rough. (The texture's draws come first, so the renders' fits
    differ slightly: each render is measured with its own masks.)"""
    sku = next(s for s in build_catalog().by_split("val") if s.is_sunglasses)
    n = 8

    def spread(skin):
        imgs, masks = render_crop_batch([sku] * n, cache, np.random.default_rng(2), face_index=[0] * n, flip=False,
                                        return_masks=True, skin=skin)
        frame_std, skin_energy = [], []
        for img, m in zip(imgs, masks):
            frame = m.frame > 0.99
            bare = (m.frame + m.lens_right + m.lens_left + m.temples) < 0.01
            lum = img.astype(np.float64).mean(-1)
            both = bare[:, 1:] & bare[:, :-1]  # neighbouring pixel pairs that are both off the glasses
            assert frame.sum() > 50 and both.sum() > 500
            frame_std.append(lum[frame].std())
            skin_energy.append(np.mean((lum[:, 1:] - lum[:, :-1])[both] ** 2))
        return float(np.mean(frame_std)), float(np.mean(skin_energy))

    frame_plain, skin_plain = spread(None)
    frame_rough, skin_rough = spread(SkinTexture(fine=0.3, shading=0.0))
    assert skin_rough > 2.0 * skin_plain
    assert frame_rough < 1.5 * frame_plain + FRAME_STD_SLACK


def test_train_config_skin_texture_range_and_defaults():
    assert TrainConfig().skin_texture == 0.0 and _train_skin(TrainConfig()) is None
    assert _train_skin(TrainConfig(skin_texture=0.5)) == SkinTexture(fine=0.06, shading=0.125)
    with pytest.raises(ConfigError, match="skin_texture"):
        TrainConfig(skin_texture=2.5)
    parser = build_parser()
    gate = parser.parse_args(["train", "gate"])
    embedder = parser.parse_args(["train", "embedder"])
    assert _config(gate).skin_texture == GATE_SKIN_TEXTURE == 1.0 and _config(embedder).skin_texture == 0.0
    assert _config(gate).greyscale == GATE_GREYSCALE == 0.1 and _config(embedder).greyscale == 0.0
    with pytest.raises(ConfigError, match="greyscale"):
        TrainConfig(greyscale=1.2)
