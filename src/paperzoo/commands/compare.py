"""``paperzoo compare``: train several models for the same time budget; a table and a plot of accuracy, size and
speed (the library side is :mod:`paperzoo.train.compare`).

Exit status: 0 every run done, 1 a run failed (NaN/inf loss), 130 interrupted (Ctrl-C: the table holds the runs
so far).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._shared import EXIT_CODES, SHORTCUTS, overrides_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="train models for the same time budget; table + plot of accuracy, params, "
                                       "img/s",
                       description="Train each MODEL, one after the other, for the same training-time budget "
                                   "(a throughput probe sizes each schedule to end inside it), then write "
                                   "OUT_DIR/compare.{md,json,png} and print the table.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="registered image models (see paperzoo models)")
    p.add_argument("--budget", required=True,
                   help="training time per model (evaluation not counted): seconds or 90s, 5m, 1h30m")
    p.add_argument("--recipe", default="auto",
                   help="recipe for every model (name in configs/ or YAML path); auto: each family's "
                        "fashion_mnist_<family> recipe, fashion_mnist_default where there is none")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values of every run, e.g. --set data.train_subset=10000")
    p.add_argument("--out-dir", help="where the runs (OUT_DIR/MODEL) and the table go "
                                     "(default: runs/compare-<date>-<time>)")
    for flag in ("--device", "--seed", "--precision"):  # the training commands' shortcuts, same meaning
        if flag in SHORTCUTS:
            _, tp, helptext = SHORTCUTS[flag]
            p.add_argument(flag, type=tp, help=helptext)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from paperzoo.train.compare import compare_models, format_table, parse_duration, write_comparison

    budget = parse_duration(args.budget)
    out = Path(args.out_dir or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    overrides = [o for o in overrides_of(args) if not o.startswith("run.out_dir=")]  # compare places the runs

    def report(row) -> None:
        acc = f"{100 * row.accuracy:.2f} %" if row.accuracy is not None else row.status
        print(f"{row.model}: {row.metric} {acc}, {row.params:,} params, {row.img_per_s:,.0f} img/s, "
              f"{row.steps:,} steps in {row.train_time_s:.0f} s", file=sys.stderr, flush=True)

    rows = compare_models(args.models, budget_s=budget, recipe=args.recipe, overrides=overrides, out_dir=out,
                          on_row=report)
    paths = write_comparison(rows, out / "compare", budget)
    print(format_table(rows, budget), end="")
    print(f"wrote {', '.join(str(p) for p in paths)}")
    statuses = {r.status for r in rows}
    return max(EXIT_CODES[s] for s in statuses) if statuses else 0
