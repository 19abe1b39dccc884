"""``paperzoo ensemble CKPT...``: evaluate the average of several models' class probabilities."""

from __future__ import annotations

import argparse
from pathlib import Path

from paperzoo.commands.eval import add_common, print_result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ensemble", help="evaluate a probability-averaging ensemble of checkpoints",
                       description="Average the softmax probabilities of several checkpoints (architectures may "
                                   "differ, class lists must match), optionally weighted, and evaluate.")
    p.add_argument("paths", nargs="+", metavar="CKPT", help="run directories, checkpoint dirs or .safetensors")
    p.add_argument("--weights", help="comma-separated weights, one per checkpoint (default: equal)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from paperzoo.train.evaluate import ensemble

    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    out = args.out or Path("runs") / "ensembles" / "-".join(Path(p).name for p in args.paths)[:120]
    result = ensemble(args.paths, weights=weights, which=args.which, ema=args.ema, split=args.split, tta=args.tta,
                      dataset=args.dataset, root=args.data_dir, batch_size=args.batch_size, device=args.device,
                      limit=args.limit, out_dir=out, precision=args.precision, progress=not args.quiet,
                      fused=args.fused)
    print_result(result, args.format)
    return 0
