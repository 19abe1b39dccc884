"""The CLI: train (overrides, errors, --print-config, --resume), eval, ensemble, average, predict, demo."""

import json

import pytest
import yaml
from PIL import Image

from paperzoo.cli import main
from paperzoo.train.classification import make_synthetic

TINY = {
    "model": {"name": "resnet18", "args": {"small_input": True, "width": 4}},
    "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 64, "batch_size": 16},
    "optim": {"lr": 0.05},
    "train": {"epochs": 1, "threads": 1, "log_every": 2},
    "run": {"tensorboard": False, "plots": False, "progress": "lines"},
}


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


@pytest.fixture(scope="module")
def trained(cfg_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", str(cfg_path), "--out-dir", str(out), "--name", "cli", "--set", "train.epochs=2",
                 "optim.lr=0.1"]) == 0
    return out / "cli"


def test_train_prints_the_run_and_saves_the_resolved_config(trained, capsys):
    saved = yaml.safe_load((trained / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["optim"]["lr"] == 0.1 and saved["run"]["name"] == "cli"
    assert json.loads((trained / "status.json").read_text())["status"] == "done"


def test_train_output(cfg_path, tmp_path, capsys):
    assert main(["train", str(cfg_path), "--out-dir", str(tmp_path), "--name", "x", "--epochs", "1"]) == 0
    out, err = capsys.readouterr()
    assert f"run: {tmp_path / 'x'}" in out and "status: done" in out and "test_acc:" in out
    assert "epoch 1 step 2/4 | train_loss" in err  # plain progress lines when stderr is not a TTY


@pytest.mark.parametrize("args, message", [
    (["--set", "optim.lrr=0.1"], "unknown key optim.'lrr' (did you mean 'lr'?); valid keys: name, lr,"),
    (["--set", "optim.name=adam"], "optim.name: invalid value 'adam'; valid choices: sgd, adamw"),
    (["--set", "train.precision=fp8"], "valid choices: fp32, bf16, fp16"),
    (["--model", "resnet19"], "unknown model 'resnet19'"),
    (["--set", "data.dataset=mnist", "data.root=/nonexistent"], "mnist not found. Looked in"),
])
def test_train_errors_are_one_clear_line(cfg_path, tmp_path, capsys, args, message):
    assert main(["train", str(cfg_path), "--out-dir", str(tmp_path), "--name", "err", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paperzoo train: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "err").exists()  # no half-made run directory left behind


def test_print_config_and_resume_errors(cfg_path, tmp_path, capsys):
    assert main(["train", str(cfg_path), "--print-config", "--set", "optim.betas=[0.8,0.9]"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["betas"] == [0.8, 0.9] and printed["model"]["name"] == "resnet18"
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train", str(cfg_path), "--resume"]) == 2
    assert "needs a fixed run.name" in capsys.readouterr().err


def test_resume_of_a_finished_run_keeps_its_weights(trained, capsys):
    from paperzoo.train.checkpoint import read_weights

    before = read_weights(trained / "final" / "model.safetensors")
    assert main(["train", "--resume", str(trained)]) == 0
    assert "status: done (step 8" in capsys.readouterr().out
    after = read_weights(trained / "final" / "model.safetensors")
    assert all(before[k].equal(after[k]) for k in before)


def test_eval_ensemble_average_predict(trained, tmp_path, capsys):
    assert main(["eval", str(trained), "--format", "json", "--tta", "flip"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n"] == 64 and m["tta"] == ["flip"] and len(m["per_class"]) == 4
    assert (trained / "eval-test-flip" / "confusion.png").is_file()
    assert main(["eval", str(trained), "--ema"]) == 2  # trained without EMA
    assert "no EMA weights" in capsys.readouterr().err

    assert main(["ensemble", str(trained), str(trained / "final"), "--weights", "2,1", "--out",
                 str(tmp_path / "ens")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "class3" in out and (tmp_path / "ens" / "per_class.csv").is_file()

    assert main(["average", str(trained), str(trained / "final" / "model.safetensors"), "--out",
                 str(tmp_path / "avg")]) == 0
    assert "averaged 2 checkpoints" in capsys.readouterr().out

    ds = make_synthetic("test", 64, 8)
    img = tmp_path / "a.png"
    Image.fromarray(ds.images[0, 0].numpy(), mode="L").convert("RGB").save(img)  # RGB is converted to 1 channel
    assert main(["predict", str(tmp_path / "avg"), str(img), "--topk", "2", "--format", "json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 1 and len(preds[0]["top"]) == 2
    assert main(["predict", str(trained), str(img)]) == 0
    assert "rank" in capsys.readouterr().out


def test_eval_and_predict_fold_batchnorm_by_default_and_no_fuse_gives_the_same_answers(trained, tmp_path, capsys):
    assert main(["eval", str(trained), "--format", "json", "-o", str(tmp_path / "a")]) == 0
    fused = json.loads(capsys.readouterr().out)
    assert main(["eval", str(trained), "--format", "json", "--no-fuse", "-o", str(tmp_path / "b")]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert fused["fused"] and not plain["fused"]
    assert fused["accuracy"] == plain["accuracy"] and fused["nll"] == pytest.approx(plain["nll"], rel=1e-4)
    img = tmp_path / "a.png"
    Image.fromarray(make_synthetic("test", 4, 8).images[0, 0].numpy(), mode="L").save(img)
    tops = []
    for flag in ([], ["--no-fuse"]):
        assert main(["predict", str(trained), str(img), "--format", "json", *flag]) == 0
        tops.append(json.loads(capsys.readouterr().out)[0]["top"])
    assert [t["class"] for t in tops[0]] == [t["class"] for t in tops[1]]
    assert tops[0][0]["prob"] == pytest.approx(tops[1][0]["prob"], abs=1e-4)


def test_demo_in_one_process_prints_accuracy_and_run_dir(cfg_path, tmp_path, capsys):
    assert main(["demo", "--recipe", str(cfg_path), "--out-dir", str(tmp_path), "--procs", "1"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "run directory:" in out and str(tmp_path) in out


def test_demo_with_two_ddp_processes_and_the_recipes_tta_reports_what_eval_reports(cfg_path, tmp_path, capsys):
    """--procs 2 trains under torch.distributed.run (gloo); the demo then evaluates with the recipe's eval.tta."""
    assert main(["demo", "--recipe", str(cfg_path), "--out-dir", str(tmp_path), "--procs", "2",
                 "--set", "run.name=ddp", "eval.tta=[flip,shift]"]) == 0
    out = capsys.readouterr().out
    assert "training with 2 DDP processes" in out and "test-time augmentation (flip + shift)" in out
    shown = float(out.split("augmentation (flip + shift): ")[1].split(" %")[0])
    assert json.loads((tmp_path / "ddp" / "status.json").read_text())["status"] == "done"
    assert main(["eval", str(tmp_path / "ddp"), "--tta", "flip,shift", "--format", "json"]) == 0
    assert shown == pytest.approx(100 * json.loads(capsys.readouterr().out)["accuracy"], abs=0.006)


def test_demo_procs_choice():
    from paperzoo.commands.demo import default_procs

    assert default_procs("3") == 3
    assert default_procs("auto") == max(1, __import__("torch").cuda.device_count())
    with pytest.raises(SystemExit, match="positive integer"):
        default_procs("0")
