"""EmbedderConfig.flip_average: the embedding of a crop and its mirror image, averaged in eval mode."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from glassfinder.gate_data import ShapesCropSource
from glassfinder.models.embedder import TINY_EMBEDDER, build_embedder, load_embedder, save_weights
from glassfinder.train import SkuValData, soup_embedder

TINY_SIZED = replace(TINY_EMBEDDER, embedding_dim=32, size_bins=12, size_min_mm=32.0, size_step_mm=4.0)
TINY_FLIP = replace(TINY_SIZED, flip_average=True)
ATOL = 1e-5  # float32 round-off between a batch of 2n and two batches of n


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_embedder(cfg)
    # Non-trivial BN statistics, so that eval mode is not the identity at the head.
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, cfg.input_height, cfg.input_width))
    return model.eval()


def test_eval_output_is_the_mean_over_the_crop_and_its_mirror():
    flip = _model(TINY_FLIP)
    plain = build_embedder(TINY_SIZED).eval()
    plain.load_state_dict(flip.state_dict())
    x = torch.randn(3, 3, 64, 128)
    with torch.no_grad():
        a, s = flip.forward_parts(x)
        a1, s1 = plain.forward_parts(x)
        a2, s2 = plain.forward_parts(torch.flip(x, dims=[3]))
    torch.testing.assert_close(a, (a1 + a2) / 2, atol=ATOL, rtol=0)
    torch.testing.assert_close(s, (s1 + s2) / 2, atol=ATOL, rtol=0)
    assert (a1 - a2).abs().max() > 0.05 * a1.abs().max()  # the plain model is not mirror-symmetric


def test_flip_averaged_embedding_is_mirror_invariant_and_training_sees_single_crops():
    flip = _model(TINY_FLIP)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(flip(x), flip(torch.flip(x, dims=[3])), atol=ATOL, rtol=0)
        flip.train()
        a_train, _ = flip.forward_parts(x)
        plain = build_embedder(TINY_SIZED).train()
        plain.load_state_dict(flip.state_dict())
        torch.testing.assert_close(a_train, plain.forward_parts(x)[0])


def test_soup_sets_flip_average_and_keeps_it_by_default(tmp_path):
    a, b = _model(TINY_SIZED, 0), _model(TINY_SIZED, 1)
    for name, m in (("a", a), ("b", b)):
        save_weights(m, m.cfg, tmp_path / f"{name}.safetensors", {})
    val = ShapesCropSource(8, seed=99)
    sv = SkuValData(val, val, groups=np.arange(8, dtype=np.int64))
    files = [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    on, _ = load_embedder(soup_embedder(files, str(tmp_path / "on"), sv, seed=0, flip_average=True))
    kept, _ = load_embedder(soup_embedder(files, str(tmp_path / "kept"), sv, seed=0))
    assert on.cfg.flip_average and not kept.cfg.flip_average
    # Runs of one start differing only in flip_average still average (it is not in the weights).
    save_weights(on, on.cfg, tmp_path / "c.safetensors", {})
    mixed, _ = load_embedder(soup_embedder([files[0], str(tmp_path / "c.safetensors")], str(tmp_path / "mixed"), sv,
                                           seed=0))
    assert not mixed.cfg.flip_average
