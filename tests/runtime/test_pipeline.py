"""The on-device pipeline end to end on the committed tiny bundle (scripts/make_tiny_bundle.py).

The tiny bundle has the real int8 detector and aligner, a tiny random gate and embedder, and a
24-SKU PQ gallery, so searches run for real in a second.
"""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glassfinder_runtime.align import align_crop
from glassfinder_runtime.bundle import open_bundle
from glassfinder_runtime.detect import lookup_pixels
from glassfinder_runtime.errors import ImageError
from glassfinder_runtime.manifest import ChannelOrder, DType, InputSpec, Layout, ModelRole, Normalization
from glassfinder_runtime.pipeline import (REFUSAL_MESSAGE, GlassFinder, SearchOptions, TfliteModel, l2_normalize,
                                          preprocess, quantize, softmax)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny_bundle"
SAMPLES = ROOT / "samples"
KEYPOINT_TOL_PCT_IOD = 3.0  # int8 detector + aligner vs torch float, glasses keypoints, % of eye distance
FLOAT_TOL = 1e-6


@pytest.fixture(scope="module")
def finder():
    with GlassFinder.create_from_bundle(TINY, SearchOptions(top_k=10)) as f:
        yield f


def test_tiny_bundle_opens_with_the_current_reader():
    b = open_bundle(TINY)
    roles = sorted(m.name.value for m in b.manifest.models)
    assert roles == ["aligner", "detector", "embedder", "gate"]
    assert b.gallery.n == b.manifest.gallery.n == 24


def test_search_finds_the_face_and_ranks_the_gallery(finder):
    result = finder.search(SAMPLES / "query.jpg")
    assert result.status == "ok" and result.reason is None and result.faces >= 1
    assert len(result.results) == 10
    scores = [h.score for h in result.results]
    assert scores == sorted(scores, reverse=True)
    known = {s["sku"] for s in finder.skus}
    assert all(h.sku in known and h.name for h in result.results)
    assert len({h.index for h in result.results}) == 10
    assert result.crop.shape == (64, 128, 3) and result.crop.dtype == np.uint8
    x0, y0, x1, y1 = result.face.box
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in result.face.keypoints)
    assert set(result.timings_ms) >= {"detect", "align", "crop", "gate", "embed", "search", "total"}
    js = result.to_json()
    assert js["status"] == "ok" and len(js["results"]) == 10 and set(js["results"][0]) == {"sku", "name", "score"}


def test_no_face_is_refused_with_the_message(finder):
    result = finder.search(Image.new("RGB", (300, 200), (120, 130, 140)))
    assert result.status == "rejected" and result.reason == "no_face"
    assert REFUSAL_MESSAGE in result.message and "no face" in result.message
    assert result.results == []


def test_gate_threshold_refuses_with_no_glasses(finder):
    strict = dataclasses.replace(finder.bundle.manifest.gate, threshold=1.0)
    bundle = dataclasses.replace(finder.bundle, manifest=dataclasses.replace(finder.bundle.manifest, gate=strict))
    result = GlassFinder(bundle).search(SAMPLES / "query.jpg")
    assert result.status == "rejected" and result.reason == "no_glasses"
    assert result.crop is not None and sum(result.gate_probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_bad_image_raises_a_clear_error(finder, tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageError, match="photo.jpg"):
        finder.search(bad)


def test_runtime_stages_agree_with_the_torch_landmarker(finder):
    """The int8 detector + aligner through the numpy stages land the glasses keypoints where the torch
    float Landmarker does."""
    from glassfinder.landmarks import default_landmarker

    image = Image.open(SAMPLES / "query.jpg").convert("RGB")
    ref = default_landmarker()(image)
    got = finder.search(image).face.keypoints
    iod = np.linalg.norm(ref.eye_centres[0] - ref.eye_centres[1])
    err = 100 * np.linalg.norm(got - ref.keypoints, axis=1).max() / iod
    assert err < KEYPOINT_TOL_PCT_IOD


def test_small_pure_functions():
    assert np.allclose(np.linalg.norm(l2_normalize(np.array([[3.0, 4.0], [0.0, 2.0]])), axis=1), 1.0, atol=FLOAT_TOL)
    p = softmax([1.0, 2.0, 3.0])
    assert abs(p.sum() - 1) < FLOAT_TOL and p.argmax() == 2
    spec = open_bundle(TINY).model("embedder").input
    x = preprocess(np.full((64, 128, 3), 255, np.uint8), spec)
    assert x.shape == tuple(spec.shape)
    expected = (1.0 - np.asarray(spec.mean)) / np.asarray(spec.std)
    assert np.allclose(x[0, 0, 0], expected, atol=FLOAT_TOL)


def test_options_are_validated():
    from glassfinder_runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="top_k"):
        SearchOptions(top_k=0)


@pytest.mark.parametrize("layout", list(Layout))
@pytest.mark.parametrize("normalization", list(Normalization))
def test_preprocess_gives_the_bits_of_the_arithmetic(layout, normalization):
    """preprocess looks uint8 pixels up in a per-channel table: the float32 arithmetic of the
    manifest's contract, bit for bit, in either layout."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    shape = (1, 6, 7, 3) if layout is Layout.NHWC else (1, 3, 6, 7)
    spec = InputSpec(name="input", shape=shape, dtype=DType.FLOAT32, layout=layout, channel_order=ChannelOrder.RGB,
                     normalization=normalization, mean=mean, std=std)
    px = np.random.default_rng(3).integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    expected = px.astype(np.float32) / 255.0
    if normalization is Normalization.RUNTIME:
        expected = (expected - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    expected = expected[None] if layout is Layout.NHWC else expected.transpose(2, 0, 1)[None]
    got = preprocess(px, spec)
    assert got.shape == shape and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(preprocess(px.astype(np.float32), spec), expected)  # non-uint8: the arithmetic


def test_model_input_lookup_is_preprocess_then_quantize(finder):
    """TfliteModel.run_pixels builds the input tensor (float, or int8/uint8 for integer models) in one
    lookup; it must be the tensor __call__ makes from preprocess, and give the same outputs."""
    px = np.random.default_rng(4).integers(0, 256, size=(192, 192, 3), dtype=np.uint8)
    for role in ModelRole:
        model = TfliteModel(finder.bundle, role)
        spec, d = model.entry.input, model.input
        x = px[:spec.height, :spec.width]
        expected = preprocess(x, spec)
        if d["dtype"] in (np.int8, np.uint8):
            expected = quantize(expected, *d["quantization"], d["dtype"])
        assert model.input_table.dtype == d["dtype"]
        looked_up = lookup_pixels(x, model.input_table, channels_first=spec.layout is Layout.NCHW)[None]
        np.testing.assert_array_equal(looked_up, expected)
        for a, b in zip(model.run_pixels(x), model(preprocess(x, spec))):
            np.testing.assert_array_equal(a, b)


def test_search_of_a_large_photo_shares_reductions_without_changing_pixels(finder):
    """A photo big enough that every warp box-reduces it: the search (one ReducedImages for its
    aligner passes and glasses crop) gives the crop a fresh, unshared warp gives."""
    big = Image.open(SAMPLES / "query.jpg").convert("RGB")
    big = big.resize((big.width * 5, big.height * 5), Image.Resampling.BICUBIC)
    result = finder.search(big)
    assert result.status in ("ok", "rejected") and result.face is not None
    crop, A = align_crop(big.copy(), result.face.keypoints, finder.template)
    np.testing.assert_array_equal(A, result.face.crop_matrix)
    assert np.sqrt(abs(np.linalg.det(A[:, :2]))) < 0.5  # the crop really is box-reduced
    np.testing.assert_array_equal(crop, result.crop)
