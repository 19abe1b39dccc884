"""ensemble_tta: an ensemble's probabilities are the mean of its members', its numbers equal what
``paperzoo ensemble`` / ``paperzoo eval`` compute on the same runs, and the view counts match paperzoo's TTA."""

import json

import pytest
import torch

from paperzoo.experiments import run_experiment
from paperzoo.experiments.ensembles import TTA_SETS, _views, ensemble_probs
from paperzoo.train.evaluate import ensemble, evaluate, tta_views


def test_ensemble_probabilities_are_the_mean_of_the_members():
    a = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    b = torch.tensor([[0.5, 0.5], [0.6, 0.4]])
    assert torch.allclose(ensemble_probs([a, b]), torch.tensor([[0.7, 0.3], [0.4, 0.6]]))
    assert torch.equal(ensemble_probs([a]), a)


@pytest.mark.parametrize("name", list(TTA_SETS))
def test_forward_passes_per_image_match_paperzoos_tta_views(name):
    assert _views(name) == len(tta_views(torch.zeros(1, 1, 16, 16), TTA_SETS[name]))


def test_ensemble_smoke_numbers_equal_paperzoo_ensemble_on_the_same_runs(tmp_path):
    run_dir = run_experiment("ensemble_tta", out_dir=tmp_path, smoke=True, threads=1)
    info = json.loads((run_dir / "report.json").read_text())
    n = info["numbers"]
    members = [run_dir / "runs" / f"member{i}" for i in range(2)]
    kw = dict(limit=128, precision="fp32", fused=False)
    both = ensemble(members, **kw).metrics
    assert n["acc_k2_none"] == pytest.approx(both["accuracy"], abs=1e-9)
    assert n["nll_k2_none"] == pytest.approx(both["nll"], rel=1e-5)
    alone = [evaluate(m, tta="flip,shift", **kw).metrics for m in members]  # k = 1: the mean over the members
    assert n["acc_k1_flip+shift"] == pytest.approx(sum(a["accuracy"] for a in alone) / 2, abs=1e-9)
    assert n["nll_k1_flip+shift"] == pytest.approx(sum(a["nll"] for a in alone) / 2, rel=1e-5)
    # the cost of k members is the sum of theirs, so it grows with k; 10 views cost more than one
    assert n["s_per_1k_k2_none"] > n["s_per_1k_k1_none"]
    assert n["s_per_1k_k1_flip+shift"] > n["s_per_1k_k1_none"]
    rows = info["tables"][0][1]
    assert [r["subsets"] for r in rows[:2]] == [2, 1]
    assert len(rows) == 2 * len(TTA_SETS) and {r["forward passes per image"] for r in rows} == {1, 2, 4, 5, 10, 20}
    assert (run_dir / "ensemble_tta.png").is_file()
