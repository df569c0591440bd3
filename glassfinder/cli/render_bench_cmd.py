"""`glassfinder bench render`: throughput of the try-on renderer (crops and full scenes per second)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub, bench) -> None:  # noqa: ARG001 - a benchmark only
    p = bench.add_parser(
        "render",
        help="renderer throughput: aligned training crops/s and full scenes/s (one process)",
        description=(
            "Time the synthetic try-on renderer in one process (numpy only): the fast path that "
            "renders catalog SKUs directly into 128x64 aligned crops on cached procedural faces "
            "(what training batches use; target >= 500 crops/s per core) and the full-scene path "
            "with ground truth. Prints a table and writes the numbers to --json."
        ),
        epilog="example:\n  glassfinder bench render --json out/bench_render.json --n 2048",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", type=Path, required=True, help="where to write the results JSON")
    p.add_argument("--n", type=int, default=1024, help="crops to render (default %(default)s)")
    p.add_argument("--scenes", type=int, default=64, help="full scenes to render (default %(default)s)")
    p.add_argument("--batch", type=int, default=64, help="crops per render_crop_batch call (default %(default)s)")
    p.add_argument("--faces", type=int, default=32, help="procedural faces in the crop cache (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glassfinder.renderer import benchmark_render
    from glassfinder_runtime.errors import ConfigError

    if min(args.n, args.scenes, args.batch, args.faces) < 1:
        raise ConfigError(f"--n, --scenes, --batch and --faces must be >= 1, got {args.n}, {args.scenes}, {args.batch}, {args.faces}")
    r = benchmark_render(n_crops=args.n, n_scenes=args.scenes, n_faces=args.faces, batch=args.batch, seed=args.seed)
    rows = [
        ("crops_per_s", f"{r['crops_per_s']:.1f}", f"{r['crop_size'][0]}x{r['crop_size'][1]} crops, batch {r['batch_size']}, target >= 500 (wall clock)"),
        ("scenes_per_s", f"{r['scenes_per_s']:.1f}", f"{r['scene_size'][0]}x{r['scene_size'][1]} scenes with ground truth"),
        ("crops_per_cpu_s", f"{r['crops_per_cpu_s']:.1f}", "crops per second of this process's CPU time (per core)"),
        ("scenes_per_cpu_s", f"{r['scenes_per_cpu_s']:.1f}", "scenes per second of CPU time"),
        ("faces_per_s", f"{r['faces_per_s']:.1f}", "procedural face generation (cached for crops)"),
    ]
    w = max(len(k) for k, _, _ in rows)
    print(f"{'metric':<{w}}  {'value':>9}  note")
    for k, v, note in rows:
        print(f"{k:<{w}}  {v:>9}  {note}")
    print(f"machine: {r['machine']['processor']}, {r['machine']['cpu_count']} CPUs, one process")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0
