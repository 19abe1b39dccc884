"""``paperzoo tune SPACE``: Optuna search over training-config keys (TPE, median pruning, shared storage).

SPACE is a search-space YAML path or the name of one (``fashion_mnist``: ``configs/tune/fashion_mnist.yaml``, in
the working directory or shipped with paperzoo). Everything of a study lands in ``<out-dir>/tune-<study>/``:
trial runs ``trial_0000/``, ..., the SQLite database ``study.db``, ``trials.csv``, ``best_config.yaml``, plots.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyper-parameter search with Optuna (TPE + median pruning)",
                       description="Run trials of a search space (YAML: base recipe + params) with the shared "
                                   "trainer. Several workers may run this command at once against the same "
                                   "--storage and --study; running it again resumes the study.")
    p.add_argument("space", help="search-space YAML path or name (e.g. fashion_mnist; see docs/tools.md)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override values of the base recipe for every trial (after the space's fixed ones), "
                        "e.g. --set data.train_subset=5000")
    p.add_argument("--study", default=None, help="study name (default: the space's name)")
    p.add_argument("--storage", default=None,
                   help="database URL shared by the workers (default: sqlite:///<study directory>/study.db)")
    p.add_argument("--n-trials", type=int, default=None, help="trials for this worker to run")
    p.add_argument("--timeout", type=float, default=None, help="seconds for this worker (time budget)")
    p.add_argument("--out-dir", default="runs",
                   help="directory the study directory tune-<study> (trial runs, database, results) is made in")
    p.add_argument("--seed", type=int, default=None, help="sampler seed, per worker (default: random)")
    p.add_argument("--startup-trials", type=int, default=5,
                   help="random trials before TPE, and trials before the pruner acts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import optuna

    from paperzoo.tools.tables import render
    from paperzoo.tools.tune import export_results, load_search_space, run_study, study_dir, trial_run_name

    if args.n_trials is None and args.timeout is None:
        raise ValueError("give --n-trials and/or --timeout")
    space = load_search_space(args.space, args.overrides)
    study_name = args.study or space.name
    out = study_dir(args.out_dir, study_name)
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    print(f"study {study_name!r}: {len(space.params)} parameters over {space.base}; trial runs in "
          f"{out}/{trial_run_name(0).replace('0000', 'NNNN')}; storage {storage}", flush=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_study(space, study_name=study_name, storage=storage, n_trials=args.n_trials, timeout=args.timeout,
                      out_dir=out, seed=args.seed, n_startup_trials=args.startup_trials)
    files = export_results(study, space, out)
    rows = [{"trial": t.number, "state": t.state.name.lower(), "value": t.value, **t.params} for t in study.trials]
    cols = ["trial", "state", "value"] + sorted({k for t in study.trials for k in t.params})
    print(render(rows, cols, "table"))
    done = [t for t in study.trials if t.value is not None]
    if done:
        best = study.best_trial
        print(f"\nbest: trial {best.number} ({out / trial_run_name(best.number)}), value {study.best_value:.4f}, "
              f"params {study.best_params}")
    print(f"storage: {storage}")
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0
