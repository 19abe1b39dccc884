"""DDP: ``torchrun --nproc_per_node=2 -m paperzoo train`` on CPU (gloo) matches a 1-process run with the same
global batch: same sample sets per step (TensorLoader sharding), averaged gradients, rank-0 logging and
checkpoints, evaluation summed over ranks.

The model is a small registered MLP without BatchNorm or dropout: per-rank BatchNorm statistics (SyncBN is
GPU-only in PyTorch) or per-rank dropout masks would make the two runs legitimately differ.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from paperzoo.train.checkpoint import read_weights

LAUNCHER = textwrap.dedent('''
    """Registers a BN-free test model, then runs the paperzoo CLI (like `python -m paperzoo`)."""
    import sys

    import torch.nn as nn

    from paperzoo.models._base import ImageClassifier
    from paperzoo.registry import Paper, register_model


    class TinyMLP(ImageClassifier):
        def __init__(self, num_classes=10, in_chans=1, hidden=32):
            super().__init__()
            self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, hidden
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 64, hidden), nn.ReLU())
            self.fc = nn.Linear(hidden, num_classes)

        def forward_features(self, x):
            return self.body(x)

        def forward_head(self, x, pre_logits=False):
            return x if pre_logits else self.fc(x)


    @register_model(family="test_mlp", paper=Paper("test", "0000.00000", 2000), input_size=8)
    def ddp_test_mlp(**kw):
        return TinyMLP(**kw)


    from paperzoo.cli import main

    sys.exit(main(sys.argv[1:]))
''')

CFG = {
    "model": {"name": "ddp_test_mlp"},
    "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 96, "batch_size": 32, "eval_batch_size": 10},
    "optim": {"name": "sgd", "lr": 0.2},
    "train": {"epochs": 2, "log_every": 1, "threads": 1, "ema": True, "ema_decay": 0.9},
    "run": {"tensorboard": False, "plots": False, "progress": "lines"},
}


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_two_process_ddp_matches_one_process(tmp_path):
    (tmp_path / "launch.py").write_text(LAUNCHER)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(CFG))
    common = ["train", "cfg.yaml", "--out-dir", str(tmp_path)]
    _run([sys.executable, "launch.py", *common, "--name", "single"], tmp_path)
    r = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "launch.py",
              *common, "--name", "ddp"], tmp_path)
    assert r.stdout.count("run: ") == 1  # rank 0 reports, rank 1 stays quiet

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    for part in ("model.safetensors", "ema.safetensors"):
        a, b = read_weights(single / "final" / part), read_weights(ddp / "final" / part)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k, p=part: f"{p} {k}: {m}")
    recs = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("single", "ddp")}
    assert [r["step"] for r in recs["ddp"]] == [r["step"] for r in recs["single"]]  # one writer, no duplicates
    for a, b in zip(recs["single"], recs["ddp"]):
        for k in ("train_loss", "train_acc", "test_loss", "test_acc", "test_acc_ema"):
            if k in a:
                assert abs(a[k] - b[k]) < 1e-5, (k, a, b)
    # every validation image counted exactly once over the two ranks (96 = 48 + 48, batches of 10)
    status = json.loads((ddp / "status.json").read_text())
    assert status["status"] == "done"
    assert status["metrics"]["test_acc"] == json.loads((single / "status.json").read_text())["metrics"]["test_acc"]
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]


def test_sync_bn_on_cpu_is_a_clear_error():
    from paperzoo.train.distributed import DistInfo, wrap_model

    with pytest.raises(ValueError, match="sync_bn=true needs GPUs"):
        wrap_model(torch.nn.BatchNorm2d(3), DistInfo(rank=0, world_size=2), sync_bn=True)


@pytest.mark.slow
def test_ddp_run_killed_and_resumed_matches(tmp_path):
    """Both ranks killed after step 4 (checkpoint at 3), resumed with torchrun: same weights as uninterrupted."""
    (tmp_path / "launch.py").write_text(LAUNCHER)
    cfg = {**CFG, "train": {**CFG["train"], "checkpoint_every": 2}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "launch.py"]
    common = ["train", "cfg.yaml", "--out-dir", str(tmp_path)]
    _run([*torchrun, *common, "--name", "ref"], tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PAPERZOO_FAULT": "step:5"}
    r = subprocess.run([*torchrun, *common, "--name", "run"], capture_output=True, text=True, timeout=300, env=env,
                       cwd=tmp_path)
    assert r.returncode != 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000003",
                                                                                   "step_00000004"]
    _run([*torchrun, "train", "--resume", str(tmp_path / "run")], tmp_path)
    for part in ("model.safetensors", "ema.safetensors"):
        a, b = read_weights(tmp_path / "ref" / "final" / part), read_weights(tmp_path / "run" / "final" / part)
        assert all(torch.equal(a[k], b[k]) for k in a), part
