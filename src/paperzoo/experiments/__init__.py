"""``paperzoo experiment NAME``: small, repeatable experiments that answer the notes' questions with evidence.

Each experiment is a function ``fn(ctx: ExperimentContext) -> Report`` registered with
:func:`register_experiment`; :func:`run_experiment` gives it a fresh run directory, seeds everything, times it and
writes ``report.md`` (summary, tables, figures) and ``report.json`` (the numbers, the settings, the CPU, torch's
version and the seconds it took). Figures are PNG files the experiment saves into ``ctx.out_dir`` (use
:func:`paperzoo.viz.common.new_figure` / ``save_figure``) and names in ``Report.figures``.

Three sizes of every experiment, chosen with :meth:`ExperimentContext.pick`:

* ``smoke`` (tests only): the tiniest setting that runs every code path, in < ~15 s; tests check its numbers.
* the short default: <= ~3 minutes on a 2-core CPU, enough to show the effect.
* ``full`` (``--full``): the real claim (10-30 minutes).

Adding an experiment module: write ``paperzoo/experiments/<topic>.py`` whose functions carry
``@register_experiment("name", title=..., question=...)``, then add ``"paperzoo.experiments.<topic>"`` to
``_MODULES`` below (modules not present yet are skipped, so the list may name files still being written).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["ExperimentContext", "Report", "ExperimentSpec", "UnknownExperimentError", "register_experiment",
           "experiment_names", "get_experiment", "run_experiment", "render_markdown", "load_fashion_mnist"]

# Modules whose import registers experiments (those present; see the module docstring to add one).
_MODULES = ("paperzoo.experiments.gradients", "paperzoo.experiments.kernels",
            "paperzoo.experiments.calibration", "paperzoo.experiments.ensembles",
            "paperzoo.experiments.vit_resnet")

T = TypeVar("T")


@dataclass
class ExperimentContext:
    """What an experiment run is given: where to write, how big to be, the seed and the device."""

    out_dir: Path          # the run directory of this run (created by the runner; figures go here)
    full: bool             # False: the short default (<= ~3 min on 2 cores); True: --full (the real claim)
    smoke: bool            # True only in tests: the tiniest setting that exercises every code path (< ~15 s)
    seed: int
    device: torch.device
    data_dir: str | None   # e.g. CIFAR-10 files when the user has them (None: Fashion-MNIST only)

    @property
    def setting(self) -> str:
        """``"smoke"``, ``"short"`` or ``"full"``."""
        return "smoke" if self.smoke else "full" if self.full else "short"

    def pick(self, *, smoke: T, short: T, full: T) -> T:
        """The value for this run's setting, e.g. ``steps = ctx.pick(smoke=5, short=300, full=3000)``."""
        return {"smoke": smoke, "short": short, "full": full}[self.setting]

    def path(self, name: str) -> Path:
        """A file inside the run directory (for figures: ``save_figure(fig, ctx.path("norms.png"))``)."""
        return self.out_dir / name


@dataclass
class Report:
    """An experiment's answer: a short summary, tables, figures and the key numbers."""

    title: str
    summary: str                                                        # the answer in 2-4 sentences (English)
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)  # (caption, rows) -> Markdown tables
    figures: list[tuple[str, str]] = field(default_factory=list)        # (PNG file name in out_dir, caption)
    numbers: dict[str, float] = field(default_factory=dict)             # key measurements (also in report.json)


@dataclass(frozen=True)
class ExperimentSpec:
    """A registered experiment: its name, title, question and function."""

    name: str
    title: str
    question: str
    fn: Callable[[ExperimentContext], Report]


class UnknownExperimentError(ValueError):
    """No experiment has that name (a ``ValueError``: the CLI prints one line and exits with status 2)."""


_EXPERIMENTS: dict[str, ExperimentSpec] = {}


def register_experiment(name: str, *, title: str, question: str) -> Callable:
    """Decorator registering ``fn(ctx) -> Report`` as experiment ``name``; duplicate names are refused."""

    def wrap(fn: Callable[[ExperimentContext], Report]) -> Callable[[ExperimentContext], Report]:
        if name in _EXPERIMENTS and _EXPERIMENTS[name].fn is not fn:
            raise ValueError(f"experiment {name!r} is already registered (by {_EXPERIMENTS[name].fn.__module__})")
        _EXPERIMENTS[name] = ExperimentSpec(name, title, question, fn)
        return fn

    return wrap


def _load() -> None:
    for module in _MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def experiment_names() -> list[str]:
    """Sorted names of the registered experiments."""
    _load()
    return sorted(_EXPERIMENTS)


def get_experiment(name: str) -> ExperimentSpec:
    """The spec of experiment ``name``; an unknown name raises :class:`UnknownExperimentError` with a hint."""
    _load()
    if name not in _EXPERIMENTS:
        close = difflib.get_close_matches(name, list(_EXPERIMENTS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownExperimentError(f"unknown experiment {name!r}{hint} (known: {', '.join(sorted(_EXPERIMENTS))})")
    return _EXPERIMENTS[name]


# --- shared data helper -------------------------------------------------------------------------------------

def load_fashion_mnist(n_train: int, n_test: int, *, seed: int = 0,
                       root: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random subsets of Fashion-MNIST as normalised float tensors ``(x_train, y_train, x_test, y_test)``,
    images ``(N, 1, 28, 28)``; the subsets are drawn with ``seed`` so every model of an experiment sees the same.

    ``root`` (an experiment passes ``ctx.data_dir``) is looked in first; when it holds no Fashion-MNIST (e.g. it is
    the user's CIFAR-10 folder, meant for another experiment) the usual places are searched."""
    from paperzoo.data.datasets import DatasetNotFoundError, load_image_dataset

    def load(split: str):
        try:
            return load_image_dataset("fashion_mnist", split, root)
        except DatasetNotFoundError:
            if root is None:
                raise
            return load_image_dataset("fashion_mnist", split, None)

    out = []
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        ds = load(split)
        idx = torch.randperm(len(ds), generator=g)[:n]
        x = ds.images[idx].float().div_(255)
        mean, std = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
        out += [(x - mean) / std, ds.labels[idx]]
    return out[0], out[1], out[2], out[3]


# --- rendering ----------------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value + 0.0:.4g}"  # + 0.0: no "-0"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    """Rows of dicts as a Markdown table; the columns are the keys in first-seen order."""
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(spec: ExperimentSpec, report: Report, info: dict) -> str:
    """``report.md``: title, question, summary, tables, figures, numbers and how the run was made."""
    parts = [f"# {report.title}", "", f"**Question.** {spec.question}", "", report.summary, ""]
    for caption, rows in report.tables:
        parts += [f"**{caption}**", "", markdown_table(rows), ""]
    for png, caption in report.figures:
        parts += [f"![{caption}]({png})", "", f"*{caption}*", ""]
    if report.numbers:
        parts += ["**Numbers**", "", markdown_table([{"name": k, "value": v} for k, v in report.numbers.items()]), ""]
    s = info["settings"]
    parts += [f"Run: `paperzoo experiment {spec.name}{' --full' if s['full'] else ''} --seed {s['seed']}` "
              f"({s['setting']} setting) in {info['seconds']:.1f} s on {info['environment']['cpu']}, "
              f"torch {info['environment']['torch']}, {info['environment']['threads']} thread(s).", ""]
    return "\n".join(parts)


# --- running ------------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x {os.cpu_count()}"


def _check_report(report: Report, out_dir: Path) -> dict[str, float | None]:
    """The report's figures must exist and its numbers be numbers; non-finite ones become JSON null."""
    if not isinstance(report, Report):
        raise TypeError(f"an experiment must return a Report, got {type(report).__name__}")
    for png, _ in report.figures:
        if not (out_dir / png).is_file():
            raise RuntimeError(f"the report names figure {png!r} but the experiment did not write it")
    numbers = {k: float(v) for k, v in report.numbers.items()}
    return {k: (v if math.isfinite(v) else None) for k, v in numbers.items()}


def _free_dir(parent: Path, stem: str) -> Path:
    final, n = parent / stem, 2
    while final.exists():
        final, n = parent / f"{stem}-{n}", n + 1
    return final


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available here; use --device cpu")
    return dev


def run_experiment(name: str, *, out_dir: str | os.PathLike = "runs", full: bool = False, smoke: bool = False,
                   seed: int = 0, device: str | torch.device = "cpu", data_dir: str | None = None,
                   threads: int | None = None) -> Path:
    """Run experiment ``name`` and return its run directory ``<out_dir>/experiment-<name>-<timestamp>/``.

    The experiment writes into a temporary directory that is renamed once ``report.md`` and ``report.json`` are
    written, so a run that fails or is killed leaves no half-written run directory. ``threads`` sets
    ``torch.set_num_threads`` for the run (None: torch's default) and is restored afterwards.
    """
    spec = get_experiment(name)
    if full and smoke:
        raise ValueError("choose one of full and smoke")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir}: no such directory")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    dev, parent = _device(device), Path(out_dir)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-experiment-{name}-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    ctx = ExperimentContext(tmp, full, smoke, seed, dev, data_dir)
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        start = time.perf_counter()
        report = spec.fn(ctx)
        seconds = time.perf_counter() - start
        info = {"name": name, "title": report.title, "question": spec.question, "summary": report.summary,
                "numbers": _check_report(report, tmp), "tables": [[c, rows] for c, rows in report.tables],
                "figures": [[p, c] for p, c in report.figures], "seconds": round(seconds, 2),
                "settings": {"setting": ctx.setting, "full": full, "smoke": smoke, "seed": seed,
                             "device": str(dev), "data_dir": data_dir},
                "environment": {"cpu": _cpu_model(), "torch": torch.__version__,
                                "python": platform.python_version(), "threads": torch.get_num_threads()}}
        (tmp / "report.md").write_text(render_markdown(spec, report, info), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        final = _free_dir(parent, f"experiment-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.rename(tmp, final)
        return final
    finally:
        torch.set_num_threads(old_threads)
        shutil.rmtree(tmp, ignore_errors=True)
