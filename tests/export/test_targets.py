"""Capability table, option validation, input contract, calibration loader, float boundary (no converters)."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from glassfinder_export import calibration
from glassfinder_export.onnx_export import export_boundary
from glassfinder_export.targets import (CAPABILITIES, ExportOptions, InputContract, Target, validate_export)
from glassfinder_export.tiny_models import TinyDetector, TinyEmbedder, synthetic_images, tiny_embedder
from glassfinder_runtime.errors import ConfigError
from glassfinder_runtime.manifest import ModelFormat, Quantization

CONTRACT = InputContract("embedder", 64, 128, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_every_target_has_one_capability_row_with_manifest_names():
    assert set(CAPABILITIES) == set(Target)
    for t, cap in CAPABILITIES.items():
        ModelFormat(cap.manifest_format)  # raises if the manifest does not know it
        Quantization(cap.manifest_quantization)
        assert cap.layout == ("NHWC" if cap.family == "tflite" else "NCHW")
    int8_act = {t for t, c in CAPABILITIES.items() if c.needs_calibration}
    # Dynamic-range int8 comes out of the same calibrated onnx2tf run as full-integer int8.
    assert int8_act == {Target.TFLITE_INT8, Target.TFLITE_DYNAMIC_INT8, Target.COREML_W8A8, Target.ONNX_INT8_NNCF}


def test_unknown_target_lists_the_choices():
    with pytest.raises(ConfigError, match="tflite_int8"):
        Target.parse("tflite-int8")
    assert Target.parse("coreml_w8a8") is Target.COREML_W8A8


def test_float_layers_rejected_on_full_integer_tflite():
    with pytest.raises(ConfigError, match=r"tflite_int8 cannot honour option\(s\) float_layers.*full-integer"):
        validate_export(Target.TFLITE_INT8, ExportOptions(float_layers=("head",)), calib=object())
    validate_export(Target.ONNX_INT8_NNCF, ExportOptions(float_layers=("head",)), calib=object())


def test_quantization_knobs_rejected_on_float_targets():
    with pytest.raises(ConfigError, match="tflite_fp32 cannot honour option.*per_channel.*no int8 weights"):
        validate_export(Target.TFLITE_FP32, ExportOptions(per_channel=False))
    with pytest.raises(ConfigError, match="coreml_int8w cannot honour.*float_layers"):
        validate_export(Target.COREML_INT8W, ExportOptions(float_layers=("head",)))
    validate_export(Target.COREML_INT8W, ExportOptions(per_channel=False))


def test_int8_activation_targets_need_calibration_and_old_opsets_are_refused():
    for t in (Target.TFLITE_INT8, Target.COREML_W8A8, Target.ONNX_INT8_NNCF):
        with pytest.raises(ConfigError, match="needs a calibration set"):
            validate_export(t, ExportOptions())
    with pytest.raises(ConfigError, match="opset 11"):
        validate_export(Target.ONNX, ExportOptions(opset=11))


def test_options_report_only_changed_fields():
    assert ExportOptions().set_fields() == set()
    assert ExportOptions(per_channel=True, l2_in_graph=True).set_fields() == {"per_channel", "l2_in_graph"}


def test_contract_from_model_configs():
    c = InputContract.from_config("embedder", TinyEmbedder().cfg)
    assert (c.height, c.width, c.mean, c.std) == (64, 128, (0.5,) * 3, (0.25,) * 3)
    d = InputContract.from_config("detector", TinyDetector().cfg)
    assert d.shape_nchw == (1, 3, 128, 128)

    @dataclasses.dataclass(frozen=True)
    class Square:  # the real detector/aligner configs use input_size
        input_size: int = 192
        mean: tuple = (0.0, 0.0, 0.0)
        std: tuple = (1.0, 1.0, 1.0)

    assert InputContract.from_config("aligner", Square()).shape_nchw == (1, 3, 192, 192)
    with pytest.raises(ConfigError, match="no 'std'"):
        InputContract.from_config("x", type("C", (), {"input_size": 8, "mean": (0, 0, 0)})())
    with pytest.raises(ConfigError, match="std must be positive"):
        InputContract("x", 8, 8, (0, 0, 0), (1, 0, 1))
    nhwc = type("N", (), {"input_size": 8, "mean": (0,) * 3, "std": (1,) * 3, "layout": "NHWC"})()
    with pytest.raises(ConfigError, match="NCHW"):
        InputContract.from_config("x", nhwc)


def test_normalise_matches_formula():
    x = np.random.default_rng(0).random((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(CONTRACT.normalise(x), (x - 0.5) / 0.25, rtol=1e-6)


# ------------------------------------------------------------------ calibration loader

def test_calibration_roundtrip_hash_and_preprocessing(tmp_path):
    imgs = synthetic_images(12, 64, 128, seed=3)
    cset = calibration.make_set("embedder", imgs, {"generator": "test"})
    calibration.save_set(calibration.set_path("embedder", root=tmp_path), cset)
    loaded = calibration.load_set("embedder", CONTRACT, root=tmp_path, min_count=10)
    assert loaded.sha256 == cset.sha256 == calibration.dataset_sha256(imgs)
    assert loaded.meta["generator"] == "test" and loaded.meta["count"] == 12
    x = loaded.model_inputs(CONTRACT, normalise=True)
    assert x.shape == (12, 3, 64, 128) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 1], (imgs[0, :, :, 1] / 255.0 - 0.5) / 0.25, rtol=1e-5)
    raw = loaded.model_inputs(CONTRACT, normalise=False)
    assert raw.min() >= 0 and raw.max() <= 1
    bgr = dataclasses.replace(CONTRACT, channel_order="BGR")
    np.testing.assert_array_equal(loaded.model_inputs(bgr, False)[:, 0], raw[:, 2])
    # a different image gives a different hash
    imgs2 = imgs.copy()
    imgs2[0, 0, 0, 0] ^= 1
    assert calibration.dataset_sha256(imgs2) != cset.sha256


def test_calibration_minimum_count_and_size_checks(tmp_path):
    cset = calibration.make_set("embedder", synthetic_images(5, 64, 128))
    path = calibration.save_set(calibration.set_path("embedder", root=tmp_path), cset)
    with pytest.raises(ConfigError, match=r"embedder.npz: 5 images for embedder, need at least 200"):
        calibration.load_set("embedder", CONTRACT, root=tmp_path)
    calibration.save_set(calibration.set_path("gate", root=tmp_path),
                         calibration.make_set("gate", synthetic_images(5, 64, 128)))
    with pytest.raises(ConfigError, match="are 64x128, but gate's input contract is 32x32"):
        calibration.load_set("gate", dataclasses.replace(CONTRACT, model="gate", height=32, width=32),
                             root=tmp_path, min_count=1)
    with pytest.raises(ConfigError, match="no calibration set for aligner"):
        calibration.load_set("aligner", CONTRACT, root=tmp_path)
    # tampered file: recorded hash no longer matches the pixels
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
    imgs = cset.images.copy()
    imgs[0] = 0
    np.savez_compressed(path, images=imgs, meta=np.array(json.dumps(meta)))
    with pytest.raises(ConfigError, match="was modified"):
        calibration.load_set("embedder", CONTRACT, root=tmp_path, min_count=1)
    with pytest.raises(ConfigError, match=r"\(n, H, W, 3\) uint8"):
        calibration.make_set("embedder", np.zeros((2, 8, 8, 3), np.float32))


# ------------------------------------------------------------------ float boundary

def test_boundary_moves_l2_norm_to_the_runtime():
    model = tiny_embedder()
    b = export_boundary(model, CONTRACT, ExportOptions())
    assert b.postprocess == ("l2_normalize",) and b.output_names == ("embedding",)
    x01 = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        raw = b.module(torch.from_numpy(CONTRACT.normalise(x01.numpy())))
        ref = model(torch.from_numpy(CONTRACT.normalise(x01.numpy())))
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2))  # the graph output is not unit length
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=1), ref)
    inside = export_boundary(model, CONTRACT, ExportOptions(normalise_in_graph=True, l2_in_graph=True))
    assert inside.postprocess == ()
    with torch.no_grad():
        torch.testing.assert_close(inside.module(x01), ref)  # [0, 1] pixels in, unit vectors out


def test_boundary_refuses_a_head_that_is_not_forward_minus_l2():
    class Shifted(TinyEmbedder):  # forward() adds something that forward_export() leaves out
        def forward(self, x):
            return torch.nn.functional.normalize(self.forward_export(x) + 1.0, dim=1)

    model = Shifted()
    with pytest.raises(ConfigError, match="must equal forward"):
        export_boundary(model, CONTRACT, ExportOptions())


def test_first_and_last_layers_follow_every_output_head():
    from glassfinder_export.pipeline import first_last_layers
    from glassfinder_export.tiny_models import tiny_detector

    assert first_last_layers(tiny_embedder()) == ("features.0", "head")
    assert first_last_layers(tiny_detector()) == ("features.0", "reg", "cls")  # both SSD heads


@pytest.mark.parametrize("name", ["detector", "aligner", "gate", "embedder"])
def test_committed_calibration_sets_match_the_models_input_contracts(name):
    """calibration_data/ is committed: each set loads against the real model config (size, minimum count,
    recorded sha256), and calibration and parity sets are different images."""
    from glassfinder.models.aligner import AlignerConfig
    from glassfinder.models.detector import DetectorConfig
    from glassfinder.models.embedder import EmbedderConfig
    from glassfinder.models.gate import GateConfig

    cfg = {"detector": DetectorConfig, "aligner": AlignerConfig, "gate": GateConfig, "embedder": EmbedderConfig}
    contract = InputContract.from_config(name, cfg[name]())
    cal = calibration.load_set(name, contract, "calibration")
    par = calibration.load_set(name, contract, "parity")
    assert len(cal) >= calibration.MIN_COUNT[name] and len(par) >= calibration.MIN_PARITY_COUNT[name]
    assert cal.sha256 == cal.meta["sha256"] and cal.meta["face_split"] == "train"
    assert par.meta["face_split"] == "val" and cal.sha256 != par.sha256


def test_clip_outputs_clamps_only_the_named_output():
    from glassfinder_export.tiny_models import tiny_detector

    model = tiny_detector()
    contract = InputContract.from_config("detector", model.cfg)
    b = export_boundary(model, contract, ExportOptions(clip_outputs=((1, 0.01),)))
    x = torch.from_numpy(contract.normalise(np.random.default_rng(0).random((1, 3, 128, 128), np.float32)))
    with torch.no_grad():
        reg, cls = model(x)
        creg, ccls = b.module(x)
    torch.testing.assert_close(creg, reg)
    assert ccls.abs().max() <= 0.01 < cls.abs().max()
    with pytest.raises(ConfigError, match="names an output the model does not have"):
        export_boundary(model, contract, ExportOptions(clip_outputs=((2, 1.0),)))
    with pytest.raises(ConfigError, match="must be positive"):
        validate_export(Target.ONNX, ExportOptions(clip_outputs=((1, 0.0),)))
