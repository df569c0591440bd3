"""`glassfinder demo`: the README's main job: build the default bundle if needed, then search the samples."""
from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def register(sub, bench) -> None:
    p = sub.add_parser(
        "demo", help="build the default bundle (first run only) and search the sample photos",
        description=(
            "The main job, end to end: export the committed models to int8 TFLite with parity checks, "
            "enroll the 3,200-SKU gallery into a PQ gallery (first run only: a few minutes), then run the "
            "on-device reference runtime on the sample photos and write a picture of the results."),
        epilog="example:\n  glassfinder demo --out out/demo   # then open out/demo/search_sheet.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=Path("bundle"), help="bundle folder (built if missing; default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where the sheet goes (default %(default)s)")
    p.add_argument("images", nargs="*", type=Path, help="photos to search (default: samples/*.jpg)")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from glassfinder.cli.search_cmd import run_search

    if not (args.bundle / "manifest.json").is_file():
        from glassfinder_export.bundle import build_bundle

        print(f"No bundle at {args.bundle}: building the default one from the committed weights (first run only).")
        summary = build_bundle(args.bundle)
        print(f"bundle: {summary['bundle']} ({summary['bytes_models_and_gallery'] / 1e6:.2f} MB TFLite models + "
              f"gallery, built in {summary['seconds']:.0f} s)")
    images = args.images or sorted(SAMPLES.glob("*.jpg"))
    sheet = args.out / "search_sheet.png"
    code = run_search(SimpleNamespace(images=images, bundle=args.bundle, top=5, json=False, sheet=sheet, threads=1))
    print(f"\nOpen {sheet} to see the photos, the detected faces, the aligned crops and the top-5 SKUs.")
    return code
