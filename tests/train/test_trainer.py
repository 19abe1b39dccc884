"""The training loop: run directory contents, learning, NaN guard, accumulation, clipping, precision, EMA,
determinism, and the Task interface with a non-image task (what the sequence models plug in)."""

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from paperzoo.data.loader import TensorLoader
from paperzoo.train.api import resolve_config, train
from paperzoo.train.checkpoint import RunDirExistsError, list_checkpoints
from paperzoo.train.classification import ImageClassificationTask
from paperzoo.train.config import load_config
from paperzoo.train.task import Task
from paperzoo.train.trainer import fit

TINY = {
    "model": {"name": "resnet18", "args": {"small_input": True, "width": 4}},
    "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 64, "batch_size": 16, "eval_batch_size": 64},
    "optim": {"lr": 0.05},
    "train": {"epochs": 2, "log_every": 2, "checkpoint_every": 2, "threads": 1},
    "run": {"progress": "off"},
}


def _cfg(tmp_path, name, **sections):
    data = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    data["run"].update(out_dir=str(tmp_path), name=name)
    return resolve_config(data)


def test_run_directory_and_learning(tmp_path):
    cfg = _cfg(tmp_path, "r", train={"ema": True, "ema_decay": 0.5, "epochs": 3},
               run={"tensorboard": True, "plots": True})
    result = train(cfg)
    run = result.run_dir
    assert result.status == "done" and result.step == 12
    assert load_config(run / "config.yaml") == cfg  # the resolved config is saved
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if "train_loss" in r]
    assert [r["step"] for r in train_recs] == [2, 4, 6, 8, 10, 12]
    assert {"lr", "train_acc", "img_per_s", "epoch"} <= train_recs[0].keys()
    evals = [r for r in recs if "test_acc" in r]
    assert [r["epoch"] for r in evals] == [1, 2, 3] and "test_acc_ema" in evals[-1]
    assert evals[-1]["test_acc"] > 0.5  # 4 classes: chance is 0.25
    assert train_recs[-1]["train_loss"] < train_recs[0]["train_loss"]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "done" and status["metrics"]["test_acc"] == result.metrics["test_acc"]
    assert (run / "curves.png").stat().st_size > 1000
    assert list((run / "tb").glob("events.out.tfevents.*"))
    for d in ("final", "best"):
        assert {p.name for p in (run / d).iterdir()} == {"model.safetensors", "ema.safetensors", "meta.json"}
    assert result.best["value"] == max(r["test_acc"] for r in evals)
    with pytest.raises(RunDirExistsError, match="already exists"):
        train(cfg)


class _NaNAt(ImageClassificationTask):
    """The image task with the loss forced to NaN from optimizer step ``k`` on."""

    def __init__(self, cfg, k):
        super().__init__(cfg)
        self.k, self.calls = k, 0

    def train_step(self, model, batch):
        loss, stats = super().train_step(model, batch)
        self.calls += 1
        return (loss * float("nan") if self.calls >= self.k else loss), stats


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    cfg = _cfg(tmp_path, "nan", run={"progress": "lines"})
    result = fit(cfg, _NaNAt(cfg, k=4))
    assert result.status == "failed" and result.step == 4
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "NaN/inf at step 4" in status["error"]
    assert "run failed: the training loss is NaN/inf at step 4" in capsys.readouterr().err
    assert [p.name for p in list_checkpoints(result.run_dir / "checkpoints")] == ["step_00000002"]
    assert not (result.run_dir / "final").exists()


def test_fp16_needs_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(ValueError, match="fp16 needs a GPU.*bf16"):
        train(_cfg(tmp_path, "fp16", train={"precision": "fp16"}))


# ------------------------------------------------------------------------ a non-image task (Task interface)
class ToyRegression(Task):
    """y = x @ w_true on 64 random points: the loop's behaviour is checkable in closed form."""

    primary_metric, higher_is_better = "val_mse", False

    def __init__(self, batch_size=32, accum_div=1):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.train_loader = TensorLoader(self.x.view(64, 1, 2, 2), self.y, batch_size, shuffle=True, drop_last=True)

    def build_model(self):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(4, 1))

    def train_step(self, model, batch):
        x, y = batch
        loss = F.mse_loss(model(x).squeeze(1).float(), y)
        return loss, {"count": torch.tensor(len(y))}

    def evaluate(self, model):
        with torch.no_grad():
            return {"val_mse": F.mse_loss(model(self.x.view(64, 1, 2, 2)).squeeze(1), self.y).item()}

    def metadata(self):
        return {"task": "toy_regression"}


def _toy(tmp_path, name, batch_size=32, **train_kw):
    cfg = _cfg(tmp_path, name, optim={"lr": 0.05, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
               sched={"name": "constant"}, train={"epochs": 3, "log_every": 1, **train_kw},
               run={"tensorboard": False, "plots": False})
    task = ToyRegression(batch_size)
    result = fit(cfg, task)
    w = torch.load(result.run_dir / "checkpoints" / f"step_{result.step:08d}" / "state.pt", weights_only=True)
    return result, w, task


def test_a_non_image_task_trains(tmp_path):
    result, _, _ = _toy(tmp_path, "toy")
    assert result.status == "done" and result.step == 6
    assert result.metrics["val_mse"] < 14.0 * 0.9  # E[y^2] = 1 + 4 + 0.25 + 9 at initialisation scale
    assert result.best["metric"] == "val_mse"


def test_a_task_names_its_throughput_unit_and_resume_command(tmp_path, monkeypatch):
    """Image tasks log img_per_s and suggest `paperzoo train --resume`; a task may name its own (text: tok)."""
    import paperzoo.train.checkpoint as ckpt
    from paperzoo.train.logger import read_metrics, throughput
    from paperzoo.train.trainer import resume_hint

    assert ToyRegression.throughput_unit == "img"  # the defaults of the Task base class
    assert resume_hint(ToyRegression(), "runs/x") == "paperzoo train --resume runs/x"

    class Points(ToyRegression):
        throughput_unit, resume_command = "pt", "toytool fit"

    monkeypatch.setenv("PAPERZOO_FAULT", "step:2:INT")  # Ctrl-C after step 2
    monkeypatch.setattr(ckpt, "_FAULT_COUNTS", {})
    cfg = _cfg(tmp_path, "pts", sched={"name": "constant"}, train={"epochs": 3, "log_every": 1},
               run={"tensorboard": False, "plots": False})
    result = fit(cfg, Points())
    assert result.status == "interrupted" and result.resume_hint == f"toytool fit --resume {result.run_dir}"
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["resume"] == result.resume_hint
    recs = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "train_loss" in r]
    assert recs and all("pt_per_s" in r and "img_per_s" not in r for r in recs)
    # readers take either name (runs written before text tasks had their own unit say img_per_s)
    assert throughput(recs[0]) == ("pt", recs[0]["pt_per_s"])
    assert throughput({"step": 1, "img_per_s": 12}) == ("img", 12.0) and throughput({"step": 1}) is None


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    from paperzoo.train.checkpoint import read_weights

    full, _, _ = _toy(tmp_path, "full", batch_size=32)
    acc, _, _ = _toy(tmp_path, "acc", batch_size=8, grad_accum=4)
    assert acc.step == full.step == 6
    a, b = (read_weights(r.run_dir / "final" / "model.safetensors") for r in (full, acc))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_gradient_clipping_bounds_each_update(tmp_path):
    from paperzoo.train.checkpoint import read_weights

    clip, lr = 0.01, 0.05
    res, _, task = _toy(tmp_path, "clip", grad_clip=clip, epochs=1, checkpoint_every=1)
    steps = list_checkpoints(res.run_dir / "checkpoints")
    before, after = task.build_model().state_dict(), read_weights(steps[0] / "model.safetensors")
    w0, w1 = (torch.cat([sd[k].flatten() for k in sorted(before)]) for sd in (before, after))
    # plain SGD: |update| = lr * |clipped grad| <= lr * clip (the raw gradient here is far larger)
    assert (w1 - w0).norm().item() == pytest.approx(lr * clip, rel=1e-4)


def test_bf16_autocast_on_cpu(tmp_path):
    r32 = train(_cfg(tmp_path, "fp32", train={"epochs": 1}))
    r16 = train(_cfg(tmp_path, "bf16", train={"epochs": 1, "precision": "bf16", "channels_last": True}))
    assert r16.status == "done" and math.isfinite(r16.metrics["test_loss"])
    assert abs(r16.metrics["test_loss"] - r32.metrics["test_loss"]) < 0.2


def test_deterministic_mode_repeats_exactly(tmp_path):
    from paperzoo.train.checkpoint import read_weights

    kw = {"train": {"epochs": 1, "deterministic": True}, "aug": {"crop_padding": 1, "hflip": 0.5}}
    a, b = train(_cfg(tmp_path, "d1", **kw)), train(_cfg(tmp_path, "d2", **kw))
    wa, wb = (read_weights(r.run_dir / "final" / "model.safetensors") for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


@pytest.mark.slow
def test_torch_compile_option(tmp_path):
    result = train(_cfg(tmp_path, "compiled", train={"epochs": 1, "compile": True}))
    assert result.status == "done" and math.isfinite(result.metrics["test_loss"])


def test_imagefolder_streaming(tmp_path):
    """ImageFolder data streams through a DataLoader (resumable sampler) and evaluates on its val split."""
    from PIL import Image

    from paperzoo.train.evaluate import evaluate

    g = torch.Generator().manual_seed(0)
    for c, colour in (("dark", 40), ("light", 210)):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(20):
            px = (colour + torch.randint(-30, 30, (12, 10, 3), generator=g)).clamp(0, 255).to(torch.uint8)
            Image.fromarray(px.numpy()).save(tmp_path / "data" / c / f"{i}.png")
    cfg = _cfg(tmp_path, "folder", data={"dataset": "imagefolder", "root": str(tmp_path / "data"), "image_size": 8,
                                         "val_fraction": 0.2, "num_workers": 0, "batch_size": 8},
               train={"epochs": 2, "checkpoint_every": 3})
    result = train(cfg)
    assert result.status == "done" and result.step == 8  # 32 training images / 8
    assert result.metrics["val_acc"] == 1.0  # dark vs light
    m = evaluate(result.run_dir).metrics
    assert m["n"] == 8 and m["accuracy"] == 1.0  # 20 % of 2 x 20 images


def test_progress_bar_and_lines():
    import io

    from paperzoo.train.logger import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    bar, plain = Tty(), io.StringIO()
    for stream in (bar, plain):
        p = Progress(100, "auto", stream)
        p.update(50, 0, {"train_loss": 0.5, "lr": 0.1}, eta_s=75)
        p.update(60, 0, {"tok_per_s": 1234.4}, eta_s=60)
        p.message("epoch 1: val_acc 0.9")
        p.close()
    assert bar.getvalue().startswith("\r[############............] epoch 1 step 50/100 | train_loss 0.5 | lr 0.1")
    assert "ETA 01:15" in bar.getvalue() and "\nepoch 1: val_acc 0.9\n" in bar.getvalue()
    assert plain.getvalue().splitlines() == ["epoch 1 step 50/100 | train_loss 0.5 | lr 0.1 | ETA 01:15",
                                             "epoch 1 step 60/100 | 1,234 tok/s | ETA 01:00",
                                             "epoch 1: val_acc 0.9"]


@pytest.mark.slow
def test_default_recipe_learns_a_fashion_mnist_subset(tmp_path, fmnist_dir):
    """The default recipe end to end on real data, shrunk: 3 epochs on 3,000 training images."""
    cfg = load_config(_recipe("fashion_mnist_default"),
                      ["data.train_subset=3000", "data.test_subset=1000", "train.epochs=3", "train.threads=1",
                       f"run.out_dir={tmp_path}", "run.progress=off", "run.tensorboard=false", "run.plots=false"])
    result = fit(cfg)
    assert result.status == "done" and result.metrics["test_acc"] > 0.7, result.metrics


def _recipe(name):
    from paperzoo.train.config import find_recipe

    return find_recipe(name)


def test_top_level_python_api(tmp_path):
    import subprocess
    import sys

    import paperzoo

    cfg = {k: dict(v) for k, v in TINY.items()}
    cfg["run"] = {"out_dir": str(tmp_path), "name": "api", "progress": "off", "tensorboard": False, "plots": False}
    result = paperzoo.train(cfg, overrides=["train.epochs=1"])  # the package itself is callable
    assert result.status == "done" and result.run_dir == tmp_path / "api"
    assert paperzoo.evaluate(result.run_dir).metrics["accuracy"] == pytest.approx(result.metrics["test_acc"])
    # importing paperzoo does not import the trainer (it is loaded on first use)
    code = "import sys, paperzoo; print(any(m.startswith('paperzoo.train.') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
