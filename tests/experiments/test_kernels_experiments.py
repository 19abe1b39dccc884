"""odd_even_kernels and fcn_any_size: the half-pixel drift of even kernels, and sizes in = sizes out."""

import json

import pytest
import torch

from paperzoo.experiments import run_experiment
from paperzoo.experiments.kernels import centre_of_mass, conv_stack_responses, drift_by_layer, same_padding

pytestmark = pytest.mark.usefixtures("one_thread")


def _numbers(run_dir):
    return json.loads((run_dir / "report.json").read_text())["numbers"]


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_same_padding_matches_pytorchs_padding_same(k):
    x = torch.randn(1, 1, 9, 11, dtype=torch.float64)
    conv = torch.nn.Conv2d(1, 1, k, padding="same", bias=False).double()
    ours = conv_stack_responses(x, [conv.weight.detach()])[1]
    assert torch.allclose(ours, conv(x).detach())
    assert sum(same_padding(k)) == k - 1


def test_centre_of_mass_of_a_hand_made_map():
    m = torch.zeros(5, 5)
    m[1, 3], m[3, 3] = 1.0, 3.0  # rows: (1*1 + 3*3) / 4 = 2.5; columns: 3
    r, c = centre_of_mass(m)
    assert r.item() == pytest.approx(2.5) and c.item() == pytest.approx(3.0)


def test_even_kernels_drift_half_a_pixel_per_layer_and_odd_ones_stay(tmp_path):
    n = _numbers(run_experiment("odd_even_kernels", out_dir=tmp_path, smoke=True))
    layers = n["layers"]
    assert n["k2_drift_per_layer_box"] == pytest.approx(-0.5, abs=1e-9)
    assert n["k2_drift_total_box"] == pytest.approx(-0.5 * layers, abs=1e-9)
    assert n["k4_drift_per_layer_box"] == pytest.approx(-0.5, abs=1e-9)
    assert n["k3_drift_per_layer_box"] == pytest.approx(0.0, abs=1e-9)
    assert n["k5_drift_total_box"] == pytest.approx(0.0, abs=1e-9)
    assert n["k2_alt_drift_total_box"] == pytest.approx(0.0, abs=1e-9)  # layers is even
    assert n["k2_drift_per_layer_random"] == pytest.approx(-0.5, abs=0.15)  # 16 random draws
    assert abs(n["k3_drift_per_layer_random"]) < 0.15


def test_random_kernel_drift_averages_to_half_a_pixel():
    drift = drift_by_layer(2, 3, 20, random_draws=400, seed=1)  # (draws, layers + 1)
    assert drift[:, 0].abs().max() == 0
    assert drift[:, -1].mean().item() == pytest.approx(-1.5, abs=0.1)


def test_fcn_output_has_the_input_size_and_the_fc_head_refuses_other_sizes(tmp_path):
    run_dir = run_experiment("fcn_any_size", out_dir=tmp_path, smoke=True)  # a synthetic scene without the data
    n = _numbers(run_dir)
    same = {k: v for k, v in n.items() if k.startswith("fcn_same_size_")}
    assert len(same) == 3 and all(v == 1.0 for v in same.values())
    assert n["fc_head_ok_32x32"] == 1.0 and n["fc_head_ok_48x48"] == 0.0 and n["fc_head_ok_40x56"] == 0.0
    assert n["convolutionalized_max_abs_diff"] < 1e-4
    assert (n["convolutionalized_map_h"], n["convolutionalized_map_w"]) == (9, 9)  # 8x8 map -> 16x16: 16-8+1
    info = json.loads((run_dir / "report.json").read_text())
    assert "C*h*w" in json.dumps(info["tables"])  # the fc head's own error, in the table
