"""``paperzoo average CKPT... -o DIR``: average the weights of same-architecture checkpoints."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("average", help="average the weights of same-architecture checkpoints into a new one",
                       description="Average model weights (e.g. the last checkpoints of a run) into a new "
                                   "checkpoint directory usable by eval / predict / ensemble.")
    p.add_argument("paths", nargs="+", metavar="CKPT", help="run directories, checkpoint dirs or .safetensors")
    p.add_argument("-o", "--out", required=True, help="output checkpoint directory")
    p.add_argument("--which", choices=("final", "best", "last"), default="final",
                   help="for a run directory: final weights, best validation or newest checkpoint")
    p.add_argument("--ema", action="store_true", help="average the EMA weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from paperzoo.train.evaluate import average_checkpoints

    out = average_checkpoints(args.paths, args.out, which=args.which, ema=args.ema)
    print(f"averaged {len(args.paths)} checkpoints -> {out}")
    return 0
