"""Faults of a run, in process: SIGTERM, a second signal, a full disk, two runs claiming one directory.

(Killed subprocesses, a corrupt newest checkpoint and two racing ``paperzoo train`` commands are in
test_checkpoint_resume.py.)
"""

import errno
import json
import os
import signal

import pytest

from paperzoo.cli import main
from paperzoo.train import checkpoint as ckpt
from paperzoo.train import trainer
from paperzoo.train.api import resolve_config, train
from paperzoo.train.classification import ImageClassificationTask
from paperzoo.train.trainer import RunFailedError, fit

TINY = {
    "model": {"name": "resnet18", "args": {"small_input": True, "width": 4}},
    "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 64, "batch_size": 16, "eval_batch_size": 64},
    "optim": {"lr": 0.05},
    "train": {"epochs": 2, "log_every": 1, "checkpoint_every": 2, "threads": 1},
    "run": {"progress": "off", "tensorboard": False, "plots": False},
}


def _cfg(tmp_path, name, **train):
    data = {k: dict(v) for k, v in TINY.items()}
    data["train"].update(train)
    data["run"].update(out_dir=str(tmp_path), name=name)
    return resolve_config(data)


class _Signals(ImageClassificationTask):
    """The image task, sending this process ``signals[n]`` during the n-th micro-batch (1-based)."""

    def __init__(self, cfg, signals):
        super().__init__(cfg)
        self.signals, self.calls = signals, 0

    def train_step(self, model, batch):
        self.calls += 1
        if self.calls in self.signals:
            signal.raise_signal(self.signals[self.calls])  # to this thread, handled before it returns
        return super().train_step(model, batch)


def test_sigterm_saves_a_resumable_checkpoint_and_stops_like_ctrl_c(tmp_path):
    cfg = _cfg(tmp_path, "term")
    result = fit(cfg, _Signals(cfg, {3: signal.SIGTERM}))  # during step 3 (4 steps per epoch)
    assert result.status == "interrupted" and result.step == 3
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["resume"] == f"paperzoo train --resume {result.run_dir}"
    assert ckpt.list_checkpoints(result.run_dir / "checkpoints")[-1].name == "step_00000003"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone after the run
    resumed = train(resume=result.run_dir)
    assert resumed.status == "done" and resumed.step == 8


@pytest.fixture
def default_signal_handlers():
    """Python's own SIGINT / SIGTERM handlers during the test, whatever the process (a pytest-xdist worker) was
    started with: the run restores the handlers it found, and the test is about those being the defaults."""
    defaults = ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))
    saved = {sig: signal.signal(sig, handler) for sig, handler in defaults}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_second_signal_interrupts_at_once(tmp_path, default_signal_handlers):
    # two micro-batches per step: SIGTERM in the first of step 2 asks for a stop after the step; the Ctrl-C in
    # the second does not wait for it
    cfg = _cfg(tmp_path, "twice", grad_accum=2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, _Signals(cfg, {3: signal.SIGTERM, 4: signal.SIGINT}))
    status = json.loads((tmp_path / "twice" / "status.json").read_text())
    assert status["status"] == "failed" and status["step"] == 1 and "KeyboardInterrupt" in status["error"]


@pytest.fixture
def disk_full_at_checkpoint(monkeypatch):
    """Checkpoint writes fail with ENOSPC from the second one on: step 2's is written, the best weights after
    the first epoch (step 4) are not."""
    real, calls = ckpt.save_checkpoint, []

    def save(path, *args, **kwargs):
        calls.append(path)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)


def test_a_full_disk_fails_the_run_in_one_line_and_keeps_the_previous_checkpoint(tmp_path, disk_full_at_checkpoint):
    with pytest.raises(RunFailedError) as info:
        train(_cfg(tmp_path, "full"))
    e = info.value
    assert isinstance(e, OSError) and e.__cause__ is None and e.__suppress_context__  # no chained tracebacks
    assert str(e) == (f"could not write checkpoint {tmp_path / 'full' / 'best'}: No space left on device; the "
                      "previous checkpoint is kept")
    status = json.loads((tmp_path / "full" / "status.json").read_text())
    assert status["status"] == "failed" and "No space left on device" in status["error"]
    kept = ckpt.list_checkpoints(tmp_path / "full" / "checkpoints")
    assert [p.name for p in kept] == ["step_00000002"]
    ckpt.verify_checkpoint(kept[0])


def test_a_full_disk_at_the_command_line_is_one_line_even_if_status_json_cannot_be_written(
        tmp_path, disk_full_at_checkpoint, monkeypatch, capsys):
    real_status = trainer.write_status

    def write_status(run_dir, status, **info):
        if status == "failed":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_status(run_dir, status, **info)

    monkeypatch.setattr(trainer, "write_status", write_status)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(TINY))
    assert main(["train", str(cfg), "--out-dir", str(tmp_path), "--name", "cli"]) == 2
    err = capsys.readouterr().err
    assert err == (f"paperzoo train: error: could not write checkpoint {tmp_path / 'cli' / 'best'}: No space left "
                   "on device; the previous checkpoint is kept\n")
    assert json.loads((tmp_path / "cli" / "status.json").read_text())["status"] == "running"  # what it could


def test_a_taken_run_name_is_refused_and_a_generated_one_gets_a_suffix(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "same", epochs=1)
    (tmp_path / "same").mkdir()
    (tmp_path / "same" / "notes.txt").write_text("someone else's")
    with pytest.raises(ckpt.RunDirExistsError, match="already exists"):
        train(cfg)
    assert sorted(p.name for p in (tmp_path / "same").iterdir()) == ["notes.txt"]  # left as it was
    # two runs whose generated names fall in the same second
    monkeypatch.setattr(trainer.time, "strftime", lambda fmt, *a: "20240101-000000")
    anon = _cfg(tmp_path, None, epochs=1)
    dirs = [train(anon).run_dir.name for _ in range(2)]
    assert dirs == ["resnet18-synthetic-20240101-000000", "resnet18-synthetic-20240101-000000-2"]


def test_a_run_whose_data_fails_to_build_leaves_no_directory(tmp_path):
    cfg = _cfg(tmp_path, "bad", grad_accum=100)  # 4 batches per epoch: fewer than one optimizer step
    with pytest.raises(ValueError, match="fewer than train.grad_accum"):
        train(cfg)
    assert not (tmp_path / "bad").exists()
