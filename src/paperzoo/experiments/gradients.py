"""Vanishing and exploding gradients (the notes' Q1 and 003): deep CNNs with and without skip connections, and
recurrent networks over long time distances.

* He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", arXiv:1512.03385: plain nets vs ResNets
  of the same depth (Sec. 4.1, Fig. 4), built here from paperzoo's :class:`~paperzoo.models.resnet.ResNet` (the
  CIFAR layout of Sec. 4.2: 6n+2 layers, option-A shortcuts).
* He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", arXiv:1603.05027: the shortcut helps only
  while it stays an identity (pre-activation units, Fig. 4e); used for the sigmoid residual net.
* Hochreiter & Schmidhuber, "Long Short-Term Memory" (1997), Sec. 5.4 Experiment 4: the adding problem; the
  networks are paperzoo's :mod:`~paperzoo.models.rnn` (RNN, LSTM, GRU).

What is measured, and choices that differ from the papers:

* CNNs: the Frobenius norm of dL/dW of every conv weight, first layer to last, at initialisation and after
  training with plain SGD (no clipping, no Adam: both would hide the effect), and the test accuracy reached.
  Four nets of one depth: sigmoid without BatchNorm (the notes' "we used to use sigmoid"), plain and residual; ReLU
  with BatchNorm (He et al.'s pair), plain and residual.
* RNNs: the sensitivity of the prediction to the input d steps back, E||d y_hat / d x_{T-1-d}||, rather than of the
  loss (a trained net has a small loss and so small loss gradients everywhere). The LSTM's forget-gate bias is
  set to 1 (Gers et al. 2000; Jozefowicz et al., ICML 2015), everything else is PyTorch's default init; the
  init-only row ``lstm (forget bias 0)`` shows what the default zero bias gives.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.resnet import BasicBlock, ResNet, ResNetConfig
from ..models.rnn import GRU, LSTM, RNN
from ..viz.common import new_figure, save_figure
from . import ExperimentContext, Report, load_fashion_mnist, register_experiment


# ------------------------------------------------------------------------------------------- deep CNNs (Q1)
class PlainBlock(BasicBlock):
    """A BasicBlock without its shortcut: He et al.'s "plain" counterpart (Sec. 4.1), same layers and init."""

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class PreActBlock(BasicBlock):
    """x + F(x) with nothing after the sum (arXiv:1603.05027, Fig. 4e), so the shortcut stays an identity: with a
    sigmoid after the sum (the original block's place for the ReLU) every block would scale the gradient by <= 1/4."""

    def forward(self, x: Tensor) -> Tensor:  # used with the sigmoid only: the in-place ReLU would overwrite x
        shortcut = x if self.downsample is None else self.downsample(x)
        return shortcut + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(self.relu(x))))))


def _to_sigmoid_without_bn(module: nn.Module) -> nn.Module:
    """Every ReLU becomes a sigmoid and every BatchNorm an identity (a 1990s-style deep net), in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.ReLU):
            setattr(module, name, nn.Sigmoid())
        else:
            _to_sigmoid_without_bn(child)
    return module


# name -> (block, sigmoid without BN?)
CNN_VARIANTS = {"plain-sigmoid": (PlainBlock, True), "residual-sigmoid": (PreActBlock, True),
                "plain-bn": (PlainBlock, False), "residual-bn": (BasicBlock, False)}


def deep_cnn(variant: str, *, n: int, width: int) -> ResNet:
    """A 6n+2-layer CIFAR-layout ResNet (Sec. 4.2) for 1-channel 28x28 inputs, with ``variant``'s blocks."""
    block, sigmoid = CNN_VARIANTS[variant]
    net = ResNet(ResNetConfig(block=block, layers=(n, n, n), width=width, small_input=True, stem_stride=2,
                              zero_pad_shortcut=True, in_chans=1, num_classes=10))
    return _to_sigmoid_without_bn(net) if sigmoid else net


def conv_grad_norms(net: nn.Module) -> list[float]:
    """||dL/dW||_F of every conv weight, input side first (the gradients must have been computed)."""
    return [m.weight.grad.norm().item() for m in net.modules() if isinstance(m, nn.Conv2d)]


def _accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    net.eval()
    with torch.no_grad():
        correct = sum((net(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(500), y.split(500)))
    net.train()
    return correct / len(y)


def train_cnn(net: nn.Module, data: tuple[Tensor, ...], *, steps: int, batch: int, lr: float,
              seed: int) -> dict:
    """SGD with momentum; the conv gradient norms at step 0 (init) and at the last step, loss curve, accuracy."""
    x, y, xt, yt = data
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    losses, first = [], None
    for step in range(steps):
        idx = torch.randint(len(x), (batch,), generator=g)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            first = conv_grad_norms(net)
        losses.append(loss.item())
        opt.step()
    return {"init": first, "trained": conv_grad_norms(net), "losses": losses, "acc": _accuracy(net, xt, yt)}


def _plot_cnn(ctx: ExperimentContext, results: dict[str, dict], depth: int) -> None:
    fig, axes = new_figure(3, size=(16.0, 4.4))
    for name, r in results.items():
        for ax, key in zip(axes[0, :2], ("init", "trained")):
            ax.semilogy(range(1, len(r[key]) + 1), [max(v, 1e-40) for v in r[key]], label=name)
        axes[0, 2].plot(r["losses"], label=name, lw=0.8)
    for ax, what in zip(axes[0, :2], ("at initialisation", "after training")):
        ax.set(title=f"||dL/dW|| per conv layer, {what}", xlabel="conv layer (1 = input side)",
               ylabel="gradient norm (log; 0 drawn at 1e-40)")
    axes[0, 2].set(title=f"training loss ({depth} layers)", xlabel="step", ylabel="cross-entropy")
    for ax in axes[0]:
        ax.legend(fontsize=8)
    save_figure(fig, ctx.path("cnn_gradients.png"))


@register_experiment("vanishing_gradients", title="Vanishing gradients: plain vs residual deep CNNs",
                     question="Why does a skip connection help a deep network train? (Q1)")
def vanishing_gradients(ctx: ExperimentContext) -> Report:
    n, width = ctx.pick(smoke=3, short=9, full=9), ctx.pick(smoke=4, short=8, full=16)
    steps, batch = ctx.pick(smoke=3, short=200, full=1000), ctx.pick(smoke=32, short=64, full=128)
    data = load_fashion_mnist(ctx.pick(smoke=256, short=10000, full=60000), ctx.pick(smoke=200, short=2000,
                                                                                     full=10000),
                              seed=ctx.seed, root=ctx.data_dir)
    data = tuple(t.to(ctx.device) for t in data)
    results, rows, numbers, depth = {}, [], {}, 6 * n + 2
    for name in CNN_VARIANTS:
        torch.manual_seed(ctx.seed)  # the same weights in every conv for all four
        start = time.perf_counter()
        r = results[name] = train_cnn(deep_cnn(name, n=n, width=width).to(ctx.device), data, steps=steps,
                                      batch=batch, lr=0.05, seed=ctx.seed)
        ratio = r["init"][0] / r["init"][-1]
        rows.append({"net": name, "first conv grad (init)": r["init"][0], "last conv grad (init)": r["init"][-1],
                     "first/last (init)": ratio, "first/last (trained)": r["trained"][0] / r["trained"][-1],
                     "final loss": sum(r["losses"][-20:]) / len(r["losses"][-20:]), "test acc": r["acc"],
                     "seconds": round(time.perf_counter() - start, 1)})
        key = name.replace("-", "_")
        numbers.update({f"{key}_first_grad_init": r["init"][0], f"{key}_last_grad_init": r["init"][-1],
                        f"{key}_first_over_last_init": ratio, f"{key}_acc": r["acc"]})
    _plot_cnn(ctx, results, depth)
    numbers["depth"] = depth
    summary = (
        f"At {depth} layers the sigmoid net without shortcuts passes almost no gradient to its first layer "
        f"(first/last conv gradient {numbers['plain_sigmoid_first_over_last_init']:.1e}; 0 is a float32 underflow), "
        f"while the same net with identity shortcuts keeps {numbers['residual_sigmoid_first_over_last_init']:.2g}. "
        f"With ReLU and BatchNorm the plain net's gradients do not vanish at initialisation but grow towards the "
        f"input (first/last {numbers['plain_bn_first_over_last_init']:.3g}: BatchNorm's gradient explosion), and "
        f"the ResNet keeps them level ({numbers['residual_bn_first_over_last_init']:.3g}). Test accuracy after "
        f"{steps} SGD steps: " + ", ".join(f"{k} {r['acc']:.3f}" for k, r in results.items()) + " (10 classes: "
        "0.1 is chance). A shortcut lets the gradient through; it takes BatchNorm as well to train fast.")
    return Report("Vanishing gradients: plain vs residual deep CNNs", summary,
                  tables=[(f"{depth}-layer nets on Fashion-MNIST ({steps} steps of SGD, batch {batch})", rows)],
                  figures=[("cnn_gradients.png", "conv gradient norms by layer at init and after training; "
                                                 "training loss")], numbers=numbers)


# --------------------------------------------------------------------------------- RNNs over long distances
def adding_problem(batch: int, length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Hochreiter & Schmidhuber (1997), Experiment 4: x (B, T, 2) = (value ~ U(0, 1), marker); two markers, one
    in each half; the target (B,) is the sum of the two marked values. Predicting 1 always gives MSE 1/6."""
    values = torch.rand(batch, length, generator=g)
    first = torch.randint(length // 2, (batch,), generator=g)
    second = torch.randint(length // 2, length, (batch,), generator=g)
    markers = torch.zeros(batch, length)
    markers[torch.arange(batch), first] = 1.0
    markers[torch.arange(batch), second] = 1.0
    return torch.stack([values, markers], dim=-1), (values * markers).sum(1)  # (B, T, 2), (B,)


class SequenceRegressor(nn.Module):
    """A paperzoo recurrent layer (batch_first) and a linear read-out of its last output."""

    def __init__(self, cell: str, hidden: int) -> None:
        super().__init__()
        self.rnn = {"rnn": RNN, "lstm": LSTM, "lstm (forget bias 0)": LSTM, "gru": GRU}[cell](
            2, hidden, batch_first=True)
        if cell == "lstm":  # gates i, f, g, o: the forget gate's bias to 1 (Gers et al. 2000)
            with torch.no_grad():
                self.rnn.bias_ih_l0[hidden:2 * hidden].fill_(1.0)
                self.rnn.bias_hh_l0[hidden:2 * hidden].zero_()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)  # (B, T, H)
        return self.head(out[:, -1]).squeeze(-1)  # (B,)


def input_sensitivity(model: nn.Module, x: Tensor) -> Tensor:
    """E_batch ||d y_hat / d x_t|| for every t, returned by distance d = T-1-t from the output (index 0 = last)."""
    x = x.clone().requires_grad_(True)
    model(x).sum().backward()  # examples are independent: the sum's gradient at x_b is d y_hat_b / d x_b
    return x.grad.norm(dim=-1).mean(0).flip(0).detach()  # (T,) by distance


def train_rnn(model: nn.Module, *, steps: int, batch: int, length: int, seed: int,
              device: torch.device | str = "cpu") -> dict:
    """Adam on fresh adding-problem batches; sensitivity by distance before and after, test MSE and accuracy."""
    g = torch.Generator().manual_seed(seed)
    x_test, y_test = (t.to(device) for t in adding_problem(1000, length, torch.Generator().manual_seed(seed + 1)))
    init = input_sensitivity(model, x_test[:200])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x, y = (t.to(device) for t in adding_problem(batch, length, g))
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the RNN's exploding steps would end the run early
        opt.step()
    with torch.no_grad():
        err = model(x_test) - y_test
    trained = input_sensitivity(model, x_test[:200])
    return {"init": init.cpu(), "trained": trained.cpu(), "mse": err.pow(2).mean().item(),
            "acc": (err.abs() < 0.04).float().mean().item()}  # Hochreiter's criterion: |error| < 0.04


def _plot_rnn(ctx: ExperimentContext, results: dict[str, dict], length: int) -> None:
    fig, axes = new_figure(2, size=(11.0, 4.4))
    for name, r in results.items():
        for ax, key in zip(axes[0], ("init", "trained")):
            if r.get(key) is not None:
                ax.semilogy(range(length), r[key].clamp_min(1e-30).tolist(), label=name)
    for ax, what in zip(axes[0], ("at initialisation", "after training")):
        ax.set(title=f"||d y_hat / d x_(T-1-d)||, {what}", xlabel="distance d (steps back from the output)",
               ylabel="sensitivity (log)")
        ax.legend(fontsize=8)
    save_figure(fig, ctx.path("rnn_sensitivity.png"))


@register_experiment("rnn_long_range", title="RNN vs LSTM vs GRU on the adding problem",
                     question="Why does the LSTM have a cell state? How far back can each recurrent net look? (003)")
def rnn_long_range(ctx: ExperimentContext) -> Report:
    length, hidden = ctx.pick(smoke=60, short=60, full=100), ctx.pick(smoke=16, short=64, full=128)
    steps, batch = ctx.pick(smoke=3, short=1000, full=3000), ctx.pick(smoke=16, short=64, full=64)
    d = min(50, length - 1)
    results, rows, numbers = {}, [], {"length": length, "distance": d}
    for cell in ("rnn", "lstm", "gru", "lstm (forget bias 0)"):
        torch.manual_seed(ctx.seed)
        start = time.perf_counter()
        model = SequenceRegressor(cell, hidden).to(ctx.device)
        if cell == "lstm (forget bias 0)":  # init only: what PyTorch's default initialisation gives
            x = adding_problem(1000, length, torch.Generator().manual_seed(ctx.seed + 1))[0][:200]  # as train_rnn
            results[cell] = {"init": input_sensitivity(model, x.to(ctx.device)).cpu()}
        else:
            results[cell] = train_rnn(model, steps=steps, batch=batch, length=length, seed=ctx.seed,
                                      device=ctx.device)
        r, key = results[cell], cell.split(" ")[0] + ("_fb0" if "bias 0" in cell else "")
        row = {"net": cell, f"sens. d={d} (init)": r["init"][d].item(), "d=0 (init)": r["init"][0].item()}
        numbers[f"{key}_sens_d{d}_init"] = r["init"][d].item()
        if "trained" in r:
            row.update({f"sens. d={d} (trained)": r["trained"][d].item(), "test MSE": r["mse"],
                        "acc (|err|<0.04)": r["acc"]})
            numbers.update({f"{key}_sens_d{d}_trained": r["trained"][d].item(), f"{key}_mse": r["mse"],
                            f"{key}_acc": r["acc"]})
        rows.append({**row, "seconds": round(time.perf_counter() - start, 1)})
    _plot_rnn(ctx, results, length)
    init = {k: numbers[f"{k}_sens_d{d}_init"] for k in ("rnn", "lstm", "gru")}
    summary = (
        f"On the adding problem (T={length}) the prediction's sensitivity to the input {d} steps back is, at "
        f"initialisation, {init['rnn']:.1e} for the plain RNN, {init['lstm']:.1e} for the LSTM (forget bias 1) "
        f"and {init['gru']:.1e} for the GRU: the RNN multiplies by W_hh and tanh' at every step, the LSTM's "
        f"cell state c_t = f*c_(t-1) + i*g only by f. After {steps} Adam steps the test MSE (1/6 = 0.167 is "
        f"guessing) is rnn {numbers['rnn_mse']:.3f}, lstm {numbers['lstm_mse']:.3f}, gru {numbers['gru_mse']:.3f}, "
        f"and the sensitivity at d={d} is " + ", ".join(f"{k} {numbers[f'{k}_sens_d{d}_trained']:.1e}"
                                                    for k in ("rnn", "lstm", "gru")) + ".")
    return Report("RNN vs LSTM vs GRU on the adding problem", summary,
                  tables=[(f"Adding problem, T={length}, hidden {hidden}, {steps} steps, batch {batch}", rows)],
                  figures=[("rnn_sensitivity.png", "sensitivity of the prediction to the input d steps back")],
                  numbers=numbers)
