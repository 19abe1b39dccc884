"""Kill a training run (SIGKILL at exact points, or Ctrl-C) and resume it: the final weights must be bitwise
identical to an uninterrupted run on CPU.

Runs are subprocesses of ``python -m paperzoo train`` on a tiny ResNet and generated 8x8 data (8 optimizer
steps, a checkpoint every 2). ``PAPERZOO_FAULT=point:N[:INT]`` (paperzoo.train.checkpoint.fault_point)
kills the process at the N-th pass through ``point``: after an optimizer step, half-way through writing a
checkpoint directory, just before its atomic rename, right after it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from paperzoo.train.checkpoint import list_checkpoints, load_training_state, read_meta, read_weights

TINY = {
    "model": {"name": "resnet18", "args": {"small_input": True, "width": 4, "drop_rate": 0.1}},
    "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 64, "batch_size": 16,
             "eval_batch_size": 64},
    "aug": {"crop_padding": 1, "hflip": 0.5},  # augmentation and dropout: randomness that must replay
    "optim": {"name": "sgd", "lr": 0.05},
    "sched": {"name": "cosine", "warmup_epochs": 0.5},
    "train": {"epochs": 2, "checkpoint_every": 2, "log_every": 1, "threads": 1, "ema": True, "ema_decay": 0.9},
    "run": {"tensorboard": False, "plots": False, "progress": "lines"},
}


def _write_cfg(tmp: Path, cfg: dict = TINY) -> Path:
    p = tmp / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _train(args: list[str], fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PAPERZOO_FAULT", None)
    if fault:
        env["PAPERZOO_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "paperzoo", "train", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    w = read_weights(run / "final" / "model.safetensors")
    w.update({f"ema.{k}": v for k, v in read_weights(run / "final" / "model.safetensors", ema=True).items()})
    return w


def _losses(run: Path) -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"]) for r in recs if "train_loss" in r]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"tensors differ after resume (max abs diff): {diff}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (a subprocess too, so that both sides run under identical settings)."""
    tmp = tmp_path_factory.mktemp("ref")
    r = _train([str(_write_cfg(tmp)), "--out-dir", str(tmp), "--name", "ref"])
    assert r.returncode == 0, r.stderr
    return tmp / "ref"


def test_sigkill_at_several_points_then_resume_is_bitwise_identical(tmp_path, reference):
    cfg, run = _write_cfg(tmp_path), tmp_path / "run"
    # 1) killed right after optimizer step 3 (mid-epoch; the newest checkpoint is step 2)
    r = _train([str(cfg), "--out-dir", str(tmp_path), "--name", "run"], fault="step:3")
    assert r.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000002"]
    assert json.loads((run / "status.json").read_text())["status"] == "running"  # what a crash leaves
    # 2) resumed, and killed half-way through writing its first checkpoint: at the end of epoch 1 (step 4)
    #    the best weights are written first; the model file is written, the rest not yet
    r = _train(["--resume", str(run)], fault="ckpt_mid_write:1")
    assert r.returncode == -signal.SIGKILL
    assert [p.name for p in run.iterdir() if p.name.startswith(".tmp-best")]
    assert load_training_state(list_checkpoints(run / "checkpoints")[-1])["step"] == 2
    # 3) resumed again (same command as in `paperzoo train CONFIG --resume`), runs to the end
    r = _train([str(cfg), "--out-dir", str(tmp_path), "--name", "run", "--resume"])
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stderr
    assert not [p for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.startswith(".tmp-")]
    assert_bitwise_equal(_weights(reference), _weights(run))
    assert _losses(run) == _losses(reference)  # the replayed steps logged once, with identical values
    assert json.loads((run / "status.json").read_text())["status"] == "done"


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_cleanly(tmp_path, reference):
    cfg, run = _write_cfg(tmp_path), tmp_path / "run"
    r = _train([str(cfg), "--out-dir", str(tmp_path), "--name", "run"], fault="step:3:INT")  # Ctrl-C at step 3
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr and f"paperzoo train --resume {run}" in r.stderr
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] == 3
    assert list_checkpoints(run / "checkpoints")[-1].name == "step_00000003"  # saved at the interruption
    r = _train(["--resume", str(run)])
    assert r.returncode == 0, r.stderr
    assert_bitwise_equal(_weights(reference), _weights(run))


def test_sigterm_from_outside_saves_a_checkpoint_exits_130_and_resumes_exactly(tmp_path, reference):
    """What a cluster scheduler or `kill` sends: handled like Ctrl-C, at whatever step it arrives."""
    cfg, run = _write_cfg(tmp_path), tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "paperzoo", "train", str(cfg), "--out-dir", str(tmp_path),
                             "--name", "run"], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    for line in proc.stderr:  # progress lines: "epoch 1 step 2/8 | ..."
        err.append(line)
        if " step 2/8 " in line:
            proc.send_signal(signal.SIGTERM)
            break
    err += proc.stderr.readlines()
    assert proc.wait(timeout=300) == 130, "".join(err)
    assert "Traceback" not in "".join(err) and f"resume with: paperzoo train --resume {run}" in "".join(err)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert list_checkpoints(run / "checkpoints")[-1].name == f"step_{status['step']:08d}"
    r = _train(["--resume", str(run)])
    assert r.returncode == 0, r.stderr
    assert_bitwise_equal(_weights(reference), _weights(run))


@pytest.mark.parametrize("damaged", ["model.safetensors", "state.pt"])
def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, reference, damaged):
    cfg, run = _write_cfg(tmp_path), tmp_path / "run"
    r = _train([str(cfg), "--out-dir", str(tmp_path), "--name", "run"], fault="step:7")  # checkpoints 4 and 6
    assert r.returncode == -signal.SIGKILL
    newest = list_checkpoints(run / "checkpoints")[-1]
    assert newest.name == "step_00000006"
    f = newest / damaged
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a torn write
    r = _train(["--resume", str(run)])
    assert r.returncode == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "step_00000006" in warning[0] and "resuming from step_00000004" in warning[0]
    assert "resumed" in r.stderr and "from step_00000004" in r.stderr
    assert_bitwise_equal(_weights(reference), _weights(run))  # replayed from step 4: the same weights


def test_two_runs_started_together_with_one_name_do_not_both_write_it(tmp_path):
    cfg = _write_cfg(tmp_path)
    cmd = [sys.executable, "-m", "paperzoo", "train", str(cfg), "--out-dir", str(tmp_path), "--name", "same",
           "--set", "train.epochs=1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "already exists" in refused and "Traceback" not in refused
    assert json.loads((tmp_path / "same" / "status.json").read_text())["status"] == "done"


def test_checkpoint_contents(reference):
    ckpts = list_checkpoints(reference / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000006", "step_00000008"]  # keep_last=2 pruned 2 and 4
    state = load_training_state(ckpts[-1])  # weights_only=True: tensors and plain containers only
    assert {"optimizer", "scheduler", "scaler", "ema", "rng", "task", "epoch", "step"} <= state.keys()
    assert state["task"]["train_loader"] == {"epoch": 1, "batch": 4, "seed": 0}
    meta = read_meta(reference / "final" / "model.safetensors")
    assert meta["model"] == {"name": "resnet18", "args": {"num_classes": 4, "in_chans": 1, "small_input": True,
                                                           "width": 4, "drop_rate": 0.1}}
    assert meta["classes"] == ["class0", "class1", "class2", "class3"] and meta["input_size"] == [1, 8, 8]
    assert meta["normalization"] == {"mean": [0.5], "std": [0.3]} and "test_acc" in meta["metrics"]
    assert set(meta["versions"]) == {"paperzoo", "torch", "python"}
    # the safetensors header carries the same metadata, so a lone weights file is self-describing
    lone = reference / "lone.safetensors"
    lone.write_bytes((reference / "final" / "model.safetensors").read_bytes())
    assert read_meta(lone)["model"] == meta["model"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["step:1", "ckpt_before_rename:2", "after_checkpoint:1", "step:8",
                                   "ckpt_mid_write:5"])
def test_more_kill_points(tmp_path, reference, fault):
    cfg, run = _write_cfg(tmp_path), tmp_path / "run"
    r = _train([str(cfg), "--out-dir", str(tmp_path), "--name", "run"], fault=fault)
    assert r.returncode == -signal.SIGKILL
    r = _train(["--resume", str(run)])
    assert r.returncode == 0, r.stderr
    assert_bitwise_equal(_weights(reference), _weights(run))


@pytest.mark.slow
def test_sigkill_at_random_moments_from_outside(tmp_path):
    """A longer run killed from outside at random times until it completes, against its own reference."""
    cfg_dict = {**TINY, "train": {**TINY["train"], "epochs": 6, "checkpoint_every": 3}}
    cfg = _write_cfg(tmp_path, cfg_dict)
    t0 = time.perf_counter()
    assert _train([str(cfg), "--out-dir", str(tmp_path), "--name", "ref"]).returncode == 0
    t_ref = time.perf_counter() - t0  # start-up (imports, ~1-3 s) + training, as for every attempt below
    args = [str(cfg), "--out-dir", str(tmp_path), "--name", "run", "--resume"]
    gen = torch.Generator().manual_seed(0)
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-m", "paperzoo", "train", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # random moments scaled to this machine's speed (fixed delays let a fast machine finish unkilled): at
        # most 0.7x the reference run, so the first attempt is killed; resumed ones have less left to do
        delay = t_ref * (0.2 + 0.5 * torch.rand((), generator=gen).item())
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0
        break
    else:
        r = _train(args)
        assert r.returncode == 0, r.stderr
    time.sleep(0)
    assert kills >= 1
    assert_bitwise_equal(_weights(tmp_path / "ref"), _weights(tmp_path / "run"))


def test_atomic_directory_replacement_recovers_from_a_crash(tmp_path):
    """A crash between "rename old aside" and "rename new into place" leaves best.old: it is found and restored."""
    from paperzoo.train.checkpoint import clean_temporary, find_checkpoint, save_checkpoint

    meta = {"task": "image_classification"}
    save_checkpoint(tmp_path / "best", {"w": torch.zeros(2)}, meta)
    save_checkpoint(tmp_path / "best", {"w": torch.ones(2)}, meta)  # replaced atomically
    assert torch.equal(read_weights(find_checkpoint(tmp_path, "best"))["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    # simulate the crash window: the old copy renamed aside, a half-written temporary, no `best`
    (tmp_path / "best").rename(tmp_path / "best.old")
    (tmp_path / ".tmp-best.123").mkdir()
    assert torch.equal(read_weights(find_checkpoint(tmp_path, "best"))["w"], torch.ones(2))
    clean_temporary(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    with pytest.raises(FileNotFoundError, match="holds no final checkpoint"):
        find_checkpoint(tmp_path, "final")
