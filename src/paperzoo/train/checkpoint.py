"""Checkpoints: safetensors weights + JSON metadata, a resumable training state, atomic writes.

Layout of a run directory (see docs/training.md)::

    runs/<name>/checkpoints/step_00001200/   resumable: model.safetensors, ema.safetensors, meta.json, state.pt
    runs/<name>/best/                        best validation weights: model.safetensors (+ ema), meta.json
    runs/<name>/final/                       weights at the end of training

* A checkpoint is a directory written under a temporary name, every file fsync'd, then renamed into place
  (``os.rename`` is atomic on POSIX) and the parent directory fsync'd. A process killed at any moment
  leaves either the old set of checkpoints or the new one, never a half-written one; stray temporary
  directories are removed by the next run.
* ``state.pt`` holds only tensors and plain containers (optimizer, scheduler, scaler, EMA, RNG states,
  epoch/step, data order), so it is read with ``torch.load(weights_only=True)``: nothing is unpickled.
* ``model.safetensors`` also carries the metadata in its header, so a lone ``.safetensors`` file is
  self-describing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CheckpointError", "atomic_write_bytes", "fault_point", "find_checkpoint", "latest_checkpoint",
    "list_checkpoints", "load_training_state", "read_meta", "read_weights", "save_checkpoint",
]

META_FORMAT = 1
_TMP_PREFIX = ".tmp-"


class CheckpointError(FileNotFoundError):
    """A checkpoint path that does not exist or does not hold a paperzoo checkpoint."""


# ------------------------------------------------------------------------------------ fault injection
_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Send this process a signal at the N-th call of ``name`` when ``PAPERZOO_FAULT=name:N[:SIG]`` is set.

    ``SIG`` is ``KILL`` (default) or ``INT``. Used by the resume tests to stop a run at exact, otherwise
    unreachable moments (between two files of a checkpoint, just before the rename, ...) and to deliver a
    Ctrl-C at a known step. Costs one dict lookup when the variable is unset.
    """
    spec = os.environ.get("PAPERZOO_FAULT")
    if not spec:
        return
    want, n, sig = (spec.split(":") + ["1", "KILL"])[:3]
    if want != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(n):
        os.kill(os.getpid(), signal.SIGINT if sig == "INT" else signal.SIGKILL)


# --------------------------------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, write: Callable[[Any], None]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}")
    _write_synced(tmp, lambda f: f.write(data))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _atomic_dir(final: Path, fill: Callable[[Path], None]) -> None:
    """Create directory ``final`` atomically: ``fill(tmp_dir)`` writes the files, then one rename.

    If ``final`` exists it is replaced: renamed aside first, so a crash in between leaves the old copy
    (``<name>.old``) which :func:`find_checkpoint` still finds.
    """
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{_TMP_PREFIX}{final.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fill(tmp)
    _fsync_dir(tmp)
    fault_point("ckpt_before_rename")
    old = parent / f"{final.name}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)


def clean_temporary(parent: Path) -> None:
    """Remove temporary files/directories left by a killed writer (and restore an orphaned ``.old``)."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        if p.name.startswith(_TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        elif p.name.endswith(".old") and p.is_dir():
            target = p.with_name(p.name[: -len(".old")])
            if target.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.rename(p, target)


# ------------------------------------------------------------------------------------------ writing
def _versions() -> dict[str, str]:
    import platform

    from paperzoo import __version__

    return {"paperzoo": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _contiguous_cpu(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone so that tied weights are saved twice
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_checkpoint(
    path: str | os.PathLike,
    model_state: dict[str, Tensor],
    meta: dict[str, Any],
    *,
    ema_state: dict[str, Tensor] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint directory and return its path.

    Args:
        model_state: the model's ``state_dict()`` (unwrapped from DDP / torch.compile).
        meta: JSON-serialisable metadata (model name and args, classes, normalization, metrics, ...).
        ema_state: EMA weights, saved as ``ema.safetensors``.
        training_state: tensors and plain containers for ``--resume``, saved as ``state.pt``.
    """
    from safetensors.torch import save

    final = Path(path)
    meta = {"format": META_FORMAT, **meta, "versions": _versions()}
    header = {"paperzoo": json.dumps(meta)}

    def fill(tmp: Path) -> None:
        model_bytes = save(_contiguous_cpu(model_state), metadata=header)
        _write_synced(tmp / "model.safetensors", lambda f: f.write(model_bytes))
        fault_point("ckpt_mid_write")  # model written, the rest not yet
        if ema_state is not None:
            ema_bytes = save(_contiguous_cpu(ema_state), metadata=header)
            _write_synced(tmp / "ema.safetensors", lambda f: f.write(ema_bytes))
        if training_state is not None:
            _write_synced(tmp / "state.pt", lambda f: torch.save(training_state, f))
        text = json.dumps(meta, indent=2, default=str).encode()
        _write_synced(tmp / "meta.json", lambda f: f.write(text))

    _atomic_dir(final, fill)
    return final


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete resumable checkpoints (``step_*`` directories) in step order."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and p.name.startswith("step_") and not p.name.endswith(".old")
             and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(ckpt_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` resumable checkpoints."""
    for p in list_checkpoints(ckpt_dir)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------------------ reading
def find_checkpoint(path: str | os.PathLike, which: str = "final") -> Path:
    """Resolve a run directory, checkpoint directory or ``.safetensors`` file to a weights file.

    For a run directory, ``which`` picks ``final``, ``best`` or ``last`` (the newest resumable checkpoint);
    ``final`` falls back to ``last`` for a run that has not finished.
    """
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise CheckpointError(f"no checkpoint at {p}: expected a run directory, a checkpoint directory or a "
                              ".safetensors file")
    if (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    if which not in ("final", "best", "last"):
        raise ValueError(f"unknown checkpoint {which!r}; choose from final, best, last")
    candidates = {"final": [p / "final", p / "final.old"], "best": [p / "best", p / "best.old"], "last": []}
    for c in candidates[which]:
        if (c / "model.safetensors").is_file():
            return c / "model.safetensors"
    last = latest_checkpoint(p / "checkpoints")
    if last is not None and which != "best":
        return last / "model.safetensors"
    raise CheckpointError(f"{p} holds no {which} checkpoint (looked for {which}/model.safetensors"
                          + ("" if which == "best" else " and checkpoints/step_*/") + ")")


def read_meta(weights: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a weights file: ``meta.json`` next to it, else the safetensors header."""
    p = Path(weights)
    side = p.with_name("meta.json")
    if side.is_file():
        return json.loads(side.read_text())
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
        if "paperzoo" in header:
            return json.loads(header["paperzoo"])
    raise CheckpointError(f"{p} has no paperzoo metadata (no meta.json next to it, none in the header); "
                          "load plain state dicts with paperzoo.load_weights instead")


def read_weights(weights: str | os.PathLike, ema: bool = False) -> dict[str, Tensor]:
    """The state dict of a checkpoint (its EMA weights with ``ema=True``)."""
    from paperzoo.weights import read_state_dict

    p = Path(weights)
    if ema:
        e = p.with_name("ema.safetensors")
        if not e.is_file():
            raise CheckpointError(f"{p.parent} has no EMA weights (train with train.ema=true)")
        p = e
    return read_state_dict(p)


def load_training_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    """Load ``state.pt`` of a resumable checkpoint with ``weights_only=True``."""
    return torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=True)
