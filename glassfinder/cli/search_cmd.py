"""`glassfinder search`: the on-device search (reference runtime) on photos or folders of photos."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_BUNDLE = Path(os.environ.get("GLASSFINDER_BUNDLE", "bundle"))


def register(sub, bench) -> None:
    p = sub.add_parser(
        "search", help="find the glasses in a photo among the catalog's SKUs (reference runtime)",
        description=(
            "Run the on-device pipeline of a bundle on each photo: detect the face, align the glasses "
            "region, check that glasses are worn (the gate), embed, and search the PQ gallery. Prints "
            "the top-k SKUs with scores, or the refusal message with its reason (no face / no glasses). "
            "Folders are searched file by file: every good photo is processed, every bad file is "
            "reported with its reason, and the exit code is 1 if any file could not be read (0 otherwise)."
        ),
        epilog=("examples:\n"
                "  glassfinder search samples/query.jpg --sheet out/sheet.png\n"
                "  glassfinder search photos/ --top 5 --json > results.jsonl\n"
                "The bundle is built by `glassfinder export --out bundle` (or `make demo`)."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path, help="photos and/or folders of photos")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE,
                   help="bundle folder (default: $GLASSFINDER_BUNDLE or ./bundle)")
    p.add_argument("--top", type=int, default=10, help="results per photo (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per photo on stdout (JSON lines)")
    p.add_argument("--sheet", type=Path, help="write a picture: photo, detected face, aligned crop, top-k SKUs")
    p.add_argument("--threads", type=int, default=1, help="LiteRT threads per model (default %(default)s)")
    p.set_defaults(func=run_search)


def run_search(args) -> int:
    from glassfinder.sheets import search_sheet, stack_vertically
    from glassfinder_runtime.errors import BundleError, ImageError
    from glassfinder_runtime.image_io import iter_images
    from glassfinder_runtime.pipeline import GlassFinder, SearchOptions

    if not (args.bundle / "manifest.json").is_file():
        raise BundleError(f"{args.bundle}: no bundle here (no manifest.json). Build the default one with "
                          f"`glassfinder export --out {args.bundle}` or run `make demo`.")
    options = SearchOptions(top_k=args.top, num_threads=args.threads)
    failed = 0
    sheets = []
    with GlassFinder.create_from_bundle(args.bundle, options) as finder:
        thumbs = args.bundle / "thumbs"
        for path, image in iter_images(args.images):
            if isinstance(image, ImageError):
                failed += 1
                _emit(args, {"file": str(path), "status": "error", "message": str(image)}, err=True)
                continue
            result = finder.search(image)
            record = {"file": str(path), **result.to_json()}
            _emit(args, record)
            if args.sheet:
                sheets.append(search_sheet(image, result, thumbs, title=str(path)))
    if args.sheet and sheets:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        stack_vertically(sheets).save(args.sheet)
        print(f"sheet: {args.sheet}", file=sys.stderr)
    if failed:
        print(f"{failed} file(s) could not be searched (see above)", file=sys.stderr)
    return 1 if failed else 0


def _emit(args, record: dict, err: bool = False) -> None:
    if args.json:
        print(json.dumps(record))
        return
    stream = sys.stderr if err else sys.stdout
    print(f"{record['file']}: {record['status']}", file=stream)
    if record["status"] == "error" or record["status"] == "rejected":
        print(f"  {record['message']}", file=stream)
        return
    for i, hit in enumerate(record["results"], 1):
        print(f"  {i:2d}. {hit['score']:.3f}  {hit['sku']:<22s} {hit['name']}", file=stream)
    t = record["timings_ms"]
    print("  " + "  ".join(f"{k} {v:.1f} ms" for k, v in t.items()), file=stream)
