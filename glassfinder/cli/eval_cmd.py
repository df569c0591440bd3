"""`glassfinder eval`: the open-set retrieval benchmark of the full pipeline."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path


def register(sub, bench) -> None:
    from glassfinder.evaluation import EvalConfig

    d = EvalConfig()
    p = sub.add_parser(
        "eval", help="open-set retrieval benchmark: full pipeline on rendered query photos",
        description=(
            "Enroll every gallery-split SKU (models never seen in training) from K renders on gallery "
            "faces, then search full scene photos of those SKUs on disjoint query faces with a worse "
            "camera (blur, noise, colour cast, JPEG), through detector -> aligner -> crop -> gate -> "
            "embedder -> exact cosine search (torch float). Reports top-1/5/10 strict and "
            "size-insensitive, mAP@R, and the gate's TPR (queries) and FPR (bare faces, non-face images), "
            "plus top1_ceiling_size_blind: the top-1 of a search that always finds the right frame and "
            "colour but cannot tell its sizes apart (sizes differ only in scale)."),
        epilog=("examples:\n"
                "  glassfinder eval --json out/eval.json --sheet out/failures.png   # the reference protocol\n"
                "  glassfinder eval --bundle bundle --json out/eval_bundle.json      # + the bundle's int8 pipeline\n"
                "  glassfinder eval --n-gallery 400 --n-queries 400 --json out/eval_small.json  # a quick look\n"
                "  glassfinder eval --embedder out/train/embedder/embedder.safetensors --json out/eval_run.json"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write the report here (it is printed too)")
    p.add_argument("--sheet", type=Path, help="write a picture of failed queries with their top-5")
    p.add_argument("--bundle", type=Path,
                   help="also run the same photos through this bundle's on-device pipeline (LiteRT models), "
                        "searched exactly and with the bundle's gallery; reports the top-1 drop vs float")
    p.add_argument("--embedder", type=Path, metavar="WEIGHTS",
                   help="benchmark this embedder .safetensors instead of the committed one (e.g. a training "
                        "run's, to compare runs on the same photos); not with --bundle")
    p.add_argument("--gate", type=Path, metavar="WEIGHTS",
                   help="benchmark this gate .safetensors, at the threshold stored with it, instead of the "
                        "committed one; not with --bundle")
    for f in fields(EvalConfig):
        kind = type(getattr(d, f.name))
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=getattr(d, f.name),
                       metavar="N" if kind is int else "X", help=f"{PROTOCOL_HELP[f.name]} (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)


# --help for each EvalConfig field (the reference protocol is the defaults).
PROTOCOL_HELP = {
    "catalog_seed": "seed of the parametric catalog",
    "n_gallery": "gallery-split SKUs enrolled (3,200 = the reference gallery)",
    "renders_per_sku": "K renders per SKU, averaged into its gallery vector",
    "enroll_jitter": "enrolment crops misaligned like the aligner's, times this; 0: aligned on ground truth",
    "gallery_faces": "procedural gallery faces the enrolment renders use",
    "n_queries": "query scenes on query faces, with the query camera",
    "n_negatives": "bare faces and non-face images for the gate's FPR",
    "seed": "rendering seed",
    "top_k": "results kept per query",
}


def run_eval(args) -> int:
    from glassfinder.evaluation import EvalConfig, evaluate
    from glassfinder_runtime.errors import ConfigError

    cfg = EvalConfig(**{f.name: getattr(args, f.name) for f in fields(EvalConfig)})
    if cfg.n_gallery < cfg.top_k or cfg.n_queries < 1 or cfg.renders_per_sku < 1 or cfg.enroll_jitter < 0:
        raise ConfigError(f"need --n-gallery >= --top-k ({cfg.top_k}), --n-queries >= 1, --renders-per-sku >= 1 "
                          "and --enroll-jitter >= 0")
    if args.bundle and (args.embedder or args.gate):
        raise ConfigError("--bundle compares the committed float models with the bundle built from them; "
                          "--embedder/--gate benchmark other float weights: use one or the other")
    report = evaluate(cfg, float_pipeline(args.embedder, args.gate), progress=not args.quiet,
                      sheet=str(args.sheet) if args.sheet else None, bundle=str(args.bundle) if args.bundle else None)
    report["weights"] = {"embedder": str(args.embedder or "committed"), "gate": str(args.gate or "committed")}
    keys = ("top1", "top5", "top10", "top1_size_insensitive", "top10_size_insensitive", "map_at_r",
            "top1_ceiling_size_blind", "gate_tpr", "gate_tpr_found_faces", "gate_fpr", "refused_no_face",
            "refused_no_glasses", "gallery_skus", "queries", "seconds")
    for k in keys:
        v = report[k]
        print(f"{k:>24s}  {v:.4f}" if isinstance(v, float) else f"{k:>24s}  {v}")
    if "variants" in report:
        cols = ("top1", "top10", "top1_size_insensitive", "top10_size_insensitive", "gate_tpr", "gate_fpr")
        print(f"\n{'pipeline + search':<30s}" + "".join(f"{c.replace('_size_insensitive', ' s-i'):>11s}" for c in cols))
        for name, v in report["variants"].items():
            print(f"{name:<30s}" + "".join(f"{v[c]:>11.4f}" for c in cols))
        print(f"top-1 drop, float -> bundle: {report['top1_drop_points']:.2f} points "
              f"(size-insensitive {report['top1_size_insensitive_drop_points']:.2f}); gallery {report['gallery_spec']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.json}", file=sys.stderr)
    if args.sheet:
        print(f"failures: {args.sheet}", file=sys.stderr)
    return 0


def float_pipeline(embedder: Path | None, gate: Path | None):
    """The torch float pipeline with the given embedder / gate weights (None: the committed ones)."""
    from glassfinder.evaluation import FloatPipeline
    from glassfinder.models.embedder import load_embedder
    from glassfinder.models.gate import load_gate

    kw = {}
    if embedder is not None:
        kw["embedder"] = load_embedder(embedder)[0]
    if gate is not None:
        kw["gate"], sidecar = load_gate(gate)
        kw["gate_threshold"] = float(sidecar["threshold"])
    return FloatPipeline(**kw)

