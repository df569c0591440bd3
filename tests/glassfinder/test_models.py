"""Embedder and gate: shapes, L2-norm, export split, size budget, quantization-friendly layers,
deterministic build, config and weights round trips."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from glassfinder_runtime.errors import ConfigError
from torch import nn

from glassfinder.models.embedder import (
    EmbedderConfig,
    build_embedder,
    count_parameters,
    embed_images,
    images_to_tensor,
    load_embedder,
    save_weights,
)
from glassfinder.models.gate import (
    GATE_CLASSES,
    GateConfig,
    build_gate,
    gate_scores,
    glasses_probability,
    load_gate,
)

NORM_ATOL = 1e-5  # float32 L2-norm of a 128-d vector
EMBEDDER_MAX_PARAMS = 1_000_000  # <= ~1 MB as per-channel int8
GATE_MAX_PARAMS = 100_000
QUANT_FRIENDLY = (nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU6, nn.Linear, nn.AdaptiveAvgPool2d)


def _x(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 128, generator=torch.Generator().manual_seed(seed))


def test_embedder_output_is_128d_and_unit_norm():
    m = build_embedder().eval()
    with torch.no_grad():
        z = m(_x())
        raw = m(_x(), normalize=False)
    assert z.shape == (3, 128)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=NORM_ATOL)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3), atol=1e-2)  # the L2-norm really is separate
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=1), z, atol=NORM_ATOL)


def test_export_module_is_the_graph_without_l2_norm():
    m = build_embedder().eval()
    with torch.no_grad():
        assert torch.equal(m.export_module()(_x()), m.forward_features(_x()))


def test_embedder_size_budget_and_layers():
    m = build_embedder()
    n = count_parameters(m)
    assert 100_000 < n <= EMBEDDER_MAX_PARAMS
    kinds = {type(x) for x in m.modules() if not list(x.children())}
    assert kinds <= set(QUANT_FRIENDLY), kinds - set(QUANT_FRIENDLY)  # no hard-swish, SiLU, GeM pow...
    # Every conv is followed by a BatchNorm it can be folded into.
    seqs = [s for s in m.modules() if isinstance(s, nn.Sequential)]
    for s in seqs:
        mods = list(s.children())
        for a, b in zip(mods, mods[1:]):
            if isinstance(a, nn.Conv2d):
                assert isinstance(b, nn.BatchNorm2d)


def test_avg_pooling_variant_and_bad_config():
    m = build_embedder(EmbedderConfig(pooling="avg")).eval()
    with torch.no_grad():
        assert m(_x(2)).shape == (2, 128)
    with pytest.raises(ConfigError):
        EmbedderConfig(pooling="gem")
    with pytest.raises(ConfigError):
        EmbedderConfig(layout="NHWC")
    with pytest.raises(ValueError):
        m(torch.zeros(1, 3, 64, 64))


def test_build_is_deterministic():
    a, b = build_embedder().state_dict(), build_embedder().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(123)  # global RNG state must not matter
    c = build_gate().state_dict()
    torch.manual_seed(7)
    d = build_gate().state_dict()
    assert all(torch.equal(c[k], d[k]) for k in c)


def test_config_round_trip_and_contract():
    cfg = EmbedderConfig(last_channels=256)
    again = EmbedderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ConfigError):
        EmbedderConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    c = cfg.input_contract()
    assert c["shape"] == [1, 3, 64, 128] and c["layout"] == "NCHW" and c["channel_order"] == "RGB"
    assert c["mean"] == list(cfg.mean) and c["std"] == list(cfg.std)
    assert GateConfig.from_dict(json.loads(json.dumps(GateConfig().to_dict()))) == GateConfig()


def test_images_to_tensor_applies_the_contract():
    img = np.zeros((1, 64, 128, 3), np.uint8)
    img[0, 0, 0] = (255, 0, 128)
    x = images_to_tensor(img, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x.shape == (1, 3, 64, 128)
    expected = [(1.0 - 0.5) / 0.25, (0.0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25]
    assert np.allclose(x[0, :, 0, 0].numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError):
        images_to_tensor(img.astype(np.float32), (0.5,) * 3, (0.25,) * 3)


def test_gate_shapes_and_probability():
    g = build_gate().eval()
    assert count_parameters(g) <= GATE_MAX_PARAMS
    with torch.no_grad():
        logits = g(_x(4))
    assert logits.shape == (4, len(GATE_CLASSES))
    p = glasses_probability(logits)
    assert p.shape == (4,) and torch.all((p >= 0) & (p <= 1))
    assert torch.allclose(p, 1 - torch.softmax(logits, 1)[:, 2])
    with pytest.raises(ConfigError):
        GateConfig(classes=("none", "eyeglasses", "sunglasses"))


def test_weights_round_trip(tmp_path):
    m = build_embedder(EmbedderConfig(last_channels=64, embedding_dim=32))
    with torch.no_grad():  # non-default BN statistics must survive too
        m.head_bn.running_mean.add_(0.5)
    save_weights(m, m.cfg, tmp_path / "e.safetensors", {"train": {"steps": 1}})
    loaded, side = load_embedder(tmp_path / "e.safetensors")
    assert side["train"]["steps"] == 1 and loaded.cfg == m.cfg
    imgs = np.random.default_rng(0).integers(0, 256, (5, 64, 128, 3), dtype=np.uint8)
    assert np.array_equal(embed_images(m.eval(), imgs), embed_images(loaded, imgs))

    g = build_gate()
    save_weights(g, g.cfg, tmp_path / "g.safetensors", {"threshold": 0.7})
    lg, side = load_gate(tmp_path / "g.safetensors")
    assert side["threshold"] == 0.7
    assert np.array_equal(gate_scores(g, imgs), gate_scores(lg, imgs))
    save_weights(g, g.cfg, tmp_path / "nothr.safetensors", {})
    with pytest.raises(ConfigError):
        load_gate(tmp_path / "nothr.safetensors")
    with pytest.raises(ConfigError):
        load_embedder(tmp_path / "missing.safetensors")


def test_weights_that_do_not_fit_their_config_are_a_config_error_naming_the_file(tmp_path):
    small, big = EmbedderConfig(last_channels=64, embedding_dim=32), EmbedderConfig()
    save_weights(build_embedder(small), big, tmp_path / "e.safetensors", {})  # state of one, config of another
    with pytest.raises(ConfigError, match=r"e\.safetensors: not embedder weights"):
        load_embedder(tmp_path / "e.safetensors")
    g = build_gate()
    save_weights(g, replace(g.cfg, stem_channels=2 * g.cfg.stem_channels), tmp_path / "g.safetensors",
                 {"threshold": 0.5})
    with pytest.raises(ConfigError, match=r"g\.safetensors: not gate weights"):
        load_gate(tmp_path / "g.safetensors")


def test_committed_default_weights_match_their_config():
    """The committed weights load into the default architecture and their sidecars say how they were made."""
    emb, side = load_embedder()
    # The default architecture plus the size read-out and the mirror average (EmbedderConfig's
    # defaults stay off, so older sidecars without those fields still load as what they are).
    default = EmbedderConfig()
    assert replace(emb.cfg, size_bins=0, size_scale=default.size_scale, flip_average=False) == default
    assert emb.cfg.size_bins > 0 and side["size_scale_choice"]["chosen"] == emb.cfg.size_scale
    assert emb.cfg.flip_average and side["stages"][-1]["flip_average"]
    assert side["input"] == emb.cfg.input_contract()
    assert side["command"].startswith(("glassfinder train embedder", "OMP_NUM_THREADS=1"))
    # Every stage trained some steps or averaged earlier runs (train soup).
    assert side["stages"] and all(st.get("steps", 0) > 0 or st.get("soup_of") for st in side["stages"])
    assert all(0.0 <= v <= 1.0 for k, v in side["validation"].items() if "recall@" in k)
    gate, gside = load_gate()
    assert gate.cfg == GateConfig() and gside["input"] == gate.cfg.input_contract()
    assert 0.0 < gside["threshold"] < 1.0 and gside["validation"]["fpr"] <= 0.01
    imgs = np.random.default_rng(0).integers(0, 256, (2, 64, 128, 3), dtype=np.uint8)
    assert embed_images(emb, imgs).shape == (2, 128) and gate_scores(gate, imgs).shape == (2, 3)
