"""Real-photo face landmarks for the try-on renderer, the real-face loader and `glassfinder align`.

`Landmarker` = the torch detector and aligner from the committed weights (no mediapipe wheel
needed) + the numpy stages of glassfinder_runtime (letterbox, anchors, decode, weighted NMS,
projection, rotated face crop, mesh decoding). It returns the FaceSample fields of the most
prominent face: the largest detection the aligner confirms (face presence), retrying on
overlapping tiles when the whole-photo pass confirms none (small faces of group photos); None
when no face is found.

    lm = default_landmarker()
    face = lm(Image.open("photo.jpg"))          # FaceLandmarks | None
    sample = FaceSample(image=..., **face.face_sample_fields(), face_id=..., split=...)
"""
from __future__ import annotations

import contextlib
import csv
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw

from glassfinder.face_types import HeadPose
from glassfinder.models.aligner import DEFAULT_ALIGNER_WEIGHTS, FaceMesh, load_aligner
from glassfinder.models.detector import DEFAULT_DETECTOR_WEIGHTS, BlazeFace, load_detector
from glassfinder_runtime import detect as D
from glassfinder_runtime import landmarks as L
from glassfinder_runtime import pipeline as P
from glassfinder_runtime.pipeline import FaceSearchOptions
from glassfinder_runtime.align import align_crop
from glassfinder_runtime.errors import ConfigError, ImageError
from glassfinder_runtime.geometry import DEFAULT_TEMPLATE, CropTemplate, apply_affine, invert_affine
from glassfinder_runtime.image_io import load_image


@dataclass(frozen=True)
class FaceLandmarks:
    """One face, all in image pixels (float32). keypoints (5, 2) in geometry.KEYPOINT_NAMES order;
    eye_centres (2, 2), temples (2, 2) subject's right then left; face_box (4,) x0, y0, x1, y1;
    mesh (468, 3); detection_box (4,) and detection_keypoints (6, 2) from the detector;
    score: detector score; presence: aligner face-presence score; num_faces: faces in the photo."""

    keypoints: npt.NDArray[np.float32]
    eye_centres: npt.NDArray[np.float32]
    temples: npt.NDArray[np.float32]
    face_box: npt.NDArray[np.float32]
    pose: HeadPose
    mesh: npt.NDArray[np.float32]
    detection_box: npt.NDArray[np.float32]
    detection_keypoints: npt.NDArray[np.float32]
    score: float
    presence: float
    num_faces: int

    def face_sample_fields(self) -> dict:
        """The keyword arguments of glassfinder.face_types.FaceSample this face provides."""
        return {"keypoints": self.keypoints, "eye_centres": self.eye_centres, "temples": self.temples,
                "face_box": self.face_box, "pose": self.pose}


def _rgb(image: Image.Image | str | Path) -> Image.Image:
    """RGB image from an image or a file (runtime's robust decoder: EXIF orientation, limits)."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    return image if image.mode == "RGB" else image.convert("RGB")


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside the block. Batch-1 inference of these small models gains
    nothing from threads, and on a busy machine OpenMP's spin-waiting makes it collapse: a detector
    call took 1 s with 2 threads and 4 ms with 1 while other jobs ran here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class Landmarker:
    """Detector + aligner (torch float) on one photo, through the same stages as the on-device
    pipeline (glassfinder_runtime.pipeline.find_face): the largest face the aligner confirms, from
    the whole photo or else from overlapping tiles; `refine` extra aligner passes re-crop the face
    from the previous mesh (MediaPipe's tracking roi), which tightens the crop on tilted heads."""

    def __init__(self, detector: BlazeFace, aligner: FaceMesh, refine: int = 1, tile_rows: int = 2,
                 max_candidates: int = 4):
        self.detector, self.aligner = detector.eval(), aligner.eval()
        self.det_spec = detector.cfg.runtime_spec()
        self.mesh_opts = aligner.cfg.mesh
        self.anchors = D.generate_anchors(self.det_spec.anchors)
        self.options = FaceSearchOptions(refine=refine, tile_rows=tile_rows, max_candidates=max_candidates)

    @classmethod
    def from_weights(cls, detector: str | Path = DEFAULT_DETECTOR_WEIGHTS,
                     aligner: str | Path = DEFAULT_ALIGNER_WEIGHTS, refine: int = 1) -> "Landmarker":
        return cls(load_detector(detector), load_aligner(aligner), refine)

    @torch.no_grad()
    def run_detector(self, pixels: npt.NDArray[np.uint8]) -> list[np.ndarray]:
        """(128, 128, 3) letterboxed pixels -> raw (896, 16) regressors and (896, 1) scores."""
        t = torch.from_numpy(D.normalize(pixels, self.det_spec.mean, self.det_spec.std)).permute(2, 0, 1)[None]
        with one_thread():
            return [o[0].numpy() for o in self.detector(t)]

    @torch.no_grad()
    def run_aligner(self, pixels: npt.NDArray[np.uint8]) -> list[np.ndarray]:
        """(192, 192, 3) face crop -> raw (1404,) landmarks and (1,) face flag."""
        cfg = self.aligner.cfg
        t = torch.from_numpy(D.normalize(pixels, cfg.mean, cfg.std)).permute(2, 0, 1)[None]
        with one_thread():
            return [o[0].numpy() for o in self.aligner(t)]

    def detect(self, image: Image.Image | str | Path, tiled: bool = False) -> D.Detections:
        """All faces, image pixels, best score first (tiled: the overlapping-tiles pass)."""
        return P.detect_faces(_rgb(image), self.run_detector, self.det_spec, self.anchors,
                              self.options.tile_rows if tiled else 0)

    def mesh(self, image: Image.Image, roi: L.FaceRoi) -> tuple[npt.NDArray[np.float32], float]:
        """(468, 3) image-pixel mesh and the presence score for one roi."""
        return P.face_mesh(image, roi, self.run_aligner, self.mesh_opts)

    def find_face(self, image: Image.Image | str | Path,
                  timings: dict[str, float] | None = None) -> tuple[D.Detections, FaceLandmarks | None]:
        """(all detections, landmarks of the largest face the aligner confirms or None). `timings`
        gets detect_ms (detector passes) and rest_ms (aligner passes)."""
        img = _rgb(image)
        t: dict[str, float] = {}
        det, i, mesh, presence = P.find_face(img, self.run_detector, self.run_aligner, self.det_spec, self.anchors,
                                   self.mesh_opts, self.options, t)
        if timings is not None:
            timings["detect_ms"], timings["rest_ms"] = 1e3 * t["detect"], 1e3 * t.get("align", 0.0)
        return det, (None if i < 0 else self._face(det, i, mesh, presence))

    def landmarks(self, image: Image.Image | str | Path, det: D.Detections, i: int) -> FaceLandmarks | None:
        """Landmarks of detection i of `det` (image pixels); None if the aligner sees no face."""
        mesh, presence = P.locate_landmarks(_rgb(image), det, i, self.run_aligner, self.mesh_opts, self.options.refine)
        return self._face(det, i, mesh, presence) if presence >= self.mesh_opts.presence_threshold else None

    def _face(self, det: D.Detections, i: int, mesh: npt.NDArray[np.float32], presence: float) -> FaceLandmarks:
        yaw, pitch, roll = L.head_pose(mesh)
        return FaceLandmarks(
            keypoints=L.glasses_keypoints(mesh, self.mesh_opts), eye_centres=L.eye_centres(mesh),
            temples=L.temples(mesh), face_box=L.face_box(mesh), pose=HeadPose(yaw, pitch, roll), mesh=mesh,
            detection_box=det.boxes[i].copy(), detection_keypoints=det.keypoints[i].copy(),
            score=float(det.scores[i]), presence=presence, num_faces=len(det))

    def __call__(self, image: Image.Image | str | Path) -> FaceLandmarks | None:
        """The most prominent (largest confirmed) face of the photo, or None."""
        return self.find_face(image)[1]

    def timed(self, image: Image.Image) -> tuple[D.Detections, FaceLandmarks | None, float, float]:
        """find_face plus timings: (detections, face, whole-photo detect ms, the rest in ms:
        landmarks, and the tiled pass when it runs)."""
        t: dict[str, float] = {}
        det, face = self.find_face(image, t)
        return det, face, t["detect_ms"], t["rest_ms"]


@functools.lru_cache(maxsize=1)
def default_landmarker() -> Landmarker:
    """The shared Landmarker from the committed weights (built once per process)."""
    return Landmarker.from_weights()


# ---------------------------------------------------------------------------------------------
# `glassfinder align` and `glassfinder bench detect`

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class AlignResult:
    """What `align_photo` produced: the crop, the annotated photo, the chosen face, all faces."""

    crop: Image.Image
    annotated: Image.Image
    face: FaceLandmarks
    detections: D.Detections
    crop_matrix: npt.NDArray[np.float64]  # (2, 3) image -> crop


def draw_detections(image: Image.Image, det: D.Detections, face: FaceLandmarks | None,
                    crop_matrix: npt.ArrayLike | None = None, template: CropTemplate = DEFAULT_TEMPLATE) -> Image.Image:
    """Photo with every detection box + 6 keypoints (red), the chosen face's glasses keypoints
    (blue), eye centres (magenta), temples (yellow) and the outline of the glasses crop (green)."""
    out = _rgb(image).copy()
    d = ImageDraw.Draw(out)
    r = max(2.0, max(out.size) / 300)
    w = max(1, round(r / 2))

    def dot(p, colour, k=1.0):
        d.ellipse([p[0] - k * r, p[1] - k * r, p[0] + k * r, p[1] + k * r], fill=colour)

    for box, kps in zip(det.boxes, det.keypoints):
        d.rectangle([float(v) for v in box], outline=(255, 40, 40), width=w)
        for p in kps:
            dot(p, (255, 40, 40), 0.8)
    if face is not None:
        for p in face.keypoints:
            dot(p, (40, 90, 255))
        for p in face.eye_centres:
            dot(p, (255, 0, 255), 0.7)
        for p in face.temples:
            dot(p, (255, 220, 0))
        if crop_matrix is not None:
            corners = [(0, 0), (template.width, 0), (template.width, template.height), (0, template.height)]
            poly = apply_affine(invert_affine(crop_matrix), corners)
            d.polygon([tuple(map(float, p)) for p in poly], outline=(40, 220, 40), width=w)
    return out


def align_photo(image: Image.Image | str | Path, landmarker: Landmarker | None = None,
                template: CropTemplate = DEFAULT_TEMPLATE) -> AlignResult:
    """Detect, pick the most prominent face, landmark it, crop the glasses region.

    Raises ImageError when no face is found (the app's "Please use a photo of glasses or
    sunglasses worn on a face")."""
    lm = landmarker or default_landmarker()
    img = _rgb(image)
    det, face = lm.find_face(img)
    if face is None:
        where = f"{image}: " if isinstance(image, (str, Path)) else ""
        raise ImageError(f"{where}no face found ({len(det)} detector hits, none confirmed by the landmark model). "
                         "Please use a photo of glasses or sunglasses worn on a face")
    crop, A = align_crop(img, face.keypoints, template)
    return AlignResult(Image.fromarray(crop), draw_detections(img, det, face, A, template), face, det, A)


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def read_categories(manifest: Path | None, folder: Path) -> dict[Path, str]:
    """file -> category from a manifest.csv with columns file, category (paths relative to it)."""
    if manifest is None:
        return {}
    if not Path(manifest).is_file():
        raise ImageError(f"{manifest}: manifest not found")
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "category"} <= set(rows[0]):
        raise ImageError(f"{manifest}: needs the columns file and category")
    return {(manifest.parent / r["file"]).resolve(): r["category"] for r in rows}


def contact_sheet(crops: list[tuple[str, Image.Image]], columns: int = 4, zoom: int = 2) -> Image.Image:
    """Grid of labelled crops (all the same size), for a person to judge the alignment."""
    if not crops:
        raise ImageError("no aligned crops to put on a contact sheet")
    w, h = crops[0][1].size
    cw, ch = w * zoom + 4, h * zoom + 14
    rows = -(-len(crops) // columns)
    sheet = Image.new("RGB", (columns * cw, rows * ch), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for k, (name, crop) in enumerate(crops):
        x, y = (k % columns) * cw, (k // columns) * ch
        sheet.paste(crop.resize((w * zoom, h * zoom), Image.Resampling.BILINEAR), (x, y))
        d.text((x + 2, y + h * zoom + 1), name[:34], fill=(0, 0, 0))
    return sheet


def bench_detect(folder: Path, manifest: Path | None = None, threads: int = 1, sheet: Path | None = None,
                 sheet_categories: tuple[str, ...] = (), landmarker: Landmarker | None = None) -> dict:
    """Run detector + aligner on every image of `folder`; time them; count faces.

    faces_found_rate: share of images where a face is found and confirmed by the landmark model;
    multi_face_images: images with >= 2 detections; mean_ms: detect + landmarks per image (image
    decoding excluded), torch with `threads` threads. With a manifest (file, category), the same
    numbers per category. `sheet` writes a contact sheet of the aligned glasses crops."""
    from tqdm import tqdm

    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    files = list_images(folder)
    cats = read_categories(manifest, folder)
    lm = landmarker or default_landmarker()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    per_image, crops = [], []
    try:
        for path in tqdm(files, desc="bench detect", unit="img", file=sys.stderr):
            img = _rgb(path)
            det, face, t_det, t_lm = lm.timed(img)
            cat = cats.get(path.resolve(), "")
            rec = {"file": str(path.relative_to(folder)), "category": cat, "detections": len(det),
                   "scores": [round(float(s), 4) for s in det.scores], "face_found": face is not None,
                   "detect_ms": round(t_det, 3), "landmarks_ms": round(t_lm, 3)}
            if face is not None:
                rec.update(presence=round(face.presence, 4), yaw=round(face.pose.yaw, 1),
                           pitch=round(face.pose.pitch, 1), roll=round(face.pose.roll, 1))
                if sheet is not None and (not sheet_categories or cat in sheet_categories):
                    crops.append((path.name, Image.fromarray(align_crop(img, face.keypoints)[0])))
            per_image.append(rec)
    finally:
        torch.set_num_threads(old_threads)
    if sheet is not None:
        sheet.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(crops).save(sheet)

    def summary(recs: list[dict]) -> dict:
        n = len(recs)
        return {"images": n,
                "faces_found": sum(r["face_found"] for r in recs),
                "faces_found_rate": sum(r["face_found"] for r in recs) / max(n, 1),
                "detector_hit_images": sum(r["detections"] > 0 for r in recs),
                "multi_face_images": sum(r["detections"] >= 2 for r in recs),
                "mean_ms": float(np.mean([r["detect_ms"] + r["landmarks_ms"] for r in recs])) if n else 0.0}

    out = summary(per_image)
    out.update(mean_detect_ms=float(np.mean([r["detect_ms"] for r in per_image])),
               mean_landmarks_ms=float(np.mean([r["landmarks_ms"] for r in per_image if r["face_found"]] or [0.0])),
               threads=threads, backend="torch")
    if cats:
        out["per_category"] = {c: summary([r for r in per_image if r["category"] == c])
                               for c in sorted({r["category"] for r in per_image})}
    out["per_image"] = per_image
    return out
