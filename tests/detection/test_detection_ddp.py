"""Detection under DDP: ``torchrun --nproc_per_node=2 -m paperzoo detect train`` on CPU (gloo) trains, and its
evaluation, gathered from both ranks' shares of the test scenes, equals a one-process evaluation of the same
weights (every scene scored exactly once)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("pycocotools")

from paperzoo.detection.task import evaluate_run  # noqa: E402

SETTINGS = ["train.time_budget_s=null", "data.n_train=8", "data.n_val=6", "data.batch_size=4",
            "data.eval_batch_size=2", "train.max_steps=2", "train.epochs=1", "train.threads=1", "run.progress=off",
            "run.tensorboard=false", "run.plots=false", "model.args.rpn_pre_nms_top_n_train=200",
            "model.args.rpn_post_nms_top_n_train=100", "model.args.box_batch_size_per_image=32",
            "model.args.representation_size=64", "model.args.box_score_thresh=0.0"]


@pytest.mark.slow
def test_two_process_detection_training_evaluates_every_scene_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "paperzoo",
           "detect", "train", "detect_scenes", "--set", *SETTINGS, "--out-dir", str(tmp_path), "--name", "ddp"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("run: ") == 1  # rank 0 reports
    logged = json.loads((tmp_path / "ddp" / "status.json").read_text())["metrics"]
    again = evaluate_run(tmp_path / "ddp", "final")
    assert logged["test_AR_100"] == pytest.approx(again["AR_100"], abs=1e-9)
    assert logged["test_AP"] == pytest.approx(again["AP"], abs=1e-9)
