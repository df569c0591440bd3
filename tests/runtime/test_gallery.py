"""PQ gallery runtime: spec, .gfpq reader/writer (v1 and v2 with Refine(SQ8)) and its corruptions,
ADC search and the refine re-ranking vs loop references, SQ8 encoding."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from glassfinder_runtime import gallery as gal
from glassfinder_runtime.errors import GalleryError
from glassfinder_runtime.gallery import (Gallery, Metric, PQSpec, decode, encode, exact_search,
                                         gallery_to_bytes, parse_spec, pq_search, read_gallery,
                                         write_gallery)

# ADC sums M float32 table entries; the float64 loop reference differs by rounding only.
ADC_ATOL = 1e-4
ROTATION_ATOL = 1e-5
# Refined scores: float32 sums of d products scale * code * q vs a float64 loop (relative to max |D|).
REFINE_ATOL = 1e-5
# float32 rounding of scale * code on top of the half step of SQ8 rounding.
SQ8_HALF_STEP_SLACK = 1e-7
# A version-1 file written by the version-1 writer (committed with the tiny bundle; never regenerated).
V1_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_bundle" / "gallery.gfpq"


def random_gallery(spec: PQSpec, d: int, n: int, seed: int = 0, ids=None, shortlist: int = 64) -> Gallery:
    """A valid gallery with random codebooks and codes (no training needed to test the runtime);
    with a refine spec, random positive scales and SQ8 codes in -127..127."""
    rng = np.random.default_rng(seed)
    rotation = None
    if spec.opq:
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        rotation = q.astype(np.float32)
    codebooks = rng.standard_normal((spec.M, spec.ksub, d // spec.M)).astype(np.float32)
    codes = rng.integers(0, spec.ksub, (n, spec.M)).astype(np.uint8)
    ids = np.asarray(ids if ids is not None else rng.permutation(10 * n)[:n], dtype=np.int64)
    scales = sq8 = None
    if spec.refine:
        scales = rng.uniform(0.005, 0.02, d).astype(np.float32)
        sq8 = rng.integers(-127, 128, (n, d)).astype(np.int8)
    return Gallery(spec=spec, d=d, codebooks=codebooks, codes=codes, ids=ids, rotation=rotation,
                   refine_scales=scales, refine_codes=sq8, shortlist=shortlist)


# --- spec -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["PQ16x8,IP", "PQ8x4,L2", "OPQ16,PQ16x8,IP", "PQ1x8,L2", "PQ3x6,IP",
                                  "OPQ16,PQ16x8,IP,Refine(SQ8)", "PQ8x4,L2,Refine(SQ8)"])
def test_spec_round_trips(text):
    spec = parse_spec(text)
    assert str(spec) == text
    assert parse_spec(str(spec)) == spec


def test_spec_fields():
    spec = parse_spec("OPQ16,PQ16x8,IP")
    assert (spec.M, spec.nbits, spec.metric, spec.opq) == (16, 8, Metric.IP, True)
    assert (spec.ksub, spec.code_size, spec.dsub(128)) == (256, 16, 8)
    assert parse_spec("PQ8x4,L2").ksub == 16
    assert spec.refine is None and spec.bytes_per_vector(128) == 16
    refined = parse_spec("OPQ16,PQ16x8,IP,Refine(SQ8)")
    assert (refined.refine, refined.code_size, refined.refine_code_size(128)) == ("SQ8", 16, 128)
    assert refined.bytes_per_vector(128) == 144 and refined.without_refine() == spec


@pytest.mark.parametrize("text", ["PQ16x8,IP,Refine(SQ4)", "PQ16x8,IP,Refine()", "PQ16x8,IP,Refine(sq8)",
                                  "PQ16x8,IP,Refine(PQ4x8)"])
def test_unknown_refine_kinds_are_named(text):
    with pytest.raises(GalleryError, match="unknown refine kind .* supported: Refine\\(SQ8\\)"):
        parse_spec(text)
    with pytest.raises(GalleryError, match="refine kind 'SQ4' is not supported"):
        PQSpec(M=4, nbits=8, metric=Metric.IP, refine="SQ4")


@pytest.mark.parametrize("text", ["PQ16", "PQ16x8", "PQ16,IP", "PQ16x8,COS", "pq16x8,ip", "PQ0x8,IP",
                                  "PQ16x9,IP", "PQ16x3,IP", "OPQ8,PQ16x8,IP", "PQ16x8,IP,L2", "", "PQ16x8,IP,Refine",
                                  "PQ16x8,IP,Refine(SQ8),IP", "Refine(SQ8),PQ16x8,IP", "PQ16x8,Refine(SQ8)",
                                  "PQ16x8,IP,Refine(SQ8"])
def test_bad_specs_raise(text):
    with pytest.raises(GalleryError, match="PQ spec"):
        parse_spec(text)


def test_m_must_divide_d():
    with pytest.raises(GalleryError, match="must divide"):
        parse_spec("PQ16x8,IP").dsub(100)


# --- file format ----------------------------------------------------------------------------


@pytest.mark.parametrize("text,d,n", [("PQ16x8,IP", 128, 300), ("PQ3x4,L2", 12, 7),
                                      ("OPQ4,PQ4x8,IP", 16, 50), ("PQ8x8,L2", 32, 0)])
def test_write_read_round_trip_is_byte_exact(tmp_path, text, d, n):
    g = random_gallery(parse_spec(text), d, n)
    path = write_gallery(g, tmp_path / "g.gfpq")
    data = path.read_bytes()
    assert data[:4] == b"GFPQ" and len(data) % 4 == 0
    back = read_gallery(path)
    assert back.spec == g.spec and back.d == d and back.n == n
    np.testing.assert_array_equal(back.codebooks, g.codebooks)
    np.testing.assert_array_equal(back.codes, g.codes)
    np.testing.assert_array_equal(back.ids, g.ids)
    if g.rotation is not None:
        np.testing.assert_array_equal(back.rotation, g.rotation)
    assert gallery_to_bytes(back) == data


def test_documented_layout(tmp_path):
    """The offsets of docs/gallery_format.md, checked on a file with an odd code section."""
    g = random_gallery(parse_spec("PQ3x4,L2"), 12, 7)
    data = gallery_to_bytes(g)
    magic, version, min_reader, header_size, d, M, nbits, metric, flags, n = struct.unpack_from(
        "<4sHHIIIIIIQ", data)
    assert (magic, version, min_reader, header_size) == (b"GFPQ", 1, 1, 64)
    assert (d, M, nbits, metric, flags, n) == (12, 3, 4, 1, 0, 7)
    assert data[40:64] == bytes(24)
    codebooks_end = 64 + 3 * 16 * 4 * 4
    codes_end = codebooks_end + 7 * 3
    ids_start = codes_end + (-codes_end % 8)
    assert ids_start % 8 == 0
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", 3 * 16 * 4, 64).reshape(3, 16, 4), g.codebooks)
    np.testing.assert_array_equal(np.frombuffer(data, "u1", 21, codebooks_end).reshape(7, 3), g.codes)
    np.testing.assert_array_equal(np.frombuffer(data, "<i8", 7, ids_start), g.ids)
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    assert len(data) == ids_start + 7 * 8 + 4


def _with_crc(body: bytes) -> bytes:
    """Replace the trailing CRC32 so that only the semantic check can fail."""
    return body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]))


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


@pytest.fixture
def good_file(tmp_path):
    g = random_gallery(parse_spec("PQ4x8,IP"), 16, 20, ids=np.arange(100, 120))
    path = write_gallery(g, tmp_path / "good.gfpq")
    return path, path.read_bytes()


def _ids_offset(data: bytes, n: int) -> int:
    return len(data) - 4 - 8 * n


def _expect_error(tmp_path, data: bytes, match: str) -> None:
    path = tmp_path / "bad.gfpq"
    path.write_bytes(data)
    with pytest.raises(GalleryError, match=match) as info:
        read_gallery(path)
    assert str(path) in str(info.value)


def test_bad_magic(tmp_path, good_file):
    _expect_error(tmp_path, _patch(good_file[1], 0, b"GGUF"), "bad magic")


@pytest.mark.parametrize("keep", [0, 3, 10, 63, 64, 100, 64 + 4 * 256 * 4 * 4 + 5, -13, -5, -1])
def test_truncated_files(tmp_path, good_file, keep):
    data = good_file[1]
    _expect_error(tmp_path, data[:keep], "truncated|bad magic")


def test_truncation_names_the_section(tmp_path, good_file):
    data = good_file[1]
    codes_offset = 64 + 4 * 256 * 4 * 4
    _expect_error(tmp_path, data[:codes_offset + 5], "truncated in the codes section")
    _expect_error(tmp_path, data[:-13], "truncated in the ids section")


@pytest.mark.parametrize("offset", [70, 64 + 4 * 256 * 4 * 4 + 3, -10, -2])
def test_flipped_byte_fails_the_checksum(tmp_path, good_file, offset):
    data = bytearray(good_file[1])
    data[offset] ^= 0x40
    _expect_error(tmp_path, bytes(data), "checksum mismatch")


def test_negative_id_is_out_of_range(tmp_path, good_file):
    data = good_file[1]
    bad = _with_crc(_patch(data, _ids_offset(data, 20) + 8 * 3, struct.pack("<q", -5)))
    _expect_error(tmp_path, bad, r"ids out of range: ids\[3\] = -5")


def test_duplicate_ids(tmp_path, good_file):
    data = good_file[1]
    bad = _with_crc(_patch(data, _ids_offset(data, 20) + 8 * 7, struct.pack("<q", 100)))
    _expect_error(tmp_path, bad, r"duplicate ids: \[100\]")


def test_unsupported_version(tmp_path, good_file):
    bad = _with_crc(_patch(good_file[1], 4, struct.pack("<HH", 3, 3)))
    _expect_error(tmp_path, bad, "unsupported version")


def test_newer_file_readable_by_old_reader_is_accepted(tmp_path, good_file):
    """version 2 with min_reader_version 1 means 'a v1 reader may read this'."""
    path = tmp_path / "v2.gfpq"
    path.write_bytes(_with_crc(_patch(good_file[1], 4, struct.pack("<HH", 2, 1))))
    assert read_gallery(path).n == 20


def test_unknown_flags_and_trailing_bytes(tmp_path, good_file):
    data = good_file[1]
    _expect_error(tmp_path, _with_crc(_patch(data, 28, struct.pack("<I", 6))), "unknown header flags")
    _expect_error(tmp_path, data + b"\0\0\0\0", "trailing bytes")


def test_codes_out_of_range_for_nbits(tmp_path):
    g = random_gallery(parse_spec("PQ2x4,IP"), 8, 5)
    data = gallery_to_bytes(g)
    codes_offset = 64 + 2 * 16 * 4 * 4
    _expect_error(tmp_path, _with_crc(_patch(data, codes_offset + 1, bytes([16]))), "codes out of range")


def test_missing_file(tmp_path):
    with pytest.raises(GalleryError, match="missing.gfpq"):
        read_gallery(tmp_path / "missing.gfpq")


def test_gallery_validates_arrays():
    g = random_gallery(parse_spec("PQ4x8,IP"), 16, 10)
    with pytest.raises(GalleryError, match="codes must be uint8"):
        Gallery(g.spec, 16, g.codebooks, g.codes.astype(np.int32), g.ids)
    with pytest.raises(GalleryError, match="OPQ rotation"):
        Gallery(g.spec, 16, g.codebooks, g.codes, g.ids, rotation=np.eye(16, dtype=np.float32))


# --- encode / search ------------------------------------------------------------------------


def reconstruct_loop(g: Gallery, i: int) -> np.ndarray:
    """x_hat of gallery row i, float64, one sub-vector at a time (faiss decode_ref style)."""
    x = np.concatenate([g.codebooks[m, g.codes[i, m]].astype(np.float64) for m in range(g.spec.M)])
    return x if g.rotation is None else g.rotation.astype(np.float64).T @ x


def search_loop(g: Gallery, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force ADC reference: the distance of each query to each reconstructed vector."""
    D_ref = np.empty((len(xq), k))
    I_ref = np.empty((len(xq), k), dtype=np.int64)
    recon = [reconstruct_loop(g, i) for i in range(g.n)]
    for q, x in enumerate(xq.astype(np.float64)):
        if g.spec.metric is Metric.IP:
            dist = [float(x @ r) for r in recon]
            order = sorted(range(g.n), key=lambda i: (-dist[i], i))
        else:
            dist = [float(((x - r) ** 2).sum()) for r in recon]
            order = sorted(range(g.n), key=lambda i: (dist[i], i))
        D_ref[q] = [dist[i] for i in order[:k]]
        I_ref[q] = g.ids[order[:k]]
    return D_ref, I_ref


@pytest.mark.parametrize("pair_gather", [False, True])
@pytest.mark.parametrize("text,d", [("PQ4x8,IP", 16), ("PQ4x8,L2", 16), ("PQ5x4,IP", 20),
                                    ("OPQ4,PQ4x6,L2", 16), ("PQ1x8,IP", 8)])
def test_pq_search_equals_loop_reference(monkeypatch, pair_gather, text, d):
    monkeypatch.setattr(gal, "PAIR_GATHER_MIN_N", 0 if pair_gather else 10**9)
    monkeypatch.setattr(gal, "_SCORE_CHUNK", 64)  # 300 codes: several chunks and a ragged one
    g = random_gallery(parse_spec(text), d, 300, seed=1)
    xq = np.random.default_rng(2).standard_normal((4, d)).astype(np.float32)
    D, I = pq_search(g, xq, 10)
    D_ref, I_ref = search_loop(g, xq, 10)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (4, 10)
    np.testing.assert_allclose(D, D_ref, atol=ADC_ATOL * np.abs(D_ref).max(), rtol=0)
    np.testing.assert_array_equal(I, I_ref)


@pytest.mark.parametrize("metric,pad", [("IP", -np.inf), ("L2", np.inf)])
def test_k_larger_than_n_is_padded(metric, pad):
    g = random_gallery(parse_spec(f"PQ2x8,{metric}"), 8, 5)
    D, I = pq_search(g, np.ones((3, 8), np.float32), 8)
    assert (I[:, 5:] == -1).all() and (D[:, 5:] == pad).all()
    assert sorted(I[0, :5].tolist()) == sorted(g.ids.tolist())
    empty = random_gallery(parse_spec(f"PQ2x8,{metric}"), 8, 0)
    D, I = pq_search(empty, np.ones((2, 8), np.float32), 3)
    assert (I == -1).all() and (D == pad).all()


def test_ties_go_to_the_earlier_row():
    g = random_gallery(parse_spec("PQ2x8,IP"), 8, 6, ids=[50, 40, 30, 20, 10, 0])
    codes = np.zeros_like(g.codes)  # every row has the same code: six equal scores
    g = Gallery(g.spec, g.d, g.codebooks, codes, g.ids)
    _, I = pq_search(g, np.ones((1, 8), np.float32), 4)
    assert I.tolist() == [[50, 40, 30, 20]]


@pytest.mark.parametrize("k", [1, 10, 100])
def test_top_k_block_threshold_matches_full_sort(k):
    rng = np.random.default_rng(k)
    for scores in (rng.standard_normal(50_000).astype(np.float32),
                   rng.integers(0, 30, 50_000).astype(np.float32)):  # heavy ties
        ref = np.lexsort((np.arange(scores.size), -scores))[:k]
        np.testing.assert_array_equal(gal._top_k(scores, k), ref)


def test_exact_search_matches_argsort():
    rng = np.random.default_rng(3)
    xb, xq = rng.standard_normal((500, 16)), rng.standard_normal((7, 16))
    for metric in ("IP", "L2"):
        D, I = exact_search(xb, xq, 5, metric)
        full = xq @ xb.T if metric == "IP" else -((xq[:, None] - xb[None]) ** 2).sum(-1)
        ref = np.argsort(-full, axis=1, kind="stable")[:, :5]
        np.testing.assert_array_equal(I, ref)
        expected = np.take_along_axis(full, ref, 1) * (1 if metric == "IP" else -1)
        np.testing.assert_allclose(D, expected, rtol=1e-4, atol=1e-4)


def test_encode_picks_the_nearest_centroid_and_decode_inverts_it():
    g = random_gallery(parse_spec("OPQ4,PQ4x8,L2"), 16, 0)
    x = np.random.default_rng(4).standard_normal((50, 16)).astype(np.float32)
    codes = encode(g.codebooks, x, g.rotation)
    xr = x.astype(np.float64) @ g.rotation.T.astype(np.float64)
    for m in range(4):
        dist = ((xr[:, None, m * 4:(m + 1) * 4] - g.codebooks[m][None]) ** 2).sum(-1)
        np.testing.assert_array_equal(codes[:, m], dist.argmin(1))
    recon = decode(g.codebooks, codes, g.rotation)
    expected = np.concatenate([g.codebooks[m][codes[:, m]] for m in range(4)], 1) @ g.rotation
    np.testing.assert_allclose(recon, expected, atol=ROTATION_ATOL)


def test_search_rejects_bad_queries():
    g = random_gallery(parse_spec("PQ4x8,IP"), 16, 10)
    with pytest.raises(GalleryError, match=r"shape \(n, 16\)"):
        pq_search(g, np.zeros((2, 15), np.float32), 3)
    with pytest.raises(GalleryError, match="NaN"):
        pq_search(g, np.full((1, 16), np.nan, np.float32), 3)
    with pytest.raises(GalleryError, match="k must be"):
        pq_search(g, np.zeros((1, 16), np.float32), 0)


def test_longer_header_from_a_later_version_is_skipped(tmp_path, good_file):
    """A later writer may append header fields; a v1 reader skips them (docs: versioning)."""
    data = good_file[1]
    longer = data[:8] + struct.pack("<I", 72) + data[12:64] + b"newfield" + data[64:]
    path = tmp_path / "long.gfpq"
    path.write_bytes(_with_crc(longer))
    back = read_gallery(path)
    np.testing.assert_array_equal(back.codes, read_gallery(good_file[0]).codes)
    _expect_error(tmp_path, _with_crc(_patch(data, 8, struct.pack("<I", 60))), "header size 60")


# --- version 2: Refine(SQ8) -------------------------------------------------------------------


@pytest.mark.parametrize("text,d,n", [("PQ16x8,IP,Refine(SQ8)", 128, 300), ("PQ3x4,L2,Refine(SQ8)", 12, 7),
                                      ("OPQ4,PQ4x8,IP,Refine(SQ8)", 16, 50), ("PQ8x8,L2,Refine(SQ8)", 32, 0)])
def test_refine_write_read_round_trip_is_byte_exact(tmp_path, text, d, n):
    g = random_gallery(parse_spec(text), d, n, shortlist=17)
    data = write_gallery(g, tmp_path / "g.gfpq").read_bytes()
    back = read_gallery(tmp_path / "g.gfpq")
    assert back.spec == g.spec and back.spec.refine == "SQ8" and back.n == n and back.shortlist == 17
    np.testing.assert_array_equal(back.refine_scales, g.refine_scales)
    np.testing.assert_array_equal(back.refine_codes, g.refine_codes)
    np.testing.assert_array_equal(back.codes, g.codes)
    np.testing.assert_array_equal(back.ids, g.ids)
    assert back.refine_codes.dtype == np.int8 and gallery_to_bytes(back) == data


def test_refine_documented_layout():
    """docs/gallery_format.md, version 2: flag bit 1, shortlist at byte 40, scales and codes after the ids."""
    g = random_gallery(parse_spec("PQ3x4,L2,Refine(SQ8)"), 12, 7, shortlist=5)
    data = gallery_to_bytes(g)
    magic, version, min_reader, header_size, d, M, nbits, metric, flags, n, shortlist = struct.unpack_from(
        "<4sHHIIIIIIQI", data)
    assert (magic, version, min_reader, header_size) == (b"GFPQ", 2, 2, 64)
    assert (d, M, nbits, metric, flags, n, shortlist) == (12, 3, 4, 1, gal.FLAG_REFINE_SQ8, 7, 5)
    assert data[44:64] == bytes(20)
    codes_end = 64 + 3 * 16 * 4 * 4 + 7 * 3
    ids_start = codes_end + (-codes_end % 8)
    scales_start = ids_start + 7 * 8
    sq8_start = scales_start + 12 * 4
    np.testing.assert_array_equal(np.frombuffer(data, "<i8", 7, ids_start), g.ids)
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", 12, scales_start), g.refine_scales)
    np.testing.assert_array_equal(np.frombuffer(data, "i1", 7 * 12, sq8_start).reshape(7, 12), g.refine_codes)
    assert len(data) == sq8_start + 7 * 12 + 4
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_a_file_without_refine_is_still_version_1():
    """No refine: the exact bytes of the version-1 writer, so version-1 phone readers keep working."""
    g = random_gallery(parse_spec("OPQ4,PQ4x8,IP"), 16, 9)
    data = gallery_to_bytes(g)
    assert struct.unpack_from("<HH", data, 4) == (1, 1) and data[40:64] == bytes(24)


def test_version_1_file_of_the_v1_writer_reads_unchanged():
    data = V1_FIXTURE.read_bytes()
    assert struct.unpack_from("<HH", data, 4) == (1, 1)
    g = read_gallery(V1_FIXTURE)
    assert g.spec.refine is None and g.refine_codes is None and g.refine_scales is None
    assert gallery_to_bytes(g) == data
    xq = np.random.default_rng(0).standard_normal((3, g.d)).astype(np.float32)
    _, I = pq_search(g, xq, 5)
    _, I_ref = search_loop(g, xq, 5)
    np.testing.assert_array_equal(I, I_ref)


def test_a_version_1_reserved_shortlist_field_is_ignored_without_the_flag(tmp_path, good_file):
    path = tmp_path / "reserved.gfpq"
    path.write_bytes(_with_crc(_patch(good_file[1], 40, struct.pack("<I", 7))))
    back = read_gallery(path)
    assert back.spec.refine is None and back.shortlist == gal.DEFAULT_SHORTLIST


@pytest.fixture
def refine_file(tmp_path):
    g = random_gallery(parse_spec("PQ4x8,IP,Refine(SQ8)"), 16, 20, ids=np.arange(100, 120))
    path = write_gallery(g, tmp_path / "refine.gfpq")
    return path, path.read_bytes()


def test_refine_truncation_names_the_section(tmp_path, refine_file):
    data = refine_file[1]
    sq8_start = len(data) - 4 - 20 * 16
    _expect_error(tmp_path, data[:sq8_start - 10], "truncated in the refine_scales section")
    _expect_error(tmp_path, data[:sq8_start + 5], "truncated in the refine_codes section")
    _expect_error(tmp_path, data[:-2], "truncated in the checksum section")
    _expect_error(tmp_path, data + b"\0", "trailing bytes")


def test_refine_flag_on_a_file_without_the_section_is_truncated(tmp_path, good_file):
    data = good_file[1]
    header = _patch(_patch(_patch(data, 4, struct.pack("<HH", 2, 2)), 28, struct.pack("<I", gal.FLAG_REFINE_SQ8)),
                    40, struct.pack("<I", 64))
    _expect_error(tmp_path, _with_crc(header), "truncated in the refine_scales section")


@pytest.mark.parametrize("offset", [-5, -4 - 20 * 16 - 3])
def test_refine_flipped_byte_fails_the_checksum(tmp_path, refine_file, offset):
    data = bytearray(refine_file[1])
    data[offset] ^= 0x40
    _expect_error(tmp_path, bytes(data), "checksum mismatch")


def test_refine_bad_values_are_refused(tmp_path, refine_file):
    data = refine_file[1]
    _expect_error(tmp_path, _with_crc(_patch(data, 40, struct.pack("<I", 0))), "refine shortlist 0")
    _expect_error(tmp_path, _with_crc(_patch(data, len(data) - 4 - 7, bytes([0x80]))), "refine codes out of range")
    scales_start = len(data) - 4 - 20 * 16 - 16 * 4
    _expect_error(tmp_path, _with_crc(_patch(data, scales_start, struct.pack("<f", 0.0))),
                  "scales must be finite and > 0")
    _expect_error(tmp_path, _with_crc(_patch(data, 28, struct.pack("<I", 4))), "unknown header flags")


def test_refine_arrays_are_validated():
    g = random_gallery(parse_spec("PQ4x8,IP,Refine(SQ8)"), 16, 10)
    plain = parse_spec("PQ4x8,IP")
    with pytest.raises(GalleryError, match="has no refine stage"):
        Gallery(plain, 16, g.codebooks, g.codes, g.ids, refine_scales=g.refine_scales, refine_codes=g.refine_codes)
    with pytest.raises(GalleryError, match="needs refine scales and codes"):
        Gallery(g.spec, 16, g.codebooks, g.codes, g.ids)
    with pytest.raises(GalleryError, match="refine codes must be int8 of shape"):
        Gallery(g.spec, 16, g.codebooks, g.codes, g.ids, refine_scales=g.refine_scales,
                refine_codes=g.refine_codes.astype(np.int16))
    with pytest.raises(GalleryError, match="shortlist must be an integer >= 1"):
        Gallery(g.spec, 16, g.codebooks, g.codes, g.ids, refine_scales=g.refine_scales,
                refine_codes=g.refine_codes, shortlist=0)


def refine_loop(g: Gallery, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference of the refine: the ADC top max(k, shortlist) rows (ADC loop reference),
    re-scored with scale * code, sorted by (score, gallery position)."""
    _, rows_ids = search_loop(g, xq, min(g.n, max(k, g.shortlist)))
    pos_of = {int(i): p for p, i in enumerate(g.ids)}
    x_hat = g.refine_codes.astype(np.float64) * g.refine_scales.astype(np.float64)
    D_ref = np.full((len(xq), k), np.nan)
    I_ref = np.full((len(xq), k), -1, dtype=np.int64)
    for q, x in enumerate(xq.astype(np.float64)):
        rows = [pos_of[int(i)] for i in rows_ids[q]]
        if g.spec.metric is Metric.IP:
            dist = {r: float(x @ x_hat[r]) for r in rows}
            order = sorted(rows, key=lambda r: (-dist[r], r))[:k]
        else:
            dist = {r: float(((x - x_hat[r]) ** 2).sum()) for r in rows}
            order = sorted(rows, key=lambda r: (dist[r], r))[:k]
        D_ref[q, :len(order)] = [dist[r] for r in order]
        I_ref[q, :len(order)] = g.ids[order]
    return D_ref, I_ref


@pytest.mark.parametrize("pair_gather", [False, True])
@pytest.mark.parametrize("text,d,shortlist", [("PQ4x8,IP,Refine(SQ8)", 16, 25), ("PQ4x8,L2,Refine(SQ8)", 16, 25),
                                              ("OPQ4,PQ4x6,IP,Refine(SQ8)", 16, 40), ("PQ2x8,IP,Refine(SQ8)", 8, 3)])
def test_refine_search_equals_loop_reference(monkeypatch, pair_gather, text, d, shortlist):
    monkeypatch.setattr(gal, "PAIR_GATHER_MIN_N", 0 if pair_gather else 10**9)
    g = random_gallery(parse_spec(text), d, 300, seed=5, shortlist=shortlist)
    xq = np.random.default_rng(6).standard_normal((4, d)).astype(np.float32)
    D, I = pq_search(g, xq, 10)
    D_ref, I_ref = refine_loop(g, xq, 10)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (4, 10)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, atol=REFINE_ATOL * np.abs(D_ref).max(), rtol=0)
    # The refine really re-orders: its top-10 is not the ADC top-10.
    plain = Gallery(g.spec.without_refine(), d, g.codebooks, g.codes, g.ids, g.rotation)
    assert not np.array_equal(pq_search(plain, xq, 10)[1], I)


def test_refine_with_a_shortlist_of_all_rows_is_exact_on_the_sq8_vectors():
    g = random_gallery(parse_spec("PQ4x8,IP,Refine(SQ8)"), 16, 200, seed=7, shortlist=1000)
    xq = np.random.default_rng(8).standard_normal((5, 16)).astype(np.float32)
    _, I = pq_search(g, xq, 7)
    _, pos = exact_search(gal.sq8_decode(g.refine_scales, g.refine_codes), xq, 7, "IP")
    np.testing.assert_array_equal(I, g.ids[pos])


@pytest.mark.parametrize("metric,pad", [("IP", -np.inf), ("L2", np.inf)])
def test_refine_k_above_shortlist_and_n(metric, pad):
    g = random_gallery(parse_spec(f"PQ2x8,{metric},Refine(SQ8)"), 8, 12, shortlist=2)
    D, I = pq_search(g, np.ones((2, 8), np.float32), 5)  # shortlist 2 < k = 5: raised to 5
    assert (I >= 0).all() and len(set(I[0].tolist())) == 5
    D, I = pq_search(g, np.ones((2, 8), np.float32), 15)  # k > n: every row, then padding
    assert sorted(I[0, :12].tolist()) == sorted(g.ids.tolist())
    assert (I[:, 12:] == -1).all() and (D[:, 12:] == pad).all()
    empty = random_gallery(parse_spec(f"PQ2x8,{metric},Refine(SQ8)"), 8, 0)
    D, I = pq_search(empty, np.ones((1, 8), np.float32), 3)
    assert (I == -1).all() and (D == pad).all()


def test_refine_ties_go_to_the_earlier_row():
    g = random_gallery(parse_spec("PQ2x8,IP,Refine(SQ8)"), 8, 6, ids=[50, 40, 30, 20, 10, 0], shortlist=6)
    codes = np.tile(g.codes[5], (6, 1))  # equal ADC scores...
    sq8 = np.tile(np.arange(8, dtype=np.int8), (6, 1))  # ...and equal refined scores, except row 3
    sq8[3] += 1
    g = Gallery(g.spec, 8, g.codebooks, codes, g.ids, refine_scales=g.refine_scales, refine_codes=sq8, shortlist=6)
    _, I = pq_search(g, np.ones((1, 8), np.float32), 4)
    assert I.tolist() == [[20, 50, 40, 30]]


def test_sq8_rounds_half_to_even_and_clips():
    scales = np.array([0.5, 0.25, 1.0, 0.125], np.float32)
    steps = np.array([[0.5, 1.5, 2.5, -2.5], [-0.5, 126.5, 127.5, -300.0]], np.float32)
    codes = gal.sq8_encode(scales, steps * scales)
    assert codes.dtype == np.int8
    assert codes.tolist() == [[0, 2, 2, -2], [0, 126, 127, -127]]


def test_sq8_scales_cover_the_build_range_and_guard_zero_dimensions():
    x = np.array([[0.5, -2.0, 0.0], [-1.0, 1.0, 0.0]], np.float32)
    scales = gal.sq8_scales(x)
    np.testing.assert_array_equal(scales, np.array([1.0, 2.0, 1.0], np.float32) / np.float32(127))
    codes = gal.sq8_encode(scales, x)
    assert codes[:, :2].tolist() == [[64, -127], [-127, 64]] and (codes[:, 2] == 0).all()
    # Reconstruction error is at most half a step per dimension.
    assert (np.abs(gal.sq8_decode(scales, codes) - x) <= scales / 2 + SQ8_HALF_STEP_SLACK).all()
