"""`glassfinder align` (detect + landmarks + glasses crop of one photo) and `glassfinder bench detect`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from glassfinder.landmarks import align_photo, bench_detect


def register(sub, bench) -> None:
    p = sub.add_parser(
        "align",
        help="find the face in a photo and write the aligned glasses crop",
        description=(
            "Run the face detector (BlazeFace short-range) and the face-mesh aligner (468 landmarks), "
            "both converted from MediaPipe, on one photo; take the largest face the aligner confirms "
            "(if none, retry on overlapping tiles, for the small faces of group photos), fit the "
            "glasses keypoints onto the crop template and write the aligned glasses crop, plus the "
            "photo with the detections drawn (red: every face found with its 6 detector keypoints; "
            "blue: the 5 glasses keypoints; yellow: temples; green: the crop outline)."
        ),
        epilog="example:\n  glassfinder align photo.jpg --out out/crop.png\n"
               "  (also writes out/crop_detection.png; --annotated PATH to choose)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="photo of a face (jpg, png...)")
    p.add_argument("--out", type=Path, default=Path("crop.png"), help="aligned crop PNG (default %(default)s)")
    p.add_argument("--annotated", type=Path, default=None,
                   help="photo with the detections drawn (default: OUT with _detection before the suffix)")
    p.set_defaults(func=run_align)

    b = bench.add_parser(
        "detect",
        help="faces found, multi-face photos and latency of detector + aligner on a folder",
        description=(
            "Run detector + aligner on every image under --images (recursively). A face counts as "
            "found when the detector finds one and the landmark model confirms it. Prints a table "
            "and writes the numbers (images, faces_found_rate, multi_face_images, mean_ms, per "
            "category when a manifest.csv with file,category columns is given or lies in the folder, "
            "and per image) to --json."
        ),
        epilog="example:\n  glassfinder bench detect --images ../shared/realdata --json out/bench_detect.json "
               "--sheet out/crops.png --sheet-category a_eyeglasses",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--images", type=Path, required=True, help="folder of photos")
    b.add_argument("--json", type=Path, required=True, help="where to write the results")
    b.add_argument("--manifest", type=Path, default=None,
                   help="CSV with file,category columns (default: IMAGES/manifest.csv if present)")
    b.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    b.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet of the aligned crops")
    b.add_argument("--sheet-category", action="append", default=[],
                   help="only these manifest categories on the sheet (repeatable; default: all)")
    b.set_defaults(func=run_bench)


def run_align(args: argparse.Namespace) -> int:
    res = align_photo(args.image)
    out = args.out
    annotated = args.annotated or out.with_name(f"{out.stem}_detection.png")
    for path in (out, annotated):
        path.parent.mkdir(parents=True, exist_ok=True)
    res.crop.save(out)
    res.annotated.save(annotated)
    f = res.face
    print(f"faces found: {len(res.detections)} (scores {', '.join(f'{s:.2f}' for s in res.detections.scores)}); "
          f"using the largest")
    print(f"detector score {f.score:.3f}, landmark presence {f.presence:.3f}, "
          f"pose yaw {f.pose.yaw:.1f} pitch {f.pose.pitch:.1f} roll {f.pose.roll:.1f} deg")
    print(f"wrote {out} ({res.crop.width}x{res.crop.height}) and {annotated}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    manifest = args.manifest
    if manifest is None and (args.images / "manifest.csv").is_file():
        manifest = args.images / "manifest.csv"
    res = bench_detect(args.images, manifest, args.threads, args.sheet, tuple(args.sheet_category))
    rows = [("all", res)] + list(res.get("per_category", {}).items())
    width = max(len(name) for name, _ in rows)
    print(f"{'images':<{width}}  {'n':>4}  {'found':>6}  {'rate':>6}  {'det hits':>8}  {'multi':>5}  {'ms':>7}")
    for name, r in rows:
        print(f"{name:<{width}}  {r['images']:>4}  {r['faces_found']:>6}  {r['faces_found_rate']:>6.1%}  "
              f"{r['detector_hit_images']:>8}  {r['multi_face_images']:>5}  {r['mean_ms']:>7.1f}")
    print(f"mean detect {res['mean_detect_ms']:.1f} ms + landmarks {res['mean_landmarks_ms']:.1f} ms "
          f"(torch, {res['threads']} thread(s))")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.json}" + (f" and {args.sheet}" if args.sheet else ""))
    return 0
