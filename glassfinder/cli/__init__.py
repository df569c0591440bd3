"""The `glassfinder` command: one entry point whose subcommands map 1:1 to library functions.

Each command lives in its own module in this package and exposes
`register(sub, bench)`: `sub` is the top-level subparsers object, `bench` the subparsers of
`glassfinder bench` (benchmarks that print and save JSON). A parser sets `func=<callable(args) -> int>`.
User mistakes raise `GlassfinderError`; main() prints them without a traceback and exits 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from glassfinder_runtime.errors import GlassfinderError

# Explicit list, no registry magic: add a module here when it lands.
COMMAND_MODULES: tuple[str, ...] = ("catalog_cmd", "align_cmd", "tryon_cmd", "preview_cmd", "render_bench_cmd", "gallery_cmd", "train_cmd", "search_cmd", "eval_cmd", "export_cmd", "demo_cmd", "latency_cmd", "parity_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glassfinder",
        description=(
            "On-device eyeglasses visual search kit. Train and evaluate the models on synthetic "
            "virtual try-on renders, export them to TFLite/CoreML with parity gates, build the PQ "
            "gallery, and search a photo with the reference runtime."
        ),
        epilog="Run `glassfinder COMMAND --help` for the options and an example of each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench_parser = sub.add_parser(
        "bench", help="benchmarks that print their numbers and save them as JSON",
        description="Benchmarks: each prints a table and writes the same numbers to --json.",
    )
    bench = bench_parser.add_subparsers(dest="bench_command", metavar="BENCH")
    bench_parser.set_defaults(func=lambda args: _usage(bench_parser))
    for name in COMMAND_MODULES:
        importlib.import_module(f"glassfinder.cli.{name}").register(sub, bench)
    parser.set_defaults(func=lambda args: _usage(parser))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    # TensorFlow (pulled in by the exporters) logs its C++ start-up at INFO level; users need none of it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GlassfinderError as exc:
        print(f"glassfinder: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glassfinder: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
