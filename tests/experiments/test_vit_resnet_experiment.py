"""vit_vs_resnet: the arms of each setting, and the smoke run's table against the models and runs it made."""

import json

import pytest
import torch

import paperzoo
from paperzoo.cli import main
from paperzoo.experiments import ExperimentContext, run_experiment
from paperzoo.experiments.vit_resnet import vit_arms
from paperzoo.registry import create_model


def _ctx(setting):
    return ExperimentContext(None, setting == "full", setting == "smoke", 0, torch.device("cpu"), None)


@pytest.mark.parametrize("setting, dataset, n_arms, vit", [("short", "fashion_mnist", 3, "vit_tiny_patch4_28"),
                                                          ("full", "fashion_mnist", 5, "vit_tiny_patch4_28"),
                                                          ("full", "cifar10", 5, "vit_tiny_patch4_32")])
def test_arms_compare_a_resnet_with_vits_at_the_datasets_size(setting, dataset, n_arms, vit):
    arms = vit_arms(_ctx(setting), dataset)
    assert len(arms) == n_arms and list(arms.values())[0][0] == "resnet18"
    assert all(model == vit for model, _ in list(arms.values())[1:])


def test_the_budget_sized_vit_has_about_the_resnets_parameters():
    args = dict(num_classes=10, in_chans=1, small_input=True)
    resnet = paperzoo.count_params(create_model("resnet18", width=16, **args))
    small_vit = paperzoo.count_params(create_model("vit_tiny_patch4_28", embed_dim=96, depth=6, num_heads=3,
                                                   patch_size=7, **args))
    assert 0.8 < small_vit / resnet < 1.25


def test_vit_vs_resnet_smoke_table_matches_its_runs(tmp_path):
    run_dir = run_experiment("vit_vs_resnet", out_dir=tmp_path, smoke=True, threads=1)
    info = json.loads((run_dir / "report.json").read_text())
    rows = info["tables"][0][1]
    assert [r["model"] for r in rows] == ["ResNet-18 (w8)", "ViT (D=32, 1 layer)"]
    expected = [create_model("resnet18", width=8, small_input=True, num_classes=4, in_chans=1),
                create_model("vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2, img_size=16, small_input=True,
                             drop_path_rate=0.1, num_classes=4, in_chans=1)]
    for i, (row, model) in enumerate(zip(rows, expected)):
        assert row["params"] == paperzoo.count_params(model)
        assert row["train s"] <= 1.5 * 1.25  # the budget (checked every step) held
        (arm_run,) = (run_dir / "runs" / f"arm{i}").iterdir()  # compare_models' run directory <arm>/<model>
        status = json.loads((arm_run / "status.json").read_text())
        assert status["status"] == "done"
        assert info["numbers"][f"acc_{i}"] == pytest.approx(status["metrics"]["test_acc"])
        assert row["train img/s"] == pytest.approx(row["steps"] * 32 / row["train s"], rel=1e-6)
        records = [json.loads(line) for line in (arm_run / "metrics.jsonl").read_text().splitlines()]
        after_one = [r["test_acc"] for r in records if "test_acc" in r and r["epoch"] == 1 and r["step"] == 8]
        assert row["acc after epoch 1 (%)"] == pytest.approx(100 * after_one[0])  # 256 images / batch 32
    assert (run_dir / "accuracy_vs_time.png").is_file()


def test_experiment_list_names_f_experiments(capsys):
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("label_smoothing_calibration", "focal_imbalanced", "ensemble_tta", "vit_vs_resnet"):
        assert name in out
