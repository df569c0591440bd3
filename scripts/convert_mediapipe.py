#!/usr/bin/env python
"""Import MediaPipe's face detector and face mesh weights into the PyTorch models.

    python scripts/convert_mediapipe.py                # downloads the wheel with pip
    python scripts/convert_mediapipe.py --wheel PATH   # or uses a wheel already on disk

What it does:
1. `pip download --no-deps mediapipe==0.10.21` into a temp dir (newer wheels no longer ship
   the two files), unzip face_detection_short_range.tflite and face_landmark.tflite.
2. Read every float16 weight tensor by name through the LiteRT interpreter with
   experimental_preserve_all_tensors=True, check that the op graph is the architecture of
   glassfinder.models.detector / aligner (every weight of the file used once, every torch
   parameter filled once, shapes equal), and copy them (NHWC kernels -> torch OIHW).
3. Check parity torch vs LiteRT on synthetic inputs (named tolerances below; refuses to write
   on failure), write glassfinder/weights/{detector,aligner}.safetensors + JSON sidecars with
   the provenance, the licence notice, and the golden fixture tests/fixtures/mediapipe_golden.npz
   (raw outputs of the ORIGINAL .tflite files on synthetic inputs, for CI without the wheel).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from glassfinder.models.aligner import AlignerConfig, build_aligner  # noqa: E402
from glassfinder.models.detector import DetectorConfig, build_detector  # noqa: E402
from glassfinder.models.embedder import WEIGHTS_DIR, save_weights  # noqa: E402

MEDIAPIPE = "mediapipe==0.10.21"
DETECTOR_PATH = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
ALIGNER_PATH = "mediapipe/modules/face_landmark/face_landmark.tflite"
GOLDEN = ROOT / "tests" / "fixtures" / "mediapipe_golden.npz"
COMMAND = "python scripts/convert_mediapipe.py"

# torch float32 vs LiteRT (XNNPACK) float32 on the same float16-valued weights: only summation
# order differs. Detector logits/regressors are O(10-100) in input pixels; landmarks O(100) px.
DETECTOR_MAX_ABS = 2e-3
ALIGNER_MAX_ABS = 5e-3


def download_wheel(dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", MEDIAPIPE, "-d", str(dest)], check=True)
    wheels = sorted(dest.glob("mediapipe-0.10.21-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download did not produce a mediapipe 0.10.21 wheel in {dest}")
    return wheels[0]


def extract(wheel: Path, dest: Path) -> dict[str, Path]:
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for name in (DETECTOR_PATH, ALIGNER_PATH):
            z.extract(name, dest)
            out[name] = dest / name
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True, num_threads=1)
    it.allocate_tensors()
    return it


def read_constants(it) -> dict[str, np.ndarray]:
    """All float16 constant tensors (the weights), by name, as float32."""
    out = {}
    for t in it.get_tensor_details():
        if t["dtype"] == np.float16:
            out[t["name"]] = it.get_tensor(t["index"]).astype(np.float32)
    return out


def conv(consts: dict[str, np.ndarray], name: str, depthwise: bool = False) -> dict[str, np.ndarray]:
    k = consts[f"{name}/Kernel"]
    # TFLite conv kernels are [out, kh, kw, in]; depthwise [1, kh, kw, c]; torch wants [out, in, kh, kw].
    w = k.transpose(3, 0, 1, 2) if depthwise else k.transpose(0, 3, 1, 2)
    return {"weight": w, "bias": consts[f"{name}/Bias"]}


def prelu(consts: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {"weight": consts[f"{name}/Alpha"].reshape(-1)}


def detector_mapping(consts: dict[str, np.ndarray], cfg: DetectorConfig) -> dict[str, dict[str, np.ndarray]]:
    """torch module path -> its tensors, by the .tflite's tensor names (Keras layer order)."""
    m = {"stem": conv(consts, "conv2d")}
    n16 = cfg.num_blocks_16
    for i in range(len(cfg.blocks)):
        prefix = f"blocks16.{i}" if i < n16 else f"blocks8.{i - n16}"
        m[f"{prefix}.dw"] = conv(consts, "depthwise_conv2d" + (f"_{i}" if i else ""), depthwise=True)
        m[f"{prefix}.pw"] = conv(consts, f"conv2d_{i + 1}")
    m["cls16"] = conv(consts, "classificator_8")
    m["reg16"] = conv(consts, "regressor_8")
    m["cls8"] = conv(consts, "classificator_16")
    m["reg8"] = conv(consts, "regressor_16")
    return m


def _block(consts, m, prefix: str, dw: int, pw: int, act: int) -> None:
    m[f"{prefix}.dw"] = conv(consts, f"depthwise_conv2d_{dw}", depthwise=True)
    m[f"{prefix}.pw"] = conv(consts, f"conv2d_{pw}")
    m[f"{prefix}.act"] = prelu(consts, f"p_re_lu_{act}")


def aligner_mapping(consts: dict[str, np.ndarray], cfg: AlignerConfig) -> dict[str, dict[str, np.ndarray]]:
    """torch module path -> tensors. The .tflite numbers the trunk and the landmark head first
    (depthwise_conv2d_1..18, conv2d_1..21, p_re_lu_1..20), then the face-flag head
    (depthwise_conv2d_23.., conv2d_28.., p_re_lu_26..)."""
    m = {"stem": conv(consts, "conv2d_1"), "stem_act": prelu(consts, "p_re_lu_1")}
    for i in range(len(cfg.trunk)):
        _block(consts, m, f"trunk.{i}", i + 1, i + 2, i + 2)
    n = len(cfg.trunk)
    for head, (dw0, pw0, act0) in (("landmarks", (n + 1, n + 2, n + 2)), ("flag", (23, 28, 26))):
        nb = len(cfg.landmark_blocks if head == "landmarks" else cfg.flag_blocks)
        for j in range(nb):
            _block(consts, m, f"{head}.blocks.{j}", dw0 + j, pw0 + j, act0 + j)
        m[f"{head}.proj"] = conv(consts, f"conv2d_{pw0 + nb}")
        m[f"{head}.proj_act"] = prelu(consts, f"p_re_lu_{act0 + nb}")
        _block(consts, m, f"{head}.block", dw0 + nb, pw0 + nb + 1, act0 + nb + 1)
        m[f"{head}.out"] = conv(consts, f"conv2d_{pw0 + nb + 2}")
    return m


def load_into(model: torch.nn.Module, mapping: dict[str, dict[str, np.ndarray]], consts: dict[str, np.ndarray],
              used_names: set[str]) -> None:
    """Fill every torch parameter exactly once; every weight tensor of the file must be used."""
    state = model.state_dict()
    new = {}
    for path, tensors in mapping.items():
        for pname, arr in tensors.items():
            key = f"{path}.{pname}"
            if key not in state:
                raise SystemExit(f"mapping names {key}, which the torch model does not have")
            if tuple(state[key].shape) != arr.shape:
                raise SystemExit(f"{key}: torch shape {tuple(state[key].shape)} != tflite {arr.shape}")
            new[key] = torch.from_numpy(np.ascontiguousarray(arr))
    missing = set(state) - set(new)
    if missing:
        raise SystemExit(f"torch parameters not filled from the .tflite: {sorted(missing)}")
    unused = set(consts) - used_names
    if unused:
        raise SystemExit(f".tflite weights not used by the torch model: {sorted(unused)}")
    model.load_state_dict(new)


def used(mapping_fn, consts, cfg) -> set[str]:
    """Names of the .tflite tensors the mapping reads (by tracing dict accesses)."""
    seen: set[str] = set()

    class Spy(dict):
        def __getitem__(self, k):
            seen.add(k)
            return dict.__getitem__(self, k)

    mapping_fn(Spy(consts), cfg)
    return seen


def run_tflite(it, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    it.set_tensor(it.get_input_details()[0]["index"], x_nhwc.astype(np.float32))
    it.invoke()
    return {o["name"]: it.get_tensor(o["index"]).copy() for o in it.get_output_details()}


def synthetic_face(size: int, seed: int, roll: float = 0.0) -> np.ndarray:
    """A cartoon face (skin ellipse, eyes, brows, nose, mouth) on a smooth background: smooth, so
    it compresses in the golden fixture, and face-like enough to give the models real work."""
    rng = np.random.default_rng(seed)
    s = size * 4  # draw big, downsample: antialiased
    bg = tuple(int(v) for v in rng.integers(40, 200, 3))
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    skin = tuple(int(v) for v in rng.integers([150, 100, 70], [240, 190, 160]))
    cx, cy = s * (0.5 + rng.uniform(-0.05, 0.05)), s * (0.52 + rng.uniform(-0.05, 0.05))
    fw, fh = s * rng.uniform(0.26, 0.32), s * rng.uniform(0.34, 0.4)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    dark = (40, 30, 30)
    for sx in (-1, 1):
        ex, ey = cx + sx * fw * 0.42, cy - fh * 0.15
        d.ellipse([ex - fw * 0.2, ey - fh * 0.07, ex + fw * 0.2, ey + fh * 0.07], fill=(245, 245, 240))
        d.ellipse([ex - fw * 0.08, ey - fh * 0.07, ex + fw * 0.08, ey + fh * 0.07], fill=dark)
        d.line([ex - fw * 0.25, ey - fh * 0.2, ex + fw * 0.25, ey - fh * 0.22], fill=dark, width=max(2, s // 60))
    d.line([cx, cy - fh * 0.05, cx - fw * 0.08, cy + fh * 0.25, cx + fw * 0.05, cy + fh * 0.28],
           fill=tuple(int(v * 0.7) for v in skin), width=max(2, s // 80))
    d.chord([cx - fw * 0.35, cy + fh * 0.35, cx + fw * 0.35, cy + fh * 0.6], 0, 180, fill=(150, 60, 60))
    img = img.rotate(roll, resample=Image.Resampling.BILINEAR, fillcolor=bg)
    img = img.filter(ImageFilter.GaussianBlur(s / 256)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def smooth_noise(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def to_input(x: np.ndarray, mean, std) -> np.ndarray:
    return ((x.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))[None]


def parity(model, it, images: np.ndarray, mean, std, names: tuple[str, str]) -> tuple[float, list[np.ndarray]]:
    """Max abs diff torch vs tflite over images (n, h, w, 3) uint8; returns it and tflite outputs."""
    worst, outs = 0.0, []
    for img in images:
        x = to_input(img, mean, std)
        ref = run_tflite(it, x)
        with torch.no_grad():
            got = model(torch.from_numpy(x).permute(0, 3, 1, 2))
        for name, g in zip(names, got):
            r = ref[name].reshape(g.shape)
            worst = max(worst, float(np.abs(g.numpy() - r).max()))
        outs.append([ref[n] for n in names])
    return worst, outs


class LiteRTModule(torch.nn.Module):
    """A .tflite file behind the torch models' call signature (NCHW tensor in, output tuple out),
    so the same Landmarker runs either; used to measure end-to-end parity on photos."""

    def __init__(self, it, cfg, names: tuple[str, str]):
        super().__init__()
        self.it, self.cfg, self.names = it, cfg, names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = run_tflite(self.it, x.permute(0, 2, 3, 1).numpy())
        shapes = ((1, -1, 16), (1, -1, 1)) if self.names[0] == "regressors" else ((1, -1), (1, -1))
        return tuple(torch.from_numpy(out[n].reshape(s)) for n, s in zip(self.names, shapes))


def check_photos(folder: Path, det, ali, det_it, ali_it) -> dict:
    """torch vs original .tflite on real photos: raw outputs, decoded boxes, landmarks, keypoints."""
    from glassfinder.landmarks import Landmarker, list_images
    from glassfinder_runtime import detect as D

    ours = Landmarker(det, ali)
    ref = Landmarker(LiteRTModule(det_it, det.cfg, ("regressors", "classificators")),
                     LiteRTModule(ali_it, ali.cfg, ("conv2d_21", "conv2d_31")))
    raw_det = raw_ali = 0.0
    ious, lm_err, kp_err, same_count, n_faces = [], [], [], 0, 0
    files = list_images(folder)
    for path in files:
        img = Image.open(path).convert("RGB")
        x, _ = D.letterbox(img, 128)
        t = torch.from_numpy(D.normalize(x, det.cfg.mean, det.cfg.std)).permute(2, 0, 1)[None]
        with torch.no_grad():
            a, b = det(t), ref.detector(t)
        raw_det = max(raw_det, max(float((p - q).abs().max()) for p, q in zip(a, b)))
        d_ours, d_ref = ours.detect(img), ref.detect(img)
        same_count += len(d_ours) == len(d_ref)
        for j in range(min(len(d_ours), len(d_ref))):
            ious.append(float(D.iou(d_ours.boxes[j], d_ref.boxes[j:j + 1])[0]))
        i = D.most_prominent(d_ref)
        if i < 0:
            continue
        # Same crop for both aligners: raw landmark parity in % of the inter-ocular distance.
        from glassfinder_runtime import landmarks as L

        roi = L.face_roi(d_ref.boxes[i], d_ref.keypoints[i, 0], d_ref.keypoints[i, 1])
        m_ours, _ = ours.mesh(img, roi)
        m_ref, _ = ref.mesh(img, roi)
        iod = float(np.linalg.norm(L.eye_centres(m_ref)[1] - L.eye_centres(m_ref)[0]))
        lm_err.append(float(np.linalg.norm(m_ours[:, :2] - m_ref[:, :2], axis=1).max()) / iod * 100)
        crop = L.crop_face(img, L.roi_matrix(roi, 192), 192)
        tc = torch.from_numpy(crop.astype(np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            raw_ali = max(raw_ali, float((ali(tc)[0] - ref.aligner(tc)[0]).abs().max()))
        f_ours, f_ref = ours(img), ref(img)
        if f_ours is not None and f_ref is not None:
            n_faces += 1
            kp_err.append(float(np.linalg.norm(f_ours.keypoints - f_ref.keypoints, axis=1).max()) / iod * 100)
    return {"photos": len(files), "same_detection_count": same_count, "detector_raw_max_abs": raw_det,
            "box_iou_min": min(ious) if ious else None, "box_iou_mean": float(np.mean(ious)) if ious else None,
            "aligner_raw_max_abs_px": raw_ali, "landmark_err_max_pct_iod": max(lm_err) if lm_err else None,
            "landmark_err_mean_pct_iod": float(np.mean(lm_err)) if lm_err else None,
            "faces_compared_end_to_end": n_faces,
            "glasses_keypoint_err_max_pct_iod": max(kp_err) if kp_err else None}


NOTICE = """# MediaPipe face models: licence notice and provenance

`detector.safetensors` and `aligner.safetensors` contain weights converted from two model files
of MediaPipe (Copyright The MediaPipe Authors), licensed under the Apache License, Version 2.0
(http://www.apache.org/licenses/LICENSE-2.0). You may not use these files except in compliance
with that License. Distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.

Modification: the float16 weights were read from the .tflite files and stored as float16
safetensors in the layout of the PyTorch modules glassfinder.models.detector.BlazeFace and
glassfinder.models.aligner.FaceMesh; the numbers themselves are unchanged.

| file | source (inside the wheel {wheel}) | sha256 of the source .tflite |
| --- | --- | --- |
| detector.safetensors | `{det_path}` | `{det_sha}` |
| aligner.safetensors | `{ali_path}` | `{ali_sha}` |

Produced with: `{command}` (pip download --no-deps {mediapipe}; LiteRT interpreter with
experimental_preserve_all_tensors=True; torch vs LiteRT parity checked before writing:
detector max |diff| {det_diff:.2e}, aligner max |diff| {ali_diff:.2e}).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help="use this mediapipe-0.10.21 wheel instead of downloading it")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="weights folder (default: %(default)s)")
    ap.add_argument("--golden", type=Path, default=GOLDEN, help="golden fixture (default: %(default)s)")
    ap.add_argument("--check-photos", type=Path, default=None,
                    help="also measure torch vs .tflite parity on the photos of this folder (local check)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = args.wheel or download_wheel(tmp)
        files = extract(wheel, tmp / "x")
        det_file, ali_file = files[DETECTOR_PATH], files[ALIGNER_PATH]
        det_it, ali_it = interpreter(det_file), interpreter(ali_file)

        det_cfg, ali_cfg = DetectorConfig(), AlignerConfig()
        det, ali = build_detector(det_cfg).eval(), build_aligner(ali_cfg).eval()
        for model, it, cfg, fn in ((det, det_it, det_cfg, detector_mapping), (ali, ali_it, ali_cfg, aligner_mapping)):
            consts = read_constants(it)
            load_into(model, fn(consts, cfg), consts, used(fn, consts, cfg))

        # Synthetic inputs: cartoon faces (one tilted) and smooth noise; plus white noise for parity only.
        det_imgs = np.stack([synthetic_face(128, 1), synthetic_face(128, 2, roll=20.0), smooth_noise(128, 3)])
        ali_imgs = np.stack([synthetic_face(192, 4), synthetic_face(192, 5, roll=-15.0), smooth_noise(192, 6)])
        rng = np.random.default_rng(0)
        det_extra = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
        ali_extra = rng.integers(0, 256, (2, 192, 192, 3), dtype=np.uint8)

        d_diff, d_out = parity(det, det_it, np.concatenate([det_imgs, det_extra]), det_cfg.mean, det_cfg.std,
                               ("regressors", "classificators"))
        a_diff, a_out = parity(ali, ali_it, np.concatenate([ali_imgs, ali_extra]), ali_cfg.mean, ali_cfg.std,
                               ("conv2d_21", "conv2d_31"))
        print(f"parity torch vs LiteRT: detector max|diff| {d_diff:.3e} (tol {DETECTOR_MAX_ABS}), "
              f"aligner max|diff| {a_diff:.3e} (tol {ALIGNER_MAX_ABS})")
        if d_diff > DETECTOR_MAX_ABS or a_diff > ALIGNER_MAX_ABS:
            raise SystemExit("parity check failed: nothing written")

        prov = {"wheel": wheel.name, "command": COMMAND}
        # Stored as float16: the source weights are float16, so this is exact and half the size;
        # load_state_dict casts them into the float32 parameters.
        save_weights(copy.deepcopy(det).half(), det_cfg, args.out / "detector.safetensors", {
            "source": {**prov, "path_in_wheel": DETECTOR_PATH, "sha256": sha256(det_file)},
            "licence": "Apache-2.0 (MediaPipe); see LICENSE-mediapipe.md", "parity_max_abs": d_diff})
        save_weights(copy.deepcopy(ali).half(), ali_cfg, args.out / "aligner.safetensors", {
            "source": {**prov, "path_in_wheel": ALIGNER_PATH, "sha256": sha256(ali_file)},
            "licence": "Apache-2.0 (MediaPipe); see LICENSE-mediapipe.md", "parity_max_abs": a_diff})
        (args.out / "LICENSE-mediapipe.md").write_text(NOTICE.format(
            wheel=wheel.name, det_path=DETECTOR_PATH, ali_path=ALIGNER_PATH, det_sha=sha256(det_file),
            ali_sha=sha256(ali_file), command=COMMAND, mediapipe=MEDIAPIPE, det_diff=d_diff, ali_diff=a_diff))

        n = len(det_imgs)
        args.golden.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            args.golden,
            detector_images=det_imgs,
            detector_regressors=np.stack([o[0].reshape(-1, 16) for o in d_out[:n]]).astype(np.float32),
            detector_classificators=np.stack([o[1].reshape(-1, 1) for o in d_out[:n]]).astype(np.float32),
            aligner_images=ali_imgs,
            aligner_landmarks=np.stack([o[0].reshape(-1) for o in a_out[:n]]).astype(np.float32),
            aligner_face_flag=np.stack([o[1].reshape(-1) for o in a_out[:n]]).astype(np.float32),
            detector_sha256=np.array(sha256(det_file)),
            aligner_sha256=np.array(sha256(ali_file)),
        )
        print(f"wrote {args.out}/detector.safetensors, aligner.safetensors, LICENSE-mediapipe.md, {args.golden}")
        if args.check_photos is not None:
            import json

            print(json.dumps(check_photos(args.check_photos, det, ali, det_it, ali_it), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
