"""The training-time budget (``train.time_budget_s``) and ``paperzoo compare`` built on it."""

import json

import pytest
import yaml

import paperzoo
from paperzoo.cli import main
from paperzoo.train.compare import family_recipe, parse_duration

# synthetic 16x16 images, 32 steps per epoch, evaluated only at the end: the budget is spent on training steps
TINY = {
    "model": {"name": "resnet20"},
    "data": {"dataset": "synthetic", "image_size": 16, "synthetic_size": 1024, "batch_size": 32,
             "eval_batch_size": 512},
    "optim": {"lr": 0.05},
    "train": {"epochs": 1, "threads": 1, "log_every": 10, "eval_every": 1000},
    "run": {"tensorboard": False, "plots": False, "progress": "lines"},
}


@pytest.fixture
def cfg_path(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def test_budget_probes_throughput_and_sizes_the_schedule_to_end_inside_it(tmp_path):
    budget = 2.0
    result = paperzoo.train(TINY, overrides=[f"train.time_budget_s={budget}", f"run.out_dir={tmp_path}",
                                             "run.name=b"])
    assert result.status == "done" and "test_acc" in result.metrics
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["train"]
    # the probe replaced the recipe's single epoch (it has no max_steps): the schedule is as long as the budget
    # allows, and saved so that a resume keeps it. How many steps fit depends on the machine's load (two xdist
    # workers on two cores have given 31 or fewer), so only that a length was set is checked here.
    assert TINY["train"].get("max_steps") is None
    assert saved["time_budget_s"] == budget and saved["max_steps"] >= 1
    assert saved["epochs"] == -(-saved["max_steps"] // 32)
    # the schedule ran to its end inside the budget, or (a machine busier than during the probe) the budget
    # stopped it; either way the budget holds, give or take the last step
    assert result.step == saved["max_steps"] or result.train_time_s >= budget
    assert result.train_time_s < 1.3 * budget + 0.5
    # a resume reads the probed length from config.yaml instead of probing again
    again = paperzoo.train(resume=result.run_dir)
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["train"] == saved
    assert again.status == "done" and result.step <= again.step <= saved["max_steps"]


def test_budget_stops_a_longer_schedule_with_a_final_evaluation(tmp_path, capsys):
    # max_steps given: no probe, so only the budget ends the run
    result = paperzoo.train(TINY, overrides=["train.time_budget_s=1", "train.max_steps=100000", "train.epochs=5000",
                                             f"run.out_dir={tmp_path}", "run.name=g"])
    err = capsys.readouterr().err
    assert result.status == "done" and 0 < result.step < 100000
    assert f"time budget of 1 s spent at step {result.step}: stopping" in err
    assert 1.0 <= result.train_time_s < 2.0
    assert "test_acc" in result.metrics and (result.run_dir / "final" / "model.safetensors").is_file()


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match=r"train.time_budget_s: must be a finite number > 0"):
        paperzoo.train(TINY, overrides=["train.time_budget_s=0"])


@pytest.mark.parametrize("text, seconds", [("300", 300), ("90s", 90), ("5m", 300), ("1.5h", 5400),
                                           ("1h30m", 5400), ("2m30s", 150)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m", "0", "-3s"])
def test_parse_duration_refuses_what_is_not_a_duration(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_auto_recipe_is_the_familys_own():
    assert family_recipe("vit_tiny_patch4_28") == "fashion_mnist_vit"
    assert family_recipe("densenet169") == "fashion_mnist_densenet"
    assert family_recipe("resnet20") == "fashion_mnist_default"  # the default recipe is the ResNet one


def test_compare_two_models_for_the_same_budget(cfg_path, tmp_path, capsys):
    budget, out = 1.5, tmp_path / "cmp"
    code = main(["compare", "resnet20", "shufflenet_v2_x0_5", "--recipe", str(cfg_path), "--budget", f"{budget}s",
                 "--out-dir", str(out), "--set", "model.args.small_input=true"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["resnet20", "shufflenet_v2_x0_5"]
    for r in rows:
        assert r["status"] == "done" and 0 <= r["accuracy"] <= 1 and r["metric"] == "test_acc"
        assert r["params"] > 100_000 and r["img_per_s"] > 0 and r["steps"] > 0
        assert r["train_time_s"] < 1.3 * budget + 0.5  # the budget holds (plus at most a step)
        assert (out / r["model"] / "final" / "model.safetensors").is_file()
    table = (out / "compare.md").read_text()
    assert "| resnet20 |" in table and "| shufflenet_v2_x0_5 |" in table and table in stdout
    assert (out / "compare.png").stat().st_size > 10_000
    assert "resnet20: test_acc" in err  # a line per model as it finishes


def test_compare_checks_every_model_before_training(cfg_path, tmp_path, capsys):
    code = main(["compare", "resnet20", "resnet19", "--recipe", str(cfg_path), "--budget", "1s",
                 "--out-dir", str(tmp_path / "c")])
    assert code == 2 and "unknown model 'resnet19'" in capsys.readouterr().err
    assert not (tmp_path / "c" / "resnet20").exists()  # nothing trained
    assert main(["compare", "gpt_mini", "--budget", "1s", "--out-dir", str(tmp_path / "c")]) == 2
    assert "compare trains image classifiers; gpt_mini is a sequence model" in capsys.readouterr().err
    assert main(["compare", "resnet20", "--budget", "soon", "--out-dir", str(tmp_path / "c")]) == 2
    assert "invalid duration 'soon'" in capsys.readouterr().err
    assert main(["compare", "resnet20", "resnet20", "--budget", "1s", "--out-dir", str(tmp_path / "c")]) == 2
    assert "resnet20 named more than once" in capsys.readouterr().err
