"""ViT vs ResNet trained from scratch for the same CPU time (the notes' 004: "ViT trains faster than a CNN").

* ViT: Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv:2010.11929. The paper's own finding (Sec. 4.2,
  Fig. 3) is that ViT *under*-performs ResNets when trained on small data (ImageNet-1k and less) and overtakes
  them only after pre-training on 14M-300M images: it lacks the CNN's inductive biases (locality, translation
  equivariance). DeiT (Touvron et al., arXiv:2012.12877) closes part of the gap with strong augmentation and
  regularisation; our ViT recipe takes DeiT's AdamW, weight decay 0.05 and stochastic depth 0.1.
* ResNet: He et al., arXiv:1512.03385, paperzoo's default recipe (ResNet-18 at width 16 with the 3x3 stem).

Each arm is one run of :func:`paperzoo.train.compare.compare_models` (``paperzoo compare``): the family's recipe
with ``train.time_budget_s``, so its schedule is sized to end inside the budget. Arms: the ResNet-18, ViT-Ti/4
(the standard Tiny width, 5.4M parameters) and a ViT cut to the ResNet's size and speed (D = 96, 6 layers, 7x7
patches: 16 tokens instead of 49, 0.7M parameters, about the ResNet's images per second), so that what remains
between them is the architecture's inductive bias; ``--full`` adds the two cuts one at a time. Fashion-MNIST by
default; CIFAR-10 (32x32, 8x8 patches for the 16-token arms) when ``--data-dir`` holds its files.
Deviation: a training subset (5,000 images in the short setting, all in ``--full``) with an evaluation every
epoch, so each arm draws an accuracy-against-time curve.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import ExperimentContext, Report, register_experiment

__all__ = ["vit_arms", "vit_vs_resnet"]


def vit_arms(ctx: ExperimentContext, dataset: str) -> dict[str, tuple[str, list[str]]]:
    """label -> (registered model, its overrides) of each arm; the ViTs are the Tiny config at the dataset's size."""
    vit = "vit_tiny_patch4_32" if dataset == "cifar10" else "vit_tiny_patch4_28"
    big_patch = f"model.args.patch_size={8 if dataset == 'cifar10' else 7}"  # a 4x4 grid: 16 tokens instead of 49/64
    small = ["model.args.embed_dim=96", "model.args.depth=6", "model.args.num_heads=3"]  # ~ the ResNet's size
    if ctx.smoke:  # tiny models on the generated 16x16 images: every code path in seconds
        return {"ResNet-18 (w8)": ("resnet18", ["model.args.width=8"]),
                "ViT (D=32, 1 layer)": (vit, ["model.args.embed_dim=32", "model.args.depth=1",
                                              "model.args.num_heads=2", "model.args.img_size=16"])}
    arms = {"ResNet-18 (w16)": ("resnet18", []), "ViT-Ti/4": (vit, []),
            "ViT D=96, 6 layers, 16 tokens": (vit, [*small, big_patch])}
    if ctx.full:  # the two changes of the small ViT one at a time
        arms["ViT-Ti, 16 tokens"] = (vit, [big_patch])
        arms["ViT D=96, 6 layers"] = (vit, small)
    return arms


def _data_overrides(ctx: ExperimentContext) -> tuple[str, list[str]]:
    if ctx.smoke:
        return "synthetic", ["data.dataset=synthetic", "data.synthetic_size=256", "data.batch_size=32",
                             "aug.hflip=0", "aug.crop_padding=0"]
    if ctx.data_dir is not None:
        from paperzoo.data.datasets import load_image_dataset

        try:
            load_image_dataset("cifar10", "test", ctx.data_dir)
        except FileNotFoundError:
            pass  # no CIFAR-10 there: Fashion-MNIST
        else:
            return "cifar10", ["data.dataset=cifar10", f"data.root={ctx.data_dir}"]
    return "fashion_mnist", []


def _images_curve(run_dir: Path, batch_size: int, metric: str) -> list[tuple[float, float]]:
    """(training images seen, accuracy) at each evaluation of a run (its metrics.jsonl)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"] * batch_size, r[metric]) for r in records if metric in r]


def _epoch_accuracy(row: Any) -> dict[int, float]:
    """Accuracy at the end of each full epoch of a run (the same images seen by every arm at epoch e)."""
    per_epoch = row.steps / max(row.epochs, 1e-9)
    records = [json.loads(line) for line in (Path(row.run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["epoch"]: r[row.metric] for r in records
            if row.metric in r and r["epoch"] >= 1 and abs(r["step"] - r["epoch"] * per_epoch) < 0.5}


def _plot(rows: list[Any], batch_size: int, path: Path) -> None:
    from paperzoo.viz.common import new_figure, save_figure

    fig, axes = new_figure(2, size=(11, 4.4))
    by_time, by_images = axes[0, 0], axes[0, 1]
    for label, r in rows:
        by_time.plot([p["train_time_s"] for p in r.curve], [100 * p["accuracy"] for p in r.curve], marker="o",
                     ms=3, label=f"{label} ({r.params / 1e6:.2f}M)")
        seen = _images_curve(Path(r.run_dir), batch_size, r.metric)
        by_images.plot([s for s, _ in seen], [100 * a for _, a in seen], marker="o", ms=3, label=label)
    by_time.set(xlabel="training time (s, one process)", ylabel="test accuracy (%)",
                title="accuracy against CPU time (the budget)")
    by_images.set(xlabel="training images seen", ylabel="test accuracy (%)", xscale="log",
                  title="accuracy against data seen (per step, not per second)")
    for ax in (by_time, by_images):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


@register_experiment("vit_vs_resnet", title="ViT vs ResNet from scratch at the same CPU-time budget",
                     question="Does a Vision Transformer train faster than a ResNet from scratch on small data "
                              "(the notes' 004), and what makes it competitive or not?")
def vit_vs_resnet(ctx: ExperimentContext) -> Report:
    from paperzoo.train.compare import compare_models, family_recipe

    dataset, data = _data_overrides(ctx)
    budget = ctx.pick(smoke=1.5, short=40.0, full=300.0)
    n_test = ctx.pick(smoke=128, short=1000, full=10000)
    subset = ctx.pick(smoke=[], short=["data.train_subset=5000"], full=[])
    common = [*data, *subset, f"data.test_subset={n_test}", "train.eval_every=1", f"train.seed={ctx.seed}",
              "run.progress=off", "run.tensorboard=false", "run.plots=false", f"train.device={ctx.device.type}",
              "train.keep_last=1"]
    rows = []
    for i, (label, (model, extra)) in enumerate(vit_arms(ctx, dataset).items()):
        (row,) = compare_models([model], budget_s=budget, recipe=family_recipe(model), overrides=[*common, *extra],
                                out_dir=ctx.out_dir / "runs" / f"arm{i}")
        if row.status != "done":
            raise RuntimeError(f"{label}: the run ended {row.status}")
        rows.append((label, row))
    batch = 32 if ctx.smoke else 128  # the recipes' batch size (both families use 128)
    _plot(rows, batch, ctx.path("accuracy_vs_time.png"))
    table = [{"model": label, "recipe": r.recipe, "params": r.params, "train img/s": r.img_per_s,
              "steps": r.steps, "epochs": r.epochs, "train s": r.train_time_s, "accuracy (%)": 100 * r.accuracy,
              "s per step": r.train_time_s / max(r.steps, 1),
              **{f"acc after epoch {e} (%)": 100 * _epoch_accuracy(r).get(e, float("nan")) for e in (1, 2)}}
             for label, r in rows]
    (resnet_label, resnet), (vit_label, vit) = rows[0], rows[1]
    best_vit_label, best_vit = max(rows[1:], key=lambda lr: lr[1].accuracy)
    speed = resnet.img_per_s / max(vit.img_per_s, 1e-9)
    holds = best_vit.accuracy > resnet.accuracy
    summary = (f"With {budget:g} s of training each on {dataset} ({n_test} test images), {resnet_label} reaches "
               f"{100 * resnet.accuracy:.1f} % and {vit_label} {100 * vit.accuracy:.1f} %; the ResNet trains on "
               f"{speed:.1f}x as many images per second as {vit_label} on this machine. The best ViT is "
               f"'{best_vit_label}' ({100 * best_vit.accuracy:.1f} %, {best_vit.img_per_s:,.0f} img/s).")
    acc_r, acc_v = _epoch_accuracy(resnet), _epoch_accuracy(best_vit)
    common = max(set(acc_r) & set(acc_v), default=None)
    if common is not None:  # the same images seen (the last epoch both finished): what each learns per image
        summary += (f" After {common} epoch(s) (the same {common * round(resnet.steps / resnet.epochs) * batch:,} "
                    f"images) the ResNet is at {100 * acc_r[common]:.1f} % and that ViT at "
                    f"{100 * acc_v[common]:.1f} %.")
    summary += (f" So here the claim 'ViT trains faster than a ResNet' {'holds' if holds else 'does not hold'} at "
                f"equal CPU time; the ViT paper itself finds that ViT needs large-scale pre-training to beat ResNets "
                f"(Sec. 4.2).")
    numbers = {f"acc_{i}": r.accuracy for i, (_, r) in enumerate(rows)}
    numbers |= {f"img_per_s_{i}": r.img_per_s for i, (_, r) in enumerate(rows)}
    numbers |= {"budget_s": budget, "resnet_vs_vit_speed": resnet.img_per_s / max(vit.img_per_s, 1e-9)}
    return Report("ViT vs ResNet at the same CPU-time budget", summary,
                  tables=[(f"{budget:g} s of training per model (numbers acc_i / img_per_s_i follow this order)",
                           table)],
                  figures=[("accuracy_vs_time.png", "Test accuracy against training time and against images seen")],
                  numbers=numbers)
