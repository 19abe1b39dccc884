"""``paperzoo tune SPACE``: hyper-parameter search over training-config keys, with Optuna (TPE, median pruning,
shared storage; the default) or with Ray Tune (``--backend ray``: ASHA, random/grid/Optuna search, a local or
an existing Ray cluster).

SPACE is a search-space YAML path or the name of one (``fashion_mnist``: ``configs/tune/fashion_mnist.yaml``, in
the working directory or shipped with paperzoo). Everything of a study lands in ``<out-dir>/tune-<study>/``:
trial runs ``trial_0000/``, ..., the SQLite database ``study.db`` (Optuna) or Ray's experiment ``ray/``,
``trials.csv``, ``best_config.yaml``, plots.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# options of one backend only: (name, default); given with the other backend they are refused
RAY_ONLY = {"search": "random", "address": None, "max_concurrent": 2, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0}
OPTUNA_ONLY = {"storage": None}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyper-parameter search (Optuna TPE + median pruning, or Ray Tune + ASHA)",
                       description="Run trials of a search space (YAML: base recipe + params) with the shared "
                                   "trainer. Optuna (default): several workers may run this command at once "
                                   "against the same --storage and --study; running it again resumes the study. "
                                   "--backend ray: Ray Tune runs the trials, --max-concurrent at a time, on a "
                                   "local Ray or on the cluster at --address; running it again resumes an "
                                   "interrupted study.")
    p.add_argument("space", help="search-space YAML path or name (e.g. fashion_mnist; see docs/tools.md)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override values of the base recipe for every trial (after the space's fixed ones), "
                        "e.g. --set data.train_subset=5000")
    p.add_argument("--backend", choices=("optuna", "ray"), default="optuna",
                   help="optuna (default) or ray (Ray Tune; pip install 'paperzoo[ray]')")
    p.add_argument("--study", default=None, help="study name (default: the space's name)")
    p.add_argument("--n-trials", type=int, default=None, help="trials to run (Optuna: for this worker)")
    p.add_argument("--timeout", type=float, default=None, help="seconds (time budget; Optuna: for this worker)")
    p.add_argument("--out-dir", default="runs",
                   help="directory the study directory tune-<study> (trial runs, database, results) is made in")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (Optuna: per worker; default: random)")
    p.add_argument("--startup-trials", type=int, default=5,
                   help="random trials before TPE (Optuna, and --search optuna), and trials before Optuna's "
                        "pruner acts")
    o = p.add_argument_group("Optuna backend")
    o.add_argument("--storage", default=None,
                   help="database URL shared by the workers (default: sqlite:///<study directory>/study.db)")
    r = p.add_argument_group("Ray backend (--backend ray)")
    r.add_argument("--search", choices=("random", "grid", "optuna"), default=None,
                   help="how Ray proposes trials: random (default), grid (every combination of categorical and "
                        "integer values; floats need a step) or optuna (Optuna's TPE inside Ray)")
    r.add_argument("--address", default=None,
                   help="an existing Ray cluster this machine belongs to (auto, or HEAD_IP:6379); default: a "
                        "local Ray started for the study with --max-concurrent CPUs")
    r.add_argument("--max-concurrent", type=int, default=None, help="trials running at once (default 2)")
    r.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs Ray reserves per trial (default 1)")
    r.add_argument("--gpus-per-trial", type=float, default=None, help="GPUs Ray reserves per trial (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from paperzoo.tools.tune import load_search_space, study_dir, trial_run_name

    other = RAY_ONLY if args.backend == "optuna" else OPTUNA_ONLY
    given = [f"--{k.replace('_', '-')}" for k in other if getattr(args, k) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: not an option of --backend {args.backend}")
    for k, default in {**RAY_ONLY, **OPTUNA_ONLY}.items():
        if getattr(args, k) is None:
            setattr(args, k, default)
    grid = args.backend == "ray" and args.search == "grid"
    if args.n_trials is None and args.timeout is None and not grid:
        raise ValueError("give --n-trials and/or --timeout")
    if args.backend == "ray":
        from paperzoo.tools.tune_ray import require_ray

        require_ray()  # before any work: one line if Ray is not installed
    space = load_search_space(args.space, args.overrides)
    study_name = args.study or space.name
    out = study_dir(args.out_dir, study_name)
    out.mkdir(parents=True, exist_ok=True)
    where = f"{out}/{trial_run_name(0).replace('0000', 'NNNN')}"
    if args.backend == "ray":
        rows, files = _run_ray(args, space, study_name, out, where)
    else:
        rows, files = _run_optuna(args, space, study_name, out, where)
    _print_results(rows, space, out, files)
    return 0


def _run_optuna(args: argparse.Namespace, space, study_name: str, out: Path, where: str):
    import optuna

    from paperzoo.tools.tune import export_results, optuna_rows, run_study

    storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    print(f"study {study_name!r}: {len(space.params)} parameters over {space.base}; trial runs in {where}; "
          f"storage {storage}", flush=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_study(space, study_name=study_name, storage=storage, n_trials=args.n_trials, timeout=args.timeout,
                      out_dir=out, seed=args.seed, n_startup_trials=args.startup_trials)
    files = export_results(study, space, out)
    return optuna_rows(study), {"storage": storage, **files}


def _run_ray(args: argparse.Namespace, space, study_name: str, out: Path, where: str):
    from paperzoo.tools.tune import write_results
    from paperzoo.tools.tune_ray import RaySettings, run_ray_study

    settings = RaySettings(search=args.search, address=args.address, max_concurrent=args.max_concurrent,
                           cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                           n_startup_trials=args.startup_trials)
    on = f"the Ray cluster at {args.address}" if args.address else f"a local Ray ({args.max_concurrent} CPUs)"
    print(f"study {study_name!r}: {len(space.params)} parameters over {space.base}; trial runs in {where}; "
          f"Ray Tune ({args.search} search, ASHA) on {on}, {args.max_concurrent} trials at a time", flush=True)
    rows = run_ray_study(space, out, settings, n_trials=args.n_trials, timeout=args.timeout, seed=args.seed)
    files = write_results(rows, space, study_name, out)
    return rows, {"ray experiment": out / "ray", **files}


def _print_results(rows, space, out: Path, files: dict) -> None:
    from paperzoo.tools.tables import render
    from paperzoo.tools.tune import best_row, space_direction, trial_run_name

    table = [{"trial": r.number, "state": r.state.lower(), "value": r.value, **r.params} for r in rows]
    print(render(table, ["trial", "state", "value"] + sorted({k for r in rows for k in r.params}), "table"))
    best = best_row(rows, space_direction(space))
    if best is not None:
        print(f"\nbest: trial {best.number} ({out / trial_run_name(best.number)}), value {best.value:.4f}, "
              f"params {best.params}")
    for kind, path in files.items():
        print(f"{kind}: {path}")
