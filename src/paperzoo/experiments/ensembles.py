"""Ensembles and test-time augmentation: what each adds to accuracy, and what it costs (the notes' 003).

An ensemble averages the class probabilities of models trained alone, p(y | x) = (1/M) Σ_m p_m(y | x)
(Lakshminarayanan et al., "Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles",
arXiv:1612.01474, Sec. 2.4: members differ by their random initialisation and data order). Test-time augmentation
averages one model's probabilities over transformed copies of the image (paperzoo's
:func:`paperzoo.train.evaluate.tta_views`: the mirror, four 2-pixel shifts, or both, 2 / 5 / 10 views), as
``paperzoo eval --tta`` and ``paperzoo ensemble`` do.

The members are ordinary :func:`paperzoo.train` runs of the default recipe (ResNet-18 at width 16) with seeds
seed, seed+1, ...; with ``data.train_subset`` each seed also draws its own training subset (bagging-like
diversity). Each member's probabilities are computed once per view set and timed; a k-model ensemble is the
mean of its members', its cost the sum of their seconds (inference in fp32, one process), and each row averages
over all C(M, k) subsets of the M members.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import Tensor

from . import ExperimentContext, Report, register_experiment
from .calibration import (
    RECIPE,
    calibration_row,
    load_test_split,
    predict_test,
    scale_overrides,
    train_classifier,
)

__all__ = ["TTA_SETS", "ensemble_probs", "ensemble_tta"]

#: the view sets compared: name -> paperzoo's TTA modes (1, 2, 5 and 10 views)
TTA_SETS = {"none": (), "flip": ("flip",), "shift": ("shift",), "flip+shift": ("flip", "shift")}


def ensemble_probs(member_probs: list[Tensor]) -> Tensor:
    """p(y | x) = (1/M) Σ_m p_m(y | x): the mean of the members' probabilities, (M, N, K) -> (N, K)."""
    return torch.stack(member_probs).mean(0)


def _member_predictions(ctx: ExperimentContext, runs: list[Path], n_test: int
                        ) -> tuple[dict[str, list[Tensor]], dict[str, list[float]], Tensor]:
    """Each member's probabilities and seconds per TTA set (on the same first ``n_test`` test images)."""
    from paperzoo.train.evaluate import load_checkpoint

    probs: dict[str, list[Tensor]] = {s: [] for s in TTA_SETS}
    seconds: dict[str, list[float]] = {s: [] for s in TTA_SETS}
    for run in runs:
        loaded = load_checkpoint(run, device=ctx.device)
        test = load_test_split(loaded.meta)
        for name, modes in TTA_SETS.items():
            p, s = predict_test(loaded, test, n_test, ctx, modes)
            probs[name].append(p)
            seconds[name].append(s)
    return probs, seconds, test.labels[:len(p)]


def _mean_over_subsets(probs: list[Tensor], seconds: list[float], labels: Tensor, k: int) -> dict[str, float]:
    """Accuracy, NLL, ECE and cost of a k-model ensemble, averaged over every k-subset of the members (C(M, k)
    subsets: one lucky or unlucky member does not decide the curve)."""
    subsets = list(itertools.combinations(range(len(probs)), k))
    stats = [calibration_row(ensemble_probs([probs[i] for i in s]), labels) for s in subsets]
    mean = {key: sum(st[key] for st in stats) / len(stats) for key in ("accuracy (%)", "NLL", "ECE (%)")}
    cost = sum(sum(seconds[i] for i in s) for s in subsets) / len(subsets)
    return {**mean, "s per 1k images": 1000 * cost / len(labels), "subsets": len(subsets)}


def _plot(rows: list[dict], path: Path) -> None:
    from paperzoo.viz.common import new_figure, save_figure

    fig, axes = new_figure(2, size=(11, 4.4))
    by_acc, by_cost = axes[0, 0], axes[0, 1]
    for name in TTA_SETS:
        mine = [r for r in rows if r["TTA"] == name]
        ks = [r["models"] for r in mine]
        by_acc.plot(ks, [r["accuracy (%)"] for r in mine], marker="o", label=f"TTA: {name}")
        by_cost.plot([r["s per 1k images"] for r in mine], [r["accuracy (%)"] for r in mine], marker="o",
                     label=f"TTA: {name}")
        for r in mine:
            by_cost.annotate(str(r["models"]), (r["s per 1k images"], r["accuracy (%)"]), fontsize=7,
                             textcoords="offset points", xytext=(3, 3))
    by_acc.set(xlabel="models in the ensemble", ylabel="test accuracy (%)", title="accuracy against ensemble size")
    by_acc.set_xticks(sorted({r["models"] for r in rows}))
    by_cost.set(xlabel="inference seconds per 1,000 images (log)", ylabel="test accuracy (%)", xscale="log",
                title="accuracy against cost (numbers: models)")
    for ax in (by_acc, by_cost):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


@register_experiment("ensemble_tta", title="Ensembles of 1-5 models and test-time augmentation: accuracy and cost",
                     question="How much do ensembles of independently trained models and each TTA view set add to "
                              "accuracy, and what does each cost at inference?")
def ensemble_tta(ctx: ExperimentContext) -> Report:
    n_models = ctx.pick(smoke=2, short=5, full=5)
    n_test = ctx.pick(smoke=128, short=2000, full=10000)
    schedule = ctx.pick(smoke=[], short=["data.train_subset=5000", "train.epochs=3"], full=["train.epochs=4"])
    base = [*scale_overrides(ctx), *schedule, f"data.test_subset={n_test}", "train.eval_every=1000"]
    runs = [train_classifier(ctx, f"member{i}", RECIPE, [*base, f"train.seed={ctx.seed + i}"])
            for i in range(n_models)]
    probs, seconds, labels = _member_predictions(ctx, runs, n_test)
    rows = [{"models": k, "TTA": name, "forward passes per image": k * _views(name),
             **_mean_over_subsets(probs[name], seconds[name], labels, k)}
            for name in TTA_SETS for k in range(1, n_models + 1)]
    _plot(rows, ctx.path("ensemble_tta.png"))
    members = [{"member": i, **{f"accuracy {n} (%)": calibration_row(probs[n][i], labels)["accuracy (%)"]
                                for n in TTA_SETS}} for i in range(n_models)]
    cell = {(r["models"], r["TTA"]): r for r in rows}
    one, ens, tta, both = (cell[1, "none"], cell[n_models, "none"], cell[1, "flip+shift"],
                           cell[n_models, "flip+shift"])
    cost = one["s per 1k images"]
    alone = [m["accuracy none (%)"] for m in members]
    summary = (f"One model reaches {one['accuracy (%)']:.2f} % on average on {len(labels)} test images (members "
               f"{min(alone):.1f}-{max(alone):.1f} %); an ensemble of {n_models} reaches"
               f" {ens['accuracy (%)']:.2f} % at {ens['s per 1k images'] / cost:.1f}x the cost, "
               f"TTA with all 10 views {tta['accuracy (%)']:.2f} % at {tta['s per 1k images'] / cost:.1f}x, and "
               f"both {both['accuracy (%)']:.2f} %. "
               f"The NLL goes from {one['NLL']:.3f} (one model) to {ens['NLL']:.3f} ({n_models} models). Each "
               f"member costs one forward pass per image and TTA view, so the cost grows linearly with both.")
    numbers = {f"acc_k{r['models']}_{r['TTA']}": r["accuracy (%)"] / 100 for r in rows}
    numbers |= {f"nll_k{r['models']}_{r['TTA']}": r["NLL"] for r in rows}
    numbers |= {f"s_per_1k_k{r['models']}_{r['TTA']}": r["s per 1k images"] for r in rows}
    return Report("Ensembles and test-time augmentation", summary,
                  tables=[(f"Ensembles of k models with each TTA view set, averaged over all k-subsets of the "
                           f"{n_models} members ({len(labels)} test images, fp32 inference)", rows),
                          ("Each member alone", members)],
                  figures=[("ensemble_tta.png", "Accuracy against ensemble size and against inference cost")],
                  numbers=numbers)


def _views(name: str) -> int:
    """Forward passes per image of a TTA set: 1 (identity), +1 mirror, +4 shifts; the mirror doubles them all."""
    modes = TTA_SETS[name]
    return (1 + 4 * ("shift" in modes)) * (2 if "flip" in modes else 1)
