"""What the training commands share: ``paperzoo train``, ``paperzoo translate train`` and ``paperzoo lm train``.

Each of them is ``add_training_args`` + ``run_training(args, task)``: the same CONFIG / ``--set`` /
``--resume`` / ``--print-config`` arguments, the same path through ``paperzoo.train.api`` (``resolve_config`` /
``train``, the task named by the command or else by the config), the same result lines and the same exit
status (0 done, 1 failed, 130 interrupted with a resumable checkpoint).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_CODES = {"done": 0, "failed": 1, "interrupted": 130}

#: shortcut flags of the training commands: flag -> (config key, type, what it sets); each defaults to the
#: recipe's value. The same names mean the same thing in every command (--device, --seed, --precision, --out-dir).
SHORTCUTS = {
    "--model": ("model.name", str, "registered model name"),
    "--epochs": ("train.epochs", int, "training epochs"),
    "--data-dir": ("data.root", str, "dataset directory"),
    "--out-dir": ("run.out_dir", str, "directory the run directory is made in"),
    "--name": ("run.name", str, "run directory name"),
    "--device": ("train.device", str, "auto, cpu or cuda"),
    "--seed": ("train.seed", int, "seed of initialisation, data order and augmentation"),
    "--precision": ("train.precision", str, "fp32, bf16 (autocast) or fp16 (autocast + GradScaler, GPU)"),
}
#: the shortcuts every training command takes (``paperzoo train`` adds --model and --data-dir)
COMMON_SHORTCUTS = ("--epochs", "--out-dir", "--name", "--device", "--seed", "--precision")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, as ``argparse.ArgumentDefaultsHelpFormatter`` does, except
    where the help already says what the default is, and for off switches and unset options (None), whose
    help says what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS)
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subcommand parser below it :class:`DefaultsHelpFormatter` (``paperzoo.cli``
    calls this once on the whole tree, so a new command needs nothing to get it)."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                show_defaults(sub)


def add_training_args(p: argparse.ArgumentParser, *, shortcuts: tuple[str, ...], example: str) -> None:
    """CONFIG, ``--set``, ``--resume``, ``--print-config`` and the chosen ``SHORTCUTS``."""
    p.add_argument("config", nargs="?", help="YAML recipe path or name in configs/ (omit with --resume RUN_DIR)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help=f"override config values, e.g. --set {example}")
    p.add_argument("--resume", nargs="?", const="auto", metavar="RUN_DIR",
                   help="continue RUN_DIR from its newest checkpoint; without a value, resume the run directory "
                        "that CONFIG names (run.out_dir/run.name) if it exists, else start it")
    add_shortcut_args(p, shortcuts)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def add_shortcut_args(p: argparse.ArgumentParser, flags: tuple[str, ...]) -> None:
    """The chosen :data:`SHORTCUTS` (``overrides_of`` turns them into ``--set`` overrides)."""
    for flag in flags:
        key, tp, what = SHORTCUTS[flag]
        p.add_argument(flag, type=tp, help=f"{what}: shortcut for --set {key}=... (default: the recipe's)")


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides followed by those of the shortcut flags given."""
    out = list(args.overrides)
    for flag, (key, _, _) in SHORTCUTS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def resolve_config_and_resume(config_arg: str | None, resume: str | None, overrides: list[str],
                              resolve: Callable[[Any, list[str]], Any]) -> tuple[Path | None, str | None]:
    """(config path or None, run directory to resume or None).

    ``--resume RUN_DIR`` uses the run's saved config; ``--resume`` without a value ("auto") resumes the run
    directory that CONFIG names (run.out_dir/run.name) if it exists, else starts it. ``resolve(config,
    overrides)`` builds the validated config to read those names.
    """
    from paperzoo.train.config import find_recipe

    if resume not in (None, "auto"):
        if config_arg:
            raise ValueError("--resume RUN_DIR uses the run's saved config; do not also pass CONFIG")
        return None, resume
    if not config_arg:
        raise ValueError("give a CONFIG (YAML path or recipe name) or --resume RUN_DIR")
    config = find_recipe(config_arg)
    if resume == "auto":
        cfg = resolve(config, overrides)
        if cfg.run.name is None:
            raise ValueError("--resume without a RUN_DIR needs a fixed run.name (e.g. --name myrun)")
        run_dir = Path(cfg.run.out_dir) / cfg.run.name
        if (run_dir / "config.yaml").is_file():
            return None, str(run_dir)
    return config, None


def summary_lines(result: Any) -> list[str]:
    """The end of a run, for every task: run directory, status, the last evaluation's metrics, the best
    checkpoint's metric and step beside the last one's, and the last training loss, labelled with what makes
    it differ from the evaluation's plain cross-entropy (e.g. label smoothing)."""
    from paperzoo.train.logger import read_metrics
    from paperzoo.viz.curves import run_config, train_loss_label

    records = read_metrics(Path(result.run_dir) / "metrics.jsonl")
    lines = [f"run: {result.run_dir}",
             f"status: {result.status} (step {result.step}, {result.train_time_s:.0f} s of training)"]
    lines += [f"{k}: {v:.4f}" for k, v in result.metrics.items()]
    best, metric = result.best or {}, (result.best or {}).get("metric")
    if best.get("value") is not None:
        last = next((r for r in reversed(records) if metric in r), None)
        value = last[metric] if last else result.metrics.get(metric)
        final = "final" if result.status == "done" else "last evaluation"
        at = f" at step {last['step']}" if last else ""
        line = f"best {metric}: {best['value']:.4f} at step {best['step']} ({final} {value:.4f}{at})"
        if metric.startswith("test_"):  # no validation split: the "best" checkpoint was chosen on the test set
            line += "; chosen on the test set, so report the final weights"
        lines.append(line)
    loss = next((r for r in reversed(records) if "train_loss" in r), None)
    if loss is not None:
        label = train_loss_label(run_config(result.run_dir))
        eval_loss = next((k for k in result.metrics if k.endswith("_loss")), None)
        note = ""
        if label != "train_loss" and eval_loss:
            note = f" (not comparable with {eval_loss}, a plain cross-entropy)"
        lines.append(f"{label}: {loss['train_loss']:.4f} at step {loss['step']}{note}")
    return lines


def print_result(result: Any) -> None:
    """:func:`summary_lines` (stdout); how to resume an interrupted run (stderr)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return  # one report per distributed run
    print("\n".join(summary_lines(result)))
    if result.status == "interrupted":
        print(f"resume with: {result.resume_hint}", file=sys.stderr)


def run_training(args: argparse.Namespace, task: str | None = None) -> int:
    """Resolve CONFIG / ``--resume``, then print the config or train; returns the exit status.

    ``task`` (e.g. "translation"): the task the command trains, which a config must name if it names one;
    None lets the config choose (image classification when it names none).
    """
    import functools

    import yaml

    from paperzoo.train import api
    from paperzoo.train.config import config_to_dict

    resolve = functools.partial(api.resolve_config, task=task)
    overrides = overrides_of(args)
    config, resume = resolve_config_and_resume(args.config, args.resume, overrides, resolve)
    if args.print_config:
        cfg = resolve(config if config is not None else Path(resume) / "config.yaml", overrides)
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
        return 0
    result = api.train(config, overrides=overrides, resume=resume, task=task)
    print_result(result)
    return EXIT_CODES[result.status]


def load_text_run(args: argparse.Namespace, task: str, other_command: str) -> Any:
    """The text checkpoint that ``args.run`` / ``args.which`` name, refused unless it was trained for ``task``."""
    from paperzoo.text.tasks import load_text_checkpoint

    ck = load_text_checkpoint(args.run, args.which, device=args.device)
    if ck.task != task:
        raise ValueError(f"{ck.path} is a {ck.task} checkpoint; use `paperzoo {other_command}`")
    return ck


def add_run_eval_args(q: argparse.ArgumentParser) -> None:
    """The arguments of ``detect eval`` and ``segment eval``: a run, which checkpoint, data overrides, device, JSON."""
    q.add_argument("run", help="run directory, checkpoint directory or .safetensors file")
    q.add_argument("--which", choices=["best", "final", "last"], default="best",
                   help="which checkpoint of a run directory")
    q.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="change the evaluation data, e.g. --set data.n_val=1000")
    q.add_argument("--device", default="cpu", help="cpu or cuda")
    q.add_argument("--json", help="also write the metrics to this JSON file")
