"""The embedder's size read-out: the triangle code, starting from sizeless weights, learning to
read sizes on the coloured-shapes stand-in, and choosing size_scale on validation SKUs."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from glassfinder_runtime.errors import ConfigError

from glassfinder.cli.train_cmd import _embedder_config
from glassfinder.gate_data import ShapesCropSource
from glassfinder.landmarks import one_thread
from glassfinder.models.embedder import (
    TINY_EMBEDDER,
    EmbedderConfig,
    build_embedder,
    load_embedder,
    predict_lens_width,
    save_weights,
    size_units,
    sizeless_state,
)
from glassfinder.train import (
    SIZE_SCALES,
    EmbedderData,
    SkuValData,
    TrainConfig,
    choose_size_scale,
    pick_size_scale,
    size_errors,
    soup_embedder,
    train_embedder,
    with_size_scale,
)

TINY = replace(TINY_EMBEDDER, embedding_dim=32)
# 12 bins 4 mm apart over 32..76 mm, each reaching 3 bins to either side: covers the stand-in's sizes.
TINY_SIZED = replace(TINY, size_bins=12, size_min_mm=32.0, size_step_mm=4.0, size_radius_bins=3, size_scale=1.0)
NORM_SPREAD = 0.1  # squared norm of the code may vary this much (relative) across widths inside the bins


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models train fastest on one thread (and do not fight the other test workers)."""
    with one_thread():
        yield


def _code(model, widths_mm) -> np.ndarray:
    return model.size_triangles(size_units(torch.tensor(widths_mm))[:, None]).detach().numpy()


def test_triangle_code_peaks_at_the_nearest_bin_and_its_overlap_falls_with_the_size_gap():
    model = build_embedder(TINY_SIZED).eval()
    centres = TINY_SIZED.size_centres_mm()
    widths = np.linspace(centres[3], centres[-4], 41)  # away from the edges, where triangles are cut off
    code = _code(model, widths)
    assert code.shape == (41, TINY_SIZED.size_bins) and (code >= 0).all()
    assert (np.abs(centres[code.argmax(1)] - widths) <= TINY_SIZED.size_step_mm / 2 + 1e-6).all()
    norms = (code ** 2).sum(1)
    assert norms.max() / norms.min() < 1 + NORM_SPREAD
    gaps = np.array([0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 24.0])
    overlap = (_code(model, [44.0]) @ _code(model, 44.0 + gaps).T)[0]
    assert (np.diff(overlap) < 0).all() and overlap[-1] == 0.0  # 24 mm = two radii: no overlap at all


def test_the_embedding_keeps_its_length_and_appends_the_code():
    model = build_embedder(TINY_SIZED).eval()
    x = torch.randn(3, 3, TINY.input_height, TINY.input_width)
    z = model.forward_features(x)
    appearance, size = model.forward_parts(x)
    assert z.shape == (3, TINY.embedding_dim) and appearance.shape == (3, TINY_SIZED.appearance_dim)
    assert torch.equal(z[:, :TINY_SIZED.appearance_dim], appearance)
    assert torch.equal(z[:, TINY_SIZED.appearance_dim:], TINY_SIZED.size_scale * model.size_triangles(size))


def test_sizeless_weights_start_a_sized_model_with_the_same_appearance():
    sizeless = build_embedder(TINY).eval()
    sized = build_embedder(TINY_SIZED)
    missing = sized.load_state_dict(sizeless_state(sizeless.state_dict(), TINY_SIZED), strict=False).missing_keys
    assert missing and all(k.startswith("size_") for k in missing)
    sized.eval()
    x = torch.randn(2, 3, TINY.input_height, TINY.input_width)
    torch.testing.assert_close(sized.forward_parts(x)[0], sizeless.forward_features(x)[:, :TINY_SIZED.appearance_dim])


def _sized_cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(out_dir=str(tmp_path), steps=60, classes_per_batch=6, samples_per_class=3, warmup_steps=3,
                log_every=10, eval_every=60, checkpoint_every=60, val_classes=8, lr=3e-3)
    return TrainConfig(**{**base, **kw})


def test_training_learns_to_read_the_size_and_chooses_size_scale_on_val(tmp_path):
    train, val = ShapesCropSource(12, seed=0), ShapesCropSource(8, seed=99)
    data = EmbedderData(train, val, val, val_skus=SkuValData(val, val, groups=np.arange(8, dtype=np.int64)))
    # Fresh renders of the training classes: 12 shapes are too few to learn sizes that carry over to
    # other shapes, but the drawn size varies within each class too.
    probe, true_mm = train.render_sized(np.arange(12).repeat(6), np.random.default_rng(5))
    before = size_errors(predict_lens_width(build_embedder(TINY_SIZED), probe), true_mm)["size_mae_mm"]
    res = train_embedder(_sized_cfg(tmp_path, steps=120, eval_every=120, checkpoint_every=120, size_loss_weight=4.0),
                         data, TINY_SIZED)
    model, side = load_embedder(tmp_path / "embedder.safetensors")
    after = size_errors(predict_lens_width(model, probe), true_mm)["size_mae_mm"]
    spread = float(np.abs(true_mm - true_mm.mean()).mean())  # error of always guessing the mean
    assert after < 0.6 * spread and after < 0.6 * before
    assert "size_mae_mm" in res.history[-1] and "jittered_size_mae_mm" not in res.history[-1]
    choice = side["size_scale_choice"]
    assert [r["size_scale"] for r in choice["table"]] == list(SIZE_SCALES)
    assert model.cfg.size_scale == choice["chosen"] == pick_size_scale(choice["table"])
    # One SKU per group here, so SKU and group recall agree.
    assert all(r["sku_recall@1"] == r["group_recall@1"] for r in choice["table"])


def test_choose_size_scale_prefers_the_size_when_only_the_size_tells_skus_apart():
    """Two SKUs per group with identical appearance: at scale 0 the pick within a group is a coin
    toss, with a working size code it is right."""

    class _Twins:
        num_classes = 8  # SKU i: group i // 2, size 40 mm or 60 mm

        def render(self, labels, rng):
            return np.stack([np.full((TINY.input_height, TINY.input_width, 3), 16 * (c // 2) + 8 * (c % 2), np.uint8)
                             for c in labels])

    class _Model:  # appearance = the group; size = the SKU's width (read off the pixel value)
        cfg = replace(TINY_SIZED, size_scale=1.0)
        sized = build_embedder(cfg)

        def forward_parts(self, x):
            level = torch.round((x[:, 0, 0, 0] * 0.25 + 0.5) * 255)
            group = (level // 16).long()
            appearance = torch.nn.functional.one_hot(group, self.cfg.appearance_dim).float() * 5
            width = torch.where(level % 16 == 8, 60.0, 40.0)
            return appearance, size_units(width)[:, None]

        def size_triangles(self, size):
            return self.sized.size_triangles(size)

        training = False

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def parameters(self):
            return iter([torch.zeros(1)])

    twins = _Twins()
    scale, table = choose_size_scale(_Model(), SkuValData(twins, twins, np.arange(8) // 2), seed=0)
    by_scale = {r["size_scale"]: r for r in table}
    assert by_scale[0.0]["group_recall@1"] == 1.0 and by_scale[0.0]["sku_recall@1"] == 0.5
    assert scale > 0 and by_scale[scale]["sku_recall@1"] == 1.0


def test_with_size_scale_zero_ignores_the_size():
    a = np.array([[3.0, 4.0]], np.float32)
    t = np.array([[1.0, 0.0]], np.float32)
    np.testing.assert_allclose(with_size_scale(a, t, 0.0), [[0.6, 0.8, 0.0, 0.0]])
    np.testing.assert_allclose(np.linalg.norm(with_size_scale(a, t, 2.0)), 1.0, rtol=1e-6)


def test_a_sized_model_needs_sources_that_report_sizes(tmp_path):
    class _NoSizes:
        num_classes = 4

        def render(self, labels, rng):
            return np.zeros((len(labels), TINY.input_height, TINY.input_width, 3), np.uint8)

    with pytest.raises(ConfigError, match="report frame sizes"):
        train_embedder(_sized_cfg(tmp_path), EmbedderData(_NoSizes(), _NoSizes(), _NoSizes()), TINY_SIZED)


def test_cli_model_config_follows_init_and_refuses_to_change_a_size_readout(tmp_path):
    path = tmp_path / "e.safetensors"
    save_weights(build_embedder(TINY_SIZED), TINY_SIZED, path, {})
    assert _embedder_config(str(path), None) == TINY_SIZED
    with pytest.raises(ConfigError, match="cannot change it"):
        _embedder_config(str(path), 6)
    assert _embedder_config(None, 8) == replace(EmbedderConfig(), size_bins=8)


def test_resume_takes_the_checkpoint_model_and_refuses_another(tmp_path):
    data = EmbedderData(ShapesCropSource(6, seed=0), ShapesCropSource(4, seed=9), ShapesCropSource(4, seed=9))
    train_embedder(_sized_cfg(tmp_path, steps=2, eval_every=2, checkpoint_every=2, val_classes=4), data, TINY_SIZED)
    resumed = _sized_cfg(tmp_path, steps=2, eval_every=2, checkpoint_every=2, val_classes=4, resume=True)
    assert _embedder_config(None, None, resumed) == TINY_SIZED
    with pytest.raises(ConfigError, match="different model config"):
        train_embedder(resumed, data, TINY)


def test_pick_size_scale_weighs_recall_at_1_and_at_10_and_prefers_the_smaller_weight_on_ties():
    rows = [(0.0, 0.40, 0.97), (1.0, 0.45, 0.97), (2.0, 0.47, 0.96), (4.0, 0.49, 0.93), (5.0, 0.44, 0.98)]
    table = [{"size_scale": s, "sku_recall@1": r1, "sku_recall@10": r10} for s, r1, r10 in rows]
    assert pick_size_scale(table) == 2.0  # 4.0 has the best recall@1 but loses more at 10
    assert pick_size_scale([*table, {"size_scale": 3.0, "sku_recall@1": 0.47, "sku_recall@10": 0.96}]) == 2.0


def test_soup_averages_the_weights_and_chooses_size_scale_again(tmp_path):
    torch.manual_seed(0)
    a, b = build_embedder(TINY_SIZED), build_embedder(replace(TINY_SIZED, size_scale=4.0))
    save_weights(a, a.cfg, tmp_path / "a.safetensors", {})
    save_weights(b, b.cfg, tmp_path / "b.safetensors", {})
    val = ShapesCropSource(8, seed=99)
    path = soup_embedder([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")], str(tmp_path / "soup"),
                         SkuValData(val, val, groups=np.arange(8, dtype=np.int64)), seed=0)
    model, side = load_embedder(path)
    sa, sb, ss = a.state_dict(), b.state_dict(), model.state_dict()
    assert all(torch.allclose(ss[k], (sa[k] + sb[k]) / 2) for k in ss if ss[k].is_floating_point())
    assert model.cfg.size_scale == side["size_scale_choice"]["chosen"]
    assert side["validation"]["size_scale"] == model.cfg.size_scale and "sku_recall@1" in side["validation"]
    assert side["soup"]["of"] == [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    other = build_embedder(replace(TINY_SIZED, size_bins=8))
    save_weights(other, other.cfg, tmp_path / "c.safetensors", {})
    with pytest.raises(ConfigError, match="different architecture"):
        soup_embedder([str(tmp_path / "a.safetensors"), str(tmp_path / "c.safetensors")], str(tmp_path / "bad"))
    with pytest.raises(ConfigError, match="at least two"):
        soup_embedder([str(tmp_path / "a.safetensors")], str(tmp_path / "bad"))
