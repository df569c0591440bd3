"""`glassfinder parity`: re-run a bundle's parity checks on this machine (for app teams' CI)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub, bench) -> None:
    p = sub.add_parser(
        "parity", help="re-check a bundle's quantized models against its stored float outputs; exit 1 on failure",
        description=(
            "Verify the bundle (manifest, versions, every sha256), run each of its TFLite models on the parity "
            "images stored in bundle/parity/, and compare with the float outputs recorded at export, using "
            "the export's metrics and thresholds (box IoU, keypoint and landmark error, gate agreement, "
            "embedding cosine). Exit code 0 when every check passes, 1 otherwise. Needs no torch."),
        epilog="example:\n  glassfinder parity --bundle bundle --json out/parity_here.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=Path("bundle"), help="bundle folder (default %(default)s)")
    p.add_argument("--json", type=Path, help="also write the report here")
    p.set_defaults(func=run_parity)


def run_parity(args) -> int:
    from glassfinder_export.bundle_parity import check_bundle_parity

    report = check_bundle_parity(args.bundle)
    for model, per_target in report["models"].items():
        for target, entry in per_target.items():
            for c in entry.get("checks", []):
                mark = "ok  " if c["passed"] else "FAIL"
                value = "missing" if c["value"] is None else f"{c['value']:.4f}"
                print(f"{mark} {model:10s} {target:14s} {c['metric']:32s} {value:>8s} {c['op']} {c['threshold']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if report["custom_thresholds"]:
        print("note: this bundle was exported with custom parity thresholds (see its parity.json), not the design's")
    print("parity: PASSED" if report["passed"] else "parity: FAILED\n  " + "\n  ".join(report["failures"]))
    return 0 if report["passed"] else 1
