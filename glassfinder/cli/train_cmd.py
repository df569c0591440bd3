"""`glassfinder train embedder|gate`: train a model on batches rendered on the fly; `train soup`: average runs."""
from __future__ import annotations

import argparse
import json

from glassfinder_runtime.errors import ConfigError

# `train gate` lays renderer.SkinTexture over its training faces and turns a share of its training
# crops black-and-white by default (the committed gate's recipe, TRAINING.md gate stage 4);
# `train embedder` does neither (colour tells colourways apart).
GATE_SKIN_TEXTURE = 1.0
GATE_GREYSCALE = 0.1

_EPILOG_EMBEDDER = """examples:
  glassfinder train embedder --steps 3000 --out out/train/embedder
  glassfinder train embedder --out out/train/embedder --resume          # continue after a stop
  glassfinder train embedder --loss subcenter-arcface --real-faces ~/faces
  glassfinder train embedder --init glassfinder/weights/embedder.safetensors --crop-jitter 1 \\
      --steps 3000 --lr 5e-4 --warmup 50 --out out/train/embedder_jit     # fine-tune on misaligned crops
  glassfinder train embedder --init glassfinder/weights/embedder.safetensors --size-bins 20 \\
      --steps 3000 --lr 5e-4 --warmup 50 --out out/train/embedder_size   # learn to read the frame size
  glassfinder train embedder --init glassfinder/weights/embedder.safetensors --same-family 8 \\
      --steps 3000 --lr 5e-4 --warmup 50 --out out/train/embedder_fam    # half of each batch: one family
  torchrun --nproc_per_node 2 -m glassfinder train embedder --out out/ddp   # data-parallel

Writes OUT/embedder.safetensors + embedder.json (config, training record, val recall@k),
OUT/checkpoint.safetensors every --checkpoint-every steps and OUT/log.jsonl.
Copy the two final files to glassfinder/weights/ to make them the default weights."""

_EPILOG_SOUP = """example:
  glassfinder train soup out/train/embedder_a/embedder.safetensors out/train/embedder_b/embedder.safetensors \\
      --out out/train/embedder_soup

Writes OUT/embedder.safetensors + embedder.json (the files averaged; with a size read-out, the
size_scale chosen on VAL and its table). Check the VAL numbers against each run before adopting it."""

_EPILOG_GATE = """examples:
  glassfinder train gate --steps 1500 --out out/train/gate
  glassfinder train gate --out out/train/gate --resume
  glassfinder train gate --init glassfinder/weights/gate.safetensors --crop-jitter 1 --steps 2000 \\
      --lr 1e-3 --warmup 50 --out out/train/gate_jit                       # fine-tune on misaligned crops

Writes OUT/gate.safetensors + gate.json: config, the P(glasses) threshold chosen on validation
data (lowest threshold with FPR <= 1% on val negatives whose face crops are misaligned as the
aligner's are) and, at that threshold, TPR/FPR on those (jittered_tpr, jittered_fpr) and on
val crops aligned on ground truth (tpr, fpr)."""


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from glassfinder.losses import LOSS_NAMES
    from glassfinder.train import DEFAULT_LOSS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train the embedder or the gate on synthetic try-on renders",
                       description="Train a model on crops rendered on the fly from the catalog's TRAIN split "
                                   "(validation on the VAL split). CPU or CUDA; data-parallel under torchrun.")
    models = p.add_subparsers(dest="model", metavar="MODEL")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    for name, epilog, out in (("embedder", _EPILOG_EMBEDDER, "out/train/embedder"),
                              ("gate", _EPILOG_GATE, "out/train/gate")):
        m = models.add_parser(
            name, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
            help=f"train the {name}",
            description=(f"Train the {name}. Resumable: a checkpoint is written every --checkpoint-every steps; "
                         "--resume continues exactly where it stopped."))
        m.add_argument("--steps", type=int, default=d.steps, help=f"total optimiser steps (default {d.steps})")
        m.add_argument("--batch", type=int, default=d.batch_size,
                       help=f"batch size per process; embedder: classes x --per-class (default {d.batch_size})")
        m.add_argument("--per-class", type=int, default=d.samples_per_class,
                       help=f"embedder: renders per class in a batch (default {d.samples_per_class})")
        m.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
        m.add_argument("--warmup", type=int, default=d.warmup_steps,
                       help=f"linear warm-up steps before the cosine decay (default {d.warmup_steps})")
        m.add_argument("--out", default=out, help=f"output folder (default {out})")
        m.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
        m.add_argument("--init", metavar="WEIGHTS", default=None,
                       help=f"start from trained {name}.safetensors (fine-tune with a fresh optimiser and schedule)")
        m.add_argument("--real-faces", metavar="DIR", default=None,
                       help="folder of real face photos without glasses, added to the training faces")
        m.add_argument("--real-share", type=float, default=d.real_face_share,
                       help=f"with --real-faces: share of renders drawn on a real face (default {d.real_face_share})")
        m.add_argument("--crop-jitter", type=float, default=d.crop_jitter, metavar="K",
                       help="misalign the training crops like the aligner's landmark error does at query time: "
                            "K times the measured error (shift ~4.5%% of the eye distance per axis, rotation "
                            "~2.2 deg, scale ~6%%, as standard deviations); 0: perfectly aligned crops "
                            f"(default {d.crop_jitter})")
        skin = GATE_SKIN_TEXTURE if name == "gate" else d.skin_texture
        m.add_argument("--skin-texture", type=float, default=skin, metavar="K",
                       help="lay skin texture over the training faces, K times renderer.SkinTexture (fine noise "
                            "up to 12%% and broad shading up to 25%% of the pixel value, as standard deviations): "
                            "real faces have it, the procedural ones do not, and a gate trained without it "
                            f"reads texture as glasses and accepts real bare faces; 0: off (default {skin})")
        grey = GATE_GREYSCALE if name == "gate" else d.greyscale
        m.add_argument("--greyscale", type=float, default=grey, metavar="P",
                       help=f"share of training crops turned black-and-white, like old photos (default {grey})")
        m.add_argument("--eval-every", type=int, default=d.eval_every,
                       help=f"validate every N steps (default {d.eval_every})")
        m.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                       help=f"checkpoint every N steps (default {d.checkpoint_every})")
        m.add_argument("--seed", type=int, default=d.seed, help=f"data seed (default {d.seed})")
        m.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto: CUDA when available (default auto)")
        if name == "embedder":
            m.add_argument("--loss", choices=LOSS_NAMES, default=DEFAULT_LOSS,
                           help=f"metric-learning loss (default {DEFAULT_LOSS}, the measured winner)")
            m.add_argument("--size-bins", type=int, default=None, metavar="N",
                           help="give the embedder a size read-out: the last N of its dimensions encode the "
                                "lens width it reads from the crop, so search prefers the right size of a frame "
                                "(0: none; default: as in --init's weights, else none)")
            m.add_argument("--size-weight", type=float, default=d.size_loss_weight,
                           help="weight of the lens-width regression in the loss (default %(default)s)")
            m.add_argument("--same-family", type=int, default=d.same_family, metavar="N",
                           help="hard negatives: N of the batch's classes come from one frame family (another "
                                "model of the same family is the commonest wrong answer); 0: all at random "
                                "(default %(default)s)")
        m.set_defaults(func=_run_embedder if name == "embedder" else _run_gate)

    m = models.add_parser(
        "soup", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG_SOUP,
        help="average the weights of embedders fine-tuned from one start (a model soup)",
        description="Average embedder weights fine-tuned from the same start (other data seeds or batch rules): "
                    "the average usually validates better than each run. A size read-out's size_scale is "
                    "chosen again on VAL, as at the end of training.")
    m.add_argument("weights", nargs="+", metavar="WEIGHTS", help="embedder .safetensors files (two or more)")
    m.add_argument("--out", required=True, help="output folder for embedder.safetensors + .json")
    m.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=None,
                   help="embed each crop and its mirror image and average them (inside the exported graph; "
                        "about 2x the embedder's time, steadier vectors); default: as in the first file")
    m.set_defaults(func=_run_soup)

    b = bench.add_parser(
        "gate", help="gate TPR / FPR on synthetic val crops and on a folder of real photos",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure the gate at its stored threshold: TPR on glasses worn, FPR on everything else. "
                    "Synthetic: VAL split glasses on VAL faces vs bare faces, textures and objects, with the face "
                    "crops aligned on ground truth (synthetic_val) and misaligned as the aligner does "
                    "(synthetic_val_jittered, renderer.ALIGNER_JITTER). Real (--real): "
                    "detector -> aligner -> crop -> gate on each photo of a folder with a manifest.csv "
                    "(file, category); a photo without a face counts as refused.",
        epilog="example:\n  glassfinder bench gate --real ../shared/realdata --json out/bench_gate.json")
    b.add_argument("--weights", default=None, help="gate .safetensors (default: the committed weights)")
    b.add_argument("--real", metavar="DIR", default=None, help="folder of real photos with a manifest.csv")
    b.add_argument("--n", type=int, default=2000, help="synthetic crops (default 2000)")
    b.add_argument("--seed", type=int, default=777, help="seed of the synthetic crops (default 777)")
    b.add_argument("--json", default="out/bench_gate.json", help="where to write the numbers (default out/bench_gate.json)")
    b.set_defaults(func=_bench_gate)


def _config(args: argparse.Namespace):
    from glassfinder.train import TrainConfig

    k = args.per_class
    if k < 1 or args.batch < k or args.batch % k:
        raise ConfigError(f"--batch {args.batch} must be a positive multiple of --per-class {k}")
    return TrainConfig(out_dir=args.out, steps=args.steps, classes_per_batch=args.batch // k, samples_per_class=k,
                       lr=args.lr, warmup_steps=args.warmup, loss=getattr(args, "loss", TrainConfig().loss), eval_every=args.eval_every,
                       checkpoint_every=args.checkpoint_every, seed=args.seed, resume=args.resume,
                       real_faces_dir=args.real_faces, real_face_share=args.real_share, init_weights=args.init,
                       crop_jitter=args.crop_jitter, skin_texture=args.skin_texture, greyscale=args.greyscale,
                       device=args.device,
                       size_loss_weight=getattr(args, "size_weight", TrainConfig().size_loss_weight),
                       same_family=getattr(args, "same_family", TrainConfig().same_family))


def _report(result) -> int:
    if result.weights is not None:  # rank 0 only
        print(f"wrote {result.weights} (+ .json) after {result.step} steps")
        if result.history:
            print("validation:", json.dumps(result.history[-1]))
    return 0


def _run_embedder(args: argparse.Namespace) -> int:
    from glassfinder.train import train_embedder

    cfg = _config(args)
    return _report(train_embedder(cfg, model_cfg=_embedder_config(args.init, args.size_bins, cfg)))


def _embedder_config(init: str | None, size_bins: int | None, train_cfg=None):
    """The model to train: a resumed checkpoint's, else --init's architecture (default config
    without --init), with --size-bins."""
    from dataclasses import replace
    from pathlib import Path

    from glassfinder.checkpoint import load_checkpoint
    from glassfinder.models.embedder import EmbedderConfig, read_weights
    from glassfinder.train import CHECKPOINT_NAME

    checkpoint = Path(train_cfg.out_dir) / CHECKPOINT_NAME if train_cfg is not None and train_cfg.resume else None
    if checkpoint is not None and checkpoint.is_file():
        saved = load_checkpoint(checkpoint)[2].get("model_config")
        cfg = EmbedderConfig.from_dict(dict(saved)) if saved else EmbedderConfig()
    else:
        cfg = EmbedderConfig.from_dict(read_weights(init)[1]["config"]) if init else EmbedderConfig()
    if size_bins is not None and size_bins != cfg.size_bins:
        if cfg.size_bins:  # a sizeless model can start a sized one, not the other way round
            raise ConfigError(f"the embedder being trained (--init or --resume) has a size read-out of "
                              f"{cfg.size_bins} bins; --size-bins {size_bins} cannot change it")
        cfg = replace(cfg, size_bins=size_bins)
    return cfg


def _run_soup(args: argparse.Namespace) -> int:
    from glassfinder.train import soup_embedder

    print(f"wrote {soup_embedder(args.weights, args.out, flip_average=args.flip_average)} (+ .json)")
    return 0


def _run_gate(args: argparse.Namespace) -> int:
    from glassfinder.train import train_gate

    return _report(train_gate(_config(args)))




def _bench_gate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from glassfinder.gate_data import evaluate_gate_real, evaluate_gate_synthetic
    from glassfinder.models.gate import DEFAULT_GATE_WEIGHTS, load_gate
    from glassfinder.renderer import ALIGNER_JITTER
    from glassfinder.train import gate_val_source

    gate, side = load_gate(args.weights or DEFAULT_GATE_WEIGHTS)
    t = float(side["threshold"])
    result = {"weights": str(args.weights or DEFAULT_GATE_WEIGHTS), "threshold": t,
              "synthetic_val": evaluate_gate_synthetic(gate_val_source(), gate, t, args.n, args.seed),
              "synthetic_val_jittered": evaluate_gate_synthetic(gate_val_source(ALIGNER_JITTER), gate, t, args.n,
                                                                args.seed)}
    if args.real:
        result["real"] = evaluate_gate_real(args.real, gate, t)
    print(f"gate threshold {t:.4f} (P(glasses) >= threshold is accepted)")
    print(f"{'data':<24}{'TPR':>8}{'FPR':>8}{'n_pos':>8}{'n_neg':>8}")
    for name in ("synthetic_val", "synthetic_val_jittered", "real"):
        if name in result:
            r = result[name]
            print(f"{name:<24}{r['tpr']:>8.3f}{r['fpr']:>8.3f}{r['n_pos']:>8}{r['n_neg']:>8}")
    for k, v in result["synthetic_val"]["accepted_by_kind"].items():
        print(f"  synthetic {k:<12} accepted {v:.3f}")
    if "real" in result:
        for k, c in sorted(result["real"]["per_category"].items()):
            print(f"  real {k:<18} accepted {c['accepted']}/{c['n']} (no face: {c['no_face']})")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
