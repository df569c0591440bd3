"""`glassfinder gallery build|add|info|bench`: the PQ-compressed SKU gallery (.gfpq files)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_SPEC_HELP = ("PQ spec with the metric explicit, e.g. PQ16x8,IP or OPQ16,PQ16x8,IP; a ',Refine(SQ8)' suffix "
              "re-ranks the PQ shortlist with int8 codes (+d bytes per SKU) (default %(default)s)")
_SHORTLIST_HELP = "rows of the PQ ranking re-ranked by Refine(SQ8) (raised to k, cut to n; default %(default)s)"


def register(sub, bench) -> None:
    gallery = sub.add_parser(
        "gallery",
        help="build, extend, inspect and benchmark the PQ gallery",
        description=(
            "The gallery stores each SKU embedding as a product-quantization code (PQ16x8: 16 bytes "
            "instead of 512 for a 128-d float32 vector) plus its int64 SKU index, in a versioned, "
            "checksummed .gfpq file (docs/gallery_format.md). With ',Refine(SQ8)' each SKU also keeps "
            "an int8 code per dimension that re-ranks the PQ shortlist (near-exact top-1). New SKUs "
            "are added with the existing codebooks and scales: no retraining, no rebuild."
        ),
        epilog=("examples:\n"
                "  glassfinder gallery build --vectors emb.npy --spec 'OPQ16,PQ16x8,IP,Refine(SQ8)' --out out/gallery.gfpq\n"
                "  glassfinder gallery add --gallery out/gallery.gfpq --vectors new.npy --out out/gallery.gfpq\n"
                "  glassfinder gallery info out/gallery.gfpq\n"
                "  glassfinder gallery bench --json out/gallery_bench.json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gsub = gallery.add_subparsers(dest="gallery_command", metavar="ACTION")
    gallery.set_defaults(func=lambda args: _usage(gallery))

    p = gsub.add_parser(
        "build", help="train codebooks on embeddings and encode them into a .gfpq file",
        description=("Train k-means PQ codebooks (one k-means per sub-space, deterministic from "
                     "--seed; OPQ rotation if the spec starts with OPQ) and encode every vector; with "
                     "',Refine(SQ8)' also the per-dimension int8 refine codes (scales from --vectors)."),
        epilog="example:\n  glassfinder gallery build --vectors emb.npy --ids sku_index.npy --out out/gallery.gfpq",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", type=Path, required=True, help="(n, d) float .npy of SKU embeddings")
    p.add_argument("--ids", type=Path, help="(n,) int .npy of SKU indices (default 0..n-1)")
    p.add_argument("--spec", default="PQ16x8,IP", help=_SPEC_HELP)
    p.add_argument("--train-vectors", type=Path,
                   help="(m, d) .npy to train the codebooks on instead of --vectors (needs m >= 2**nbits)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default %(default)s)")
    p.add_argument("--niter", type=int, default=25, help="k-means iterations (default %(default)s)")
    p.add_argument("--shortlist", type=int, default=_default_shortlist(), help=_SHORTLIST_HELP)
    p.add_argument("--out", type=Path, required=True, help="the .gfpq file to write")
    p.set_defaults(func=run_build)

    p = gsub.add_parser(
        "add", help="one-shot enrollment: encode new SKUs with the existing codebooks",
        description="Append new vectors encoded with the gallery's codebooks; earlier codes are untouched.",
        epilog="example:\n  glassfinder gallery add --gallery out/gallery.gfpq --vectors new.npy --ids new_ids.npy --out out/gallery.gfpq",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", type=Path, required=True, help="the existing .gfpq file")
    p.add_argument("--vectors", type=Path, required=True, help="(n_new, d) float .npy")
    p.add_argument("--ids", type=Path, help="(n_new,) int .npy (default: continue after the largest id)")
    p.add_argument("--out", type=Path, required=True, help="where to write the result (may be --gallery)")
    p.set_defaults(func=run_add)

    p = gsub.add_parser(
        "info", help="print a gallery's spec, size, compression and checksum",
        description="Validate a .gfpq file (magic, version, sizes, CRC32, ids) and print its summary.",
        epilog="example:\n  glassfinder gallery info out/gallery.gfpq",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gallery", type=Path, help="the .gfpq file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_info)

    for parent, name in ((gsub, "bench"), (bench, "gallery")):
        _add_bench_parser(parent, name)


def _default_shortlist() -> int:
    from glassfinder_runtime.gallery import DEFAULT_SHORTLIST

    return DEFAULT_SHORTLIST


def _add_bench_parser(parent, name: str) -> None:
    from glassfinder_export.gallery_bench import GalleryBenchConfig

    defaults = GalleryBenchConfig()
    p = parent.add_parser(
        name, help="PQ gallery recall vs exact, bytes per SKU, and 1-thread search time up to 1M",
        description=(
            "Measure the PQ gallery: recall@10 vs exact search (faiss 1-recall@10: exact top-1 in the "
            "PQ top 10) and the top-1 change on noisy queries of known items, at 3,200 SKUs and at "
            "--n-1m; bytes per SKU and compression; median single-query search time on ONE thread at "
            "3,200 and --n-1m, next to faiss IndexPQ on the same codes. The same numbers again with "
            "Refine(SQ8) on the same codes (refine_* keys). Synthetic clustered unit "
            "vectors unless --vectors gives real embeddings. Prints a table and writes --json."),
        epilog="example:\n  glassfinder gallery bench --json out/gallery_bench.json --n-1m 1000000",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True, help="where to write the results JSON")
    p.add_argument("--spec", default=defaults.spec, help=_SPEC_HELP)
    p.add_argument("--n-1m", type=int, default=defaults.n_1m, help="large gallery size (default %(default)s)")
    p.add_argument("--n-ref", type=int, default=defaults.n_ref, help="reference gallery size (default %(default)s)")
    p.add_argument("--d", type=int, default=defaults.d, help="synthetic dimension (default %(default)s)")
    p.add_argument("--vectors", type=Path, help="real (n, d) embeddings .npy for the reference gallery")
    p.add_argument("--train-vectors", type=Path,
                   help="real (m, d) embeddings of other SKUs to train the reference codebooks on")
    p.add_argument("--n-train", type=int, default=defaults.n_train,
                   help="synthetic training vectors of other SKUs; 0 = train on the gallery (default %(default)s)")
    p.add_argument("--queries", type=int, default=defaults.n_queries,
                   help="accuracy queries at --n-ref (default %(default)s)")
    p.add_argument("--timing-queries", type=int, default=defaults.n_timing,
                   help="single-query searches per timing, median reported (default %(default)s)")
    p.add_argument("--cluster-spread", type=float, default=defaults.cluster_spread,
                   help="synthetic in-cluster noise; SKU-SKU cosine ~ 1/(1+s^2) (default %(default)s)")
    p.add_argument("--query-noise", type=float, default=defaults.query_noise,
                   help="query noise; query-SKU cosine ~ 1/sqrt(1+t^2) (default %(default)s)")
    p.add_argument("--niter", type=int, default=defaults.niter, help="k-means iterations (default %(default)s)")
    p.add_argument("--shortlist", type=int, default=defaults.shortlist, help=_SHORTLIST_HELP)
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed (default %(default)s)")
    p.set_defaults(func=run_bench)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load_npy(path: Path, what: str):
    import numpy as np

    from glassfinder_runtime.errors import GalleryError

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise GalleryError(f"{path}: cannot read {what} as a .npy array ({exc})") from None


def _print_summary(info: dict) -> None:
    refine = (f"{info['refine']}, shortlist {info['shortlist']}, {info['refine_code_size']} B/SKU"
              if info["refine"] else "none")
    sections = ", ".join(f"{name} {size}" for name, size in info["section_bytes"].items() if size)
    rows = [("spec", info["spec"]), ("vectors (n)", info["n"]), ("dimension (d)", info["d"]),
            ("refine", refine), ("file bytes", info["file_bytes"]), ("section bytes", sections),
            ("code bytes per SKU", (f"{info['bytes_per_sku']} (PQ {info['code_size']} + refine "
                                    f"{info['refine_code_size']})")),
            ("file bytes per SKU", f"{info['file_bytes_per_sku']:.2f}"),
            ("compression vs float32", f"{info['compression_ratio']:.1f}x"),
            ("format version", info["format_version"]), ("crc32", info["crc32"]),
            ("sha256", info["sha256"])]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def run_build(args: argparse.Namespace) -> int:
    from glassfinder_export.gallery import TRAIN_POINTS_ADVICE, build_gallery
    from glassfinder_runtime.errors import ConfigError
    from glassfinder_runtime.gallery import inspect_gallery, parse_spec, write_gallery

    spec = parse_spec(args.spec)
    vectors = _load_npy(args.vectors, "vectors")
    ids = None if args.ids is None else _load_npy(args.ids, "ids")
    train = None if args.train_vectors is None else _load_npy(args.train_vectors, "training vectors")
    n_train = len(vectors if train is None else train)
    if n_train < TRAIN_POINTS_ADVICE * spec.ksub:
        print(f"note: {n_train} training vectors for {spec.ksub} centroids per sub-space; below "
              f"{TRAIN_POINTS_ADVICE * spec.ksub} the codebooks overfit and SKUs added later lose "
              f"accuracy: pass --train-vectors with embeddings of more (e.g. training-split) SKUs",
              file=sys.stderr)
    if args.shortlist < 1:
        raise ConfigError(f"--shortlist must be >= 1, got {args.shortlist}")
    gallery = build_gallery(vectors, ids, spec, seed=args.seed, niter=args.niter,
                            train_vectors=train, progress=True, shortlist=args.shortlist)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_gallery(gallery, args.out)
    _print_summary(inspect_gallery(args.out))
    print(f"wrote {args.out}")
    return 0


def run_add(args: argparse.Namespace) -> int:
    from glassfinder_export.gallery import add_to_gallery
    from glassfinder_runtime.gallery import inspect_gallery, read_gallery, write_gallery

    gallery = read_gallery(args.gallery)
    vectors = _load_npy(args.vectors, "vectors")
    ids = None if args.ids is None else _load_npy(args.ids, "ids")
    bigger = add_to_gallery(gallery, vectors, ids)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_gallery(bigger, args.out)
    _print_summary(inspect_gallery(args.out))
    print(f"added {bigger.n - gallery.n} vectors ({gallery.n} -> {bigger.n}); wrote {args.out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from glassfinder_runtime.gallery import inspect_gallery

    info = inspect_gallery(args.gallery)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_summary(info)
    return 0


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def run_bench(args: argparse.Namespace) -> int:
    from glassfinder_export.gallery_bench import GalleryBenchConfig, run_gallery_bench
    from glassfinder_runtime.errors import ConfigError

    if min(args.n_1m, args.n_ref, args.d, args.queries, args.timing_queries, args.shortlist) < 1 or args.n_train < 0:
        raise ConfigError("--n-1m, --n-ref, --d, --queries, --timing-queries and --shortlist must be >= 1, "
                          "--n-train >= 0")
    cfg = GalleryBenchConfig(spec=args.spec, d=args.d, n_ref=args.n_ref, n_1m=args.n_1m,
                             n_queries=args.queries, n_timing=args.timing_queries,
                             n_queries_1m=min(GalleryBenchConfig.n_queries_1m, args.queries),
                             cluster_spread=args.cluster_spread, query_noise=args.query_noise,
                             n_train=args.n_train, niter=args.niter, seed=args.seed, shortlist=args.shortlist)
    vectors = None if args.vectors is None else _load_npy(args.vectors, "vectors")
    train = None if args.train_vectors is None else _load_npy(args.train_vectors, "training vectors")
    r = run_gallery_bench(cfg, vectors, train)
    big = f"{r['n_1m']:,}"
    rows = [
        ("recall_at_10", f"{r['recall_at_10']:.4f}",
         f"exact top-1 in PQ top-10, {r['n_ref']} SKUs (target >= 0.99); codebooks: {r['codebooks_trained_on']}"),
        ("intersection_at_10", f"{r['intersection_at_10']:.4f}", "share of the exact top-10 in the PQ top-10"),
        ("top1_delta", f"{r['top1_delta']:+.4f}", f"PQ {r['top1_pq']:.4f} - exact {r['top1_exact']:.4f} top-1"),
        ("recall_at_10_added", _fmt(r["recall_at_10_added"], ".4f"),
         f"same, queries of the {r['n_added']} SKUs added one-shot after the build"),
        ("top1_delta_added", _fmt(r["top1_delta_added"], "+.4f"), "same, top-1 PQ - exact"),
        ("recall_at_10_1m", f"{r['recall_at_10_1m']:.4f}", f"same, {big} vectors"),
        ("top1_delta_1m", f"{r['top1_delta_1m']:+.4f}", f"same, {big} vectors"),
        ("bytes_per_sku", f"{r['bytes_per_sku']}", f"{r['spec']} code; file {r['file_bytes_per_sku_3200']:.1f} B/SKU with ids"),
        ("compression_ratio", f"{r['compression_ratio']:.1f}", f"vs {r['d']}-d float32 (target >= 32)"),
        ("search_ms_3200", f"{r['search_ms_3200']:.3f}",
         f"numpy ADC, 1 query, 1 thread, median wall (CPU {r['search_cpu_ms_3200']:.3f})"),
        ("search_ms_1m", f"{r['search_ms_1m']:.2f}",
         f"numpy ADC, {big} codes (target <= 30; CPU {r['search_cpu_ms_1m']:.2f})"),
        ("faiss_search_ms_1m", f"{r['faiss_search_ms_1m']:.2f}",
         f"faiss IndexPQ, same codes, 1 thread (CPU {r['faiss_search_cpu_ms_1m']:.2f})"),
        ("exact_search_ms_1m", f"{r['exact_search_ms_1m']:.2f}",
         f"float32 brute force, 1 thread (CPU {r['exact_search_cpu_ms_1m']:.2f})"),
        ("faiss_top1_agreement_1m", f"{r['faiss_top1_agreement_1m']:.4f}",
         f"codes agree {_fmt(r['faiss_code_agreement_1m'], '.4f')}"),
        # The same codes re-ranked by the refine stage.
        ("refine_recall_at_10", f"{r['refine_recall_at_10']:.4f}",
         f"{r['refine_spec']}, shortlist {r['shortlist']}, {r['n_ref']} SKUs"),
        ("refine_top1_delta", f"{r['refine_top1_delta']:+.4f}",
         f"refine {r['refine_top1']:.4f} - exact {r['top1_exact']:.4f} top-1"),
        ("refine_top1_delta_added", _fmt(r["refine_top1_delta_added"], "+.4f"),
         f"same, the {r['n_added']} SKUs added one-shot (build's SQ8 scales)"),
        ("refine_recall_at_10_1m", f"{r['refine_recall_at_10_1m']:.4f}", f"same, {big} vectors"),
        ("refine_top1_delta_1m", f"{r['refine_top1_delta_1m']:+.4f}", f"same, {big} vectors"),
        ("refine_bytes_per_sku", f"{r['refine_bytes_per_sku']}",
         (f"PQ + SQ8 codes; file {r['refine_file_bytes_per_sku_3200']:.1f} B/SKU with ids "
          f"({r['refine_compression_ratio']:.1f}x)")),
        ("refine_search_ms_3200", f"{r['refine_search_ms_3200']:.3f}",
         f"ADC + re-rank, 1 query, 1 thread (CPU {r['refine_search_cpu_ms_3200']:.3f})"),
        ("refine_search_ms_1m", f"{r['refine_search_ms_1m']:.2f}",
         f"ADC + re-rank, {big} codes (CPU {r['refine_search_cpu_ms_1m']:.2f})"),
    ]
    w = max(len(k) for k, _, _ in rows)
    print(f"{'metric':<{w}}  {'value':>9}  note")
    for key, value, note in rows:
        print(f"{key:<{w}}  {value:>9}  {note}")
    print(f"times in ms; 1-minute load average {r['load_average_1min']:.1f} "
          f"(wall times above the CPU times mean the cores were shared)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0
