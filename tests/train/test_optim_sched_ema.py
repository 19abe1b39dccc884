"""Parameter grouping, optimizers, per-step LR schedules (known points, torch.OneCycleLR, state round trip), EMA.

Run: python -m pytest -q tests/train/test_optim_sched_ema.py
"""

import io
import math

import pytest
import torch
import torch.nn as nn

from paperzoo.train.ema import ModelEma
from paperzoo.train.optim import build_optimizer, no_weight_decay_names, param_groups
from paperzoo.train.schedulers import build_scheduler


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 5)
        self.pos_embed = nn.Parameter(torch.randn(1, 9, 4))  # 3-D, excluded by name
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4))
        self.frozen = nn.Parameter(torch.randn(4, 4), requires_grad=False)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def forward(self, x):
        x = self.bn(self.conv(x)).mean((2, 3))
        return self.fc(self.norm(x + self.pos_embed.mean((0, 1)) + self.cls_token.mean((0, 1))))


class CompiledLike(nn.Module):
    """The shape of ``torch.compile``'s OptimizedModule (importing dynamo here would cost seconds)."""

    def __init__(self, model):
        super().__init__()
        self._orig_mod = model


def test_param_groups():
    net = Net()
    groups = param_groups(net, 0.05)
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert decay == {id(net.conv.weight), id(net.fc.weight)}
    assert no_decay == {id(p) for p in (net.bn.weight, net.bn.bias, net.norm.weight, net.norm.bias, net.fc.bias,
                                        net.pos_embed, net.cls_token)}
    assert id(net.frozen) not in decay | no_decay
    assert no_weight_decay_names(net, skip=["fc"]) >= {"fc.weight", "fc.bias"}  # a module name covers its params
    assert no_weight_decay_names(CompiledLike(net)) == no_weight_decay_names(net)  # names without the prefix


def test_adamw_decays_only_the_decay_group():
    net = Net()
    opt = build_optimizer(net, "adamw", lr=0.1, weight_decay=0.5, betas=(0.8, 0.9))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.9)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only decoupled weight decay moves weights
    opt.step()
    for n, p in net.named_parameters():
        expect = before[n] * (1 - 0.1 * 0.5) if n in ("conv.weight", "fc.weight") else before[n]
        torch.testing.assert_close(p.detach(), expect, msg=n)


def test_sgd_options():
    net = Net()
    opt = build_optimizer(net, "sgd", lr=0.2, weight_decay=1e-4, momentum=0.9, nesterov=True)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    assert not build_optimizer(net, "sgd", momentum=0.0).defaults["nesterov"]  # Nesterov needs momentum
    with pytest.raises(ValueError, match="valid choices"):
        build_optimizer(net, "lion")


def lrs(name, steps, lr=1.0, **kw):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    sched = build_scheduler(opt, name, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])  # the LR this optimizer step uses
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_known_points():
    lr = lrs("cosine", 112, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr[0] == pytest.approx(0.1) and lr[4] == pytest.approx(0.5) and lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0)  # cosine starts at the peak
    assert lr[60] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos(π/2) = 0
    assert lr[35] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr[110] == pytest.approx(0.1) and lr[111] == pytest.approx(0.1)  # clamped after the end
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))  # monotone decay


def test_step_multistep_constant():
    lr = lrs("step", 12, total_steps=12, step_size=5, gamma=0.5)
    assert lr[:5] == [1.0] * 5 and lr[5:10] == [0.5] * 5 and lr[10:] == [0.25] * 2
    lr = lrs("multistep", 9, total_steps=9, milestones=(3, 7), gamma=0.1)
    assert lr[:3] == [1.0] * 3 and lr[3:7] == pytest.approx([0.1] * 4) and lr[7:] == pytest.approx([0.01] * 2)
    lr = lrs("constant", 6, total_steps=6, warmup_steps=4)
    assert lr == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    lr = lrs("multistep", 6, total_steps=6, warmup_steps=2, milestones=(4,), gamma=0.5)
    assert lr == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.5, 0.5])


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize("cycle_momentum", [False, True])
def test_onecycle_matches_torch(opt_name, cycle_momentum):
    total = 57
    p1, p2 = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    make = {"sgd": lambda p: torch.optim.SGD([p], lr=0.3, momentum=0.9),
            "adamw": lambda p: torch.optim.AdamW([p], lr=0.3)}[opt_name]
    ours_opt, ref_opt = make(p1), make(p2)
    ours = build_scheduler(ours_opt, "onecycle", total_steps=total, pct_start=0.25, cycle_momentum=cycle_momentum)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.3, total_steps=total, pct_start=0.25,
                                              cycle_momentum=cycle_momentum)
    key = "momentum" if opt_name == "sgd" else "betas"
    for _ in range(total):
        g_ours, g_ref = ours_opt.param_groups[0], ref_opt.param_groups[0]
        assert g_ours["lr"] == pytest.approx(g_ref["lr"], rel=1e-12, abs=1e-15)
        if cycle_momentum:
            assert g_ours[key] == pytest.approx(g_ref[key], rel=1e-12)
        ours_opt.step(), ours.step(), ref_opt.step(), ref.step()


@pytest.mark.parametrize("total", [1, 2, 3, 4])
def test_onecycle_tiny_runs_are_finite(total):
    lr = lrs("onecycle", total + 2, total_steps=total, pct_start=0.25)
    assert all(math.isfinite(v) and 0 < v <= 1.0 for v in lr)
    assert lr[total - 1] <= lr[0] or total == 1


def test_scheduler_state_dict_round_trip():
    def make():
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5, momentum=0.9)
        return opt, build_scheduler(opt, "cosine", total_steps=40, warmup_steps=5, min_lr_ratio=0.05)

    opt, sched = make()
    ref = []
    for i in range(40):
        if i == 17:
            buf = io.BytesIO()
            torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # only plain data inside
    opt2, sched2 = make()
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    rest = []
    for _ in range(17, 40):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == ref[17:]


def test_scheduler_errors():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="valid choices"):
        build_scheduler(opt, "poly", total_steps=10)
    with pytest.raises(ValueError, match="step_size"):
        build_scheduler(opt, "step", total_steps=10)
    with pytest.raises(ValueError, match="increasing"):
        build_scheduler(opt, "multistep", total_steps=10, milestones=(5, 2))
    with pytest.raises(ValueError):
        build_scheduler(opt, "cosine", total_steps=0)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.fc(x))


def test_ema_update_formula():
    torch.manual_seed(0)
    model = BNNet()
    ema = ModelEma(model, decay=0.9, warmup=False)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    expect = {k: v.clone().double() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(8, 3)).pow(2).mean().backward()  # also moves BN running stats
        opt.step()
        opt.zero_grad()
        ema.update(model)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                expect[k] = 0.9 * expect[k] + 0.1 * v.double()  # θ_ema ← d θ_ema + (1 - d) θ
            else:
                expect[k] = v.clone()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v.double(), expect[k], rtol=1e-6, atol=1e-7, msg=k)
        else:
            assert torch.equal(v, expect[k])  # num_batches_tracked copied
    assert int(ema.module.state_dict()["bn.num_batches_tracked"]) == 3


def test_ema_warmup_decay_and_state_round_trip():
    model = BNNet()
    ema = ModelEma(model, decay=0.999)
    assert ema.current_decay() == pytest.approx(2 / 11)  # (1 + n) / (10 + n) with n = 1
    target = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.fc.weight, target["fc.weight"] + (1 - 2 / 11) * 1.0)
    ema.num_updates = 9000
    assert ema.current_decay() == 0.999  # (1 + n) / (10 + n) > d from n = 8991 on: capped at d
    buf = io.BytesIO()
    torch.save(ema.state_dict(), buf)
    buf.seek(0)
    other = ModelEma(BNNet(), decay=0.5)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.num_updates == ema.num_updates and other.decay == 0.999
    torch.testing.assert_close(other.module.fc.weight, ema.module.fc.weight)
    with pytest.raises(ValueError):
        ModelEma(model, decay=1.0)
