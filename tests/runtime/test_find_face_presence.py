"""pipeline.find_face's presence rule: every candidate gets all its re-crops (refine passes), and
the best presence of all passes decides; the mesh is the last pass's.

Over scripted fakes: golden.py's fake detector (one listed face) and an aligner whose c-th call
returns a chosen face flag, so each pass's score is set by the test, not by pixels.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from glassfinder_runtime import detect, golden, landmarks, pipeline

MESH_OPTS = landmarks.MeshOptions()
LOW, HIGH = -3.0, 3.0  # face-flag logits: presence 0.047 (below the 0.5 threshold) and 0.953 (above)
FACE = (20.0, 8.0, 44.0, 40.0)  # x0, y0, x1, y1 of the one detection, photo pixels (64 x 48)
STEP_PX = 24.0  # the scripted mesh moves this far right (crop px) per call: each pass crops elsewhere


class ScriptedAligner:
    """Aligner "model" whose c-th call returns face flag flags[c] and a fixed raw mesh in the middle
    two thirds of the crop (eye corners 33 and 263 level), moved right by c * STEP_PX."""

    def __init__(self, flags: list[float]) -> None:
        s, n = MESH_OPTS.input_size, MESH_OPTS.num_landmarks
        rng = np.random.default_rng(0)
        self.mesh = np.stack([rng.uniform(s / 6, 5 * s / 6, n), rng.uniform(s / 6, 5 * s / 6, n),
                              rng.normal(0.0, 5.0, n)], axis=1).astype(np.float32)
        self.mesh[33, :2], self.mesh[263, :2] = (0.3 * s, 0.4 * s), (0.7 * s, 0.4 * s)
        self.flags, self.calls = flags, 0

    def __call__(self, crop: np.ndarray) -> list[np.ndarray]:
        assert self.calls < len(self.flags), f"aligner called {self.calls + 1} times, {len(self.flags)} scripted"
        raw = self.mesh + np.array([STEP_PX * self.calls, 0.0, 0.0], dtype=np.float32)
        flag = np.array([[self.flags[self.calls]]], dtype=np.float32)
        self.calls += 1
        return [raw.reshape(1, -1), flag]


def _find_face(flags: list[float]) -> tuple[tuple, ScriptedAligner, Image.Image, detect.DetectorSpec]:
    """find_face on a grey 64 x 48 photo with one detection, refine = len(flags) - 1, no tiles."""
    spec = detect.DetectorSpec()
    anchors = detect.generate_anchors(spec.anchors)
    x0, y0, x1, y1 = FACE
    # The 64 x 48 photo letterboxes to the 128-px input at x2 with 16-px bands top and bottom.
    rows = golden._fake_face_rows(0, [(2 * x0, 2 * y0 + 16, 2 * x1, 2 * y1 + 16, 2.0)], anchors, spec.input_size, spec.decode)
    run_detector = golden._FakeDetector(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                                        np.stack([r[2] for r in rows]), np.array([r[3] for r in rows], dtype=np.float32),
                                        anchors.shape[0])
    image = Image.new("RGB", (64, 48), (90, 90, 90))
    aligner = ScriptedAligner(flags)
    opts = pipeline.FaceSearchOptions(refine=len(flags) - 1, tile_rows=0, max_candidates=4)
    return pipeline.find_face(image, run_detector, aligner, spec, anchors, MESH_OPTS, opts), aligner, image, spec


@pytest.mark.parametrize("flags", [[LOW, HIGH], [HIGH, LOW], [LOW, HIGH, LOW]])
def test_a_face_any_pass_confirms_is_accepted_with_the_last_pass_mesh(flags: list[float]) -> None:
    """A low first pass no longer skips the re-crops, and a low last pass no longer hides a high one."""
    (det, i, mesh, presence), aligner, image, _ = _find_face(flags)
    assert i == 0 and aligner.calls == len(flags)
    assert presence == landmarks.presence_score(np.float32(HIGH)) >= MESH_OPTS.presence_threshold
    # The mesh the passes give, re-run by hand: detection roi, then re-crops from each mesh.
    replay = ScriptedAligner(flags)
    kp = det.keypoints[0]
    roi = landmarks.face_roi(det.boxes[0], kp[detect.FaceKeypoint.RIGHT_EYE], kp[detect.FaceKeypoint.LEFT_EYE], MESH_OPTS.roi_scale)
    meshes = [pipeline.face_mesh(image, roi, replay, MESH_OPTS)[0]]
    for _ in flags[1:]:
        meshes.append(pipeline.face_mesh(image, landmarks.roi_from_mesh(meshes[-1], MESH_OPTS.roi_scale), replay, MESH_OPTS)[0])
    np.testing.assert_array_equal(mesh, meshes[-1])
    assert not np.array_equal(mesh, meshes[0])  # the re-crop really moved: the first mesh is not returned


@pytest.mark.parametrize("flags", [[LOW, LOW], [LOW, LOW, LOW]])
def test_a_face_no_pass_confirms_is_refused_after_all_its_passes(flags: list[float]) -> None:
    (_, i, mesh, presence), aligner, _, _ = _find_face(flags)
    assert (i, mesh, presence) == (-1, None, 0.0)
    assert aligner.calls == len(flags)  # the re-crops ran although the first pass was below the threshold
