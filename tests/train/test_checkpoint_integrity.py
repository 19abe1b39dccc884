"""Checkpoint integrity (sha256 in meta.json, a tensor digest in the safetensors header) and atomic claiming of
run directories (issue 13, section 4: "nothing lost")."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import paperzoo
from paperzoo.train.checkpoint import (
    CLAIM_MARKER,
    CheckpointError,
    CorruptCheckpointError,
    RunDirExistsError,
    claim_run_dir,
    latest_intact_checkpoint,
    load_training_state,
    read_meta,
    read_weights,
    release_run_dir,
    save_checkpoint,
    tensors_digest,
    verify_checkpoint,
)
from paperzoo.weights import WeightLoadError, read_state_dict

META = {"task": "image_classification"}


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(4, 8, generator=g), "fc.bias": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(seed), "half": torch.randn(3, generator=g).bfloat16()}


def _save(path: Path, seed: int = 0) -> Path:
    return save_checkpoint(path, _state(seed), META, ema_state=_state(seed + 100),
                           training_state={"step": seed, "optimizer": {"m": torch.ones(3) * seed}})


def _flip_bit(path: Path, offset: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ------------------------------------------------------------------------------------------ checksums
def test_meta_records_the_sha256_of_every_file_and_the_header_a_tensor_digest(tmp_path):
    ckpt = _save(tmp_path / "step_00000002")
    meta = json.loads((ckpt / "meta.json").read_text())
    assert set(meta["sha256"]) == {"model.safetensors", "ema.safetensors", "state.pt"}
    # the header (written before the checksums are known) carries the rest of the metadata and the digest,
    # which travel with a lone copy of the weights
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((ckpt / "model.safetensors").read_bytes())
    assert read_meta(lone) == {k: v for k, v in meta.items() if k != "sha256"}
    assert torch.equal(read_state_dict(lone)["fc.weight"], _state(0)["fc.weight"])


def test_tensors_digest_depends_on_names_dtypes_shapes_and_values_not_order():
    sd = _state(0)
    d = tensors_digest(sd)
    assert tensors_digest(dict(reversed(list(sd.items())))) == d
    assert tensors_digest({**sd, "fc.bias": sd["fc.bias"].double()}) != d
    assert tensors_digest({**sd, "fc.weight": sd["fc.weight"].reshape(8, 4)}) != d
    assert tensors_digest({("x" if k == "fc.bias" else k): v for k, v in sd.items()}) != d
    changed = sd["fc.bias"].clone()
    changed[0] = torch.nextafter(changed[0], torch.tensor(1e9))  # one ulp
    assert tensors_digest({**sd, "fc.bias": changed}) != d


def test_a_bit_flip_in_the_weights_is_detected_by_read_weights_load_weights_and_verify(tmp_path):
    ckpt = _save(tmp_path / "step_00000002")
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((ckpt / "model.safetensors").read_bytes())
    _flip_bit(ckpt / "model.safetensors")
    _flip_bit(lone)
    msg = r"model\.safetensors is truncated or corrupt \(sha256 mismatch\)"
    with pytest.raises(CorruptCheckpointError, match=msg):
        read_weights(ckpt / "model.safetensors")
    with pytest.raises(CorruptCheckpointError, match=msg):
        verify_checkpoint(ckpt)
    with pytest.raises(CorruptCheckpointError, match=msg):
        verify_checkpoint(ckpt / "model.safetensors")
    with pytest.raises(CorruptCheckpointError, match=r"lone\.safetensors is truncated or corrupt"):
        read_state_dict(lone)  # no meta.json: the digest in the header catches it
    model = torch.nn.Module()
    model.fc = torch.nn.Linear(8, 4)
    with pytest.raises(CorruptCheckpointError):
        paperzoo.load_weights(model, ckpt / "model.safetensors")
    read_weights(ckpt / "model.safetensors", ema=True)  # the EMA file is intact and still loads
    _flip_bit(ckpt / "ema.safetensors", offset=-1)
    with pytest.raises(CorruptCheckpointError, match=r"ema\.safetensors is truncated or corrupt"):
        read_weights(ckpt / "model.safetensors", ema=True)


def test_truncated_weights_and_state_give_a_one_line_error_naming_the_file(tmp_path):
    ckpt = _save(tmp_path / "step_00000002")
    _truncate(ckpt / "state.pt")
    with pytest.raises(CorruptCheckpointError) as e:
        load_training_state(ckpt)
    assert str(e.value) == f"{ckpt / 'state.pt'} is truncated or corrupt (sha256 mismatch)"
    _truncate(ckpt / "model.safetensors")
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors is truncated or corrupt \(cannot be "):
        read_weights(ckpt / "model.safetensors")
    (ckpt / "ema.safetensors").unlink()
    with pytest.raises(CorruptCheckpointError, match=r"ema\.safetensors is missing"):
        verify_checkpoint(ckpt)
    (ckpt / "meta.json").write_text('{"format": 2, "sha2')
    with pytest.raises(CorruptCheckpointError, match=r"meta\.json is truncated or corrupt \(not valid JSON\)"):
        verify_checkpoint(ckpt)


def test_latest_intact_checkpoint_falls_back_past_corrupt_newer_ones(tmp_path):
    ckpts = [_save(tmp_path / f"step_{s:08d}", seed=s) for s in (2, 4, 6)]
    assert latest_intact_checkpoint(tmp_path) == (ckpts[2], [])
    _truncate(ckpts[2] / "state.pt")
    _flip_bit(ckpts[1] / "model.safetensors")
    found, skipped = latest_intact_checkpoint(tmp_path)
    assert found == ckpts[0] and load_training_state(found)["step"] == 2
    assert [(p, "state.pt" in why) for p, why in skipped] == [(ckpts[2], True)] + [(ckpts[1], False)]
    assert all("truncated or corrupt (sha256 mismatch)" in why for _, why in skipped)
    _flip_bit(ckpts[0] / "ema.safetensors")
    assert latest_intact_checkpoint(tmp_path)[0] is None
    assert latest_intact_checkpoint(tmp_path / "nothing") == (None, [])


# ------------------------------------------------------------------------------ older and foreign files
def _save_format_1(path: Path, seed: int) -> Path:
    """A checkpoint as written before checksums: no "sha256" in meta.json, no digest in the header."""
    path.mkdir(parents=True)
    meta = {"format": 1, **META}
    save_file(_state(seed), str(path / "model.safetensors"), metadata={"paperzoo": json.dumps(meta)})
    torch.save({"step": seed}, path / "state.pt")
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_checkpoints_without_checksums_load_and_verify_as_before(tmp_path):
    old = _save_format_1(tmp_path / "step_00000002", seed=2)
    verify_checkpoint(old)
    assert torch.equal(read_weights(old / "model.safetensors")["fc.weight"], _state(2)["fc.weight"])
    assert load_training_state(old)["step"] == 2
    assert latest_intact_checkpoint(tmp_path) == (old, [])
    # without checksums a truncated file is still caught, because reading it is the check
    newer = _save_format_1(tmp_path / "step_00000004", seed=4)
    _truncate(newer / "state.pt")
    found, skipped = latest_intact_checkpoint(tmp_path)
    assert found == old and skipped[0][0] == newer and "cannot be read" in skipped[0][1]


def test_third_party_state_dicts_load_unchecked(tmp_path):
    sd = {"weight": torch.randn(3, 2)}
    torch.save({"state_dict": sd}, tmp_path / "tv.pth")
    save_file(sd, str(tmp_path / "timm.safetensors"), metadata={"format": "pt"})
    assert torch.equal(read_state_dict(tmp_path / "tv.pth")["weight"], sd["weight"])
    assert torch.equal(read_state_dict(tmp_path / "timm.safetensors")["weight"], sd["weight"])
    _truncate(tmp_path / "timm.safetensors")  # not ours: a load error, not a corrupt checkpoint
    with pytest.raises(WeightLoadError, match="could not read weights"):
        read_state_dict(tmp_path / "timm.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        verify_checkpoint(tmp_path / "missing")


# ---------------------------------------------------------------------------------- run directories
def test_claim_run_dir_takes_new_or_empty_directories_only(tmp_path):
    run = claim_run_dir(tmp_path / "runs" / "a", unique=False)  # parents are created
    assert run == tmp_path / "runs" / "a" and [p.name for p in run.iterdir()] == [CLAIM_MARKER]
    with pytest.raises(RunDirExistsError, match=r"already exists \(another run holds it: pid \d+ on .*\); "
                                                r"resume it with --resume .*runs/a or choose another run\.name"):
        claim_run_dir(run, unique=False)
    (tmp_path / "runs" / "empty").mkdir()  # made by the user beforehand
    assert claim_run_dir(tmp_path / "runs" / "empty", unique=False) == tmp_path / "runs" / "empty"
    (tmp_path / "runs" / "full").mkdir()
    (tmp_path / "runs" / "full" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirExistsError, match="not an empty directory"):
        claim_run_dir(tmp_path / "runs" / "full", unique=False)
    assert claim_run_dir(tmp_path / "runs" / "full", unique=True) == tmp_path / "runs" / "full-2"
    assert claim_run_dir(tmp_path / "runs" / "full", unique=True) == tmp_path / "runs" / "full-3"


def test_release_run_dir_removes_only_an_untouched_claim_of_this_process(tmp_path):
    run = claim_run_dir(tmp_path / "a", unique=False)
    release_run_dir(run)
    assert not run.exists()
    run = claim_run_dir(tmp_path / "a", unique=False)
    (run / "config.yaml").write_text("x: 1")
    release_run_dir(run)
    assert (run / "config.yaml").is_file()
    other = claim_run_dir(tmp_path / "b", unique=False)
    (other / CLAIM_MARKER).write_text(json.dumps({"pid": -1}))  # claimed by another process
    release_run_dir(other)
    assert other.is_dir()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def _write_claim(run_dir: Path, pid: int, host: str | None = None) -> None:
    run_dir.mkdir()
    claim = {"pid": pid, "host": host or socket.gethostname(), "time": "2024-01-01T00:00:00+0000"}
    (run_dir / CLAIM_MARKER).write_text(json.dumps(claim))


def test_the_claim_of_a_killed_run_that_wrote_nothing_is_taken_over(tmp_path):
    dead = _dead_pid()
    _write_claim(tmp_path / "killed", dead)
    assert claim_run_dir(tmp_path / "killed", unique=False) == tmp_path / "killed"
    assert json.loads((tmp_path / "killed" / CLAIM_MARKER).read_text())["pid"] == os.getpid()
    _write_claim(tmp_path / "elsewhere", dead, host="another-host")  # its liveness cannot be checked from here
    with pytest.raises(RunDirExistsError, match=f"pid {dead} on another-host"):
        claim_run_dir(tmp_path / "elsewhere", unique=False)
    _write_claim(tmp_path / "wrote", dead)
    (tmp_path / "wrote" / "config.yaml").write_text("x: 1")  # a killed run with files: resume it instead
    with pytest.raises(RunDirExistsError, match="--resume"):
        claim_run_dir(tmp_path / "wrote", unique=False)


def _claim_after_barrier(barrier, results, run_dir: str, unique: bool) -> None:
    barrier.wait()
    try:
        results.put(str(claim_run_dir(Path(run_dir), unique=unique)))
    except RunDirExistsError as e:
        results.put(f"error: {e}")


def _race(run_dir: Path, unique: bool, n: int = 6) -> list[str]:
    """``n`` processes released together by a barrier, all claiming ``run_dir``."""
    ctx = multiprocessing.get_context("fork")  # fast start; the child only runs os calls
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_claim_after_barrier, args=(barrier, results, str(run_dir), unique))
             for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


def test_processes_racing_for_one_run_name_exactly_one_wins(tmp_path):
    for attempt in range(3):
        out = _race(tmp_path / f"run{attempt}", unique=False)
        assert out.count(str(tmp_path / f"run{attempt}")) == 1
        assert sum(o.startswith("error: ") and "already exists" in o for o in out) == len(out) - 1


def test_processes_racing_for_the_claim_of_a_killed_run_exactly_one_wins(tmp_path):
    for attempt in range(3):
        _write_claim(tmp_path / f"run{attempt}", _dead_pid())
        out = _race(tmp_path / f"run{attempt}", unique=False)
        assert out.count(str(tmp_path / f"run{attempt}")) == 1, out


def test_processes_racing_for_a_generated_name_each_get_their_own(tmp_path):
    out = _race(tmp_path / "resnet-20240101-120000", unique=True)
    assert len(set(out)) == len(out) and not any(o.startswith("error") for o in out)
    assert all(Path(o).is_dir() and (Path(o) / CLAIM_MARKER).is_file() for o in out)
    assert len({json.loads((Path(o) / CLAIM_MARKER).read_text())["pid"] for o in out}) == len(out)


def test_evaluating_a_bit_flipped_checkpoint_fails_with_one_line_and_status_2(tmp_path, capsys):
    from paperzoo.cli import main
    from paperzoo.registry import create_model
    from paperzoo.train.evaluate import load_checkpoint

    args = {"num_classes": 4, "in_chans": 1, "small_input": True, "width": 4}
    model = create_model("resnet18", **args)
    meta = {"task": "image_classification", "model": {"name": "resnet18", "args": args}}
    final = save_checkpoint(tmp_path / "run" / "final", model.state_dict(), meta)
    load_checkpoint(tmp_path / "run")  # intact: loads
    _flip_bit(final / "model.safetensors", offset=-100)  # inside the last tensor's values
    with pytest.raises(CorruptCheckpointError, match="sha256 mismatch"):
        load_checkpoint(tmp_path / "run")
    assert main(["eval", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"paperzoo eval: error: {final / 'model.safetensors'} is truncated or corrupt (sha256 mismatch)"
