"""Learning curves and confusion matrix pictures from a real (tiny) training run and evaluation."""

import pytest

import paperzoo
from paperzoo.viz.curves import RUN_PANELS, plot_confusion, plot_learning_curves, plot_run_curves


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for lr in (0.05, 0.2):
        res = paperzoo.train({
            "model": {"name": "resnet20", "args": {"width": 4}},
            "data": {"dataset": "synthetic", "synthetic_size": 64, "batch_size": 16, "eval_batch_size": 64},
            "optim": {"lr": lr},
            "train": {"epochs": 2, "log_every": 1, "threads": 1},
            "run": {"out_dir": str(root), "name": f"lr{lr}", "progress": "off", "tensorboard": False,
                    "plots": False},
        })
        runs.append(res.run_dir)
    return runs


@pytest.mark.parametrize("x", ["step", "epoch", "time"])
def test_learning_curves_of_two_runs_on_shared_axes(two_runs, tmp_path, png_ok, x):
    path = plot_learning_curves(two_runs, tmp_path / f"curves_{x}.png", x=x)
    w, h = png_ok(path)
    assert (w, h) == (1200, 450)


def test_training_records_carry_training_time_so_time_curves_include_train_metrics(two_runs):
    from paperzoo.train.logger import read_metrics
    from paperzoo.viz.curves import _series

    recs = read_metrics(two_runs[0] / "metrics.jsonl")
    xs, ys = _series(recs, "train_time_s", "train_loss")
    assert len(xs) == sum("train_loss" in r for r in recs) >= 4  # every training record, not only evaluations
    assert xs == sorted(xs) and xs[0] > 0


def test_a_runs_own_curves_have_the_run_panels_and_nothing_for_a_run_without_records(two_runs, tmp_path, png_ok):
    w, h = png_ok(plot_run_curves(two_runs[0], tmp_path / "run.png"))
    assert (w, h) == (600 * len(RUN_PANELS), 450)  # loss, accuracy, LR against step; accuracy against time
    assert plot_run_curves(tmp_path, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_learning_curves_reject_a_directory_without_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_learning_curves([tmp_path], tmp_path / "x.png")


def test_confusion_picture_from_an_evaluation(two_runs, tmp_path, png_ok):
    paperzoo.evaluate(two_runs[0], out_dir=tmp_path / "eval")
    png_ok(plot_confusion(tmp_path / "eval", tmp_path / "cm.png"), min_size=(400, 300))
    with pytest.raises(FileNotFoundError, match="paperzoo eval"):
        plot_confusion(tmp_path / "nothing", tmp_path / "y.png")


def test_viz_cli_curves_confusion_posenc_features(two_runs, tmp_path, png_ok):
    from paperzoo.cli import main

    assert main(["viz", "curves", *map(str, two_runs), "--x", "epoch", "-o", str(tmp_path / "c.png")]) == 0
    png_ok(tmp_path / "c.png")
    paperzoo.evaluate(two_runs[1], out_dir=tmp_path / "ev")
    assert main(["viz", "confusion", str(tmp_path / "ev"), "-o", str(tmp_path / "m.png")]) == 0
    assert main(["viz", "posenc", "--positions", "32", "--dim", "64", "-o", str(tmp_path / "p.png")]) == 0
    assert main(["viz", "features", str(two_runs[0]), "--layer", "layer1", "-o", str(tmp_path / "f.png")]) == 0
    for name in ("m", "p", "f"):
        png_ok(tmp_path / f"{name}.png", min_size=(200, 150))
    assert main(["viz", "features", "resnet20", "--size", "32"]) == 2  # neither --layer nor --se
