"""Evaluation, TTA, ensembles, weight averaging and prediction on a tiny trained run."""

import io
import json
import sys

import pytest
import torch
from PIL import Image

from paperzoo.cli import main
from paperzoo.train.api import train
from paperzoo.train.checkpoint import read_meta, read_weights, save_checkpoint
from paperzoo.train.classification import make_synthetic
from paperzoo.train.evaluate import (
    EvalProgress,
    average_checkpoints,
    classification_metrics,
    ensemble,
    evaluate,
    load_checkpoint,
    predict_files,
    predict_probs,
    tta_views,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = train({
        "model": {"name": "resnet18", "args": {"small_input": True, "width": 4}},
        "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 64, "batch_size": 16},
        "optim": {"lr": 0.05}, "train": {"epochs": 2, "ema": True, "ema_decay": 0.9, "threads": 1},
        "run": {"out_dir": str(out), "name": "tiny", "progress": "off", "tensorboard": False, "plots": False}})
    assert result.status == "done"
    return result


def test_metrics_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    probs = torch.full((6, 3), 0.1).scatter_(1, pred[:, None], 0.8)
    m = classification_metrics(probs, labels, ["a", "b", "c"])
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows: true class, columns: predicted
    assert m["accuracy"] == pytest.approx(4 / 6) and m["top5"] == 1.0  # top-k clipped to K=3 classes
    assert [c["accuracy"] for c in m["per_class"]] == pytest.approx([0.5, 1.0, 0.5])
    assert [c["precision"] for c in m["per_class"]] == pytest.approx([0.5, 2 / 3, 1.0])
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["nll"] == pytest.approx(-(4 * torch.tensor(0.8).log() + 2 * torch.tensor(0.1).log()).item() / 6)


def test_tta_views():
    x = torch.rand(2, 1, 28, 28)
    assert len(tta_views(x)) == 1 and len(tta_views(x, ["flip"])) == 2 and len(tta_views(x, ["shift"])) == 5
    views = tta_views(x, ["flip", "shift"])
    assert len(views) == 10 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[5], x.flip(-1))
    # the first shift moves content down by 2 px (28 / 14), with zeros entering at the top
    assert torch.equal(views[1][..., 2:, :], x[..., :-2, :]) and not views[1][..., :2, :].any()
    with pytest.raises(ValueError, match="valid: flip, shift"):
        tta_views(x, ["rotate"])


def test_evaluate_matches_the_trainer_and_writes_the_report(run, tmp_path):
    res = evaluate(run.run_dir, out_dir=tmp_path / "eval")
    m = res.metrics
    assert m["n"] == 64 and m["accuracy"] == pytest.approx(run.metrics["test_acc"], abs=1e-9)
    assert m["top5"] == 1.0 and 0 <= m["macro_f1"] <= 1
    assert {p.name for p in (tmp_path / "eval").iterdir()} == {"metrics.json", "per_class.csv", "confusion.csv",
                                                                "confusion.png"}
    rows = (tmp_path / "eval" / "confusion.csv").read_text().splitlines()
    assert rows[0].split(",")[1:] == ["class0", "class1", "class2", "class3"]
    assert sum(sum(map(int, r.split(",")[1:])) for r in rows[1:]) == 64
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    ema = evaluate(run.run_dir, ema=True)
    assert ema.metrics["accuracy"] == pytest.approx(run.metrics["test_acc_ema"], abs=1e-9)
    assert evaluate(run.run_dir, which="best").metrics["accuracy"] == pytest.approx(run.best["value"])
    tta = evaluate(run.run_dir, tta="flip,shift", limit=16)
    assert tta.metrics["n"] == 16 and tta.metrics["tta"] == ["flip", "shift"]


def _random_checkpoint(run, path, name="resnet34", classes=None):
    """A differently-initialised checkpoint with the run's metadata (another architecture if asked)."""
    from paperzoo.train.classification import build_model_from_meta

    meta = read_meta(run.run_dir / "final" / "model.safetensors")
    meta["model"] = {**meta["model"], "name": name}
    meta["classes"] = classes or meta["classes"]
    torch.manual_seed(1)
    return save_checkpoint(path, build_model_from_meta(meta).state_dict(), meta)


def test_ensemble(run, tmp_path):
    single = evaluate(run.run_dir).metrics
    twice = ensemble([run.run_dir, run.run_dir]).metrics
    assert twice["accuracy"] == single["accuracy"] and twice["nll"] == pytest.approx(single["nll"], rel=1e-5)
    other = _random_checkpoint(run, tmp_path / "r34")  # a different architecture
    mixed = ensemble([run.run_dir, other], weights=[1.0, 0.0]).metrics  # zero weight: the first model alone
    assert mixed["accuracy"] == single["accuracy"] and mixed["nll"] == pytest.approx(single["nll"], rel=1e-5)
    assert ensemble([run.run_dir, other], weights=[1, 1]).metrics["nll"] != pytest.approx(single["nll"])
    with pytest.raises(ValueError, match="one non-negative weight per checkpoint"):
        ensemble([run.run_dir, other], weights=[1.0])
    bad = _random_checkpoint(run, tmp_path / "bad", name="resnet18", classes=["w", "x", "y", "z"])
    with pytest.raises(ValueError, match="trained on classes"):
        ensemble([run.run_dir, bad])


def test_ensemble_reports_each_members_own_score_beside_the_ensembles(run, tmp_path, capsys):
    other = _random_checkpoint(run, tmp_path / "r34")
    res = ensemble([run.run_dir, other], weights=[2, 1]).metrics
    alone = [evaluate(p).metrics for p in (run.run_dir, other)]
    assert [m["weight"] for m in res["members"]] == [2, 1]
    for member, single in zip(res["members"], alone):
        assert member["checkpoint"] == single["checkpoints"][0]
        assert {k: member[k] for k in ("accuracy", "top5", "macro_f1", "nll")} == pytest.approx(
            {k: single[k] for k in ("accuracy", "top5", "macro_f1", "nll")})
    assert "members" not in alone[0]  # a single model has no members table
    capsys.readouterr()
    assert main(["ensemble", str(run.run_dir), str(other), "--out", str(tmp_path / "ens")]) == 0
    table = capsys.readouterr().out.split("\n\n")[0].splitlines()
    assert table[0].split() == ["model", "weight", "accuracy", "top5", "macro_f1", "nll"]
    assert [row.split()[0] for row in table[2:5]] == [single["checkpoints"][0] for single in alone] + ["ensemble"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eval_progress_is_one_rewritten_line_on_a_terminal_and_silent_elsewhere(run, monkeypatch, capsys):
    term = _Terminal()
    bar = EvalProgress(40, batch_size=16, stream=term)
    for n in (16, 16, 8):
        bar.update(n)
    bar.close()
    out = term.getvalue()
    assert "\n" not in out and out.count("\r") == 3 + 2 and out.endswith("\r")  # rewritten in place, then erased
    assert "eval 16/40 images (40 %)" in out and "eval 40/40 images (100 %), ETA 0 s" in out
    pipe = io.StringIO()  # not a terminal: CI logs and files get only the results
    EvalProgress(40, batch_size=16, stream=pipe).update(16)
    single = _Terminal()
    EvalProgress(16, batch_size=16, stream=single).update(16)  # one batch: nothing to follow
    assert pipe.getvalue() == "" and single.getvalue() == ""
    monkeypatch.setattr("sys.stderr", _Terminal())
    evaluate(run.run_dir, batch_size=16, progress=True)
    assert "eval 64/64 images" in sys.stderr.getvalue()
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert main(["eval", str(run.run_dir), "--batch-size", "16", "--quiet", "--out", str(run.run_dir / "q")]) == 0
    assert sys.stderr.getvalue() == ""


def test_average_checkpoints(run, tmp_path):
    final = read_weights(run.run_dir / "final" / "model.safetensors")
    same = average_checkpoints([run.run_dir, run.run_dir], tmp_path / "same")
    assert all(torch.equal(read_weights(same / "model.safetensors")[k], v) for k, v in final.items())
    other = _random_checkpoint(run, tmp_path / "other", name="resnet18")
    avg = read_weights(average_checkpoints([run.run_dir, other], tmp_path / "avg") / "model.safetensors")
    o = read_weights(other / "model.safetensors")
    k = "layer1.0.conv1.weight"
    torch.testing.assert_close(avg[k], (final[k] + o[k]) / 2)
    assert torch.equal(avg["bn1.num_batches_tracked"], final["bn1.num_batches_tracked"])
    assert read_meta(tmp_path / "avg" / "model.safetensors")["averaged_from"]
    assert evaluate(tmp_path / "avg").metrics["n"] == 64  # a usable checkpoint
    with pytest.raises(ValueError, match="different architectures"):
        average_checkpoints([run.run_dir, _random_checkpoint(run, tmp_path / "r34")], tmp_path / "x")


def test_predict_files(run, tmp_path):
    ds = make_synthetic("test", 64, 8)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(ds.images[i, 0].numpy(), mode="L").save(paths[-1])
    preds = predict_files(run.run_dir, paths, topk=3)
    m = load_checkpoint(run.run_dir)
    probs = predict_probs(m.model, ds.images[:3].float() / 255, m.meta)
    for i, p in enumerate(preds):
        assert len(p["top"]) == 3 and p["image"] == str(paths[i])
        assert p["top"][0]["class"] == m.classes[int(probs[i].argmax())]
        assert p["top"][0]["prob"] == pytest.approx(probs[i].max().item(), abs=1e-6)
        assert [t["prob"] for t in p["top"]] == sorted((t["prob"] for t in p["top"]), reverse=True)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = train({
        "model": {"name": "resnet18", "args": {"small_input": True, "width": 4}},
        "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 64, "batch_size": 16,
                 "eval_batch_size": 64},
        "optim": {"lr": 0.05}, "train": {"epochs": 1, "threads": 1, "precision": "bf16", "channels_last": True},
        "run": {"out_dir": str(out), "name": "bf16", "progress": "off", "tensorboard": False, "plots": False}})
    assert result.status == "done"
    return result


def test_evaluate_runs_a_bf16_checkpoint_as_trained_and_fp32_on_request(bf16_run):
    """precision=auto: bf16 autocast + channels_last like the trainer's own evaluation (same probabilities);
    fp32 differs from it only by bf16 rounding."""
    auto = evaluate(bf16_run.run_dir, precision="auto", limit=64, fused=False)
    fp32 = evaluate(bf16_run.run_dir, precision="fp32", limit=64, fused=False)
    assert auto.metrics["accuracy"] == pytest.approx(bf16_run.metrics["test_acc"])
    # the default folds the BatchNorms first: the same model up to rounding, so at most an image or two moves
    fused = evaluate(bf16_run.run_dir, precision="auto", limit=64)
    assert fused.metrics["fused"] and not auto.metrics["fused"]
    assert abs(fused.metrics["accuracy"] - auto.metrics["accuracy"]) <= 2 / 64
    assert auto.metrics["precision"] == "auto" and fp32.metrics["precision"] == "fp32"
    m = load_checkpoint(bf16_run.run_dir)
    x = torch.rand(8, 1, 8, 8)
    p_auto, p_bf16, p_32 = (predict_probs(m.model, x, m.meta, precision=p) for p in ("auto", "bf16", "fp32"))
    assert torch.equal(p_auto, p_bf16) and not torch.equal(p_auto, p_32)
    assert torch.allclose(p_auto, p_32, atol=0.05)
    with pytest.raises(ValueError, match="valid: auto, fp32, bf16"):
        predict_probs(m.model, x, m.meta, precision="fp16")
