"""Losses against PyTorch's built-ins and hand-computed values.

Run: python -m pytest -q tests/train/test_losses.py
"""

import math

import pytest
import torch
import torch.nn.functional as F

from paperzoo.train.losses import (
    FocalLoss,
    LabelSmoothingCrossEntropy,
    SoftTargetCrossEntropy,
    build_loss,
    class_weights_from_labels,
)

B, K = 12, 6


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, generator=g) * 3
    y = torch.randint(0, K, (B,), generator=g)
    q = torch.softmax(torch.randn(B, K, generator=g), 1)
    w = torch.rand(K, generator=g) + 0.5
    return logits, y, q, w


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_label_smoothing_equals_torch(eps, weighted, soft):
    logits, y, q, w = inputs()
    w = w if weighted else None
    target = q if soft else y
    for reduction in ("mean", "sum", "none"):
        ours = LabelSmoothingCrossEntropy(eps, weight=w, reduction=reduction)(logits, target)
        ref = F.cross_entropy(logits, target, weight=w, label_smoothing=eps, reduction=reduction)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_label_smoothing_is_the_papers_decomposition():
    logits, y, _, _ = inputs(1)
    eps = 0.2
    logp = F.log_softmax(logits, 1)
    h_q = -logp[torch.arange(B), y]  # H(q, p)
    h_u = -logp.mean(1)  # H(u, p)
    torch.testing.assert_close(LabelSmoothingCrossEntropy(eps, reduction="none")(logits, y),
                               (1 - eps) * h_q + eps * h_u)


def test_soft_target_ce():
    logits, y, q, w = inputs(2)
    torch.testing.assert_close(SoftTargetCrossEntropy()(logits, q), -(q * F.log_softmax(logits, 1)).sum(1).mean())
    torch.testing.assert_close(SoftTargetCrossEntropy()(logits, y), F.cross_entropy(logits, y))
    torch.testing.assert_close(SoftTargetCrossEntropy(weight=w)(logits, q), F.cross_entropy(logits, q, weight=w))
    torch.testing.assert_close(SoftTargetCrossEntropy()(logits, F.one_hot(y, K).float()), F.cross_entropy(logits, y))


def test_focal_gamma_zero_is_cross_entropy():
    logits, y, q, w = inputs(3)
    torch.testing.assert_close(FocalLoss(gamma=0.0, alpha=None)(logits, y), F.cross_entropy(logits, y))
    torch.testing.assert_close(FocalLoss(gamma=0.0, weight=w)(logits, y), F.cross_entropy(logits, y, weight=w))
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, q), F.cross_entropy(logits, q))
    torch.testing.assert_close(FocalLoss(gamma=0.0, smoothing=0.1)(logits, y),
                               F.cross_entropy(logits, y, label_smoothing=0.1))


def test_focal_hand_computed():
    # two samples, three classes; p = softmax(logits) computed by hand below
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 1])
    z0 = math.exp(2) + 2
    z1 = 1 + math.exp(1) + math.exp(3)
    p0, p1 = math.exp(2) / z0, math.exp(1) / z1  # p_t of each sample
    gamma, alpha = 2.0, 0.25
    fl = [-alpha * (1 - p) ** gamma * math.log(p) for p in (p0, p1)]  # Lin et al. Eq. 5
    out = FocalLoss(gamma, alpha, reduction="none")(logits, y)
    torch.testing.assert_close(out, torch.tensor(fl), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(FocalLoss(gamma, alpha)(logits, y), torch.tensor(sum(fl) / 2), rtol=1e-6, atol=1e-7)
    # per-class alpha picks alpha_t = alpha[y]
    per_class = FocalLoss(gamma, [0.1, 0.7, 0.2], reduction="none")(logits, y)
    torch.testing.assert_close(per_class, torch.tensor([fl[0] / 0.25 * 0.1, fl[1] / 0.25 * 0.7]), rtol=1e-6, atol=1e-7)
    # one-hot soft targets give the same value as hard ones
    torch.testing.assert_close(FocalLoss(gamma, alpha, reduction="none")(logits, F.one_hot(y, 3).float()), out)


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[6.0, 0.0]])
    hard = torch.tensor([[0.2, 0.0]])
    y = torch.tensor([0])
    ratio_easy = FocalLoss(2.0)(easy, y) / F.cross_entropy(easy, y)
    ratio_hard = FocalLoss(2.0)(hard, y) / F.cross_entropy(hard, y)
    assert ratio_easy < 1e-4 < ratio_hard < 1  # (1 - p_t)^γ: easy examples contribute almost nothing


def test_build_loss():
    logits, y, q, w = inputs(4)
    assert isinstance(build_loss("ce"), LabelSmoothingCrossEntropy) and build_loss("ce").eps == 0
    assert build_loss("label_smoothing").eps == 0.1  # Inception-v3's ε when none is given
    assert build_loss("label_smoothing", smoothing=0.2).eps == 0.2
    torch.testing.assert_close(build_loss("ce", class_weights=w.tolist())(logits, y),
                               F.cross_entropy(logits, y, weight=w))
    focal = build_loss("focal", gamma=1.5, alpha=0.5)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5
    for name in ("ce", "label_smoothing", "focal", "soft_ce"):  # every loss takes hard and soft targets
        loss = build_loss(name)
        assert loss(logits, y).ndim == 0 and loss(logits, q).ndim == 0
    with pytest.raises(ValueError, match="valid choices"):
        build_loss("hinge")


def test_shape_and_weight_errors():
    logits, y, _, _ = inputs()
    with pytest.raises(ValueError, match="soft targets"):
        LabelSmoothingCrossEntropy(0.1)(logits, torch.zeros(B, K + 1))
    with pytest.raises(ValueError, match="hard targets"):
        FocalLoss()(logits, y[:-1])
    with pytest.raises(ValueError, match="class weights"):
        LabelSmoothingCrossEntropy(0.1, weight=[1.0, 2.0])(logits, y)
    with pytest.raises(ValueError):
        LabelSmoothingCrossEntropy(1.0)


def test_class_weights_from_labels():
    labels = torch.tensor([0] * 8 + [1] * 2 + [2] * 0 + [3] * 6)
    w = class_weights_from_labels(labels, 4)
    assert w[2] == 0 and w[1] > w[3] > w[0]
    torch.testing.assert_close(w[[0, 1, 3]].mean(), torch.tensor(1.0))
    torch.testing.assert_close(w[0] * 8, w[1] * 2)  # inverse frequency


def test_gradients_flow_and_bf16_logits():
    logits, y, q, _ = inputs(5)
    for loss in (LabelSmoothingCrossEntropy(0.1), FocalLoss(2.0, 0.25), SoftTargetCrossEntropy()):
        lg = logits.clone().requires_grad_(True)
        loss(lg, q).backward()
        assert torch.isfinite(lg.grad).all() and lg.grad.abs().sum() > 0
        out = loss(logits.bfloat16(), y)  # autocast produces bf16 logits: computed in float32
        assert out.dtype == torch.float32 and torch.isfinite(out)
