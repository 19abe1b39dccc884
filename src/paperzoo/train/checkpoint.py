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
* Integrity (format 2): ``meta.json`` records the sha256 of every other file of the checkpoint
  (``"sha256": {"model.safetensors": ..., "state.pt": ...}``), which :func:`verify_checkpoint` checks; each
  ``.safetensors`` header also carries a digest of its tensors (``paperzoo_tensors_sha256``, see
  :func:`tensors_digest`), written before the data, so that a lone weights file is self-verifying and loading
  it (:func:`paperzoo.weights.read_state_dict`) costs one hash over the bytes it reads anyway. A mismatch
  raises :class:`CorruptCheckpointError`. Checkpoints of format 1 (no checksums) are read as before.
* Run directories are claimed with :func:`claim_run_dir` (create-exclusive), so that two runs started at the
  same moment with the same name cannot both write into one directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CheckpointError", "CorruptCheckpointError", "RunDirExistsError", "atomic_write_bytes", "claim_run_dir",
    "fault_point", "find_checkpoint", "latest_checkpoint", "latest_intact_checkpoint", "list_checkpoints",
    "load_training_state", "read_meta", "read_weights", "release_run_dir", "save_checkpoint", "tensors_digest",
    "verify_checkpoint", "check_tensors_digest", "is_checkpoint_file",
]

META_FORMAT = 2  # 2: sha256 of every file in meta.json and a tensor digest in each safetensors header
_TMP_PREFIX = ".tmp-"
DIGEST_KEY = "paperzoo_tensors_sha256"  # safetensors header key of tensors_digest()


class CheckpointError(FileNotFoundError):
    """A checkpoint path that does not exist or does not hold a paperzoo checkpoint."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file that is missing, truncated or altered (its checksum does not match)."""

    def __init__(self, path: str | os.PathLike, reason: str = "sha256 mismatch") -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is " + ("missing" if reason == "missing" else f"truncated or corrupt ({reason})"))


class RunDirExistsError(ValueError):
    """A run directory that another run already holds."""


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
        # raise_signal, not os.kill(getpid()): delivered to this thread at once, so the fault lands where asked
        signal.raise_signal(signal.SIGINT if sig == "INT" else signal.SIGKILL)


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


def tensors_digest(sd: dict[str, Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and raw bytes of CPU tensors, in name order.

    It depends only on the tensors, not on how a file lays them out, so it can be written into a safetensors
    header before the data and checked against the tensors read back.
    """
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0{t.numel() * t.element_size()}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, any dtype (bf16 has no numpy view)
    return h.hexdigest()


def _safetensors_bytes(sd: dict[str, Tensor], header: dict[str, str]) -> bytes:
    from safetensors.torch import save

    tensors = _contiguous_cpu(sd)
    return save(tensors, metadata={**header, DIGEST_KEY: tensors_digest(tensors)})


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

    ``meta.json`` gets ``"sha256"``: the checksum of each file written (hashed from the bytes in memory, so
    writing costs one hash per file plus the tensor digest in each safetensors header).
    """
    final = Path(path)
    meta = {"format": META_FORMAT, **{k: v for k, v in meta.items() if k != "sha256"}, "versions": _versions()}
    header = {"paperzoo": json.dumps(meta)}

    def fill(tmp: Path) -> None:
        sums: dict[str, str] = {}

        def write(name: str, data: bytes) -> None:
            _write_synced(tmp / name, lambda f: f.write(data))
            sums[name] = hashlib.sha256(data).hexdigest()

        write("model.safetensors", _safetensors_bytes(model_state, header))
        fault_point("ckpt_mid_write")  # model written, the rest not yet
        if ema_state is not None:
            write("ema.safetensors", _safetensors_bytes(ema_state, header))
        if training_state is not None:
            buf = io.BytesIO()
            torch.save(training_state, buf)
            write("state.pt", buf.getvalue())
        text = json.dumps({**meta, "sha256": sums}, indent=2, default=str).encode()
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


def find_weights(path: str | os.PathLike, which: str = "best") -> Path:
    """:func:`find_checkpoint`, where "best" falls back to "final" (a run that never evaluated has no best)."""
    try:
        return find_checkpoint(path, which)
    except CheckpointError:
        if which != "best":
            raise
        return find_checkpoint(path, "final")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptCheckpointError(path, "not valid JSON") from e


def read_meta(weights: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a weights file: ``meta.json`` next to it, else the safetensors header."""
    p = Path(weights)
    side = p.with_name("meta.json")
    if side.is_file():
        return _read_json(side)
    header = _safetensors_header(p) if p.suffix == ".safetensors" else None
    if header and "paperzoo" in header:
        return json.loads(header["paperzoo"])
    raise CheckpointError(f"{p} has no paperzoo metadata (no meta.json next to it, none in the header); "
                          "load plain state dicts with paperzoo.load_weights instead")


def read_weights(weights: str | os.PathLike, ema: bool = False) -> dict[str, Tensor]:
    """The state dict of a checkpoint (its EMA weights with ``ema=True``), verified against its digest."""
    from paperzoo.weights import read_state_dict

    p = Path(weights)
    if ema:
        e = p.with_name("ema.safetensors")
        if not e.is_file():
            raise CheckpointError(f"{p.parent} has no EMA weights (train with train.ema=true)")
        p = e
    return read_state_dict(p)


def load_training_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    """Load ``state.pt`` of a resumable checkpoint with ``weights_only=True``, checked against its sha256.

    Raises :class:`CorruptCheckpointError` (one line) when the file is missing, does not match the checksum
    in ``meta.json`` or cannot be read (a truncated zip archive in a checkpoint without checksums).
    """
    p = Path(ckpt) / "state.pt"
    if not p.is_file():
        raise CorruptCheckpointError(p, "missing")
    data = p.read_bytes()
    expected = _recorded_sha256(p)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CorruptCheckpointError(p)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors of a damaged file; our state.pt holds only plain objects
        raise CorruptCheckpointError(p, f"cannot be read: {_first_line(e)}") from e


# ---------------------------------------------------------------------------------------- integrity
def _first_line(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:160]}" if line else type(e).__name__


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _recorded_sha256(path: Path) -> str | None:
    """The sha256 that ``meta.json`` beside ``path`` records for it (None in checkpoints of format 1)."""
    side = path.with_name("meta.json")
    return _read_json(side).get("sha256", {}).get(path.name) if side.is_file() else None


def _safetensors_header(path: Path) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file, read from the header alone (so also of a truncated file);
    None if there is no readable header."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > 100 << 20:  # safetensors caps headers at 100 MB; more means garbage
                return None
            header = json.loads(f.read(n))
        return header.get("__metadata__") or {}
    except (OSError, ValueError, AttributeError):
        return None


def is_checkpoint_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a paperzoo weights file (meta.json beside it or our metadata in its header).

    Ours are written whole and renamed into place, so one that cannot be parsed is damaged, not foreign.
    """
    p = Path(path)
    return p.suffix == ".safetensors" and (p.with_name("meta.json").is_file()
                                           or "paperzoo" in (_safetensors_header(p) or {}))


def check_tensors_digest(path: str | os.PathLike, sd: dict[str, Tensor]) -> None:
    """Raise :class:`CorruptCheckpointError` if the tensors ``sd`` read from the safetensors file ``path`` do
    not match the digest its header records. Files without a digest (third-party, format 1) pass."""
    expected = (_safetensors_header(Path(path)) or {}).get(DIGEST_KEY)
    if expected is not None and tensors_digest(sd) != expected:
        raise CorruptCheckpointError(path)


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Check a checkpoint directory (every file) or one of its weights files against the recorded checksums.

    Files whose sha256 ``meta.json`` records are hashed and compared. A file without one (checkpoints of
    format 1, written before checksums, or a lone ``.safetensors`` file) is accepted if it can be read: a
    lone file is checked against the tensor digest in its header if it has one. Raises
    :class:`CheckpointError` if there is nothing at ``path``, :class:`CorruptCheckpointError` naming the
    first file that is missing, truncated or altered.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p}")
    d = p if p.is_dir() else p.parent
    side = d / "meta.json"
    if p.is_dir() and not side.is_file():
        raise CorruptCheckpointError(side, "missing")
    sums = (_read_json(side).get("sha256") or {}) if side.is_file() else {}
    if p.is_file():
        names = [p.name]
    else:
        names = sorted(sums) or [n for n in ("model.safetensors", "ema.safetensors", "state.pt")
                                 if n == "model.safetensors" or (d / n).exists()]
    for name in names:
        f = d / name
        if not f.is_file():
            raise CorruptCheckpointError(f, "missing")
        if name in sums:
            if _file_sha256(f) != sums[name]:
                raise CorruptCheckpointError(f)
        elif name == "state.pt":
            load_training_state(d)  # no checksum: reading it is the check
        else:
            from paperzoo.weights import read_state_dict

            read_state_dict(f)


def latest_intact_checkpoint(ckpt_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest resumable checkpoint (``step_*``) that passes :func:`verify_checkpoint`, and the newer ones
    skipped on the way, each with the reason (the error message). ``(None, skipped)`` if none is intact."""
    skipped: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(ckpt_dir)):
        try:
            verify_checkpoint(ckpt)
        except CheckpointError as e:
            skipped.append((ckpt, str(e)))
            continue
        return ckpt, skipped
    return None, skipped


# ----------------------------------------------------------------------------------- run directories
CLAIM_MARKER = ".claimed"  # {"pid", "host", "time"} of the process that claimed the run directory


def _read_claim(run_dir: Path) -> dict[str, Any] | None:
    try:
        claim = json.loads((run_dir / CLAIM_MARKER).read_bytes())
        return claim if isinstance(claim, dict) else None
    except (OSError, ValueError):
        return None


def _is_stale(claim: dict[str, Any]) -> bool:
    """A claim by a process of this host that no longer runs (killed before it wrote anything)."""
    if claim.get("host") != socket.gethostname() or not isinstance(claim.get("pid"), int):
        return False
    try:
        os.kill(claim["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _create_exclusive(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def _link_claim(run_dir: Path) -> bool:
    """Create ``.claimed`` with its content in one step (``os.link`` fails if it exists): True for exactly
    one of several racing processes, and a reader never sees it empty."""
    tmp = run_dir / f"{CLAIM_MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    try:
        os.link(tmp, run_dir / CLAIM_MARKER)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _try_claim(run_dir: Path) -> bool:
    try:
        os.mkdir(run_dir)
    except FileExistsError:
        if not run_dir.is_dir() or any(not p.name.startswith(CLAIM_MARKER) for p in run_dir.iterdir()):
            return False
    claim = _read_claim(run_dir)
    if (run_dir / CLAIM_MARKER).exists():
        if claim is None or not _is_stale(claim):
            return False
        # the claim of a run killed before it wrote anything: one racer takes it over; the token stays, so
        # that a racer that read the same stale claim a moment later cannot remove the new one
        if not _create_exclusive(run_dir / f"{CLAIM_MARKER}.{claim['pid']}.dead"):
            return False
        (run_dir / CLAIM_MARKER).unlink(missing_ok=True)
    return _link_claim(run_dir)


def claim_run_dir(run_dir: str | os.PathLike, *, unique: bool) -> Path:
    """Claim a new run directory atomically and return it.

    The directory is created with ``os.mkdir`` (create-exclusive) and marked with a ``.claimed`` file (pid,
    host, time) created with ``os.link``, which fails if the file exists: of several processes racing for
    one name exactly one wins, also on NFS. Besides a new directory, one may claim:

    * an existing **empty** directory (e.g. made by the user beforehand);
    * a directory holding nothing but the claim of a process of this host that no longer runs (a run killed
      before it wrote anything, e.g. while building its model).

    Anything else (a run's files, other files, a live claim) is never taken.

    Args:
        unique: the name was generated (a timestamp): if it is taken, try ``<name>-2``, ``<name>-3``, ...
            and return the first one claimed. Otherwise raise :class:`RunDirExistsError`.
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if _try_claim(run_dir):
        return run_dir
    if unique:
        for i in range(2, 1000):
            candidate = run_dir.with_name(f"{run_dir.name}-{i}")
            if _try_claim(candidate):
                return candidate
        raise RunDirExistsError(f"could not claim a run directory: {run_dir} and {run_dir.name}-2 ... -999 "
                                "are all taken")
    claim = _read_claim(run_dir)
    if claim is not None or (run_dir / "config.yaml").exists():
        holder = f": pid {claim.get('pid')} on {claim.get('host')} since {claim.get('time')}" if claim else ""
        raise RunDirExistsError(f"run directory {run_dir} already exists (another run holds it{holder}); "
                                f"resume it with --resume {run_dir} or choose another run.name")
    raise RunDirExistsError(f"run directory {run_dir} already exists and is not an empty directory; "
                            "choose another run.name")


def release_run_dir(run_dir: str | os.PathLike) -> None:
    """Undo :func:`claim_run_dir` of this process for a run that wrote nothing (e.g. building the model or
    the data failed): remove the directory if it holds only the claim. Anything else is left alone."""
    run_dir = Path(run_dir)
    try:
        files = list(run_dir.iterdir())
        if any(not p.name.startswith(CLAIM_MARKER) for p in files) or (_read_claim(run_dir) or {}).get(
                "pid") != os.getpid():
            return
        for p in files:
            p.unlink()
        run_dir.rmdir()
    except OSError:  # gone already, or written into meanwhile: keep it
        pass
