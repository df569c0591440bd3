"""The committed golden vectors (tests/fixtures/golden/golden.txt) are exactly what the runtime writes.

The Kotlin and Swift stubs are checked against that file; if a runtime stage changes, this test
fails until the file is regenerated (and the stubs then have to agree with the new numbers):

    .venv/bin/python -c "from glassfinder_runtime.golden import write_golden; write_golden('tests/fixtures/golden')"

Checked: the same bytes with numpy's AVX-512 and AVX2 kernels and OpenBLAS SkylakeX / Haswell
kernels; with SSE-only kernels a few float64 values move in the last bit, which the failure
message then says.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from glassfinder_runtime import detect, gallery, golden, landmarks

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / golden.GOLDEN_NAME
# Relative differences that are kernel rounding, not a change of the runtime (a few ulps).
LAST_BITS_F32 = 1e-6
LAST_BITS_F64 = 1e-12
REGENERATE = ".venv/bin/python -c \"from glassfinder_runtime.golden import write_golden; write_golden('tests/fixtures/golden')\""


def _numeric_summary(committed: Path, fresh: Path) -> str:
    """Why two golden files differ: which blocks, and whether only float last bits moved (numpy and
    OpenBLAS pick kernels by CPU: an SSE-only machine rounds a few float64 sums differently)."""
    a, b = golden.read_golden(committed), golden.read_golden(fresh)
    if a.keys() != b.keys():
        return f"blocks differ: only committed {sorted(a.keys() - b.keys())}, only regenerated {sorted(b.keys() - a.keys())}"
    changed, last_bits_only = [], True
    for name in a:
        x, y = a[name], b[name]
        if isinstance(x, str) or x.dtype.kind == "i":
            if not np.array_equal(x, y):
                return f"block {name!r} changed (integers or text): the runtime's output changed; regenerate"
        elif not np.array_equal(x, y):
            rel = float(np.nanmax(np.abs(x.astype(np.float64) - y) / np.maximum(np.abs(x.astype(np.float64)), 1.0)))
            changed.append(f"{name} ({rel:.1e})")
            last_bits_only &= rel < (LAST_BITS_F32 if x.dtype == np.float32 else LAST_BITS_F64)
    verdict = "last-bit rounding of this CPU's kernels" if last_bits_only else "the runtime's numbers changed"
    return f"only float blocks differ, max relative difference {', '.join(changed[:10])}: {verdict}"


def test_committed_golden_is_byte_identical_to_a_regeneration(tmp_path: Path) -> None:
    assert FIXTURE.is_file(), f"missing golden fixture {FIXTURE}: write it with {REGENERATE}"
    fresh = golden.write_golden(tmp_path, seed=golden.DEFAULT_SEED)
    if FIXTURE.read_bytes() != fresh.read_bytes():
        raise AssertionError(f"{FIXTURE} differs from what the runtime writes now: {_numeric_summary(FIXTURE, fresh)}. "
                             f"If the runtime changed on purpose, regenerate it with {REGENERATE} and rerun "
                             f"tests/stubs/test_kotlin_golden.py")


def test_the_tiny_bundle_ships_the_current_golden_vectors() -> None:
    """App teams run their stub's check on the bundle's copy; a stale copy would test old numbers."""
    tiny = FIXTURE.parents[1] / "tiny_bundle" / "golden" / golden.GOLDEN_NAME
    assert tiny.read_bytes() == FIXTURE.read_bytes(), (
        f"{tiny} is not {FIXTURE}: copy it over and update the golden sha256 in the tiny bundle's manifest.json")


def test_writing_twice_gives_the_same_bytes_and_the_seed_matters(tmp_path: Path) -> None:
    a = golden.write_golden(tmp_path / "a", seed=3).read_bytes()
    b = golden.write_golden(tmp_path / "b", seed=3).read_bytes()
    c = golden.write_golden(tmp_path / "c", seed=4).read_bytes()
    assert a == b
    assert a != c


def test_text_round_trip_is_exact() -> None:
    """Floats are written as shortest round-trip decimals: reading the inputs back and re-running
    the runtime reproduces the stored outputs exactly (what lets the stubs compare integers exactly)."""
    g = golden.read_golden(FIXTURE)
    np.testing.assert_array_equal(g["anchors.default"], detect.generate_anchors())
    det = detect.decode_boxes(g["decode.xywh.raw_boxes"], g["decode.xywh.raw_scores"], g["decode.xywh.anchors"])
    np.testing.assert_array_equal(g["decode.xywh.boxes"], det.boxes)
    gal = gallery.gallery_from_bytes(g["pq.gfpq_bytes"].astype(np.uint8).tobytes())
    np.testing.assert_array_equal(gal.codebooks, g["pq.codebooks"])
    np.testing.assert_array_equal(gal.ids, g["pq.ids"])
    D, I = gallery.pq_search(gal, g["pq.queries"], int(g["pq.k"][0]))
    np.testing.assert_array_equal(I, g["pq.ip.I"])
    np.testing.assert_array_equal(D, g["pq.ip.D"])


def test_every_block_has_its_declared_shape_and_special_values_are_spelled_for_java_and_swift() -> None:
    text = FIXTURE.read_text(encoding="utf-8")
    g = golden.read_golden(FIXTURE)
    assert g["format_version"].tolist() == [golden.FORMAT_VERSION]
    tokens = set(text.split())
    assert "-Infinity" in tokens and not tokens & {"inf", "-inf", "nan"}
    # One block per stage family at least, so a stage silently dropped from write_golden is noticed.
    prefixes = {name.split(".")[0] for name in g}
    assert {"image_limits", "letterbox", "tiles", "normalize", "anchors", "decode", "nms", "project", "similarity", "affine", "warp",
            "align_crop", "landmarks", "preprocess", "int8", "gate", "l2_normalize", "pq", "manifest", "find_face"} <= prefixes
    # numpy rounds half to even when the runtime quantizes an int8 input: 2.5 -> 2, 1.5 -> 2, -2.5 -> -2.
    assert g["int8.ties.q"][:5].tolist() == [2, 2, -2, -2, 0]
    # The exact-tie case: three identical codes are ranked by gallery position.
    D, I = g["pq.l2.D"][0], g["pq.l2.I"][0]
    ids = g["pq.ids"]
    assert I[:3].tolist() == [ids[3], ids[7], ids[21]] and D[0] == D[1] == D[2]


def test_find_face_block_pins_the_candidate_loop_and_the_tiled_fallback() -> None:
    """The fake-model cases of golden.py do what they are there for, so the stubs are checked on each
    path of pipeline.find_face: a rejected first candidate, a face only the tiled pass confirms, none,
    and a face only a re-crop confirms (the best presence of all passes decides)."""
    g = golden.read_golden(FIXTURE)
    threshold = 0.5  # landmarks.MeshOptions().presence_threshold, as written in find_face.mesh_options
    assert f'"presence_threshold":{threshold}' in g["find_face.mesh_options"]
    offset, scale = g["find_face.fake_aligner.flag"]

    def presences(tag: str) -> np.ndarray:
        """Presence of every aligner pass of a case, as the fake aligner's float32 flag gives it."""
        means = g[f"find_face.{tag}.aligner_means"]
        return np.array([landmarks.presence_score(np.float32((m - offset) / scale)) for m in means])

    whole = detect.Detections(g["find_face.whole.boxes"], g["find_face.whole.keypoints"], g["find_face.whole.scores"])
    order = detect.by_prominence(whole)
    refine = int(g["find_face.whole.options"][0])
    # whole: one detector pass; the largest face is rejected after all its 1 + refine aligner passes,
    # the next is confirmed after its 1 + refine passes.
    assert g["find_face.whole.detector_calls"].tolist() == [1]
    assert g["find_face.whole.index"].tolist() == [order[1]]
    p = presences("whole")
    assert len(p) == 2 * (1 + refine) and (p[: 1 + refine] < threshold).all() and (p[1 + refine:] >= threshold).all()
    assert g["find_face.whole.presence"][0] == p[1 + refine:].max()
    # tiled: max_candidates=1 rejects the whole-photo pass; every tile is run and the merged tiles confirm one.
    refine_tiled, tile_rows, max_candidates = g["find_face.tiled.options"]
    height, width = g["find_face.image"].shape[:2]
    tiles = detect.tile_windows(int(width), int(height), int(tile_rows))
    assert max_candidates == 1 and g["find_face.tiled.detector_calls"].tolist() == [1 + len(tiles)]
    assert g["find_face.tiled.index"][0] >= 0 and (presences("tiled")[: 1 + refine_tiled] < threshold).all()
    # none: nothing confirmed in either pass; the whole-photo detections come back with index -1.
    assert g["find_face.none.index"].tolist() == [-1] and g["find_face.none.mesh"].shape == (0, 3)
    assert (presences("none") < threshold).all() and g["find_face.none.detector_calls"][0] == 1 + len(tiles)
    # recrop: one detection; its first pass and its last re-crop score below the threshold, the first
    # re-crop above: confirmed in the whole-photo pass (skipping the re-crops after a low first pass,
    # or keeping the last pass's score, would refuse it) with the best presence and a mesh.
    assert g["find_face.recrop.fake_aligner.shift"].tolist() != [0.0, 0.0]
    assert g["find_face.recrop.index"].tolist() == [0] and g["find_face.recrop.detector_calls"].tolist() == [1]
    p = presences("recrop")
    assert len(p) == 1 + int(g["find_face.recrop.options"][0]) == 3
    assert p[0] < threshold <= p[1] and p[2] < threshold
    assert g["find_face.recrop.presence"][0] == p.max() and g["find_face.recrop.mesh"].shape == (468, 3)


def test_refine_block_re_ranks_a_real_shortlist_and_pins_its_ties() -> None:
    """The Refine(SQ8) case of golden.py exercises what the stubs must get right: the shortlist is
    smaller than n and changes the ADC order, identical rows tie (lower position first), the
    version-2 file parses back to the same gallery, and SQ8 rounds .5 to even."""
    g = golden.read_golden(FIXTURE)
    ids, codebooks = g["pq.ids"], g["pq.codebooks"].astype(np.float32)
    codes, sq8 = g["pq.refine.codes"].astype(np.uint8), g["pq.refine.sq8"].astype(np.int8)
    xq, k, shortlist = g["pq.refine.queries"], int(g["pq.refine.k"][0]), int(g["pq.refine.shortlist"][0])
    assert k < shortlist < len(ids)
    plain = gallery.Gallery(gallery.parse_spec("PQ4x4,IP"), 16, codebooks, codes, ids)
    assert not np.array_equal(gallery.pq_search(plain, xq, k)[1], g["pq.refine_ip.I"])
    # Rows 12 and 30 are identical (PQ and SQ8): tied, lower gallery position first.
    I, D = g["pq.refine_ip.I"][1], g["pq.refine_ip.D"][1]
    assert I[:2].tolist() == [ids[12], ids[30]] and D[0] == D[1]
    file = gallery.gallery_from_bytes(g["pq.refine.gfpq_bytes"].astype(np.uint8).tobytes())
    assert str(file.spec) == "OPQ4,PQ4x4,IP,Refine(SQ8)" and file.shortlist == shortlist
    np.testing.assert_array_equal(file.refine_codes, sq8)
    np.testing.assert_array_equal(file.refine_scales, g["pq.refine.scales"])
    D_file, I_file = gallery.pq_search(file, xq, k)
    np.testing.assert_array_equal(I_file, g["pq.refine_opq_ip.I"])
    np.testing.assert_array_equal(D_file, g["pq.refine_opq_ip.D"])
    assert g["pq.sq8.codes"][0].tolist() == [0, 2, 2, 0]  # 0.5, 1.5, 2.5, -0.5 steps
