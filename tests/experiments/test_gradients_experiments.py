"""vanishing_gradients and rnn_long_range: their smoke runs give the numbers the notes' claims predict."""

import json

import pytest
import torch

from paperzoo.experiments import run_experiment
from paperzoo.experiments.gradients import (
    CNN_VARIANTS,
    SequenceRegressor,
    adding_problem,
    conv_grad_norms,
    deep_cnn,
    input_sensitivity,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _numbers(run_dir):
    return json.loads((run_dir / "report.json").read_text())["numbers"]


def test_plain_sigmoid_net_starves_its_first_layer_and_shortcuts_restore_it(tmp_path, fmnist_dir):
    run_dir = run_experiment("vanishing_gradients", out_dir=tmp_path, smoke=True, data_dir=fmnist_dir)
    n = _numbers(run_dir)
    assert n["depth"] == 20
    # vanishing: the plain sigmoid net's first conv gets < 1e-6 of its last one's gradient (sigma' <= 1/4 per layer)
    assert n["plain_sigmoid_first_over_last_init"] < 1e-6
    # the same net with identity shortcuts keeps it within ~2 orders, > 1e4 times the plain net's
    assert n["residual_sigmoid_first_over_last_init"] > 1e-3
    assert n["residual_sigmoid_first_grad_init"] > 1e4 * n["plain_sigmoid_first_grad_init"]
    assert n["residual_bn_first_grad_init"] > 1e4 * n["plain_sigmoid_first_grad_init"]
    # with BatchNorm the plain net's gradient grows towards the input more than the ResNet's
    assert n["plain_bn_first_over_last_init"] > n["residual_bn_first_over_last_init"]
    assert all(0.0 <= n[f"{v.replace('-', '_')}_acc"] <= 1.0 for v in CNN_VARIANTS)
    assert (run_dir / "cnn_gradients.png").stat().st_size > 10_000


def test_deep_cnn_variants_have_the_paper_depth_and_the_same_conv_weights():
    nets = {v: deep_cnn(v, n=2, width=4) for v in CNN_VARIANTS}
    for net in nets.values():
        assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 6 * 2 + 1  # 6n+2 minus the fc
    x = torch.randn(2, 1, 28, 28)
    torch.nn.functional.cross_entropy(nets["plain-bn"](x), torch.tensor([0, 1])).backward()
    assert len(conv_grad_norms(nets["plain-bn"])) == 13
    # no BatchNorm and no ReLU left in the sigmoid nets
    assert not any(isinstance(m, torch.nn.BatchNorm2d | torch.nn.ReLU) for m in nets["plain-sigmoid"].modules())


def test_adding_problem_targets_are_the_sum_of_the_two_marked_values():
    x, y = adding_problem(8, 20, torch.Generator().manual_seed(0))
    assert x.shape == (8, 20, 2) and (x[..., 1].sum(1) == 2).all()
    assert (x[:, :10, 1].sum(1) == 1).all()  # one marker in each half
    assert torch.allclose(y, (x[..., 0] * x[..., 1]).sum(1))


def test_input_sensitivity_matches_a_finite_difference():
    torch.manual_seed(0)
    model = SequenceRegressor("gru", 8).double()
    x = torch.rand(1, 12, 2, dtype=torch.float64)
    sens = input_sensitivity(model, x)  # by distance: index d is time step T-1-d
    t, eps = 12 - 1 - 5, 1e-6
    grad = torch.zeros(2, dtype=torch.float64)
    for i in range(2):
        xp, xm = x.clone(), x.clone()
        xp[0, t, i] += eps
        xm[0, t, i] -= eps
        grad[i] = (model(xp) - model(xm)).item() / (2 * eps)
    assert sens[5].item() == pytest.approx(grad.norm().item(), rel=1e-5)


def test_lstm_sees_50_steps_back_where_the_rnn_cannot(tmp_path):
    n = _numbers(run_experiment("rnn_long_range", out_dir=tmp_path, smoke=True))
    assert n["distance"] == 50
    # the RNN's sensitivity shrinks by ~tanh' * ||W_hh|| < 1 per step; the LSTM's cell state only by f ~ 0.73
    assert n["lstm_sens_d50_init"] > 1e3 * n["rnn_sens_d50_init"]
    assert n["lstm_sens_d50_trained"] > n["rnn_sens_d50_trained"]
    # the forget bias of 1 is what does it at initialisation: PyTorch's zero bias halves c_t every step
    assert n["lstm_sens_d50_init"] > 1e3 * n["lstm_fb0_sens_d50_init"]
    assert all(0.0 <= n[f"{c}_acc"] <= 1.0 and n[f"{c}_mse"] > 0 for c in ("rnn", "lstm", "gru"))
