"""``paperzoo models``: list the registry with params and FLOPs; ``--check`` verifies reference counts."""

from __future__ import annotations

import argparse
import sys

from paperzoo.registry import list_models
from paperzoo.tools.summary import summarize
from paperzoo.tools.tables import FORMATS, render


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models: family, paper, params, GFLOPs",
                       description="List registered models. GFLOPs are multiply-adds x 2 at the model's default "
                                   "input size, counted with torch.utils.flop_counter (attention added by formula).")
    p.add_argument("pattern", nargs="?", help="glob over model names, e.g. 'resnet*'")
    p.add_argument("--family", help="only this family (e.g. resnet, vit, swin)")
    p.add_argument("--format", choices=FORMATS, default="table", help="table format")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--detectors", action="store_true",
                   help="list the registered detectors (paperzoo detect) with their parameters at 91 classes")
    p.add_argument("--check", action="store_true",
                   help="compare our parameter counts with the reference implementations; exit 1 on any difference")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.detectors:
        return _detectors(args)
    names = list_models(args.pattern, family=args.family)
    if not names:
        import difflib

        close = difflib.get_close_matches(args.pattern or "", list_models(), n=5, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"no model matches pattern={args.pattern!r} family={args.family!r}{hint}")
    rows = []
    for name in names:
        s = summarize(name, with_flops=not (args.no_flops or args.check))
        row = s.as_dict()
        row["paper"] = f"{s.paper} ({s.year})"
        row["input"] = f"{s.input_size[0]}x{s.input_size[1]}" if s.kind == "image" else "tokens"
        if args.check:
            row["match"] = None if s.ref_params is None else s.params == s.ref_params
        rows.append(row)
    if args.check:
        checked = [r for r in rows if r["ref_params"] is not None]
        print(render(checked, ["name", "params", "ref_params", "match"], args.format))
        bad = [r["name"] for r in checked if not r["match"]]
        print(f"\n{len(checked) - len(bad)}/{len(checked)} models match their reference parameter count")
        if bad:
            print("MISMATCH: " + ", ".join(bad), file=sys.stderr)
            return 1
        return 0
    cols = ["name", "family", "paper", "params", "input"] + ([] if args.no_flops else ["gflops"])
    print(render(rows, cols, args.format))
    return 0


def _detectors(args: argparse.Namespace) -> int:
    import fnmatch

    from paperzoo.detection.registry import create_detector, detector_doc, detector_names

    rows = []
    for name in detector_names():
        if args.pattern and not fnmatch.fnmatch(name, args.pattern):
            continue
        model = create_detector(name)  # COCO's 91 classes, the builder's defaults
        rows.append({"name": name, "family": getattr(model, "model_family", "?"),
                     "params": sum(p.numel() for p in model.parameters()), "what": detector_doc(name)})
    print(render(rows, ["name", "family", "params", "what"], args.format))
    return 0
