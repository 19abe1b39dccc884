"""``paperzoo viz``: PNG pictures of the mechanisms (see docs/tools.md)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("viz", help="pictures: swin-mask, posenc, attention, curves, confusion, features, anchors, "
                                   "proposals, tokens",
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

    _register_detection_and_dalle(vs)


def _register_detection_and_dalle(vs: argparse._SubParsersAction) -> None:
    """The pictures of trained detectors (anchors, proposals) and of DALL-E's dVAE (tokens)."""
    q = vs.add_parser("anchors", help="each FPN level's anchors (sizes x aspect ratios) and grid over an image")
    q.add_argument("model", help="detection run directory / checkpoint, or a registered detector name")
    q.add_argument("image", nargs="?", help="image file (default: a Fashion-MNIST test scene)")
    q.add_argument("-o", "--out", help="PNG file to write", default="anchors.png")
    q.set_defaults(func=_anchors)

    q = vs.add_parser("proposals", help="selective search's proposals beside a trained RPN's, with recall and time "
                                        "(the notes' Q4 and Q5)")
    q.add_argument("run", help="Faster R-CNN run directory or checkpoint")
    q.add_argument("image", nargs="?", help="image file (default: a scene of the run's evaluation split, whose "
                                            "ground truth gives the recall)")
    q.add_argument("--scene", type=int, default=0, help="which evaluation scene, without IMAGE")
    q.add_argument("--mode", choices=["fast", "quality"], default="fast", help="selective search mode")
    q.add_argument("--show", type=int, default=50, help="proposals drawn per panel (the best first)")
    q.add_argument("-o", "--out", help="PNG file to write", default="proposals.png")
    q.set_defaults(func=_proposals)

    q = vs.add_parser("tokens", help="DALL-E's discrete VAE: an image, its grid of codes and the reconstruction")
    q.add_argument("run", help="dalle_vae run directory, checkpoint directory or .safetensors file")
    q.add_argument("image", help="image file (converted to grayscale and resized to 28x28)")
    q.add_argument("--which", choices=["best", "final", "last"], default="best",
                   help="which checkpoint of a run directory")
    q.add_argument("-o", "--out", help="PNG file to write", default="tokens.png")
    q.set_defaults(func=_tokens)


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


def _detector_and_image(model: str, image: str | None, scene: int = 0):
    """(detector in eval mode, image (3, H, W), ground-truth boxes or None) for the detection pictures."""
    from pathlib import Path

    from paperzoo.detection.task import build_dataset, load_detector, read_image

    if Path(model).exists():
        ck = load_detector(model)
        det, data = ck.model, ck.meta["data"]
    else:
        from paperzoo.detection.registry import create_detector

        det, data = create_detector(model, num_classes=11, min_size=128, max_size=128).eval(), None
    if not hasattr(det, "rpn"):
        raise ValueError(f"{model} has no region proposal network: anchors and RPN proposals need a Faster R-CNN")
    if image is not None:
        return det, read_image(image), None
    from paperzoo.detection.task import DetectionDataConfig
    from paperzoo.train.config import build_config

    if data is not None and data.get("dataset") != "scenes":
        raise ValueError("this run was not trained on the scenes: give an IMAGE")
    # the run's own evaluation scenes (the whole split: scene i depends on how many are drawn), no proposals
    cfg = build_config(DetectionDataConfig, {**(data or {}), "proposals": "rpn"}, "data.")
    scenes = build_dataset(cfg, "val")
    if not 0 <= scene < len(scenes):
        raise ValueError(f"--scene must be in [0, {len(scenes) - 1}], got {scene}")
    img, target = scenes[scene]
    return det, img, target["boxes"]


def _anchors(args: argparse.Namespace) -> int:
    import torch

    from paperzoo.viz.detection import plot_anchors

    model, image, _ = _detector_and_image(args.model, args.image)
    with torch.no_grad():
        images, _ = model.transform([image])
        features = list(model.backbone(images.tensors).values())
        anchors = model.rpn.anchor_generator(images.tensors, features)[0]  # (sum_l H_l W_l A, 4), level after level
    per_cell = model.rpn.anchor_generator.num_anchors_per_location()
    per_level = list(torch.split(anchors, [f.shape[-2] * f.shape[-1] * a for f, a in zip(features, per_cell)]))
    strides = [images.tensors.shape[-1] // f.shape[-1] for f in features]
    resized = torch.nn.functional.interpolate(image[None], size=images.image_sizes[0], mode="bilinear")[0]
    return _done(plot_anchors(resized, per_level, strides, per_cell[0], args.out))


def _proposals(args: argparse.Namespace) -> int:
    from paperzoo.detection.selective_search import selective_search
    from paperzoo.detection.task import rpn_proposals
    from paperzoo.viz.detection import box_recall, plot_proposals, timed

    model, image, gt = _detector_and_image(args.run, args.image, args.scene)
    ss, t_ss = timed(selective_search, image, mode=args.mode)
    rpn, t_rpn = timed(rpn_proposals, model, image)
    for name, props, t in ((f"selective search ({args.mode})", ss, t_ss), ("RPN", rpn, t_rpn)):
        rec = f", recall@0.5 {box_recall(props, gt):.3f}" if gt is not None else ""
        print(f"{name}: {len(props)} proposals in {t * 1000:.0f} ms{rec}")
    return _done(plot_proposals(image, [(f"selective search ({args.mode})", ss, t_ss), ("RPN", rpn, t_rpn)],
                                args.out, gt=gt, show=args.show))


def _tokens(args: argparse.Namespace) -> int:
    from paperzoo.commands.dalle import read_images
    from paperzoo.dalle import load_dvae
    from paperzoo.viz.tokens import plot_tokens

    images = read_images([args.image])  # before loading the model: a typo costs nothing
    model = load_dvae(args.run, which=args.which)
    return _done(plot_tokens(model, images[0], args.out, title=f"{args.image}: image -> tokens -> image"))
