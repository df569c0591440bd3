"""`glassfinder catalog`: build the parametric eyewear catalog and write its SKU metadata JSON."""
from __future__ import annotations

import argparse
from pathlib import Path

from glassfinder.catalog import CatalogConfig, catalog_summary, write_catalog

_DEFAULTS = CatalogConfig()


def register(sub, bench) -> None:  # noqa: ARG001 - no benchmark in this group
    p = sub.add_parser(
        "catalog",
        help="build the synthetic eyewear catalog and write its SKU metadata JSON",
        description=(
            "Draw the parametric eyewear catalog (models with colourways and sizes) from a seed and\n"
            "write every SKU's metadata (id, model, size group, family, colours, size, lens, display\n"
            "name, split and all shape/colour parameters) as JSON.\n\n"
            "Splits train/val/gallery are disjoint by model (open set); the same seed always gives\n"
            "the same file, and SKU ids do not change when --n-train grows."
        ),
        epilog="example:\n  glassfinder catalog --out out/catalog.json --seed 0 --summary",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="where to write the metadata JSON")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="catalog seed (default %(default)s)")
    p.add_argument("--n-train", type=int, default=_DEFAULTS.n_train,
                   help="at least this many train SKUs (default %(default)s)")
    p.add_argument("--n-val", type=int, default=_DEFAULTS.n_val, help="val SKUs (default %(default)s)")
    p.add_argument("--n-gallery", type=int, default=_DEFAULTS.n_gallery,
                   help="gallery SKUs, the open-set reference gallery (default %(default)s)")
    p.add_argument("--summary", action="store_true",
                   help="also print counts per family, material, lens type and top frame colours")
    p.set_defaults(func=run)


def _table(title: str, counts: dict[str, int], total: int, limit: int | None = None) -> str:
    rows = list(counts.items())[:limit]
    width = max([len(title)] + [len(k) for k, _ in rows])
    lines = [f"{title:<{width}}  {'SKUs':>6}  {'share':>6}"]
    lines += [f"{k:<{width}}  {v:>6}  {v / max(total, 1):>6.1%}" for k, v in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cfg = CatalogConfig(seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_gallery=args.n_gallery)
    catalog = write_catalog(cfg, args.out)
    summary = catalog_summary(catalog)
    total = len(catalog)
    split_rows = {f"{s} ({summary['models'].get(s, 0)} models)": n for s, n in summary["split"].items()}
    print(_table("split", split_rows, total))
    if args.summary:
        for key, title, limit in (("family", "family", None), ("material", "material", None),
                                  ("lens", "lens type", None), ("frame_colour", "frame colour (top 15)", 15)):
            print()
            print(_table(title, summary[key], total, limit))
    print(f"\nwrote {total} SKUs to {args.out}")
    return 0
