"""The Task interface's worked example (docs/architecture.md) trains through ``paperzoo.train``, checkpoints and
resumes exactly; the code in the docs is the module's code, so the two cannot drift."""

import re
from pathlib import Path

import pytest
import torch

import paperzoo
from paperzoo.train import checkpoint as ckpt
from paperzoo.train import example_task
from paperzoo.train.api import resolve_config
from paperzoo.train.example_task import LineConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
# 256 points / 32 = 8 steps per epoch, 8 epochs; a checkpoint every 4 steps
SETTINGS = {"task": "line", "train": {"epochs": 8, "log_every": 4, "checkpoint_every": 4, "threads": 1},
            "sched": {"name": "constant"}, "run": {"progress": "off", "tensorboard": False, "plots": False}}


def _config(tmp_path, name):
    return {**SETTINGS, "run": {**SETTINGS["run"], "out_dir": str(tmp_path), "name": name}}


def test_the_docs_show_the_example_module_verbatim():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert Path(example_task.__file__).read_text() in blocks


def test_a_config_names_its_task():
    cfg = resolve_config({"task": "line", "data": {"a": 3.0}})
    assert isinstance(cfg, LineConfig) and cfg.data.a == 3.0 and cfg.data.b == -1.0
    with pytest.raises(ValueError, match="unknown task 'lines'; valid choices: .*image_classification.*line"):
        resolve_config({"task": "lines"})
    with pytest.raises(ValueError, match="for task 'line', not 'translation'"):
        resolve_config({"task": "line"}, task="translation")


def test_the_example_task_learns_checkpoints_and_resumes_exactly(tmp_path, monkeypatch):
    ref = paperzoo.train(_config(tmp_path, "ref"))
    assert ref.status == "done" and ref.step == 64 and ref.metrics["val_mse"] < 0.01
    w = ckpt.read_weights(ref.run_dir / "final" / "model.safetensors")
    assert w["1.weight"].item() == pytest.approx(2.0, abs=0.05) and w["1.bias"].item() == pytest.approx(-1.0, abs=0.05)
    losses = [r["train_loss"] for r in ckpt_records(ref.run_dir)]
    assert losses[-1] < losses[0] / 100
    # Ctrl-C after step 13 (mid-epoch 2), then resumed from the run directory: the same final weights
    monkeypatch.setenv("PAPERZOO_FAULT", "step:13:INT")
    monkeypatch.setattr(ckpt, "_FAULT_COUNTS", {})
    cut = paperzoo.train(_config(tmp_path, "cut"))
    assert cut.status == "interrupted" and cut.step == 13
    monkeypatch.delenv("PAPERZOO_FAULT")
    done = paperzoo.train(resume=cut.run_dir)
    assert done.status == "done" and done.step == 64
    resumed = ckpt.read_weights(done.run_dir / "final" / "model.safetensors")
    assert all(torch.equal(w[k], resumed[k]) for k in w)


def ckpt_records(run_dir):
    from paperzoo.train.logger import read_metrics

    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "train_loss" in r]
