"""`glassfinder preview`: a labelled contact sheet of gallery SKUs rendered on varied faces."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub, bench) -> None:  # noqa: ARG001 - no benchmark in this group
    p = sub.add_parser(
        "preview",
        help="contact sheet of gallery SKUs rendered on varied faces",
        description=(
            "Render --n gallery SKUs (covering the frame families in turn) on procedural faces of "
            "varied skin tones and poses and save a labelled grid (SKU id, family, material, rim, "
            "frame and lens colour): the visual check of the try-on renderer."
        ),
        epilog="example:\n  glassfinder preview --out sheet.png --n 24 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output PNG")
    p.add_argument("--n", type=int, default=24, help="number of SKUs (default %(default)s)")
    p.add_argument("--cols", type=int, default=6, help="tiles per row (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the SKU pick, faces and renders (default %(default)s)")
    p.add_argument("--catalog-seed", type=int, default=0, help="catalog seed (default %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glassfinder.preview import build_preview
    from glassfinder_runtime.errors import ConfigError

    if args.n < 1 or args.cols < 1:
        raise ConfigError(f"--n and --cols must be >= 1, got {args.n} and {args.cols}")
    sheet = build_preview(n=args.n, cols=args.cols, seed=args.seed, catalog_seed=args.catalog_seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}, {args.n} SKUs)")
    return 0
