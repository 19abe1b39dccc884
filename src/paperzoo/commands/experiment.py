"""``paperzoo experiment``: run an experiment that answers one of the notes' questions (docs/experiments.md).

* ``--list``: every experiment's name, title and question.
* ``NAME [--full] [--seed N] [--out-dir DIR] [--data-dir DIR] [--device cpu] [--threads N]``: runs it into
  ``<out-dir>/experiment-NAME-<timestamp>/`` (``report.md``, ``report.json``, PNG figures) and prints the
  summary, the tables and the directory. ``--smoke`` is the tiniest setting (what the tests run).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run an experiment answering a question of the notes (report + PNGs)",
                       description="Run a registered experiment: a short default (a few minutes on a CPU) or "
                                   "--full (the real claim). Writes report.md, report.json and figures into a "
                                   "run directory.")
    p.add_argument("name", nargs="?", help="experiment name (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments (name, title, question)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full setting (10-30 minutes), not the short one")
    size.add_argument("--smoke", action="store_true", help="the tiniest setting (seconds; what the tests run)")
    p.add_argument("--seed", type=int, default=0, help="seed of data subsets, initialisation and training")
    p.add_argument("--out-dir", default="runs", help="directory the run directory is made in")
    p.add_argument("--data-dir", default=None, help="dataset files (e.g. CIFAR-10) for experiments that use them")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the run (default: torch's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from paperzoo.experiments import experiment_names, get_experiment, markdown_table, run_experiment

    if args.list:
        for name in experiment_names():
            spec = get_experiment(name)
            print(f"{name:<28} {spec.title}\n{'':<28} Q: {spec.question}")
        return 0
    if not args.name:
        raise ValueError("name an experiment (paperzoo experiment --list shows them)")
    run_dir = run_experiment(args.name, out_dir=args.out_dir, full=args.full, smoke=args.smoke, seed=args.seed,
                             device=args.device, data_dir=args.data_dir, threads=args.threads)
    info = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    print(f"{info['title']}\n\n{info['summary']}\n")
    for caption, rows in info["tables"]:
        print(f"{caption}\n{markdown_table(rows)}\n")
    print(f"{info['seconds']:.1f} s; report, numbers and figures in {run_dir}")
    return 0
