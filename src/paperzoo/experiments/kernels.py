"""Odd vs even kernels (the notes' Q2) and why a fully convolutional network takes any input size (Q3).

``odd_even_kernels``: a kxk convolution with 'same' padding has a centre pixel only when k is odd. With k even
the (k-1) padding pixels cannot be split evenly (PyTorch's ``padding="same"`` puts the extra one after, on the
right and bottom), so every layer moves the response by half a pixel up and left, and a stack of L layers by L/2:
the output is no longer aligned with the input (a problem for segmentation and detection, whose outputs must
sit on the input's pixels). Measured on the response to a centred impulse, for box kernels (exact) and random
kernels (He init, centre of the response's energy, averaged over many draws). Alternating the side of the
extra padding pixel from layer to layer (as some even-kernel designs do) cancels the drift on every second
layer; it is shown as the fix.

``fcn_any_size``: Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation",
arXiv:1411.4038, Sec. 3.1. paperzoo's FCN (:mod:`paperzoo.segmentation.fcn`) returns a score map of the
input's size for any input size; the same backbone with a fully connected head
(:class:`~paperzoo.segmentation.fcn.FullyConnectedSegmenter`) refuses every size but the one it was built for;
:func:`~paperzoo.segmentation.fcn.convolutionalize` turns that head into a convolution (equal outputs at the
built size, a map of them on a larger input). A classifier with global average pooling (paperzoo's ResNet) also
takes any size, but returns one vector: what fixes the size is flatten + fc, not fc itself.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import create_model
from ..segmentation.fcn import FullyConnectedSegmenter, convolutionalize, fcn_backbone
from ..segmentation.registry import create_segmenter
from ..viz.common import new_figure, save_figure
from . import ExperimentContext, Report, register_experiment


# ------------------------------------------------------------------------------------------ odd vs even (Q2)
def same_padding(k: int, flip: bool = False) -> tuple[int, int]:
    """(before, after) padding keeping the size: (k-1)/2 each side for odd k; for even k the extra pixel goes
    after, as PyTorch's ``padding="same"`` (or before, ``flip=True``)."""
    before, after = (k - 1) // 2, k // 2
    return (after, before) if flip else (before, after)


def conv_stack_responses(x: Tensor, weights: list[Tensor], *, alternate: bool = False) -> list[Tensor]:
    """Run x (1, N, H, W) through 'same' convolutions, one kernel per channel (weights: (N, 1, k, k) per layer,
    grouped so N random draws run at once); returns the input and every layer's output."""
    outs = [x]
    for i, w in enumerate(weights):
        b, a = same_padding(w.shape[-1], flip=alternate and i % 2 == 1)
        x = F.conv2d(F.pad(x, (b, a, b, a)), w, groups=w.shape[0])  # F.pad order: (left, right, top, bottom)
        outs.append(x)
    return outs


def centre_of_mass(maps: Tensor) -> tuple[Tensor, Tensor]:
    """(row, column) centre of mass of non-negative maps (..., H, W)."""
    h, w = maps.shape[-2:]
    total = maps.sum((-2, -1))
    rows = (maps.sum(-1) * torch.arange(h, dtype=maps.dtype)).sum(-1) / total
    cols = (maps.sum(-2) * torch.arange(w, dtype=maps.dtype)).sum(-1) / total
    return rows, cols


def drift_by_layer(k: int, layers: int, size: int, *, random_draws: int = 0, alternate: bool = False,
                   seed: int = 0) -> Tensor:
    """Column drift of the response to a centred impulse after each of 0..layers layers: (draws, layers + 1).

    ``random_draws=0``: box kernels (all 1/k^2), the centre of the response itself; otherwise He-normal kernels,
    the centre of the response's energy (a signed response has no centre of mass)."""
    n = max(random_draws, 1)
    x = torch.zeros(1, n, size, size, dtype=torch.float64)
    c = size // 2
    x[..., c, c] = 1.0
    g = torch.Generator().manual_seed(seed)
    if random_draws:
        weights = [torch.randn(n, 1, k, k, generator=g, dtype=torch.float64) * (2 / k**2) ** 0.5
                   for _ in range(layers)]
    else:
        weights = [torch.full((1, 1, k, k), 1 / k**2, dtype=torch.float64)] * layers
    outs = conv_stack_responses(x, weights, alternate=alternate)
    cols = [centre_of_mass(o[0] ** 2 if random_draws else o[0])[1] for o in outs]  # each (n,)
    return torch.stack(cols, dim=1) - c


def _slope(drift: Tensor) -> float:
    """Least-squares drift per layer of a (layers + 1,) curve."""
    t = torch.arange(len(drift), dtype=drift.dtype)
    t = t - t.mean()
    return round(float((t * (drift - drift.mean())).sum() / (t * t).sum()), 6) + 0.0  # 3.6e-16 is 0, not -0


def _object(size: int) -> Tensor:
    """A centred, symmetric test object: a ring of radius size/8 (its centre of mass is the centre pixel)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size // 2) ** 2 + (xx - size // 2) ** 2).double().sqrt()
    return ((r - size / 8).abs() < 1.0).double()


def _plot_kernels(ctx: ExperimentContext, curves: dict[str, Tensor], layers: int, size: int) -> None:
    fig, axes = new_figure(4, 2, size=(15.0, 7.5))
    show = [0, layers // 2, layers]
    obj = _object(size)[None, None]
    c = size // 2
    for row, k in enumerate((2, 3)):
        outs = conv_stack_responses(obj, [torch.full((1, 1, k, k), 1 / k**2, dtype=torch.float64)] * layers)
        for col, L in enumerate(show):
            ax = axes[row, col]
            ax.imshow(outs[L][0, 0].numpy(), cmap="magma")
            r, cc = centre_of_mass(outs[L][0, 0])
            ax.axhline(c, color="cyan", lw=0.6), ax.axvline(c, color="cyan", lw=0.6)
            ax.plot([cc.item()], [r.item()], "x", color="lime", ms=9, mew=2)
            ax.set(title=f"{k}x{k} box, {L} layers: centre ({r.item() - c:+.1f}, {cc.item() - c:+.1f})",
                   xticks=[], yticks=[])
    gs = axes[0, 3].get_gridspec()
    for ax in axes[:, 3]:
        ax.remove()
    ax = fig.add_subplot(gs[:, 3])
    for name, curve in curves.items():
        ax.plot(range(layers + 1), curve.tolist(), marker="o", ms=3, label=name)
    ax.set(title="column drift of the centre", xlabel="layers", ylabel="drift (pixels)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, ctx.path("odd_even_kernels.png"))


@register_experiment("odd_even_kernels", title="Odd vs even kernels: the half-pixel drift",
                     question="Small kernels save parameters, so why not 2x2? Why are kernels odd? (Q2)")
def odd_even_kernels(ctx: ExperimentContext) -> Report:
    layers, draws = ctx.pick(smoke=4, short=8, full=16), ctx.pick(smoke=16, short=500, full=5000)
    size = 4 * layers + 16  # wide enough that no response reaches the zero border
    rows, curves, numbers = [], {}, {"layers": layers}
    for k, alternate in ((2, False), (3, False), (4, False), (5, False), (2, True)):
        name = f"{k}x{k}" + (" alternating pad" if alternate else "")
        box = drift_by_layer(k, layers, size, alternate=alternate)[0]
        rand = drift_by_layer(k, layers, size, random_draws=draws, alternate=alternate, seed=ctx.seed)
        slopes = torch.tensor([_slope(r) for r in rand])
        curves[name] = box
        padding = "(0, 1) / (1, 0)" if alternate else str(same_padding(k))
        rows.append({"kernel": name, "padding (before, after)": padding,
                     "drift/layer, box (px)": _slope(box), "drift/layer, random (mean)": slopes.mean().item(),
                     "random (std)": slopes.std().item(), f"drift after {layers} layers": round(box[-1].item(), 6),
                     "params/layer (C=64)": k * k * 64 * 64, f"receptive field, {layers} layers": layers * (k - 1) + 1})
        key = f"k{k}" + ("_alt" if alternate else "")
        numbers.update({f"{key}_drift_per_layer_box": _slope(box), f"{key}_drift_total_box": round(box[-1].item(), 6),
                        f"{key}_drift_per_layer_random": slopes.mean().item()})
    _plot_kernels(ctx, curves, layers, size)
    summary = (
        f"With 'same' padding an even kernel cannot be centred: the response to a centred impulse moves by "
        f"{numbers['k2_drift_per_layer_box']:+.2f} px per 2x2 layer ({numbers['k2_drift_total_box']:+.1f} px after "
        f"{layers} layers; random kernels {numbers['k2_drift_per_layer_random']:+.2f} on average over {draws} draws), "
        f"while 3x3 stays put ({numbers['k3_drift_per_layer_box']:+.2f}). Alternating the padding side brings the "
        f"2x2 stack back every second layer ({numbers['k2_alt_drift_total_box']:+.1f} px after {layers}). Two 2x2 "
        f"layers see 3x3 pixels with 8/9 of one 3x3's parameters, but off-centre by half a pixel each.")
    return Report("Odd vs even kernels: the half-pixel drift", summary,
                  tables=[(f"Response to a centred impulse, {layers} stacked 'same' convolutions", rows)],
                  figures=[("odd_even_kernels.png", "a centred ring through 2x2 (top) and 3x3 (bottom) box "
                                                    "stacks (cyan: the input's centre, green: the output's); "
                                                    "right: drift per layer")],
                  numbers=numbers)


# ------------------------------------------------------------------------------------------- any size (Q3)
def _scene(root: str | None, seed: int, size: int = 128) -> Tensor:
    """A Fashion-MNIST scene (3, 128, 128) in [0, 1], or a synthetic one when the dataset is not installed."""
    from ..data.datasets import DatasetNotFoundError
    from ..segmentation.data import ScenesSegmentation

    try:
        return ScenesSegmentation("test", 1, seed=seed, canvas=size, root=root).load(0)[0]
    except DatasetNotFoundError:
        if root is not None:  # a data directory for another experiment: try the usual places
            return _scene(None, seed, size)
        return _object(size).float().expand(3, size, size).clone()


def _try(fn) -> tuple[str, str]:
    """("ok", output shape) or ("error", the first sentence of the ValueError it raised)."""
    try:
        return "ok", "x".join(map(str, fn().shape))
    except ValueError as e:
        return "error", str(e).split(";")[0]


def _plot_sizes(ctx: ExperimentContext, pairs: list[tuple[Tensor, Tensor]]) -> None:
    fig, axes = new_figure(len(pairs), 2, size=(3.6 * len(pairs), 7.0))
    for col, (image, scores) in enumerate(pairs):
        axes[0, col].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        axes[0, col].set_title(f"input {image.shape[1]}x{image.shape[2]}")
        axes[1, col].imshow(scores.argmax(0).numpy(), cmap="tab20", interpolation="nearest")
        axes[1, col].set_title(f"FCN output {scores.shape[1]}x{scores.shape[2]} (argmax)")
    fig.tight_layout()
    save_figure(fig, ctx.path("fcn_any_size.png"))


@register_experiment("fcn_any_size", title="A fully convolutional network takes any input size",
                     question="What does it mean that an FCN is independent of the input size? (Q3)")
def fcn_any_size(ctx: ExperimentContext) -> Report:
    sizes = ctx.pick(smoke=[(32, 32), (48, 48), (40, 56)], short=[(64, 64), (96, 96), (128, 128), (90, 150)],
                     full=[(64, 64), (96, 96), (128, 128), (90, 150), (256, 256), (240, 320)])
    width, built = ctx.pick(smoke=8, short=32, full=32), sizes[0]
    torch.manual_seed(ctx.seed)
    fcn = create_segmenter("fcn", num_classes=11, width=width).eval().to(ctx.device)  # background + 10 classes
    fc_seg = FullyConnectedSegmenter(fcn_backbone("resnet18", aux_loss=False, small_input=True, stem_stride=2,
                                                  width=width), 11, built).eval().to(ctx.device)
    classifier = create_model("resnet18", num_classes=10, small_input=True, width=width).eval().to(ctx.device)
    rows, pairs, numbers = [], [], {"output_stride": fcn.output_stride}
    scene = _scene(ctx.data_dir, ctx.seed)  # resized to each size below
    with torch.no_grad():
        for h, w in sizes:
            x = F.interpolate(scene[None], size=(h, w), mode="bilinear",
                              align_corners=False).to(ctx.device)  # (1, 3, h, w)
            start = time.perf_counter()
            out = fcn(x)["out"]  # (1, 11, h, w)
            ms = (time.perf_counter() - start) * 1000
            pairs.append((x[0].cpu(), out[0].cpu()))
            status, shape = _try(lambda x=x: fc_seg(x)["out"])
            rows.append({"input": f"{h}x{w}", "FCN output": "x".join(map(str, out.shape[2:])),
                         "FCN = input size": tuple(out.shape[2:]) == (h, w), "FCN ms": round(ms, 1),
                         f"fc head (built for {built[0]}x{built[1]})": shape if status == "ok" else f"error: {shape}",
                         "GAP classifier": _try(lambda x=x: classifier(x))[1]})
            numbers[f"fcn_same_size_{h}x{w}"] = float(tuple(out.shape[2:]) == (h, w))
            numbers[f"fc_head_ok_{h}x{w}"] = float(status == "ok")
        numbers.update(_convolutionalized(fc_seg, built))
    _plot_sizes(ctx, pairs[:4])
    n_ok = int(sum(v for k, v in numbers.items() if k.startswith("fcn_same_size")))
    summary = (
        f"paperzoo's FCN returned a score map of exactly the input's size for {n_ok} of {len(sizes)} sizes "
        f"(including {sizes[-1][0]}x{sizes[-1][1]}): every layer is a convolution, so a bigger input only makes "
        f"bigger maps. The same backbone with a flatten + fully connected head works only at "
        f"{built[0]}x{built[1]} and raises a ValueError for the others (its weight matrix has C*h*w columns). "
        f"Written as a convolution (FCN Sec. 3.1) that head gives the same outputs at the built size (max "
        f"difference {numbers['convolutionalized_max_abs_diff']:.1e}) and a "
        f"{int(numbers['convolutionalized_map_h'])}x{int(numbers['convolutionalized_map_w'])} map of them on a "
        f"twice-as-large input. A classifier with global average pooling also takes any size, but returns one "
        f"vector.")
    return Report("A fully convolutional network takes any input size", summary,
                  tables=[("Output shapes by input size (random-init weights: the point is the shape)", rows)],
                  figures=[("fcn_any_size.png", "inputs of several sizes and the FCN's output maps")],
                  numbers=numbers)


def _convolutionalized(fc_seg: FullyConnectedSegmenter, built: tuple[int, int]) -> dict[str, float]:
    """FCN Sec. 3.1 on the fc head: the conv equals the fc at the built size, and slides on a bigger input."""
    conv = convolutionalize(fc_seg.fc, fc_seg.map_shape)
    device = fc_seg.fc.weight.device
    x = torch.randn(2, fc_seg.backbone.in_chans, *built, device=device)
    f = fc_seg.backbone(x)[-1]  # (B, C, h, w)
    diff = (conv(f).flatten(1) - fc_seg.fc(f.flatten(1))).abs().max().item()  # (B, K*h*w, 1, 1) vs (B, K*h*w)
    big = fc_seg.backbone(torch.randn(1, fc_seg.backbone.in_chans, 2 * built[0], 2 * built[1], device=device))[-1]
    h, w = conv(big).shape[2:]
    return {"convolutionalized_max_abs_diff": diff, "convolutionalized_map_h": h, "convolutionalized_map_w": w}
