"""`paperzoo tune --backend ray`: the space as Ray domains and grids, the one-line errors (no Ray installed,
options of the other backend), a trial resumed from its run directory, and a real local Ray study of 4 trials
run 2 at a time whose best config is the best complete trial's."""

import csv
import json
import sys
import textwrap

import pytest

from paperzoo.cli import main
from paperzoo.tools.tune import ParamSpec, load_search_space, train_trial
from paperzoo.train.checkpoint import CLAIM_MARKER

BASE = """
model: {name: resnet20, args: {width: 4}}
data: {dataset: synthetic, synthetic_size: 256, batch_size: 32, eval_batch_size: 64, val_fraction: 0.25}
train: {epochs: 2, precision: fp32, log_every: 100, threads: 1}
run: {progress: "off", tensorboard: false, plots: false}
"""


def _space(tmp_path, params=None):
    (tmp_path / "base.yaml").write_text(BASE)
    params = params or """
      optim.lr: {type: log_float, low: 0.001, high: 0.5}
      optim.name: {type: categorical, choices: [sgd, adamw]}
    """
    path = tmp_path / "space.yaml"
    path.write_text(f"base: {tmp_path / 'base.yaml'}\nparams:\n" + textwrap.indent(textwrap.dedent(params), "  "))
    return path


def test_grid_lists_every_value_with_both_bounds_and_refuses_continuous_ranges():
    from paperzoo.tools.tune_ray import _grid_values

    assert _grid_values(ParamSpec("train.epochs", "int", 1, 4)) == [1, 2, 3, 4]
    assert _grid_values(ParamSpec("train.epochs", "int", 2, 7, step=2)) == [2, 4, 6]
    assert _grid_values(ParamSpec("optim.lr", "float", 0.1, 0.3, step=0.1)) == pytest.approx([0.1, 0.2, 0.3])
    assert _grid_values(ParamSpec("optim.name", "categorical", choices=["sgd", "adamw"])) == ["sgd", "adamw"]
    with pytest.raises(ValueError, match="optim.lr is a continuous range"):
        _grid_values(ParamSpec("optim.lr", "log_float", 0.001, 0.1))


def test_ray_domains_sample_inside_the_bounds_including_the_upper_one():
    pytest.importorskip("ray.tune")
    from paperzoo.tools.tune_ray import _domain

    def seen(spec, n=400):
        return {v.item() if hasattr(v, "item") else v for v in _domain(spec).sample(size=n, random_state=0)}

    assert seen(ParamSpec("train.epochs", "int", 1, 3)) == {1, 2, 3}  # Ray's randint alone would miss 3
    assert seen(ParamSpec("train.epochs", "int", 2, 8, step=2)) == {2, 4, 6, 8}
    assert seen(ParamSpec("train.epochs", "log_int", 1, 4)) == {1, 2, 3, 4}
    assert seen(ParamSpec("optim.name", "categorical", choices=["sgd", "adamw"])) == {"sgd", "adamw"}
    lr = seen(ParamSpec("optim.lr", "log_float", 1e-3, 1e-1))
    assert min(lr) >= 1e-3 and max(lr) <= 1e-1 and sum(v < 1e-2 for v in lr) > 100  # log: half below the middle


def test_backend_ray_without_ray_installed_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    assert main(["tune", str(_space(tmp_path)), "--backend", "ray", "--n-trials", "1",
                 "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'paperzoo[ray]'" in err[0]
    assert not (tmp_path / "tune-space").exists()  # refused before any work


def test_options_of_one_backend_are_refused_with_the_other(tmp_path, capsys):
    space = str(_space(tmp_path))
    assert main(["tune", space, "--n-trials", "1", "--search", "grid", "--max-concurrent", "3"]) == 2
    assert "--search, --max-concurrent: not an option of --backend optuna" in capsys.readouterr().err
    assert main(["tune", space, "--backend", "ray", "--n-trials", "1", "--storage", "sqlite:///x.db"]) == 2
    assert "--storage: not an option of --backend ray" in capsys.readouterr().err


def test_an_interrupted_trial_resumes_from_its_run_directory_and_numbers_evaluations_on(tmp_path):
    """What Ray does after a crash or on restore: the same trial number runs again in the same directory."""
    space = load_search_space(_space(tmp_path))
    values = {"optim.lr": 0.05, "optim.name": "sgd"}
    reports = []

    def stop_at_second(value, evaluation):
        reports.append(evaluation)
        if evaluation == 2:
            raise KeyboardInterrupt  # like a stopped Ray worker: cut in epoch 2, after epoch 1's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_trial(space, values, 3, tmp_path / "study", stop_at_second, resume=True)
    run_dir = tmp_path / "study" / "trial_0003"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    value, again = train_trial(space, values, 3, tmp_path / "study", lambda v, e: reports.append(e), resume=True)
    assert again == run_dir and reports == [1, 2, 2]  # epoch 2 again, numbered on: epoch 1 not trained again
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "done" and status["metrics"]["val_acc"] == value


def _reported(study_dir, number: int, metric: str) -> float:
    """The last value of ``metric`` the trial reported to Ray (Ray's own result log)."""
    lines = (study_dir / "ray" / f"trial_{number:04d}" / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines if metric in line][-1][metric]


def _most_at_once(run_dirs) -> int:
    """The most trials running at the same moment: each from the claim of its run directory (the trainer's
    claim marker, written once) to its last status write."""
    spans = [((d / CLAIM_MARKER).stat().st_mtime, (d / "status.json").stat().st_mtime) for d in run_dirs]
    return max(sum(s <= t < e for s, e in spans) for t, _ in spans)


@pytest.mark.slow  # ~40 s on 2 busy cores: Ray's start-up, 4 trials of ~5 s, Ray's start-up again
def test_local_ray_study_runs_4_trials_2_at_a_time_and_writes_the_best_complete_trial(tmp_path, capsys):
    pytest.importorskip("ray.tune")
    pytest.importorskip("optuna")
    space, out = _space(tmp_path), tmp_path / "out"
    cmd = ["tune", str(space), "--backend", "ray", "--search", "optuna", "--startup-trials", "2", "--n-trials", "4",
           "--max-concurrent", "2", "--seed", "0", "--out-dir", str(out)]
    assert main(cmd) == 0
    printed = capsys.readouterr().out
    res = out / "tune-space"
    assert printed.startswith(f"study 'space': 2 parameters over {tmp_path / 'base.yaml'}; trial runs in "
                              f"{res}/trial_NNNN; Ray Tune (optuna search, ASHA) on a local Ray (2 CPUs)")
    runs = sorted(res.glob("trial_*"))
    assert [p.name for p in runs] == ["trial_0000", "trial_0001", "trial_0002", "trial_0003"]
    assert all((p / "config.yaml").is_file() for p in runs)  # each trial an ordinary run directory
    assert _most_at_once(runs) == 2
    rows = list(csv.DictReader((res / "trials.csv").open()))
    assert len(rows) == 4 and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    for r in rows:  # the table holds what each trial reported to Ray
        assert float(r["value"]) == _reported(res, int(r["number"]), "val_acc")
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert complete  # the first trial at each rung is never stopped by ASHA
    best = max(complete, key=lambda r: float(r["value"]))
    text = (res / "best_config.yaml").read_text()
    assert text.startswith(f"# best trial {best['number']} of study 'space': value {best['value']}")
    assert f"lr: {best['optim.lr']}" in text and f"name: {best['optim.name']}" in text
    assert f"best: trial {best['number']} " in printed
    # the same command again restores the finished Ray study: the same trials, nothing trained again
    before = {p.name: (p / "status.json").stat().st_mtime for p in runs}
    assert main(cmd) == 0
    assert "resuming the Ray study" in capsys.readouterr().out
    assert {p.name: (p / "status.json").stat().st_mtime for p in runs} == before
    assert list(csv.DictReader((res / "trials.csv").open())) == rows
