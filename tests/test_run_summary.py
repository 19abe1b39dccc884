"""Honest names at the end of a run: test_* metrics when no validation split is held out, val_* when one is;
the summary of every task gives the best checkpoint beside the final one and labels a training loss that is
not the evaluation's plain cross-entropy; the curves say the same."""

import json
from types import SimpleNamespace

import pytest
import yaml

from paperzoo.cli import main
from paperzoo.commands._shared import summary_lines
from paperzoo.viz.curves import RUN_PANELS, _draw_panel, eval_metric, train_loss_label

TINY = {
    "model": {"name": "resnet18", "args": {"small_input": True, "width": 4}},
    "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 64, "batch_size": 16},
    "optim": {"lr": 0.05},
    "train": {"epochs": 2, "threads": 1, "log_every": 2},
    "run": {"tensorboard": False, "plots": False, "progress": "off"},
}


def _train(tmp_path, capsys, name, *sets):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["train", str(cfg), "--out-dir", str(tmp_path), "--name", name, "--set", *sets]) == 0
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return capsys.readouterr().out.splitlines(), records, json.loads((tmp_path / name / "status.json").read_text())


def test_without_a_validation_split_the_metrics_say_test(tmp_path, capsys):
    out, records, status = _train(tmp_path, capsys, "t", "loss.smoothing=0.2")
    evals = [r for r in records if "test_acc" in r]
    assert len(evals) == 2 and not any(k.startswith("val_") for r in records for k in r)
    assert status["best"]["metric"] == "test_acc" and set(status["metrics"]) == {"test_loss", "test_acc", "test_top5"}
    best = next(line for line in out if line.startswith("best test_acc: "))
    assert f"at step {status['best']['step']} (final {evals[-1]['test_acc']:.4f} at step 8)" in best
    assert best.endswith("; chosen on the test set, so report the final weights")
    loss = next(line for line in out if line.startswith("train_loss"))
    assert loss.startswith("train_loss (label smoothing 0.2): ")
    assert loss.endswith("at step 8 (not comparable with test_loss, a plain cross-entropy)")


def test_with_a_validation_split_the_metrics_say_val(tmp_path, capsys):
    out, records, status = _train(tmp_path, capsys, "v", "data.val_fraction=0.25")
    assert status["best"]["metric"] == "val_acc" and "val_acc" in status["metrics"]
    assert not any(k.startswith("test_") for r in records for k in r)
    best = next(line for line in out if line.startswith("best val_acc: "))
    assert "chosen on the test set" not in best
    assert any(line.startswith("train_loss: ") and line.endswith("at step 6") for line in out)  # plain CE


def _fake_run(tmp_path, records, config):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))


def test_summary_of_a_text_task_with_a_lower_is_better_metric(tmp_path):
    """Any task: the summary reads the metric the task chose the best checkpoint on (here an LM's val_loss)."""
    _fake_run(tmp_path, [{"step": 10, "train_loss": 2.5}, {"step": 10, "val_loss": 2.1, "val_ppl": 8.2},
                         {"step": 20, "train_loss": 2.0}, {"step": 20, "val_loss": 2.2, "val_ppl": 9.0}],
              {"task": "language_model", "loss": {"smoothing": 0.1}})
    result = SimpleNamespace(run_dir=tmp_path, status="done", step=20, train_time_s=3.0,
                             metrics={"val_loss": 2.2, "val_ppl": 9.0},
                             best={"metric": "val_loss", "value": 2.1, "step": 10})
    lines = summary_lines(result)
    assert lines[:4] == [f"run: {tmp_path}", "status: done (step 20, 3 s of training)", "val_loss: 2.2000",
                         "val_ppl: 9.0000"]
    assert lines[4] == "best val_loss: 2.1000 at step 10 (final 2.2000 at step 20)"
    assert lines[5] == ("train_loss (label smoothing 0.1): 2.0000 at step 20 (not comparable with val_loss, "
                        "a plain cross-entropy)")


def test_an_interrupted_run_compares_the_best_with_its_last_evaluation(tmp_path):
    _fake_run(tmp_path, [{"step": 4, "val_acc": 0.6}, {"step": 6, "train_loss": 0.9}], {})
    result = SimpleNamespace(run_dir=tmp_path, status="interrupted", step=6, train_time_s=1.0,
                             metrics={"val_acc": 0.6}, best={"metric": "val_acc", "value": 0.6, "step": 4})
    assert "best val_acc: 0.6000 at step 4 (last evaluation 0.6000 at step 4)" in summary_lines(result)
    nothing = SimpleNamespace(run_dir=tmp_path / "none", status="failed", step=0, train_time_s=0.0, metrics={},
                              best={"metric": "val_acc", "value": None, "step": None})
    assert len(summary_lines(nothing)) == 2  # run and status only: no evaluation, no training record


@pytest.mark.parametrize("config, label", [
    ({}, "train_loss"),
    ({"loss": {"smoothing": 0.2}}, "train_loss (label smoothing 0.2)"),
    ({"loss": {"name": "label_smoothing"}}, "train_loss (label smoothing 0.1)"),  # the loss's default ε
    ({"loss": {"name": "focal", "gamma": 2.0, "class_weights": [1, 2]}},
     "train_loss (focal loss γ=2, class-weighted)"),
    ({"aug": {"cutmix_alpha": 1.0}, "loss": {"smoothing": 0.1}},
     "train_loss (label smoothing 0.1, mixup/cutmix targets)"),
])
def test_train_loss_label_says_what_differs_from_plain_cross_entropy(config, label):
    assert train_loss_label(config) == label


def test_curves_draw_the_logged_names_and_label_the_smoothed_loss():
    from paperzoo.viz.common import new_figure

    records = [{"step": 2, "train_loss": 1.0, "train_acc": 0.5}, {"step": 2, "test_loss": 0.9, "test_acc": 0.6}]
    fig, axes = new_figure(2)
    names = {"train_loss": "train_loss (label smoothing 0.2)"}
    _draw_panel(axes[0, 0], [("run", records, names)], RUN_PANELS[0])
    _draw_panel(axes[0, 1], [("run", records, names)], RUN_PANELS[1])
    assert axes[0, 0].get_legend_handles_labels()[1] == ["train_loss (label smoothing 0.2)", "test_loss"]
    assert axes[0, 1].get_legend_handles_labels()[1] == ["train_acc", "test_acc"]
    assert eval_metric(records) == "test_acc" and eval_metric([{"val_acc": 0.5}]) == "val_acc"
