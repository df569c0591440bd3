"""`glassfinder bench latency`: one-thread latency of the on-device pipeline vs float references."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glassfinder.cli.demo_cmd import SAMPLES


def register(sub, bench) -> None:
    p = bench.add_parser(
        "latency", help="per-stage and end-to-end latency, one thread: LiteRT int8 vs float references",
        description=(
            "Search the same photos with the same pipeline code, swapping the model runners: LiteRT int8 "
            "(the bundle), LiteRT float32 and onnxruntime float32 (the bundle's reference/ folder) and torch "
            "float eager (the committed weights). All on one thread, in one run; prints and saves the median "
            "milliseconds per stage and end to end, and the speed-up of int8 over torch."),
        epilog="example:\n  glassfinder bench latency --bundle bundle --json out/latency.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=Path("bundle"), help="bundle folder (default %(default)s)")
    p.add_argument("--json", type=Path, help="write the numbers here")
    p.add_argument("--repeats", type=int, default=20, help="searches per photo and variant (default %(default)s)")
    p.add_argument("--variants", default="int8,litert_float,onnx_float,torch_float",
                   help="comma-separated runners to time (default %(default)s)")
    p.add_argument("--images", nargs="*", type=Path, help="photos with a face (default: samples/query.jpg, samples/sunglasses.jpg)")
    p.set_defaults(func=run_latency)


def run_latency(args) -> int:
    from glassfinder.latency import STAGES, bench_latency
    from glassfinder_runtime.errors import ConfigError
    from glassfinder_runtime.image_io import load_image

    if args.repeats < 1:
        raise ConfigError("--repeats must be >= 1")
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    known = ("int8", "litert_float", "onnx_float", "torch_float")
    if not variants or any(v not in known for v in variants):
        raise ConfigError(f"--variants takes a comma-separated subset of {', '.join(known)}, got {args.variants!r}")
    paths = args.images or [SAMPLES / "query.jpg", SAMPLES / "sunglasses.jpg"]
    report = bench_latency(args.bundle, [load_image(p) for p in paths], args.repeats, variants)
    variants = list(report["stages"])
    print(f"{'stage (median ms)':<18s}" + "".join(f"{v:>14s}" for v in variants))
    for s in STAGES:
        print(f"{s:<18s}" + "".join(f"{report['stages'][v][s]:14.2f}" for v in variants))
    if "speedup_vs_torch" in report:
        print(f"speed-up of int8 over torch float eager: {report['speedup_vs_torch']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.json}", file=sys.stderr)
    return 0
