"""`paperzoo tune`: finding a space by name, search-space validation, --set, a real study on tiny synthetic data
(where its files land), and two workers sharing one SQLite study without duplicate trials."""

import multiprocessing
import subprocess
import sys
import textwrap

import optuna
import pytest

from paperzoo.cli import main
from paperzoo.tools.tune import ParamSpec, SearchSpace, _trial_config, find_search_space, load_search_space, open_study

BASE = """
model: {name: resnet20, args: {width: 4}}
data: {dataset: synthetic, synthetic_size: 64, batch_size: 32, eval_batch_size: 64, val_fraction: 0.25}
train: {epochs: 2, precision: fp32, log_every: 100, threads: 1}
run: {progress: "off", tensorboard: false, plots: false}
"""


def _space(tmp_path, params=None):
    (tmp_path / "base.yaml").write_text(BASE)
    params = params or """
      optim.lr: {type: log_float, low: 0.001, high: 0.5}
      optim.name: {type: categorical, choices: [sgd, adamw]}
      train.epochs: {type: int, low: 1, high: 2}
    """
    path = tmp_path / "space.yaml"
    path.write_text(f"base: {tmp_path / 'base.yaml'}\nparams:\n" + textwrap.indent(textwrap.dedent(params), "  "))
    return path


def test_search_space_rejects_unknown_config_keys_and_bad_ranges(tmp_path):
    with pytest.raises(ValueError, match="lrr"):
        load_search_space(_space(tmp_path, "optim.lrr: {type: float, low: 0.1, high: 1.0}"))
    with pytest.raises(ValueError, match="low < high"):
        load_search_space(_space(tmp_path, "optim.lr: {type: float, low: 1.0, high: 0.1}"))
    with pytest.raises(ValueError, match="type one of"):
        load_search_space(_space(tmp_path, "optim.lr: {type: gaussian, low: 0.1, high: 1.0}"))


def test_tune_runs_trials_and_writes_best_config_table_and_plots(tmp_path, capsys):
    space = _space(tmp_path)
    out = tmp_path / "out"
    assert main(["tune", str(space), "--n-trials", "3", "--out-dir", str(out), "--seed", "0",
                 "--startup-trials", "2", "--set", "model.args.width=2"]) == 0
    printed = capsys.readouterr().out
    res = out / "tune-space"  # everything of the study in one directory, said before the first trial
    assert printed.startswith(f"study 'space': 3 parameters over {tmp_path / 'base.yaml'}; trial runs in "
                              f"{res}/trial_NNNN; storage sqlite:///{res / 'study.db'}")
    assert "best: trial" in printed
    assert sorted(p.name for p in res.glob("trial_*")) == ["trial_0000", "trial_0001", "trial_0002"]
    assert "width: 2" in (res / "trial_0001" / "config.yaml").read_text()  # --set reached every trial
    assert (res / "trials.csv").read_text().count("\n") == 4  # header + 3 trials
    best = (res / "best_config.yaml").read_text()
    assert "resnet20" in best and "val_fraction: 0.25" in best and "width: 2" in best
    assert (res / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"
    # resuming adds trials to the same study; another --set is another study
    assert main(["tune", str(space), "--n-trials", "1", "--out-dir", str(out), "--seed", "1",
                 "--set", "model.args.width=2"]) == 0
    study = optuna.load_study(study_name="space", storage=f"sqlite:///{res / 'study.db'}")
    assert len(study.trials) == 4 and (res / "trial_0003").is_dir()
    capsys.readouterr()
    assert main(["tune", str(space), "--n-trials", "1", "--out-dir", str(out)]) == 2
    assert "give another --study" in capsys.readouterr().err


def test_search_spaces_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the spaces shipped with the package
    shipped = find_search_space("fashion_mnist")
    assert shipped.parent.name == "tune" and shipped.parent.parent.name == "configs" and shipped.is_file()
    assert find_search_space("fashion_mnist.yaml") == shipped
    space = load_search_space("fashion_mnist")
    assert space.name == "fashion_mnist" and space.base == "fashion_mnist_default"
    own = tmp_path / "configs" / "tune" / "mine.yaml"  # a user's own, by name, from the working directory
    own.parent.mkdir(parents=True)
    own.write_text("base: fashion_mnist_default\nparams:\n  optim.lr: {type: float, low: 0.01, high: 0.1}\n")
    assert find_search_space("mine") == own.resolve() or find_search_space("mine") == own
    with pytest.raises(FileNotFoundError, match="search spaces: .*fashion_mnist.*mine"):
        find_search_space("fashion")


def test_set_overrides_the_base_recipe_after_the_space_but_not_searched_keys(tmp_path):
    space = load_search_space(_space(tmp_path), ["optim.momentum=0.5", "data.batch_size=16"])
    cfg = _trial_config(space, {"optim.lr": 0.01, "optim.name": "sgd", "train.epochs": 1}, None)
    assert (cfg.optim.momentum, cfg.data.batch_size, cfg.optim.lr) == (0.5, 16, 0.01)
    with pytest.raises(ValueError, match="optim.lr: searched by space.yaml"):
        load_search_space(_space(tmp_path), ["optim.lr=0.1"])
    with pytest.raises(ValueError, match="unknown key"):
        load_search_space(_space(tmp_path), ["optim.lrr=0.1"])


def test_trials_never_select_on_the_test_set(tmp_path):
    with pytest.raises(ValueError, match="val_fraction is 0 .* never on the test set"):
        load_search_space(_space(tmp_path), ["data.val_fraction=0"])


def _open_together(barrier, url: str) -> None:
    space = SearchSpace(base="unused", params=[ParamSpec("optim.lr", "float", 0.1, 1.0)])
    barrier.wait()  # both workers open the new study at the same moment
    open_study(space, study_name="race", storage=url)


def test_workers_started_together_on_a_new_sqlite_study_both_open_it(tmp_path):
    """Without the creation lock, 3 of 4 such pairs crashed one worker (table exists / integrity errors)."""
    ctx = multiprocessing.get_context("fork")  # forked workers start in milliseconds, so they do race
    for rep in range(6):
        url = f"sqlite:///{tmp_path / f'race{rep}' / 'study.db'}"
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_open_together, args=(barrier, url)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0], f"repetition {rep}"
        assert len(optuna.get_all_study_summaries(url)) == 1


@pytest.mark.slow
def test_two_workers_on_a_new_study_share_it_without_duplicates(tmp_path):
    space = _space(tmp_path)
    out = tmp_path / "out"
    url = f"sqlite:///{out / 'shared.db'}"  # neither the directory nor the study exists yet: the workers race
    cmd = [sys.executable, "-m", "paperzoo", "tune", str(space), "--study", "shared", "--storage", url,
           "--n-trials", "2", "--out-dir", str(out)]
    procs = [subprocess.Popen(cmd + ["--seed", str(i)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    study = optuna.load_study(study_name="shared", storage=url)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == 4 and sorted(numbers) == [0, 1, 2, 3]
    run_dirs = [t.user_attrs.get("run_dir") for t in study.trials]
    assert len(set(run_dirs)) == 4  # each trial trained in its own run directory


def test_reporting_task_reports_each_epoch_and_prunes_when_told():
    from functools import partial

    from paperzoo.tools.tune import EpochReporter, _report_to_optuna

    class Trial:
        def __init__(self, prune_at):
            self.reports, self.prune_at = [], prune_at

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return len(self.reports) >= self.prune_at

    class Task:
        primary_metric = "val_acc"

        def evaluate(self, model):
            return {"val_acc": 0.5}

    trial = Trial(prune_at=2)
    wrapped = EpochReporter(Task(), "val_acc", partial(_report_to_optuna, trial))  # as the Optuna objective does
    assert wrapped.primary_metric == "val_acc"  # everything else is delegated
    assert wrapped.evaluate(None) == {"val_acc": 0.5}
    with pytest.raises(optuna.TrialPruned):
        wrapped.evaluate(None)
    assert trial.reports == [(1, 0.5), (2, 0.5)]
