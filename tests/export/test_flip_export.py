"""The embedder's flip_average (crop and mirror image averaged inside the graph) survives export.

onnx2tf turned torch.flip (an ONNX Slice with step -1) into a wrong NHWC graph for the trained
embedder (TFLite float32 cosine 0.97 to torch; with random weights it happened to come out right).
The mirror is a Gather of reversed columns instead. This integration test exports the committed
embedder with flip_average on and compares the TFLite float32 file with torch.
"""
from dataclasses import replace

import numpy as np

from glassfinder.models.embedder import load_embedder
from glassfinder_export.runners import run_exported, run_torch
from glassfinder_export.targets import InputContract, Target, export_targets
from glassfinder_export.tiny_models import synthetic_images

TFLITE_FP32_ATOL = 1e-4  # float32 NHWC graph on XNNPACK vs torch, unit vectors: round-off only
N = 6


def test_flip_averaged_embedder_exports_to_tflite_exactly(tmp_path):
    model, _ = load_embedder()
    model.cfg = replace(model.cfg, flip_average=True)
    contract = InputContract.from_config("embedder", model.cfg)
    results = export_targets(model, contract, [Target.TFLITE_FP32], tmp_path)
    x01 = synthetic_images(N, 64, 128, seed=3).transpose(0, 3, 1, 2).astype(np.float32) / 255
    ref = run_torch(model, contract, x01)[0]
    np.testing.assert_allclose(run_exported(results[Target.TFLITE_FP32], x01)[0], ref, atol=TFLITE_FP32_ATOL)
    # The mirror image of the input gives the same vector: the average is really in the file.
    np.testing.assert_allclose(run_exported(results[Target.TFLITE_FP32], x01[..., ::-1].copy())[0], ref,
                               atol=TFLITE_FP32_ATOL)
