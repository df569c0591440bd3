"""Build the tiny test bundle committed under tests/fixtures/tiny_bundle/.

    .venv/bin/python scripts/make_tiny_bundle.py      # about 5 minutes (four onnx2tf conversions)

Same code path as `glassfinder export` (export/bundle.py) with small parts: the real detector and
aligner (so test photos really find faces), a tiny randomly initialised gate and embedder (seeded),
24 gallery SKUs, no Core ML and no float references, 4 parity images per model. Tests of the
runtime, the search CLI, `glassfinder parity` and hostile bundles run on it in seconds. Regenerate
it whenever the bundle format changes; tests/runtime/test_pipeline.py checks it opens with the
current reader.
"""
from pathlib import Path

from glassfinder.models.aligner import load_aligner
from glassfinder.models.detector import load_detector
from glassfinder.models.embedder import EmbedderConfig, build_embedder
from glassfinder.models.gate import GateConfig, build_gate
from glassfinder_export.bundle import BundleConfig, BundleModels, build_bundle
from glassfinder_export.parity import ParityThresholds

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_bundle"
TINY_EMBEDDER = EmbedderConfig(stem_channels=8, stages=((1, 8, 1, 1), (2, 16, 1, 2), (2, 24, 1, 2), (2, 32, 1, 2)),
                               last_channels=64)
TINY_GATE = GateConfig(stem_channels=8, blocks=((16, 2), (24, 2), (32, 2)))
# A random gate's P(glasses) sits near 2/3: accept everything with a face, so searches run end to end.
TINY_GATE_THRESHOLD = 0.05
# Random tiny models are no test of quantization (the real bundle is held to the design targets);
# these loose thresholds, recorded in the fixture's parity.json, only catch a broken export chain.
TINY_THRESHOLDS = ParityThresholds(cosine_median=0.9, cosine_p1=0.7, gate_agreement=0.7, detection_agreement=0.8, box_iou_median=0.6,
                                   box_iou_p1=0.2, keypoint_error_median=0.15, keypoint_error_p99=0.5,
                                   landmark_error_median_pct_iod=3.0, landmark_error_p99_pct_iod=20.0,
                                   top1_retention=0.2)


def main() -> None:
    models = BundleModels(detector=load_detector().eval(), aligner=load_aligner().eval(),
                          gate=build_gate(TINY_GATE).eval(), embedder=build_embedder(TINY_EMBEDDER).eval(),
                          gate_threshold=TINY_GATE_THRESHOLD)
    cfg = BundleConfig(n_gallery=24, renders_per_sku=2, gallery_faces=8, coreml=False, n_parity_queries=12,
                       pq_train_vectors=512, reference=False, parity_images=4, thumbnails=False)
    summary = build_bundle(OUT, models, cfg, force=True, thresholds=TINY_THRESHOLDS)
    print(summary)


if __name__ == "__main__":
    main()
