"""label_smoothing_calibration and focal_imbalanced: ECE against hand-worked values, the smoothing and focal
formulas, the imbalanced subset, and the smoke runs' numbers checked against the runs they trained."""

import json

import pytest
import torch
import torch.nn.functional as F

from paperzoo.experiments import ExperimentContext, run_experiment
from paperzoo.experiments.calibration import (
    expected_calibration_error,
    imbalanced_subset,
    reliability_bins,
    run_probs,
    smoothed_targets,
    smoothing_formula_check,
)
from paperzoo.train.checkpoint import find_checkpoint, read_meta
from paperzoo.train.losses import FocalLoss


def _ece_by_loop(probs, labels, n_bins=15):
    """Guo et al. Eq. 3 written as a loop over bins and predictions (the reference)."""
    total = 0.0
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        members = [i for i in range(len(labels)) if lo < probs[i].max().item() <= hi]
        if members:
            conf = sum(probs[i].max().item() for i in members) / len(members)
            acc = sum(int(probs[i].argmax().item() == labels[i].item()) for i in members) / len(members)
            total += len(members) / len(labels) * abs(acc - conf)
    return total


def test_ece_equals_hand_computation_on_fixed_predictions():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.62, 0.3, 0.08], [0.35, 0.33, 0.32]],
                         dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2])
    # bins: 0.9 -> (13/15, 14/15] holds two predictions, one right: |0.5 - 0.9| * 2/4 = 0.2;
    # 0.62 -> (9/15, 10/15], right: |1 - 0.62| / 4 = 0.095; 0.35 -> (5/15, 6/15], wrong: 0.35 / 4 = 0.0875
    assert expected_calibration_error(probs, labels) == pytest.approx(0.2 + 0.095 + 0.0875, abs=1e-12)
    b = reliability_bins(probs, labels)
    assert b["count"].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0]
    assert b["accuracy"][13].item() == 0.5 and b["confidence"][13].item() == pytest.approx(0.9)


def test_ece_equals_the_loop_reference_on_random_predictions():
    g = torch.Generator().manual_seed(3)
    probs = (torch.randn(300, 10, generator=g) * 2).softmax(-1)
    labels = torch.randint(10, (300,), generator=g)
    assert expected_calibration_error(probs, labels) == pytest.approx(_ece_by_loop(probs, labels), abs=1e-9)


def test_predictions_right_as_often_as_their_confidence_have_zero_ece():
    probs = torch.tensor([[0.7, 0.3]] * 10)
    labels = torch.tensor([0] * 7 + [1] * 3)  # 70 % right at confidence 0.7
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-7)


def test_smoothed_targets_follow_inception_v3_formula():
    q = smoothed_targets(torch.tensor([2, 0]), 10, 0.1)
    assert q[0, 2].item() == pytest.approx(0.9 + 0.01) and q[0, 0].item() == pytest.approx(0.01)
    assert torch.allclose(q.sum(1), torch.ones(2))
    assert smoothing_formula_check(0.1, 10) < 1e-5
    assert smoothing_formula_check(0.2, 4) < 1e-5


def test_focal_loss_is_cross_entropy_at_gamma_0_and_scales_by_one_minus_p_to_gamma():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(32, 10, generator=g) * 2, torch.randint(10, (32,), generator=g)
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, y), F.cross_entropy(logits, y), atol=1e-6)
    ce = F.cross_entropy(logits, y, reduction="none")
    p_t = (-ce).exp()
    assert torch.allclose(FocalLoss(gamma=2.0, reduction="none")(logits, y), (1 - p_t) ** 2 * ce, atol=1e-6)


def test_imbalanced_subset_keeps_the_fraction_of_rare_classes_only():
    labels = torch.arange(4).repeat_interleave(100)[torch.randperm(400, generator=torch.Generator().manual_seed(1))]
    idx = imbalanced_subset(labels, rare=(1, 3), keep_fraction=0.05, per_class=60, seed=0)
    assert torch.bincount(labels[idx], minlength=4).tolist() == [60, 3, 60, 3]
    assert idx.unique().numel() == idx.numel()
    with pytest.raises(ValueError, match="keep_fraction"):
        imbalanced_subset(labels, rare=(1,), keep_fraction=0.0)


def _report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def test_label_smoothing_smoke_reports_the_ece_of_its_own_runs(tmp_path):
    run_dir = run_experiment("label_smoothing_calibration", out_dir=tmp_path, smoke=True, threads=1)
    numbers = _report(run_dir)["numbers"]
    assert (run_dir / "reliability.png").stat().st_size > 5000
    ctx = ExperimentContext(run_dir, False, True, 0, torch.device("cpu"), None)
    for eps in ("0", "0.1"):
        probs, labels, _ = run_probs(run_dir / "runs" / f"eps-{eps}", 128, ctx)
        assert numbers[f"ece_eps{eps}"] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-9)
        # the ECE bounds the overall gap: |mean conf - accuracy| = |Σ_m w_m (conf_m - acc_m)| <= ECE
        assert abs(numbers[f"gap_eps{eps}"]) <= numbers[f"ece_eps{eps}"] + 1e-9
        assert 0.25 < numbers[f"accuracy_eps{eps}"] <= 1.0  # 4 classes: above chance after 20 steps
    assert numbers["formula_max_abs_diff"] < 1e-5


def test_focal_smoke_trains_each_loss_on_the_imbalanced_set_it_reports(tmp_path):
    run_dir = run_experiment("focal_imbalanced", out_dir=tmp_path, smoke=True, threads=1)
    info = _report(run_dir)
    rows = dict(info["tables"])["Per class: training images and test recall"]
    counts = [r["train images"] for r in rows]
    assert [r["rare"] for r in rows] == [True, False, True, False]
    assert counts[0] < counts[1] / 5 and counts[2] < counts[3] / 5  # the rare classes kept at 10 %
    for arm in range(3):  # every run trained on exactly these counts (its checkpoint's metadata)
        assert read_meta(find_checkpoint(run_dir / "runs" / f"arm{arm}"))["train_counts"] == counts
    main = info["tables"][0][1]
    for row, recalls in zip(main, ([r[k] for r in rows] for k in rows[0] if k.startswith("recall"))):
        assert row["balanced accuracy (%)"] == pytest.approx(sum(recalls) / len(recalls))
        assert row["rare-class recall (%)"] == pytest.approx((recalls[0] + recalls[2]) / 2)
    assert all(0.0 <= v <= 1.0 for v in info["numbers"].values())
    assert (run_dir / "per_class_recall.png").is_file()
