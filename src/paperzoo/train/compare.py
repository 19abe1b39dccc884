"""Train several image models for the same time budget and compare them: accuracy, parameters, img/s.

The library side of ``paperzoo compare`` (benchmarks/bench_families.py, which budgets CPU-seconds of one thread
for BENCHMARKS.md's family table, says why it stays a script of its own). Each model is one ordinary run
of :func:`paperzoo.train` with ``train.time_budget_s`` set: the trainer probes the model's throughput and
sizes the schedule to end inside the budget (see :mod:`paperzoo.train.trainer`), then evaluates. The runs go
one after the other, so they do not compete for the machine. Example::

    from paperzoo.train.compare import compare_models, write_comparison

    rows = compare_models(["resnet20", "mobilenetv2_100"], budget_s=300, out_dir="runs/compare")
    write_comparison(rows, "runs/compare/compare")  # .md, .json, .png
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CompareRow", "compare_models", "family_recipe", "format_table", "parse_duration", "plot_comparison",
           "write_comparison"]

DEFAULT_RECIPE = "fashion_mnist_default"


@dataclass
class CompareRow:
    """One model's run: its final evaluation, size and speed."""

    model: str
    recipe: str
    status: str  # the run's: "done", "interrupted" or "failed"
    metric: str  # the accuracy's name: "test_acc", or "val_acc" with a held-out split
    accuracy: float | None  # after the last step (final weights)
    params: int
    img_per_s: float  # training images per second of training time
    steps: int
    epochs: float
    train_time_s: float  # what the budget limits: training, not evaluation or checkpoints
    wall_s: float  # the whole run: probe, evaluations, checkpoints included
    run_dir: str
    curve: list[dict[str, float]] = field(default_factory=list)  # {"train_time_s", "accuracy"} per evaluation


def parse_duration(text: str) -> float:
    """Seconds from ``"300"``, ``"90s"``, ``"5m"``, ``"1.5h"`` or ``"1h30m"``.

    Raises:
        ValueError: not a positive duration of that form.
    """
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ValueError(f"invalid duration {text!r}; use seconds or a unit, e.g. 300, 90s, 5m, 1h30m")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be more than 0 seconds")
    return seconds


def family_recipe(model: str) -> str:
    """The Fashion-MNIST recipe written for ``model``'s family (``fashion_mnist_<family>``), else the default one
    (whose ResNet-18 is the resnet family's)."""
    from paperzoo.registry import get_entry

    from .config import RECIPE_DIR

    name = f"fashion_mnist_{get_entry(model).family}"
    return name if (RECIPE_DIR / f"{name}.yaml").is_file() else DEFAULT_RECIPE


def compare_models(models: Sequence[str], *, budget_s: float, recipe: str = "auto", overrides: Sequence[str] = (),
                   out_dir: str | Path = "runs/compare",
                   on_row: Callable[[CompareRow], None] | None = None) -> list[CompareRow]:
    """Train each model for ``budget_s`` seconds of training, one after the other; one row per model.

    Args:
        models: registered model names.
        budget_s: ``train.time_budget_s`` of every run.
        recipe: a recipe name or YAML path for all of them, or ``"auto"``: each model's :func:`family_recipe`.
        overrides: ``section.key=value`` applied to every run (e.g. ``data.train_subset=5000``).
        out_dir: the runs go to ``out_dir/<model>``.
        on_row: called with each row as soon as its run ends (progress for a command line).

    An interrupted run (Ctrl-C) ends the comparison: the rows so far are returned, the last one "interrupted".
    """
    from paperzoo.registry import get_entry

    from .api import resolve_config, train

    twice = sorted({m for m in models if list(models).count(m) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} named more than once: each model is one run")
    for name in models:  # every name and config checked before the first run starts
        if get_entry(name).kind != "image":
            raise ValueError(f"compare trains image classifiers; {name} is a {get_entry(name).kind} model")
    runs = []
    for name in models:
        chosen = family_recipe(name) if recipe == "auto" else str(recipe)
        runs.append((name, chosen, resolve_config(chosen, [*overrides, f"model.name={name}",
                                                           f"train.time_budget_s={budget_s}",
                                                           f"run.out_dir={out_dir}", f"run.name={name}"])))
    rows = []
    for name, chosen, cfg in runs:
        t0 = time.perf_counter()
        result = train(cfg)
        row = _row(name, chosen, cfg, result, time.perf_counter() - t0)
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if result.status == "interrupted":
            break
    return rows


def _row(name: str, recipe: str, cfg: Any, result: Any, wall_s: float) -> CompareRow:
    import torch

    import paperzoo

    from .checkpoint import find_checkpoint, read_meta
    from .classification import build_model_from_meta

    metric = result.best.get("metric") or "val_acc"
    with torch.device("meta"):  # the architecture only, for its size
        params = paperzoo.count_params(build_model_from_meta(read_meta(find_checkpoint(result.run_dir))))
    images = result.step * cfg.data.batch_size * cfg.train.grad_accum
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [{"train_time_s": r["train_time_s"], "accuracy": r[metric]} for r in records if metric in r]
    return CompareRow(model=name, recipe=recipe, status=result.status, metric=metric,
                      accuracy=result.metrics.get(metric), params=params,
                      img_per_s=images / max(result.train_time_s, 1e-9), steps=result.step,
                      epochs=result.step / max(result.steps_per_epoch, 1), train_time_s=result.train_time_s,
                      wall_s=wall_s, run_dir=str(result.run_dir), curve=curve)


# ------------------------------------------------------------------------------------------------ output
def format_table(rows: Sequence[CompareRow], budget_s: float) -> str:
    """A markdown table, best accuracy first, with a line saying what was compared."""
    metric = rows[0].metric if rows else "val_acc"
    split = "held-out validation split" if metric.startswith("val") else "test set"
    lines = [f"{budget_s:g} s of training per model (evaluation not counted); accuracy on the {split} after the "
             "last step.", "",
             "| model | recipe | params | train img/s | steps | epochs | train s | accuracy (%) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -(r.accuracy if r.accuracy is not None else -1)):
        acc = f"{100 * r.accuracy:.2f}" if r.accuracy is not None else r.status
        lines.append(f"| {r.model} | {r.recipe} | {r.params:,} | {r.img_per_s:,.0f} | {r.steps:,} | {r.epochs:.2f} "
                     f"| {r.train_time_s:.0f} | {acc} |")
    return "\n".join(lines) + "\n"


def write_comparison(rows: Sequence[CompareRow], stem: str | Path, budget_s: float) -> list[Path]:
    """``stem.md`` (the table), ``stem.json`` (the rows, curves included) and ``stem.png``; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, js, png = stem.with_suffix(".md"), stem.with_suffix(".json"), stem.with_suffix(".png")
    md.write_text(format_table(rows, budget_s))
    js.write_text(json.dumps({"budget_s": budget_s, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    plot_comparison(rows, png)
    return [md, js, png]


def plot_comparison(rows: Sequence[CompareRow], path: str | Path) -> None:
    """Accuracy against parameters, against training img/s, and against training time (each evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    done = [r for r in rows if r.accuracy is not None]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, key, label in ((axes[0], "params", "parameters"), (axes[1], "img_per_s", "training img/s")):
        for r in done:
            x = max(getattr(r, key), 1e-9)
            ax.scatter(x, 100 * r.accuracy, s=30)
            ax.annotate(r.model, (x, 100 * r.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ticks = sorted({max(getattr(r, key), 1e-9) for r in done})  # each model's own value, readable
        ax.set_xticks(ticks, [_short(v) for v in ticks], rotation=30, fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())  # matplotlib labels minor ticks of a narrow log range
        ax.margins(x=0.25, y=0.15)
        ax.set_xlabel(f"{label} (log scale)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy against size")
    axes[1].set_title("accuracy against speed")
    for r in done:
        if r.curve:
            axes[2].plot([p["train_time_s"] for p in r.curve], [100 * p["accuracy"] for p in r.curve], marker="o",
                         ms=3, label=r.model)
    axes[2].set_xlabel("training time (s)")
    axes[2].set_ylabel("accuracy (%)")
    axes[2].set_title("accuracy during training (each evaluation)")
    axes[2].grid(alpha=0.3)
    if done:
        axes[2].legend(fontsize=7)
    fig.suptitle(f"the same training-time budget per model; {_metric_name(rows)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(v: float) -> str:
    """1234567 -> "1.2M", 45000 -> "45k": tick labels of counts and rates."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def _metric_name(rows: Sequence[CompareRow]) -> str:
    return "accuracy on the held-out validation split" if rows and rows[0].metric.startswith("val") \
        else "accuracy on the test set"
