"""Run logging: progress on stderr, ``metrics.jsonl``, TensorBoard events, run status.

Only rank 0 logs (the trainer passes ``enabled=False`` elsewhere). ``metrics.jsonl`` has one JSON object per
record, each with ``step`` and ``epoch``; on ``--resume`` the records after the restored step are dropped
(they belong to work that is being redone) and TensorBoard is opened with ``purge_step`` for the same reason.
The learning curves drawn from ``metrics.jsonl`` are :func:`paperzoo.viz.curves.plot_run_curves`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .checkpoint import atomic_write_bytes

__all__ = ["Progress", "RunLogger", "read_metrics", "throughput", "write_status"]


def write_status(run_dir: Path, status: str, **info: Any) -> None:
    """Record ``running`` / ``done`` / ``failed`` / ``interrupted`` in ``run_dir/status.json``."""
    payload = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
    atomic_write_bytes(Path(run_dir) / "status.json", json.dumps(payload, indent=2, default=str).encode())


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (a torn last line from a killed run is ignored)."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def throughput(record: dict[str, Any]) -> tuple[str, float] | None:
    """(unit, rate) of a training record: ``img_per_s`` (image tasks), ``tok_per_s`` (text tasks), any ``*_per_s``.

    Readers of ``metrics.jsonl`` should use this rather than one field name: the unit is the task's
    (``Task.throughput_unit``), and runs written before text tasks had their own unit carry ``img_per_s``.
    """
    for k, v in record.items():
        if k.endswith("_per_s") and isinstance(v, int | float) and not isinstance(v, bool):
            return k[: -len("_per_s")], float(v)
    return None


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """A one-line progress bar on a TTY, plain log lines otherwise (CI logs, files, ``| tee``)."""

    def __init__(self, total_steps: int, mode: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.total = mode, total_steps
        self._bar_open = False

    def update(self, step: int, epoch: int, values: dict[str, float], eta_s: float) -> None:
        if self.mode == "off":
            return
        # rates read as units: "tok_per_s 1234" is shown as "1234 tok/s"
        parts = [f"{v:,.0f} {k[: -len('_per_s')]}/s" if k.endswith("_per_s") and isinstance(v, int | float)
                 else f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()]
        head = f"epoch {epoch + 1} step {step}/{self.total}"
        if self.mode == "bar":
            width = 24
            done = int(width * step / max(self.total, 1))
            bar = "#" * done + "." * (width - done)
            line = f"\r[{bar}] {head} | " + " | ".join(parts) + f" | ETA {_fmt_time(eta_s)}"
            self.stream.write(line.ljust(120)[:160])
            self._bar_open = True
        else:
            self.stream.write(f"{head} | " + " | ".join(parts) + f" | ETA {_fmt_time(eta_s)}\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.mode == "off":
            return
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_open = False


class RunLogger:
    """Writes metric records to ``metrics.jsonl`` and TensorBoard; a no-op when ``enabled`` is False."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.path = self.run_dir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        if resume_step is not None:  # drop records of steps that are about to be redone
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra: paperzoo[tb]
                print("paperzoo: tensorboard is not installed; skipping event files (pip install tensorboard)",
                      file=sys.stderr)
            else:
                purge = None if resume_step is None else resume_step + 1
                self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold ``step``); numeric fields also go to TensorBoard."""
        if not self.enabled:
            return
        self._file.write(json.dumps(record, default=float) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record["step"]
            for k, v in record.items():
                if k not in ("step", "epoch", "time") and isinstance(v, int | float) and not isinstance(v, bool):
                    self._tb.add_scalar(k.replace("_", "/", 1) if k.startswith(("train_", "val_")) else k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
