"""``paperzoo tune``: Optuna search over training-config keys (TPE, median pruning, shared storage)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyper-parameter search with Optuna (TPE + median pruning)",
                       description="Run trials of a search space (YAML: base recipe + params) with the shared "
                                   "trainer. Several workers may run this command at once against the same "
                                   "--storage and --study; running it again resumes the study.")
    p.add_argument("space", help="search-space YAML (see docs/tools.md)")
    p.add_argument("--study", default=None, help="study name (default: the space file's stem)")
    p.add_argument("--storage", default=None,
                   help="database URL shared by the workers (default: sqlite:///<out>/<study>.db)")
    p.add_argument("--n-trials", type=int, default=None, help="trials for this worker to run")
    p.add_argument("--timeout", type=float, default=None, help="seconds for this worker (time budget)")
    p.add_argument("--out", default="runs/tune", help="where trial runs and results go")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (per worker)")
    p.add_argument("--startup-trials", type=int, default=5,
                   help="random trials before TPE, and trials before the pruner acts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import optuna

    from paperzoo.tools.tables import render
    from paperzoo.tools.tune import export_results, load_search_space, run_study

    if args.n_trials is None and args.timeout is None:
        raise ValueError("give --n-trials and/or --timeout")
    space = load_search_space(args.space)
    study_name = args.study or Path(args.space).stem
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(out / f'{study_name}.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_study(space, study_name=study_name, storage=storage, n_trials=args.n_trials, timeout=args.timeout,
                      out_dir=str(out / "runs"), seed=args.seed, n_startup_trials=args.startup_trials)
    files = export_results(study, space, out / study_name)
    rows = [{"trial": t.number, "state": t.state.name.lower(), "value": t.value,
             **{k.split(".")[-1]: v for k, v in t.params.items()}} for t in study.trials]
    cols = ["trial", "state", "value"] + sorted({k.split(".")[-1] for t in study.trials for k in t.params})
    print(render(rows, cols, "table"))
    done = [t for t in study.trials if t.value is not None]
    if done:
        print(f"\nbest: trial {study.best_trial.number}, value {study.best_value:.4f}, params {study.best_params}")
    print(f"storage: {storage}")
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0
