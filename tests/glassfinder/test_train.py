"""Training loop on the coloured-shapes stand-in: the loss goes down, a resumed run continues bit
for bit, the gate threshold rule picks the right value, and the small pure pieces are right."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from glassfinder_runtime.errors import ConfigError

from glassfinder.gate_data import (
    NONE,
    ShapesCropSource,
    random_objects,
    random_textures,
    shapes_gate_source,
)
from glassfinder.landmarks import one_thread
from glassfinder.models.embedder import TINY_EMBEDDER, EmbedderConfig
from glassfinder.models.gate import GateConfig, load_gate
from glassfinder.train import (
    EmbedderData,
    GateData,
    TrainConfig,
    choose_threshold,
    enroll,
    gate_metrics,
    learning_rate,
    pk_labels,
    rates,
    recall_at_k,
    train_embedder,
    train_gate,
)

# A tiny embedder so a training step takes milliseconds.
TINY = TINY_EMBEDDER
TINY_GATE = GateConfig(stem_channels=8, blocks=((16, 2), (24, 2), (32, 2)))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models train fastest on one thread (and do not fight the other test workers)."""
    with one_thread():
        yield


def _data(n_train: int = 12, n_val: int = 8) -> EmbedderData:
    val = ShapesCropSource(n_val, seed=99)
    return EmbedderData(ShapesCropSource(n_train, seed=0), val, val)


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(out_dir=str(tmp_path), steps=40, classes_per_batch=6, samples_per_class=3, warmup_steps=3,
                log_every=1, eval_every=40, checkpoint_every=20, val_classes=8, val_size=120, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def _losses(out) -> list[float]:
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


@pytest.mark.parametrize("loss", ["multi-similarity", "subcenter-arcface"])
def test_embedder_loss_decreases_and_weights_are_written(tmp_path, loss):
    res = train_embedder(_cfg(tmp_path, loss=loss), _data(), TINY)
    losses = _losses(tmp_path)
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    side = json.loads((tmp_path / "embedder.json").read_text())
    assert EmbedderConfig.from_dict(side["config"]) == TINY and side["train"]["loss"] == loss
    assert res.history and res.history[-1]["step"] == 40 and 0.0 <= res.history[-1]["recall@1"] <= 1.0
    assert (tmp_path / "checkpoint.safetensors").is_file()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("loss", ["subcenter-arcface", "multi-similarity"])
def test_resume_continues_bit_for_bit(tmp_path, loss):
    """A run stopped after its step-5 checkpoint and resumed must end with exactly the weights
    (model, ArcFace centres, BN statistics) of an uninterrupted run."""
    kw = dict(steps=8, checkpoint_every=5, eval_every=100, loss=loss)
    straight = tmp_path / "straight"
    train_embedder(_cfg(straight, **kw), _data(), TINY)

    broken = tmp_path / "broken"

    def crash(step, module):
        if step == 7:  # after the step-5 checkpoint, before the end
            raise _Stop

    with pytest.raises(_Stop):
        train_embedder(_cfg(broken, **kw), _data(), TINY, on_step=crash)
    seen = []
    train_embedder(_cfg(broken, resume=True, **kw), _data(), TINY, on_step=lambda s, m: seen.append(s))
    assert seen == [6, 7, 8]  # resumed from step 5

    from glassfinder.checkpoint import load_checkpoint

    a, _, meta_a = load_checkpoint(straight / "checkpoint.safetensors")
    b, _, meta_b = load_checkpoint(broken / "checkpoint.safetensors")
    assert meta_a["step"] == meta_b["step"] == 8
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("loss.") for k in a) == (loss == "subcenter-arcface")


def test_resume_refuses_a_different_run(tmp_path):
    train_embedder(_cfg(tmp_path, steps=2, checkpoint_every=1, eval_every=100), _data(), TINY)
    with pytest.raises(ConfigError, match="different run"):
        train_embedder(_cfg(tmp_path, steps=2, resume=True, loss="subcenter-arcface"), _data(), TINY)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train_embedder(_cfg(tmp_path / "empty", resume=True), _data(), TINY)


def test_gate_trains_and_stores_a_threshold(tmp_path):
    src = shapes_gate_source()
    res = train_gate(_cfg(tmp_path, steps=40, eval_every=40), GateData(src, src), TINY_GATE)
    losses = _losses(tmp_path)
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    model, side = load_gate(res.weights)
    final = res.history[-1]
    assert side["threshold"] == final["threshold"] and final["fpr"] <= 0.01
    assert model.cfg == TINY_GATE


def test_choose_threshold_on_crafted_scores():
    neg = np.arange(100, dtype=np.float32) / 100  # 0.00 .. 0.99
    t = choose_threshold(neg, 0.01)  # one negative (0.99) may pass, 0.98 must not
    assert 0.98 < t <= 0.99
    assert rates(np.array([0.985, 0.99, 0.5], np.float32), neg, t) == {"tpr": 2 / 3, "fpr": 0.01}
    t0 = choose_threshold(neg, 0.0)  # nothing may pass: just above the highest negative
    assert t0 > 0.99 and rates(neg, neg, t0)["fpr"] == 0.0
    ties = np.array([0.9, 0.9, 0.9, 0.1], np.float32)
    assert rates(ties, ties, choose_threshold(ties, 0.5))["fpr"] <= 0.5  # ties cannot sneak past
    assert choose_threshold(neg, 1.0) == 0.0
    with pytest.raises(ConfigError):
        choose_threshold(np.zeros(0, np.float32), 0.01)


def test_gate_metrics_counts():
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4], [0.0, 0.1, 0.9]], np.float32)
    labels = np.array([0, 1, NONE, NONE])
    m = gate_metrics(probs, labels, max_fpr=0.0)
    assert m["fpr"] == 0.0 and m["tpr"] == 1.0  # negatives score 0.6 and 0.1; positives 0.95 and 0.9
    assert 0.6 < m["threshold"] <= 0.9 and m["kind_accuracy"] == 1.0 and m["accuracy"] == 0.75


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(10, cfg) == pytest.approx(1.0)
    assert learning_rate(100, cfg) == pytest.approx(0.1)
    lrs = [learning_rate(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_pk_labels_and_recall():
    rng = np.random.default_rng(0)
    lab = pk_labels(50, 8, 3, rng)
    assert lab.shape == (24,) and len(set(lab.tolist())) == 8 and all((lab == c).sum() == 3 for c in set(lab))
    assert len(set(pk_labels(4, 8, 2, rng).tolist())) == 4

    e = rng.normal(size=(30, 8)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    labels = np.repeat(np.arange(10), 3)
    gal, glab = enroll(e, labels)
    assert gal.shape == (10, 8) and np.allclose(np.linalg.norm(gal, axis=1), 1, atol=1e-5)
    q = e + 0.3 * rng.normal(size=e.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r = recall_at_k(gal, glab, q, labels, ks=(1, 3))
    S = q @ gal.T  # loop reference
    for k in (1, 3):
        ref = np.mean([labels[i] in glab[np.argsort(-S[i])[:k]] for i in range(len(q))])
        assert r[f"recall@{k}"] == pytest.approx(ref)


def test_negative_generators():
    rng = np.random.default_rng(0)
    t, o = random_textures(6, rng), random_objects(6, rng)
    assert t.shape == o.shape == (6, 64, 128, 3) and t.dtype == np.uint8
    assert t.reshape(6, -1).std(1).min() > 1.0  # not blank
    assert not np.array_equal(random_objects(2, np.random.default_rng(1)), random_objects(2, np.random.default_rng(2)))
    assert np.array_equal(random_objects(2, np.random.default_rng(1)), random_objects(2, np.random.default_rng(1)))
    imgs, labels = shapes_gate_source().sample(50, rng)
    assert imgs.shape == (50, 64, 128, 3) and set(labels.tolist()) <= {0, 1, 2} and (labels == NONE).any()


def test_bad_configs():
    with pytest.raises(ConfigError):
        TrainConfig(loss="contrastive")
    with pytest.raises(ConfigError):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError):
        train_embedder(TrainConfig(samples_per_class=1), _data(), TINY)
    with pytest.raises(ConfigError, match="frame families"):  # the shapes stand-in has no families
        train_embedder(TrainConfig(same_family=2), _data(), TINY)


def test_init_weights_starts_from_a_trained_model(tmp_path):
    first = train_embedder(_cfg(tmp_path / "a", steps=3, eval_every=100, checkpoint_every=100), _data(), TINY)
    from glassfinder.models.embedder import load_embedder

    trained, _ = load_embedder(first.weights)
    seen = []
    train_embedder(_cfg(tmp_path / "b", steps=1, eval_every=100, lr=1e-12, init_weights=str(first.weights)),
                   _data(), TINY, on_step=lambda s, m: seen.append({k: v.clone() for k, v in m.model.state_dict().items()}))
    ref = trained.state_dict()
    # One step at a negligible learning rate: the weights are the loaded ones (BN statistics move a little).
    assert all(torch.allclose(seen[0][k].float(), ref[k].float(), atol=1e-6) for k in ref if "running" not in k
               and "num_batches" not in k)
    side = json.loads((tmp_path / "b" / "embedder.json").read_text())
    assert side["init"]["weights"] == str(first.weights)
    other = EmbedderConfig(stem_channels=8, stages=TINY.stages, last_channels=40, embedding_dim=16)
    with pytest.raises(ConfigError, match="config differs"):
        train_embedder(_cfg(tmp_path / "c", steps=1, init_weights=str(first.weights)), _data(), other)


def test_pk_labels_same_family():
    rng = np.random.default_rng(1)
    families = np.repeat(np.arange(5), 20)  # 5 families of 20 classes
    for _ in range(20):
        lab = pk_labels(100, 8, 2, rng, families, same_family=5)
        classes = np.unique(lab)
        assert len(classes) == 8 and all((lab == c).sum() == 2 for c in classes)
        assert np.bincount(families[classes]).max() >= 5  # at least 5 share one family
    # a family smaller than same_family gives all its members, the rest at random
    small = np.array([0, 0] + [1] * 98)
    lab = pk_labels(100, 8, 1, np.random.default_rng(2), small, same_family=6)
    assert len(np.unique(lab)) == 8
    with pytest.raises(ConfigError, match="same_family"):
        TrainConfig(same_family=17)


def test_same_family_training_records_the_option(tmp_path):
    from dataclasses import replace

    data = replace(_data(), train_families=np.arange(12, dtype=np.int64) % 3)
    result = train_embedder(_cfg(tmp_path, steps=2, same_family=3, eval_every=2, checkpoint_every=2), data, TINY)
    assert json.loads(result.weights.with_suffix(".json").read_text())["train"]["same_family"] == 3
