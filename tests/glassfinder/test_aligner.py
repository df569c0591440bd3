"""The torch face mesh with the committed weights vs the ORIGINAL face_landmark.tflite, and the
Landmarker (detector + aligner + numpy stages) end to end on synthetic photos."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glassfinder.cli import main as cli_main
from glassfinder.face_types import FaceSample
from glassfinder.landmarks import Landmarker, default_landmarker
from glassfinder.models.aligner import DEFAULT_ALIGNER_WEIGHTS, AlignerConfig, build_aligner, load_aligner

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "mediapipe_golden.npz"

# torch vs LiteRT on identical float16-valued weights (measured 1.2e-4 px when converting).
RAW_ATOL_PX = 2e-3
FLAG_LOGIT_ATOL = 1e-3
# Landmarks torch vs original, in % of the inter-ocular distance (outer eye corners 33-263).
LANDMARK_IOD_PCT = 0.01
# Roll recovered from a photo rotated by a known angle (degrees).
ROLL_ATOL_DEG = 3.0


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def photo(golden, k: int = 0, angle: float = 0.0) -> Image.Image:
    """A golden cartoon face pasted into a 480x360 photo, rotated clockwise by `angle` degrees."""
    canvas = Image.new("RGB", (480, 360), (90, 120, 150))
    canvas.paste(Image.fromarray(golden["aligner_images"][k]).resize((200, 200)), (140, 80))
    return canvas.rotate(-angle, resample=Image.Resampling.BILINEAR, center=(240, 180))


def test_raw_outputs_match_original_tflite(golden):
    model = load_aligner()
    x = torch.from_numpy(golden["aligner_images"].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        lms, flag = model(x)
    ref = golden["aligner_landmarks"]
    assert lms.shape == ref.shape == (3, 1404)
    assert np.abs(lms.numpy() - ref).max() < RAW_ATOL_PX
    assert np.abs(flag.numpy() - golden["aligner_face_flag"]).max() < FLAG_LOGIT_ATOL
    for got, want in zip(lms.numpy().reshape(-1, 468, 3), ref.reshape(-1, 468, 3)):
        iod = np.linalg.norm(want[263, :2] - want[33, :2])
        assert np.linalg.norm(got[:, :2] - want[:, :2], axis=1).max() / iod * 100 < LANDMARK_IOD_PCT


def test_face_flag_separates_faces_from_noise(golden):
    p = 1 / (1 + np.exp(-golden["aligner_face_flag"].ravel()))
    assert p[0] > 0.5 and p[1] > 0.5 and p[2] < 0.5  # two cartoon faces, then smooth noise


def test_config_round_trip_and_contract():
    cfg = AlignerConfig()
    assert AlignerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.input_contract()["shape"] == [1, 3, 192, 192] and cfg.input_contract()["std"] == [1.0] * 3
    with torch.no_grad():
        lms, flag = build_aligner(cfg).eval()(torch.zeros(1, 3, 192, 192))
    assert lms.shape == (1, 1404) and flag.shape == (1, 1)
    side = json.loads(DEFAULT_ALIGNER_WEIGHTS.with_suffix(".json").read_text())
    assert side["source"]["path_in_wheel"].endswith("face_landmark.tflite")
    assert side["source"]["sha256"] == str(np.load(GOLDEN)["aligner_sha256"])


def test_landmarker_gives_face_sample_fields(golden):
    face = default_landmarker()(photo(golden))
    assert face is not None and face.num_faces == 1 and face.presence > 0.5
    kp = face.keypoints
    # right eye outer < right eye inner < left eye inner < left eye outer, left to right in the image
    assert np.all(np.diff(kp[:4, 0]) > 0)
    assert kp[0, 0] < face.eye_centres[0, 0] < kp[1, 0] and kp[2, 0] < face.eye_centres[1, 0] < kp[3, 0]
    assert face.temples[0, 0] < kp[0, 0] and face.temples[1, 0] > kp[3, 0]
    x0, y0, x1, y1 = face.face_box
    assert x0 < kp[:, 0].min() and x1 > kp[:, 0].max() and y0 < kp[:, 1].min() and y1 > kp[:, 1].max()
    # the face is 200 px wide, pasted at x 140..340
    assert 140 < kp[0, 0] < kp[3, 0] < 340
    sample = FaceSample(image=photo(golden), face_id="synthetic", split="train", **face.face_sample_fields())
    assert sample.keypoints.shape == (5, 2) and sample.temples.shape == (2, 2)


@pytest.fixture(scope="module")
def upright_roll(golden) -> float:
    return default_landmarker()(photo(golden)).pose.roll


@pytest.mark.parametrize("angle", [-20.0, 20.0])
def test_roll_follows_the_rotation(golden, upright_roll, angle):
    base = upright_roll
    rolled = default_landmarker()(photo(golden, angle=angle)).pose.roll
    assert abs((rolled - base) - angle) < ROLL_ATOL_DEG


def test_small_face_found_by_the_tiled_pass(golden):
    # 80 px face in a 900x600 photo: ~11 px in the 128-px whole-photo input, too small for BlazeFace.
    canvas = Image.new("RGB", (900, 600), (90, 120, 150))
    canvas.paste(Image.fromarray(golden["aligner_images"][0]).resize((80, 80)), (600, 120))
    lm = default_landmarker()
    assert len(lm.detect(canvas)) == 0
    face = lm(canvas)
    assert face is not None and np.all((face.keypoints[:, 0] > 600) & (face.keypoints[:, 0] < 680))
    assert Landmarker(lm.detector, lm.aligner, tile_rows=0)(canvas) is None


def test_no_face_on_a_plain_image():
    assert default_landmarker()(Image.new("RGB", (320, 240), (120, 130, 140))) is None
    assert default_landmarker() is default_landmarker()
    assert isinstance(default_landmarker(), Landmarker)


def test_align_cli(golden, tmp_path, capsys):
    src = tmp_path / "face.png"
    photo(golden).save(src)
    out = tmp_path / "crop.png"
    assert cli_main(["align", str(src), "--out", str(out)]) == 0
    assert Image.open(out).size == (128, 64)
    assert (tmp_path / "crop_detection.png").is_file()
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200)).save(blank)
    assert cli_main(["align", str(blank), "--out", str(out)]) == 2
    assert "no face found" in capsys.readouterr().err


def test_bench_detect_cli(golden, tmp_path):
    photo(golden).save(tmp_path / "a.png")
    Image.new("RGB", (200, 200), (30, 30, 30)).save(tmp_path / "b.png")
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "detect", "--images", str(tmp_path), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["images"] == 2 and res["faces_found_rate"] == 0.5 and res["multi_face_images"] == 0
    assert res["mean_ms"] > 0


def test_committed_aligner_carries_the_chosen_presence_threshold() -> None:
    """The converter's config (AlignerConfig()) and the committed sidecar agree on the pipeline's
    presence threshold, and it is below MediaPipe's 0.5 (dim faces the mesh finds are kept)."""
    from glassfinder.models.aligner import FACE_PRESENCE_THRESHOLD
    from glassfinder_runtime.landmarks import MeshOptions

    committed = load_aligner().cfg.mesh
    assert committed.presence_threshold == AlignerConfig().mesh.presence_threshold == FACE_PRESENCE_THRESHOLD
    assert 0.0 < FACE_PRESENCE_THRESHOLD < MeshOptions().presence_threshold
    assert default_landmarker().mesh_opts == committed
