"""`glassfinder eval` on a tiny protocol: the float report, and with --bundle the bundle's variants."""
import json
from pathlib import Path

import numpy as np
import pytest

from glassfinder.cli import main
from glassfinder.evaluation import EvalConfig, evaluate
from glassfinder_runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny_bundle"
# The tiny bundle enrolled the first 24 gallery SKUs of catalog seed 0 (scripts/make_tiny_bundle.py).
SMALL = ["--n-gallery", "24", "--renders-per-sku", "2", "--gallery-faces", "8", "--n-queries", "6",
         "--n-negatives", "4", "--quiet"]


def test_eval_with_bundle_reports_every_variant_and_the_drop(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", *SMALL, "--bundle", str(TINY), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["queries"] == 6 and report["gallery_skus"] == 24 and report["negatives"] == 4
    variants = report["variants"]
    assert set(variants) == {"torch_float+exact", "bundle_models+exact", "bundle_models+bundle_gallery"}
    for v in variants.values():
        assert 0.0 <= v["top1"] <= v["top5"] <= v["top10"] <= 1.0
        assert 0.0 <= v["gate_tpr"] <= 1.0 and 0.0 <= v["gate_fpr"] <= 1.0
        refused = v["refused_no_face"] + v["refused_no_glasses"]
        assert refused == round((1 - v["gate_tpr"]) * 6)  # every query is either searched or refused
        found = 6 - v["refused_no_face"]
        assert v["gate_tpr_found_faces"] == (pytest.approx((found - v["refused_no_glasses"]) / found) if found else 0.0)
    assert variants["torch_float+exact"]["top1"] == report["top1"]
    assert 0.0 < report["top1_ceiling_size_blind"] <= 1.0  # 24 SKUs in groups of 1-3 sizes
    shipped = variants["bundle_models+bundle_gallery"]
    assert report["top1_drop_points"] == pytest.approx(100 * (report["top1"] - shipped["top1"]), abs=0.01)
    assert report["gallery_spec"] and report["bundle"] == str(TINY)
    printed = capsys.readouterr().out
    assert "bundle_models+bundle_gallery" in printed and "top-1 drop" in printed


def test_eval_refuses_a_bundle_of_other_skus():
    with pytest.raises(ConfigError, match="not the benchmark"):
        evaluate(EvalConfig(n_gallery=20, renders_per_sku=1, gallery_faces=4, n_queries=2, n_negatives=2),
                 progress=False, bundle=str(TINY))


def test_eval_refuses_a_negative_enrolment_jitter(capsys):
    assert main(["eval", *SMALL, "--enroll-jitter", "-0.5"]) == 2
    assert "--enroll-jitter >= 0" in capsys.readouterr().err


def test_eval_benchmarks_the_weights_it_is_given_and_records_them(tmp_path):
    weights = ROOT / "glassfinder" / "weights"
    default, given = tmp_path / "default.json", tmp_path / "given.json"
    assert main(["eval", *SMALL, "--json", str(default)]) == 0
    assert main(["eval", *SMALL, "--embedder", str(weights / "embedder.safetensors"),
                 "--gate", str(weights / "gate.safetensors"), "--json", str(given)]) == 0
    a, b = json.loads(default.read_text()), json.loads(given.read_text())
    assert a["weights"] == {"embedder": "committed", "gate": "committed"}
    assert b["weights"]["embedder"].endswith("embedder.safetensors")
    assert (b["top1"], b["top10"], b["gate_fpr"]) == (a["top1"], a["top10"], a["gate_fpr"])


def test_eval_refuses_another_models_weights_and_weights_with_a_bundle(capsys):
    weights = ROOT / "glassfinder" / "weights"
    assert main(["eval", *SMALL, "--embedder", str(weights / "gate.safetensors")]) == 2
    assert "gate.safetensors" in capsys.readouterr().err
    assert main(["eval", *SMALL, "--gate", str(weights / "embedder.safetensors")]) == 2
    assert "threshold" in capsys.readouterr().err
    assert main(["eval", *SMALL, "--bundle", str(TINY), "--embedder", str(weights / "embedder.safetensors")]) == 2
    assert "use one or the other" in capsys.readouterr().err


def test_failure_sheet_has_a_line_per_failed_query():
    from PIL import Image

    from glassfinder.catalog import CatalogConfig, build_catalog
    from glassfinder.evaluation import failure_sheet

    skus = build_catalog(CatalogConfig()).by_split("gallery")[:6]
    images = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(3)]
    rows = [0, 1, 2]
    I = np.array([[0, 1, 2, 3, 4], [2, 1, 0, 3, 4], [-1, -1, -1, -1, -1]])  # query 0 right, 1 wrong, 2 refused
    sheet = failure_sheet(images, rows, I, skus)
    one_failure = failure_sheet(images[:2], rows[:2], I[:2], skus)
    line = sheet.height - one_failure.height
    assert line > 64 and sheet.height == 30 + 2 * line  # two failed lines below the title
    y, x = 30 + line, 96 + 10 + 128 + 8  # the refused query's first top-5 cell: red "refused" text
    cell = np.asarray(sheet)[y + 16:y + 36, x:x + 60].astype(int)
    assert ((cell[..., 0] - cell[..., 1]) > 100).any()


def test_size_scale_is_chosen_on_val_skus_enrolled_as_the_gallery_is():
    """The best size_scale depends on how SKUs are enrolled (K renders, their misalignment): the VAL
    enrolment that chooses it, the benchmark's gallery and the bundle's gallery must agree."""
    from types import SimpleNamespace

    from glassfinder import train
    from glassfinder.renderer import ALIGNER_JITTER
    from glassfinder_export.bundle import BundleConfig

    faces = SimpleNamespace(face_ids=["f0", "f1"])
    val = train._sku_val_data([[object()]], faces, faces)
    eval_cfg, bundle_cfg = EvalConfig(), BundleConfig()
    assert train.SKU_VAL_ENROLL == eval_cfg.renders_per_sku == bundle_cfg.renders_per_sku
    assert eval_cfg.enroll_jitter == bundle_cfg.enroll_jitter > 0
    assert val.enroll.jitter == ALIGNER_JITTER.scaled(eval_cfg.enroll_jitter)
