"""`glassfinder tryon`: virtual try-on of a catalog SKU on a face photo."""
from __future__ import annotations

import argparse
from pathlib import Path

from glassfinder.tryon import parse_keypoints, tryon
from glassfinder_runtime.image_io import load_image


def register(sub, bench) -> None:  # noqa: ARG001 - no benchmark in this group
    p = sub.add_parser(
        "tryon",
        help="draw a catalog frame on a face photo (virtual try-on)",
        description=(
            "Virtual try-on: put catalog SKU --sku on the face in FACE_IMAGE and write the result. "
            "The face's landmarks come from the detector + aligner, or from --keypoints (five x,y "
            "image-pixel points: right_eye_outer, right_eye_inner, left_eye_inner, left_eye_outer, "
            "nose_bridge; the subject's right eye is on the image's left). The head pose is "
            "estimated from the landmarks, so turned and tilted heads work too."
        ),
        epilog=(
            "examples:\n"
            "  glassfinder tryon me.jpg --sku GF-M00038-C1-54 --out me_tryon.jpg\n"
            "  glassfinder tryon face.png --sku GF-M00038-C1-54 --out out.jpg \\\n"
            "      --keypoints 96,120,122,120,150,120,176,120,136,116"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("face_image", metavar="FACE_IMAGE", help="photo of a face (JPEG, PNG, ...)")
    p.add_argument("--sku", required=True, help="SKU id from the catalog, e.g. GF-M00038-C1-54")
    p.add_argument("--out", type=Path, required=True, help="output image (format from the extension, e.g. .jpg)")
    p.add_argument("--keypoints", default=None,
                   help="x1,y1,...,x5,y5 landmarks in image pixels; default: found by the detector + aligner")
    p.add_argument("--catalog-seed", type=int, default=0, help="seed of the catalog the SKU comes from (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the lens reflections (default %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glassfinder.catalog import CatalogConfig, build_catalog

    image = load_image(args.face_image)
    keypoints = parse_keypoints(args.keypoints) if args.keypoints else None
    sku = build_catalog(CatalogConfig(seed=args.catalog_seed)).get(args.sku)
    landmarker = None
    if keypoints is None:
        from glassfinder.landmarks import default_landmarker

        landmarker = default_landmarker()
    result = tryon(image, sku, keypoints=keypoints, landmarker=landmarker, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.save(args.out, quality=95) if args.out.suffix.lower() in (".jpg", ".jpeg") else result.save(args.out)
    print(f"wrote {args.out} ({sku.display_name}, {sku.size})")
    return 0
