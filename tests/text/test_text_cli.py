"""End to end through the CLI on tiny models: translate train -> eval -> translate, resume, lm train -> sample.

Every run is a few optimizer steps of a model with d_model=16 on one thread: seconds, not a quality test.
"""

import json

import pytest
import torch

from paperzoo.cli import main
from paperzoo.text.tasks import TranslationTask, load_text_checkpoint
from paperzoo.text.tokenizers import CharTokenizer, TokenizerMismatchError
from paperzoo.train import checkpoint as ckpt

TINY = ["model.name=transformer_tiny", "model.args={N_enc: 1, N_dec: 1, d_model: 16, d_ff: 32, h: 2}",
        "data.n_train=96", "data.n_val=8", "data.n_test=8", "data.batch_size=16", "data.val_decode=8",
        "decode.max_len=24", "train.epochs=2", "train.threads=1", "train.log_every=2", "optim.lr=0.003",
        "run.tensorboard=false", "run.plots=false", "run.progress=off"]


def _train(tmp_path, name, *extra):
    return main(["translate", "train", "translate_en_ko", "--out-dir", str(tmp_path), "--name", name,
                 "--set", *TINY, *extra])


def test_translate_train_eval_translate(tmp_path, capsys):
    assert _train(tmp_path, "a") == 0
    run = tmp_path / "a"
    assert (run / "final" / "model.safetensors").is_file() and (run / "metrics.jsonl").is_file()
    assert json.loads((run / "status.json").read_text())["status"] == "done"
    meta = json.loads((run / "final" / "meta.json").read_text())
    assert meta["task"] == "translation" and meta["tokenizers"]["tgt"]["kind"] == "char"
    capsys.readouterr()
    assert main(["translate", "eval", str(run), "--limit", "4", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["sentences"] == 4 and 0 <= report["bleu"] <= 100
    assert len((tmp_path / "ev" / "hypotheses.tsv").read_text().splitlines()) == 4
    capsys.readouterr()
    assert main(["translate", "translate", str(run), "Thursday, August 12, 2021", "seven",
                 "--method", "beam", "--beam-size", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_translate_resume_continues_the_run(tmp_path, monkeypatch):
    """Ctrl-C after optimizer step 7 of 12 saves a resumable checkpoint; --resume finishes the same run."""
    monkeypatch.setenv("PAPERZOO_FAULT", "step:7:INT")
    monkeypatch.setattr(ckpt, "_FAULT_COUNTS", {})
    assert _train(tmp_path, "cut") == 130
    status = json.loads((tmp_path / "cut" / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] == 7
    fingerprints = ckpt.load_training_state(ckpt.latest_checkpoint(tmp_path / "cut" / "checkpoints"))["task"]
    monkeypatch.delenv("PAPERZOO_FAULT")
    assert main(["translate", "train", "--resume", str(tmp_path / "cut")]) == 0
    status = json.loads((tmp_path / "cut" / "status.json").read_text())
    assert status["status"] == "done" and status["step"] == 12
    steps = [r["step"] for r in map(json.loads, (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines())]
    assert steps == sorted(steps) and steps[-1] == 12
    last = ckpt.load_training_state(ckpt.latest_checkpoint(tmp_path / "cut" / "checkpoints"))["task"]
    assert last["tokenizers"] == fingerprints["tokenizers"]  # resumed with the run's own tokenizers


@pytest.mark.slow
@pytest.mark.parametrize("command", ["translate", "lm"])
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path, command):
    """As a user runs it: separate CLI processes, killed with SIGKILL right after the checkpoint that follows the
    end-of-epoch evaluation, then half-way through writing a checkpoint; resumed each time with --resume. The
    final and best weights must be bitwise equal to the uninterrupted run's (tests/text/test_text_resume.py
    covers more points in-process). Translation with a shared vocabulary: see that file for why separate
    embeddings are not yet initialised deterministically."""
    import os
    import signal
    import subprocess
    import sys

    def cli(*args, fault=None):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("PAPERZOO_FAULT", None)
        if fault:
            env["PAPERZOO_FAULT"] = fault
        return subprocess.run([sys.executable, "-m", "paperzoo", command, "train", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    if command == "translate":
        common = ["translate_en_ko", "--out-dir", str(tmp_path), "--set", *TINY,
                  "model.args={N_enc: 1, N_dec: 1, d_model: 16, d_ff: 32, h: 2, P_drop: 0.1, share_embeddings: true}",
                  "tokenizer.kind=char", "tokenizer.tgt_kind=null", "tokenizer.shared=true"]
    else:
        text = tmp_path / "corpus.txt"
        text.write_text("".join(f"A fortune number {i} for you.\n%\n" for i in range(80)))
        common = ["lm_fortunes", "--out-dir", str(tmp_path), "--set", f"data.train={text}", "data.block_size=32",
                  "model.args={n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.1}", "data.batch_size=8",
                  "train.epochs=2", "train.eval_every=1", "train.threads=1", "run.tensorboard=false",
                  "run.plots=false", "run.progress=off"]
    assert cli(*common, "--name", "full").returncode == 0
    cut = tmp_path / "cut"
    assert cli(*common, "--name", "cut", fault="after_checkpoint:1").returncode == -signal.SIGKILL
    state = ckpt.load_training_state(ckpt.latest_checkpoint(cut / "checkpoints"))
    assert state["epoch"] == 1 and not state["in_epoch"]  # the checkpoint written after the first evaluation
    # at the end of epoch 2 a new best (if any) is written first, then the resumable checkpoint: killed half-way
    assert cli("--resume", str(cut), fault="ckpt_mid_write:1").returncode == -signal.SIGKILL
    r = cli("--resume", str(cut))
    assert r.returncode == 0, r.stderr
    for which in ("final", "best"):
        a = ckpt.read_weights(tmp_path / "full" / which / "model.safetensors")
        b = ckpt.read_weights(cut / which / "model.safetensors")
        assert a.keys() == b.keys()
        diff = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
        assert not diff, f"{which} weights differ after resume (max abs diff): {diff}"


def test_tokenizer_mismatch_errors(tmp_path):
    assert _train(tmp_path, "m", "train.epochs=1") == 0
    ck = load_text_checkpoint(tmp_path / "m")
    other = CharTokenizer.train(["abc"])
    with pytest.raises(TokenizerMismatchError, match="does not match"):
        load_text_checkpoint(tmp_path / "m", tokenizer=other)
    last = ckpt.latest_checkpoint(tmp_path / "m" / "checkpoints")
    state = ckpt.load_training_state(last)["task"]
    from paperzoo.text.config import text_config_from_dict

    cfg = text_config_from_dict({"data": ck.meta["data"]})
    task = TranslationTask(cfg, tokenizers=(ck.tokenizers["src"], other))
    with pytest.raises(TokenizerMismatchError, match="cannot resume"):
        task.load_state_dict(state)


def test_bad_config_is_one_clear_line(tmp_path, capsys):
    assert main(["translate", "train", "translate_en_ko", "--set", "data.lang=es"]) != 0
    assert "data.lang" in capsys.readouterr().err


def test_lm_train_sample_eval(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"A fortune number {i} for you.\n%\n" for i in range(80)))
    assert main(["lm", "train", "lm_fortunes", "--out-dir", str(tmp_path), "--name", "lm", "--set",
                 f"data.train={text}", "model.args={n_layer: 1, n_head: 2, n_embd: 16}", "data.block_size=32",
                 "data.batch_size=8", "train.epochs=2", "train.eval_every=1", "run.tensorboard=false",
                 "run.plots=false", "run.progress=off"]) == 0
    out = capsys.readouterr().out
    assert "val_ppl" in out
    assert main(["lm", "sample", str(tmp_path / "lm"), "--prompt", "A ", "--num", "2", "--max-new", "20"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2 and "validation perplexity" in out
    assert main(["lm", "eval", str(tmp_path / "lm")]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["translate", "eval", str(tmp_path / "lm")]) != 0  # an LM checkpoint is refused clearly
