"""PQ gallery runtime: spec, .gfpq reader/writer and its corruptions, ADC search vs loop references."""
from __future__ import annotations

import struct
import zlib

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


def random_gallery(spec: PQSpec, d: int, n: int, seed: int = 0, ids=None) -> Gallery:
    """A valid gallery with random codebooks and codes (no training needed to test the runtime)."""
    rng = np.random.default_rng(seed)
    rotation = None
    if spec.opq:
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        rotation = q.astype(np.float32)
    return Gallery(
        spec=spec, d=d,
        codebooks=rng.standard_normal((spec.M, spec.ksub, d // spec.M)).astype(np.float32),
        codes=rng.integers(0, spec.ksub, (n, spec.M)).astype(np.uint8),
        ids=np.asarray(ids if ids is not None else rng.permutation(10 * n)[:n], dtype=np.int64),
        rotation=rotation)


# --- spec -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["PQ16x8,IP", "PQ8x4,L2", "OPQ16,PQ16x8,IP", "PQ1x8,L2", "PQ3x6,IP"])
def test_spec_round_trips(text):
    spec = parse_spec(text)
    assert str(spec) == text
    assert parse_spec(str(spec)) == spec


def test_spec_fields():
    spec = parse_spec("OPQ16,PQ16x8,IP")
    assert (spec.M, spec.nbits, spec.metric, spec.opq) == (16, 8, Metric.IP, True)
    assert (spec.ksub, spec.code_size, spec.dsub(128)) == (256, 16, 8)
    assert parse_spec("PQ8x4,L2").ksub == 16


@pytest.mark.parametrize("text", ["PQ16", "PQ16x8", "PQ16,IP", "PQ16x8,COS", "pq16x8,ip", "PQ0x8,IP",
                                  "PQ16x9,IP", "PQ16x3,IP", "OPQ8,PQ16x8,IP", "PQ16x8,IP,L2", ""])
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
    bad = _with_crc(_patch(good_file[1], 4, struct.pack("<HH", 2, 2)))
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
