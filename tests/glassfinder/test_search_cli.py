"""`glassfinder search` and `glassfinder parity` on the committed tiny bundle: outputs, not just exit codes."""
import json
import shutil
from pathlib import Path

import numpy as np

from glassfinder.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny_bundle"
SAMPLES = ROOT / "samples"


def test_search_json_lines_and_sheet(tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    code = main(["search", str(SAMPLES / "query.jpg"), "--bundle", str(TINY), "--top", "5", "--json",
                 "--sheet", str(sheet)])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 1
    r = records[0]
    assert r["status"] == "ok" and r["faces"] >= 1 and len(r["results"]) == 5
    assert set(r["timings_ms"]) >= {"detect", "embed", "search", "total"}
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.width > 400 and im.height >= 256


def test_batch_mode_processes_good_files_and_reports_bad_ones(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLES / "query.jpg", folder / "a_good.jpg")
    (folder / "b_empty.jpg").write_bytes(b"")
    (folder / "c_text.png").write_text("hello")
    shutil.copy(SAMPLES / "sunglasses.jpg", folder / "d_good.jpg")
    code = main(["search", str(folder), "--bundle", str(TINY), "--json"])
    assert code == 1  # some files failed
    records = {Path(r["file"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert records["a_good.jpg"]["status"] == "ok" and records["d_good.jpg"]["status"] == "ok"
    assert records["b_empty.jpg"]["status"] == "error" and "b_empty.jpg" in records["b_empty.jpg"]["message"]
    assert records["c_text.png"]["status"] == "error" and "not" in records["c_text.png"]["message"].lower()


def test_missing_bundle_is_a_clear_error(tmp_path, capsys):
    code = main(["search", str(SAMPLES / "query.jpg"), "--bundle", str(tmp_path / "nothing")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no bundle here" in err and "glassfinder export" in err


def test_parity_passes_on_the_bundle_and_fails_on_a_tampered_parity_set(tmp_path, capsys):
    assert main(["parity", "--bundle", str(TINY), "--json", str(tmp_path / "p.json")]) == 0
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["passed"] and set(report["models"]) == {"detector", "aligner", "gate", "embedder"}
    # Flip the stored float embeddings: the same int8 model now disagrees with them.
    bundle = tmp_path / "bundle"
    shutil.copytree(TINY, bundle)
    path = bundle / "parity" / "embedder.npz"
    with np.load(path) as z:
        data = dict(z)
    data["out0"] = -data["out0"]
    np.savez_compressed(path, **data)
    capsys.readouterr()
    assert main(["parity", "--bundle", str(bundle)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "embedding cosine" in out


def test_bench_latency_writes_per_stage_medians(tmp_path, capsys):
    out = tmp_path / "latency.json"
    assert main(["bench", "latency", "--bundle", str(TINY), "--variants", "int8", "--repeats", "2",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    stages = report["stages"]["int8"]
    assert report["e2e_ms_int8"] == stages["total"] > 0
    assert all(stages[s] > 0 for s in ("detect", "align", "gate", "embed", "search"))
    assert "total" in capsys.readouterr().out
    assert main(["bench", "latency", "--bundle", str(TINY), "--variants", "int8,warp9"]) == 2
