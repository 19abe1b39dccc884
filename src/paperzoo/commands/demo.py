"""``paperzoo demo``: the main job. Trains the default recipe on Fashion-MNIST, prints the test accuracy and
where the run directory is (``make demo`` runs this)."""

from __future__ import annotations

import argparse
import time

RECIPE = "fashion_mnist_default"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=f"train the default recipe ({RECIPE}) on Fashion-MNIST and report accuracy",
                       description=f"Train configs/{RECIPE}.yaml on Fashion-MNIST (Debian's dataset-fashion-mnist "
                                   "or --data-dir), evaluate on the 10,000 test images and print the accuracy.")
    p.add_argument("--recipe", default=RECIPE, help="recipe name or YAML path")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST idx files")
    p.add_argument("--out-dir", default="runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from paperzoo.train.api import train
    from paperzoo.train.config import find_recipe
    from paperzoo.train.evaluate import evaluate

    overrides = [f"run.out_dir={args.out_dir}", *args.overrides]
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    t0 = time.perf_counter()
    result = train(find_recipe(args.recipe), overrides=overrides)
    wall = time.perf_counter() - t0
    if result.status != "done":
        print(f"training {result.status}; run directory: {result.run_dir}")
        return 1 if result.status == "failed" else 130
    report = evaluate(result.run_dir, out_dir=result.run_dir / "eval-test")
    m = report.metrics
    print(f"\nFashion-MNIST test accuracy: {100 * m['accuracy']:.2f} % (top-5 {100 * m['top5']:.2f} %, "
          f"macro-F1 {m['macro_f1']:.4f}) on {m['n']:,} images")
    print(f"training + evaluation wall-clock: {wall:.0f} s ({result.train_time_s:.0f} s in the training loop)")
    print(f"run directory: {result.run_dir}")
    print(f"  weights: {result.run_dir / 'final'}   curves: {result.run_dir / 'curves.png'}   "
          f"report: {report.out_dir}")
    return 0
