"""PQ gallery training: k-means/OPQ codebooks, build, one-shot add, recall vs exact, Refine(SQ8), CLI."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from glassfinder.cli import main
from glassfinder_export.gallery import add_to_gallery, build_gallery, kmeans, train_pq, with_refine
from glassfinder_export.gallery_bench import noisy_queries, recall_at_k, synthetic_embeddings
from glassfinder_runtime.errors import GalleryError
from glassfinder_runtime.gallery import (decode, encode, exact_search, parse_spec, pq_search,
                                         read_gallery, sq8_encode)

# Floor for faiss 1-recall@10 (exact top-1 within the PQ top-10) on small clustered data; the
# benchmark measures the real number at 3,200 and 1M vectors against the 0.99 target.
RECALL_AT_10_FLOOR = 0.98
ORTHOGONALITY_ATOL = 1e-4
# Floor for the share of queries whose refined top-1 is the exact top-1 (PQ8x8 alone: 0.98, below it
# on this data: near-identical SKUs of one cluster swap under PQ distortion).
REFINE_TOP1_AGREEMENT_FLOOR = 0.99


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    xb = synthetic_embeddings(3000, 64, items_per_centre=8, spread=0.75, rng=rng)
    xq, truth = noisy_queries(xb, 300, noise=0.5, rng=rng)
    return xb, xq, truth


@pytest.fixture(scope="module")
def built(clustered):
    return build_gallery(clustered[0], None, parse_spec("PQ8x8,IP"), seed=0, niter=10)


def _mse(x, trained):
    codes = encode(trained.codebooks, x, trained.rotation)
    return float(((decode(trained.codebooks, codes, trained.rotation) - x) ** 2).sum(1).mean())


def test_training_is_deterministic_with_a_seed(clustered):
    xb = clustered[0][:1000]
    spec = parse_spec("PQ8x6,IP")
    a, b = train_pq(xb, spec, seed=5, niter=5), train_pq(xb, spec, seed=5, niter=5)
    np.testing.assert_array_equal(a.codebooks, b.codebooks)
    assert a.codebooks.shape == (8, 64, 8) and a.codebooks.dtype == np.float32
    assert not np.array_equal(a.codebooks, train_pq(xb, spec, seed=6, niter=5).codebooks)


def test_kmeans_iterations_reduce_quantization_error(clustered):
    xb, spec = clustered[0][:1500], parse_spec("PQ8x6,L2")
    assert _mse(xb, train_pq(xb, spec, seed=0, niter=10)) < 0.9 * _mse(xb, train_pq(xb, spec, seed=0, niter=0))


def test_kmeans_survives_empty_clusters():
    # 20 distinct points for 32 centroids: clusters go empty and must be split, not left NaN.
    base = np.random.default_rng(1).standard_normal((20, 4)).astype(np.float32)
    x = np.repeat(base, 10, axis=0)
    centroids = kmeans(x, 32, niter=5, rng=np.random.default_rng(0))
    assert centroids.shape == (32, 4) and np.isfinite(centroids).all()
    # every distinct point ends up with a centroid of its own (zero quantization error)
    err = ((x[:, None] - centroids[None]) ** 2).sum(-1).min(1)
    assert err.max() < 1e-3


def test_too_few_training_vectors():
    with pytest.raises(GalleryError, match="at least k=256"):
        train_pq(np.ones((100, 16), np.float32), parse_spec("PQ4x8,IP"))


def test_opq_rotation_is_orthogonal_and_helps_correlated_data():
    rng = np.random.default_rng(2)
    # Correlated dims with a decaying spectrum: PQ's axis-aligned split is a poor fit, OPQ's isn't.
    x = (rng.standard_normal((2000, 16)) * np.geomspace(4, 0.1, 16)) @ np.linalg.qr(
        rng.standard_normal((16, 16)))[0]
    x = x.astype(np.float32)
    pq = train_pq(x, parse_spec("PQ4x4,L2"), seed=0, niter=10)
    opq = train_pq(x, parse_spec("OPQ4,PQ4x4,L2"), seed=0, niter=10)
    assert pq.rotation is None
    np.testing.assert_allclose(opq.rotation @ opq.rotation.T, np.eye(16), atol=ORTHOGONALITY_ATOL)
    assert _mse(x, opq) < 0.9 * _mse(x, pq)


def test_recall_at_10_vs_exact_on_clustered_data(clustered, built):
    xb, xq, truth = clustered
    _, I = pq_search(built, xq, 10)
    _, I_exact = exact_search(xb, xq, 10, "IP")
    assert recall_at_k(I, I_exact) >= RECALL_AT_10_FLOOR
    assert (I_exact[:, 0] == truth).mean() >= RECALL_AT_10_FLOOR  # the queries are answerable


def test_one_shot_add_keeps_old_codes_and_matches_fresh_encoding(clustered, built):
    new = clustered[1][:40]
    bigger = add_to_gallery(built, new, np.arange(5000, 5040))
    assert bigger.n == built.n + 40 and bigger.codebooks is built.codebooks
    np.testing.assert_array_equal(bigger.codes[:built.n], built.codes)
    np.testing.assert_array_equal(bigger.codes[built.n:], encode(built.codebooks, new))
    np.testing.assert_array_equal(bigger.ids, np.concatenate([built.ids, np.arange(5000, 5040)]))
    # default ids continue after the largest one; two adds equal one add of both
    twice = add_to_gallery(add_to_gallery(built, new[:10], None), new[10:], None)
    np.testing.assert_array_equal(twice.codes, bigger.codes)
    np.testing.assert_array_equal(twice.ids[built.n:], np.arange(3000, 3040))


@pytest.mark.parametrize("x,ids,match", [
    (np.zeros((2, 63), np.float32), None, "shape"),
    (np.zeros((2, 64), np.float32), [7000, 7000], "duplicate ids"),
    (np.zeros((2, 64), np.float32), [3, 5000], "already in the gallery"),
    (np.zeros((2, 64), np.float32), [-1, 5000], "out of range"),
    (np.zeros((2, 64), np.float32), [5000], "2 integers"),
])
def test_add_rejects_bad_input(built, x, ids, match):
    with pytest.raises(GalleryError, match=match):
        add_to_gallery(built, x, ids)


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _field(out: str, name: str) -> str:
    line = next(line for line in out.splitlines() if line.startswith(name))
    return line[len(name):].strip()


def test_cli_build_info_add(tmp_path, capsys, clustered):
    xb = clustered[0][:1000]
    np.save(tmp_path / "v.npy", xb)
    np.save(tmp_path / "ids.npy", np.arange(1000) * 2)
    np.save(tmp_path / "new.npy", clustered[1][:25])
    g = tmp_path / "g.gfpq"
    code, out, _ = _cli(capsys, "gallery", "build", "--vectors", tmp_path / "v.npy", "--ids",
                        tmp_path / "ids.npy", "--spec", "PQ8x8,IP", "--niter", 4, "--out", g)
    assert code == 0
    data = g.read_bytes()
    assert _field(out, "vectors (n)") == "1000" and _field(out, "dimension (d)") == "64"
    assert _field(out, "file bytes ") == str(len(data))
    assert _field(out, "compression vs float32") == "32.0x"
    assert _field(out, "crc32") == f"{zlib.crc32(data[:-4]):08x}"
    gallery = read_gallery(g)
    np.testing.assert_array_equal(gallery.codes, encode(gallery.codebooks, xb))
    np.testing.assert_array_equal(gallery.ids, np.arange(1000) * 2)

    code, out, _ = _cli(capsys, "gallery", "info", g, "--json")
    info = json.loads(out)
    assert (info["n"], info["d"], info["spec"], info["bytes_per_sku"]) == (1000, 64, "PQ8x8,IP", 8)

    code, out, _ = _cli(capsys, "gallery", "add", "--gallery", g, "--vectors", tmp_path / "new.npy",
                        "--out", tmp_path / "g2.gfpq")
    assert code == 0 and "1000 -> 1025" in out
    g2 = read_gallery(tmp_path / "g2.gfpq")
    np.testing.assert_array_equal(g2.codes[:1000], gallery.codes)
    np.testing.assert_array_equal(g2.ids[1000:], np.arange(1999, 2024))


def test_cli_build_with_separate_training_vectors(tmp_path, capsys, clustered):
    xb, train = clustered[0][:300], clustered[0][300:]
    np.save(tmp_path / "v.npy", xb)
    np.save(tmp_path / "t.npy", train)
    g = tmp_path / "g.gfpq"
    code, _, err = _cli(capsys, "gallery", "build", "--vectors", tmp_path / "v.npy", "--spec", "PQ8x4,L2",
                        "--train-vectors", tmp_path / "t.npy", "--niter", 3, "--seed", 1, "--out", g)
    assert code == 0 and "note:" not in err  # 2,700 >= 39 * 16 training vectors
    gallery = read_gallery(g)
    expected = train_pq(train, parse_spec("PQ8x4,L2"), seed=1, niter=3)
    np.testing.assert_array_equal(gallery.codebooks, expected.codebooks)
    np.testing.assert_array_equal(gallery.codes, encode(expected.codebooks, xb))
    code, _, err = _cli(capsys, "gallery", "build", "--vectors", tmp_path / "v.npy", "--spec", "PQ8x8,L2",
                        "--niter", 1, "--out", g)
    assert code == 0 and "note: 300 training vectors" in err and "--train-vectors" in err


def test_cli_user_mistakes_exit_2(tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.zeros((300, 64), np.float32))
    code, _, err = _cli(capsys, "gallery", "build", "--vectors", tmp_path / "v.npy", "--spec", "PQ8x8",
                        "--out", tmp_path / "g.gfpq")
    assert code == 2 and "metric explicit" in err
    (tmp_path / "junk.gfpq").write_bytes(b"not a gallery at all")
    code, _, err = _cli(capsys, "gallery", "info", tmp_path / "junk.gfpq")
    assert code == 2 and "junk.gfpq" in err and "bad magic" in err


def test_cli_bench_small(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    code, out, _ = _cli(capsys, "gallery", "bench", "--json", out_json, "--n-1m", 20000, "--n-ref", 1000,
                        "--queries", 100, "--timing-queries", 5, "--niter", 4, "--n-train", 4000)
    assert code == 0 and "search_ms_1m" in out
    r = json.loads(out_json.read_text())
    for key in ("recall_at_10", "top1_delta", "bytes_per_sku", "compression_ratio", "search_ms_3200",
                "search_ms_1m", "faiss_search_ms_1m"):
        assert key in r
    assert 0.0 <= r["recall_at_10"] <= 1.0 and -1.0 <= r["top1_delta"] <= 1.0
    assert r["recall_at_10"] >= RECALL_AT_10_FLOOR
    assert r["bytes_per_sku"] == 16 and r["compression_ratio"] == 32.0
    assert r["n_1m"] == 20000 and r["n_ref"] == 1000 and r["n_added"] == 320
    assert r["codebooks_trained_on"] == "4000 vectors of other SKUs"
    assert 0.0 <= r["recall_at_10_added"] <= 1.0 and 0.0 <= r["recall_at_10_1m"] <= 1.0
    assert min(r["search_ms_3200"], r["search_ms_1m"], r["faiss_search_ms_1m"]) > 0
    # faiss encodes with our codebooks: the same codes, hence the same answers
    assert r["faiss_code_agreement_1m"] >= 0.999 and r["faiss_top1_agreement_1m"] >= 0.99
    # The refine numbers of the same run, on the same codes.
    assert r["refine_spec"] == "PQ16x8,IP,Refine(SQ8)" and r["shortlist"] == 64
    assert r["refine_bytes_per_sku"] == 16 + 128 and r["refine_compression_ratio"] == 512 / 144
    assert r["refine_recall_at_10"] >= r["recall_at_10"] and r["refine_top1_delta"] >= r["top1_delta"]
    assert r["refine_recall_at_10_1m"] >= RECALL_AT_10_FLOOR
    assert min(r["refine_search_ms_3200"], r["refine_search_ms_1m"]) > 0
    assert "refine_search_ms_1m" in out


# --- Refine(SQ8) --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_refine(clustered):
    return build_gallery(clustered[0], None, parse_spec("PQ8x8,IP,Refine(SQ8)"), seed=0, niter=10, shortlist=32)


def test_refine_build_keeps_the_pq_codes_and_adds_sq8_of_the_build_vectors(clustered, built, built_refine):
    xb = clustered[0]
    assert str(built_refine.spec) == "PQ8x8,IP,Refine(SQ8)" and built_refine.shortlist == 32
    np.testing.assert_array_equal(built_refine.codebooks, built.codebooks)  # training ignores the refine
    np.testing.assert_array_equal(built_refine.codes, built.codes)
    np.testing.assert_array_equal(built_refine.refine_scales, np.abs(xb).max(0) / np.float32(127))
    np.testing.assert_array_equal(built_refine.refine_codes, sq8_encode(built_refine.refine_scales, xb))
    assert np.abs(built_refine.refine_codes).max() == 127  # the build range uses the whole code range


def test_refine_top1_agrees_with_exact_search_better_than_pq(clustered, built, built_refine):
    """The point of the refine: PQ flips near-identical neighbours, SQ8 re-ranking undoes it."""
    xb, xq, _ = clustered
    _, I_exact = exact_search(xb, xq, 10, "IP")
    top1_pq = float((pq_search(built, xq, 10)[1][:, 0] == I_exact[:, 0]).mean())
    _, I_refine = pq_search(built_refine, xq, 10)
    top1_refine = float((I_refine[:, 0] == I_exact[:, 0]).mean())
    assert top1_refine >= REFINE_TOP1_AGREEMENT_FLOOR > top1_pq
    assert recall_at_k(I_refine, I_exact) >= RECALL_AT_10_FLOOR


def test_refine_add_reuses_the_build_scales_and_clips(clustered, built_refine):
    new = np.concatenate([clustered[1][:10], 3 * clustered[1][10:12]])  # two beyond the build range
    bigger = add_to_gallery(built_refine, new, None)
    assert bigger.refine_scales is built_refine.refine_scales and bigger.shortlist == 32
    np.testing.assert_array_equal(bigger.refine_codes[:built_refine.n], built_refine.refine_codes)
    expected = np.clip(np.round(new / built_refine.refine_scales), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(bigger.refine_codes[built_refine.n:], expected)
    assert (np.abs(bigger.refine_codes[-2:]) == 127).any()
    np.testing.assert_array_equal(bigger.codes[built_refine.n:], encode(built_refine.codebooks, new))


def test_with_refine_needs_one_vector_per_row(clustered, built):
    with pytest.raises(GalleryError, match="one vector per gallery row"):
        with_refine(built, clustered[0][:10])
    refined = with_refine(built, clustered[0], shortlist=8)
    assert refined.spec == parse_spec("PQ8x8,IP,Refine(SQ8)") and refined.codes is built.codes


def test_cli_build_info_add_with_refine(tmp_path, capsys, clustered):
    xb = clustered[0][:1000]
    np.save(tmp_path / "v.npy", xb)
    np.save(tmp_path / "new.npy", clustered[1][:25])
    g = tmp_path / "g.gfpq"
    code, out, _ = _cli(capsys, "gallery", "build", "--vectors", tmp_path / "v.npy", "--spec",
                        "OPQ8,PQ8x8,IP,Refine(SQ8)", "--niter", 2, "--shortlist", 20, "--out", g)
    assert code == 0 and _field(out, "refine") == "SQ8, shortlist 20, 64 B/SKU"
    code, out, _ = _cli(capsys, "gallery", "info", g, "--json")
    info = json.loads(out)
    assert (info["spec"], info["refine"], info["shortlist"], info["format_version"]) == (
        "OPQ8,PQ8x8,IP,Refine(SQ8)", "SQ8", 20, 2)
    assert (info["bytes_per_sku"], info["code_size"], info["refine_code_size"]) == (72, 8, 64)
    sections = info["section_bytes"]
    assert (sections["refine_scales"], sections["refine_codes"], sections["codes"]) == (64 * 4, 1000 * 64, 1000 * 8)
    assert sum(sections.values()) == info["file_bytes"] == len(g.read_bytes())
    code, out, _ = _cli(capsys, "gallery", "add", "--gallery", g, "--vectors", tmp_path / "new.npy", "--out", g)
    assert code == 0 and "1000 -> 1025" in out
    g2 = read_gallery(g)
    np.testing.assert_array_equal(g2.refine_codes[1000:], sq8_encode(g2.refine_scales, clustered[1][:25]))
    code, _, err = _cli(capsys, "gallery", "build", "--vectors", tmp_path / "v.npy", "--spec",
                        "PQ8x8,IP,Refine(SQ4)", "--out", g)
    assert code == 2 and "unknown refine kind 'SQ4'" in err
