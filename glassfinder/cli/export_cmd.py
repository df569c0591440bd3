"""`glassfinder export`: one model to one or more targets, with parity gates (library: glassfinder_export)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

_TARGETS = ("onnx", "tflite_fp32", "tflite_fp16", "tflite_int8", "tflite_dynamic_int8", "coreml_fp16", "coreml_int8w", "coreml_w8a8",
            "onnx_int8_nncf")
_MODELS = ("detector", "aligner", "gate", "embedder", "tiny-embedder")


def register(sub, bench) -> None:
    p = sub.add_parser(
        "export",
        help="build the on-device bundle (or export one model), measure parity against torch, refuse on a miss",
        description=(
            "Without --model: build the whole bundle from the committed weights into --out: the four "
            "models as int8 TFLite (full-integer where its parity passes, else dynamic-range int8) and Core "
            "ML, the PQ gallery of the 3,200 gallery SKUs, SKU metadata and thumbnails, golden vectors for "
            "the stubs, parity.json/parity.md (per model and end to end) and manifest.json, written last. "
            "A parity miss fails the export, naming the model, metric and threshold, and writes no bundle.\n\n"
            "With --model: export one model (torch -> ONNX -> onnxsim -> TFLite float32/float16/full-int8; torch -> CoreML "
            "mlprogram fp16/int8 weights/W8A8; NNCF int8 ONNX as the desktop quantized reference). Int8 "
            "targets are calibrated on calibration_data/<model>.npz; every exported file is then compared "
            "with torch float on the held-out calibration_data/<model>_parity.npz. parity.json, parity.md "
            "(with a cosine histogram for the embedder) and export.json (manifest entries) are written to "
            "--out. A missed threshold exits with code 2 and names the model, target, metric and threshold. "
            "Normalisation and the embedder's L2-norm stay outside the graph unless asked otherwise."),
        epilog=("examples:\n"
                "  glassfinder export --out bundle                       # the default bundle\n"
                "  glassfinder export --model embedder --target tflite_int8 --target onnx_int8_nncf --out out/export\n"
                "  glassfinder export --model detector --target tflite_fp32 --target tflite_int8 --out out/export\n"
                "  glassfinder export --model tiny-embedder --target tflite_int8 --synthetic-calibration "
                "--out /tmp/tiny"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=_MODELS, help="export this one model only (then --target is required)")
    p.add_argument("--target", dest="targets", action="append", choices=_TARGETS,
                   help="export target; repeat for several (TFLite targets share one conversion)")
    p.add_argument("--force", action="store_true", help="bundle: replace an existing bundle in --out")
    p.add_argument("--n-gallery", type=int, default=3200, help="bundle: gallery SKUs enrolled (default %(default)s)")
    p.add_argument("--no-coreml", action="store_true", help="bundle: skip the Core ML packages")
    p.add_argument("--out", type=Path, required=True, help="output folder for the files and reports")
    p.add_argument("--weights", help="weights file (default: the committed glassfinder/weights/<model>.safetensors)")
    p.add_argument("--calibration-dir", type=Path,
                   help="folder with <model>.npz and <model>_parity.npz (default: calibration_data/)")
    p.add_argument("--synthetic-calibration", action="store_true",
                   help="use procedural test images instead of calibration_data/ (smoke tests only)")
    p.add_argument("--normalise-in-graph", action="store_true",
                   help="put (x - mean) / std inside the graph (default: the runtime applies it in float)")
    p.add_argument("--l2-in-graph", action="store_true",
                   help="keep the embedder's L2-norm inside the graph (default: the runtime applies it)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor int8 weight scales (default: per-channel)")
    p.add_argument("--float-layer", dest="float_layers", action="append", default=[],
                   help="torch module name to keep in float in onnx_int8_nncf / coreml_w8a8 (repeatable)")
    p.add_argument("--no-parity-gate", action="store_true",
                   help="write the files and the parity report even when a threshold is missed (exit 0)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    if args.model is None:
        return run_bundle(args)
    if not args.targets:
        from glassfinder_runtime.errors import ConfigError

        raise ConfigError("--model needs at least one --target (or leave out --model to build the whole bundle)")
    return run_one(args)


def run_bundle(args: argparse.Namespace) -> int:
    from glassfinder_export.bundle import BundleConfig, build_bundle

    summary = build_bundle(args.out, cfg=BundleConfig(n_gallery=args.n_gallery, coreml=not args.no_coreml),
                           calibration_root=args.calibration_dir, force=args.force)
    for file, size in summary["files"].items():
        print(f"{size / 1e3:10.1f} kB  {file}")
    print(f"{summary['gallery']['bytes'] / 1e3:10.1f} kB  gallery.gfpq ({summary['gallery']['n']} SKUs, "
          f"{summary['gallery']['spec']})")
    print(f"TFLite models + gallery: {summary['bytes_models_and_gallery'] / 1e6:.2f} MB; parity passed; "
          f"built in {summary['seconds']:.0f} s. See {args.out / 'parity.md'}.")
    return 0


def run_one(args: argparse.Namespace) -> int:
    from glassfinder_export.model_zoo import export_one, summary_rows
    from glassfinder_export.parity import ParityError
    from glassfinder_export.targets import ExportOptions, Target

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    options = ExportOptions(normalise_in_graph=args.normalise_in_graph, l2_in_graph=args.l2_in_graph,
                            per_channel=False if args.per_tensor else None,
                            float_layers=tuple(args.float_layers))
    targets = [Target.parse(t) for t in dict.fromkeys(args.targets)]
    try:
        out = export_one(args.model, targets, args.out, weights=args.weights,
                         calibration_dir=args.calibration_dir, options=options, check=False,
                         synthetic_calibration=args.synthetic_calibration)
    finally:
        logging.getLogger().handlers.clear()
    rows = [["target", "size", "export", "parity (vs torch float)", "verdict"]]
    rows += summary_rows(out["results"], out["report"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"reports: {args.out / 'parity.md'}, {args.out / 'parity.json'}, {args.out / 'export.json'}")
    if not out["report"]["passed"] and not args.no_parity_gate:
        raise ParityError("parity gate failed:\n  " + "\n  ".join(out["report"]["failures"]))
    return 0
