"""``paperzoo viz``: PNG pictures of the mechanisms (see docs/tools.md)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("viz", help="pictures: swin-mask, posenc, attention, curves, confusion, features",
                       description="Draw a picture of a mechanism as a PNG file.")
    vs = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    q = vs.add_parser("swin-mask", help="Swin's cyclic shift: regions, windows and each window's attention mask")
    q.add_argument("--height", type=int, default=8, help="feature-map height in tokens")
    q.add_argument("--width", type=int, default=8, help="feature-map width in tokens")
    q.add_argument("--window", type=int, default=4, help="window side in tokens")
    q.add_argument("--shift", type=int, default=None, help="default: window // 2, as in the paper")
    q.add_argument("-o", "--out", help="PNG file to write", default="swin_mask.png")
    q.set_defaults(func=_swin_mask)

    q = vs.add_parser("attention", help="ViT/Swin attention maps (+ rollout) over an image, or a translation "
                                        "model's encoder-decoder attention for a sentence (--sentence)")
    q.add_argument("model", help="checkpoint (run dir / .safetensors) or registered ViT/Swin name (random weights)")
    q.add_argument("image", nargs="?", help="image file (default: random noise)")
    q.add_argument("--sentence", help="translation checkpoints: the source sentence to translate and show")
    q.add_argument("--layer", type=int, default=-1, help="block index (default: the last)")
    q.add_argument("--size", type=int, help="input side for a model name (default: its input size)")
    q.add_argument("--max-heads", type=int, default=12, help="heads drawn at most")
    q.add_argument("--per-head-scale", action="store_true",
                   help="stretch each head to its own maximum (default: all heads share one colour scale)")
    q.add_argument("-o", "--out", help="PNG file to write", default="attention.png")
    q.set_defaults(func=_attention)

    q = vs.add_parser("posenc", help="sinusoidal positional-encoding matrix and position similarity")
    q.add_argument("--positions", type=int, default=100, help="positions (rows)")
    q.add_argument("--dim", type=int, default=512, help="model dimension d_model (columns)")
    q.add_argument("-o", "--out", help="PNG file to write", default="posenc.png")
    q.set_defaults(func=_posenc)

    q = vs.add_parser("curves", help="learning curves of one or several run directories on shared axes")
    q.add_argument("runs", nargs="+")
    q.add_argument("--x", choices=["step", "epoch", "time"], default="step",
                   help="x axis: optimizer step, epoch or training time")
    q.add_argument("--metrics", help="comma list of metrics.jsonl keys (default: train_loss and val_acc, or "
                                     "test_acc for runs evaluated on the test set)")
    q.add_argument("-o", "--out", help="PNG file to write", default="curves.png")
    q.set_defaults(func=_curves)

    q = vs.add_parser("confusion", help="confusion matrix of an evaluation (`paperzoo eval --out DIR`)")
    q.add_argument("eval", help="evaluation directory or its metrics.json")
    q.add_argument("-o", "--out", help="PNG file to write", default="confusion.png")
    q.set_defaults(func=_confusion)

    q = vs.add_parser("features", help="feature maps of a CNN layer, or SE channel weights, for an image")
    q.add_argument("model", help="checkpoint (run dir / .safetensors) or registered model name (random weights)")
    q.add_argument("image", nargs="?", help="image file (default: random noise)")
    q.add_argument("--layer", help="module name whose output to draw (e.g. layer1); omit with --se")
    q.add_argument("--se", action="store_true", help="draw the SE blocks' channel weights instead")
    q.add_argument("--size", type=int, help="input side for a model name (default: its input size)")
    q.add_argument("--max-channels", type=int, default=32, help="feature maps drawn at most")
    q.add_argument("-o", "--out", help="PNG file to write", default="features.png")
    q.set_defaults(func=_features)


def _done(path) -> int:
    print(f"wrote {path}")
    return 0


def _swin_mask(args: argparse.Namespace) -> int:
    from paperzoo.viz.swin_mask import plot_swin_mask

    return _done(plot_swin_mask(args.out, args.height, args.width, args.window, args.shift))


def _attention(args: argparse.Namespace) -> int:
    if args.sentence is not None:
        from paperzoo.viz.translation import plot_translation_attention

        return _done(plot_translation_attention(args.model, args.sentence, args.out, layer=args.layer,
                                                max_heads=min(args.max_heads, 8)))
    from paperzoo.viz.attention import plot_attention
    from paperzoo.viz.inputs import load_model_and_image

    model, x, raw = load_model_and_image(args.model, args.image, size=args.size)
    return _done(plot_attention(model, x, raw, args.out, layer=args.layer, max_heads=args.max_heads,
                                per_head_scale=args.per_head_scale))


def _posenc(args: argparse.Namespace) -> int:
    from paperzoo.viz.posenc import plot_positional_encoding

    return _done(plot_positional_encoding(args.out, args.positions, args.dim))


def _curves(args: argparse.Namespace) -> int:
    from paperzoo.viz.curves import plot_learning_curves

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    return _done(plot_learning_curves(args.runs, args.out, x=args.x, metrics=metrics))


def _confusion(args: argparse.Namespace) -> int:
    from paperzoo.viz.curves import plot_confusion

    return _done(plot_confusion(args.eval, args.out))


def _features(args: argparse.Namespace) -> int:
    from paperzoo.viz.features import plot_feature_maps, plot_se_weights
    from paperzoo.viz.inputs import load_model_and_image

    if not args.se and not args.layer:
        raise ValueError("give --layer NAME (e.g. layer1) or --se")
    model, x, _ = load_model_and_image(args.model, args.image, size=args.size)
    if args.se:
        return _done(plot_se_weights(model, x, args.out))
    return _done(plot_feature_maps(model, x, args.layer, args.out, args.max_channels))
