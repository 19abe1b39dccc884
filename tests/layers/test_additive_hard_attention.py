"""Soft additive (Bahdanau) and hard (Show, Attend and Tell) attention: equations, masks, sampling, estimators."""

import pytest
import torch

from paperzoo.layers.additive_attention import AdditiveAttention, HardAttention, masked_softmax

B, S, L, DQ, DK, A = 3, 5, 4, 6, 7, 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only cost (conftest)


def _inputs():
    return torch.randn(B, DQ), torch.randn(B, S, DK)


def test_equation_by_hand():
    """e_ij = v_aᵀ tanh(W_a s + U_a h_j), α = softmax_j(e), c = Σ_j α_j h_j, one query at a time."""
    attn = AdditiveAttention(DQ, DK, A)
    q, k = _inputs()
    ctx, alpha = attn(q, k)
    for b in range(B):
        e = torch.stack([attn.v_a.weight[0] @ torch.tanh(attn.W_a.weight @ q[b] + attn.U_a.weight @ k[b, j]
                                                        + attn.U_a.bias) for j in range(S)])
        a = torch.exp(e) / torch.exp(e).sum()
        torch.testing.assert_close(alpha[b], a)
        torch.testing.assert_close(ctx[b], (a[:, None] * k[b]).sum(0))


def test_shapes_multi_query_values_and_precomputed_keys():
    attn = AdditiveAttention(DQ, DK, A, bias=False)
    q, k = torch.randn(B, L, DQ), torch.randn(B, S, DK)
    v = torch.randn(B, S, 3)
    ctx, alpha = attn(q, k, v)
    assert ctx.shape == (B, L, 3) and alpha.shape == (B, L, S)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(B, L))
    ctx2, alpha2 = attn(q, k, v, projected_keys=attn.project_keys(k))
    torch.testing.assert_close(ctx, ctx2)
    for i in range(L):  # a (B, L, Dq) query is L independent (B, Dq) queries
        c, a = attn(q[:, i], k, v)
        torch.testing.assert_close(c, ctx[:, i])
        torch.testing.assert_close(a, alpha[:, i])


def test_key_padding_mask_equals_truncation():
    attn = AdditiveAttention(DQ, DK, A)
    q, k = _inputs()
    lengths = torch.tensor([5, 2, 3])
    pad = torch.arange(S)[None] >= lengths[:, None]
    ctx, alpha = attn(q, k, key_padding_mask=pad)
    assert (alpha[pad] == 0).all()
    for b, n in enumerate(lengths.tolist()):
        c, a = attn(q[b : b + 1], k[b : b + 1, :n])
        torch.testing.assert_close(alpha[b, :n], a[0])
        torch.testing.assert_close(ctx[b], c[0])


def test_attn_mask_and_fully_masked_rows():
    attn = AdditiveAttention(DQ, DK, A)
    q, k = torch.randn(B, L, DQ), torch.randn(B, S, DK)
    causal = torch.ones(L, S, dtype=torch.bool).tril()
    causal[0] = False  # query 0 may see nothing
    ctx, alpha = attn(q, k, attn_mask=causal)
    assert torch.isfinite(ctx).all()
    assert (alpha[:, 0] == 0).all() and (ctx[:, 0] == 0).all()
    assert (alpha[:, 1:][~causal[1:].expand(B, -1, -1)] == 0).all()
    torch.testing.assert_close(alpha[:, 1:].sum(-1), torch.ones(B, L - 1))
    ctx.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())
    with pytest.raises(ValueError, match="key_padding_mask"):
        attn(q, k, key_padding_mask=torch.zeros(B, S + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        attn(q, k, attn_mask=torch.ones(L, S))
    assert torch.equal(masked_softmax(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool)), torch.zeros(2, 3))


def test_hard_sample_is_one_hot_and_monte_carlo_matches_soft():
    torch.manual_seed(0)
    hard = HardAttention(DQ, DK, A).train()
    q, k = _inputs()
    pad = torch.tensor([[False] * 5, [False, False, False, True, True], [False] * 5])
    N = 4000  # the same 3 queries repeated N times, sampled independently
    out = hard(q.repeat(N, 1), k.repeat(N, 1, 1), key_padding_mask=pad.repeat(N, 1))
    assert ((out.sample == 0) | (out.sample == 1)).all() and (out.sample.sum(-1) == 1).all()
    assert (out.sample[pad.repeat(N, 1)] == 0).all(), "never samples a padded key"
    idx = out.sample.argmax(-1)
    torch.testing.assert_close(out.context, k.repeat(N, 1, 1)[torch.arange(B * N), idx])  # c = h_s̃
    freq = out.sample.view(N, B, S).mean(0)
    alpha = out.weights[:B]
    assert (freq - alpha).abs().max() < 4 * (0.25 / N) ** 0.5  # 4 standard errors at worst (p = 0.5)
    torch.testing.assert_close(out.context.view(N, B, DK).mean(0), out.soft_context[:B], atol=0.1, rtol=0)
    torch.testing.assert_close(out.log_prob, torch.log(alpha.repeat(N, 1)[torch.arange(B * N), idx]))


def test_reinforce_estimator_is_unbiased_and_baseline_moves():
    """For reward f(s), E[(f(s) - b) ∇log α_s] = ∇ Σ_j α_j f_j: check the surrogate's gradient by Monte Carlo."""
    torch.manual_seed(0)
    hard = HardAttention(DQ, DK, A).train()
    q, k = _inputs()
    f = torch.randn(S)
    exact = torch.autograd.grad((hard.align.weights(q[:1], k[:1])[0] * f).sum(), hard.align.v_a.weight)[0]
    N = 20000
    out = hard(q[:1].expand(N, -1), k[:1].expand(N, -1, -1))
    reward = f[out.sample.argmax(-1)]
    loss = hard.reinforce_loss(out.log_prob, reward)  # minimizing it ascends E[reward]
    est = -torch.autograd.grad(loss, hard.align.v_a.weight)[0]
    assert torch.allclose(est, exact, atol=0.05 * exact.abs().max() + 1e-3), (est, exact)
    b0 = hard.baseline.clone()
    hard.reinforce_loss(out.log_prob.detach(), reward + 10)
    assert hard.baseline > b0, "moving-average baseline follows the reward"


@pytest.mark.parametrize("estimator", ["reinforce", "gumbel"])
def test_estimators_give_gradients_and_learn_to_find_the_marked_key(estimator):
    """A toy task: one key, at a random position, is marked (feature 0 = 3) and carries a value (feature 1)
    that must be read out. Trained only through the hard, one-hot context (plus the estimator), attention
    learns to pick the marked key far above chance (1/S)."""
    torch.manual_seed(0)
    D = 4
    hard = HardAttention(D, D, 16, estimator=estimator, entropy_weight=0.01).train()
    readout = torch.nn.Linear(D, 1)
    opt = torch.optim.Adam([*hard.parameters(), *readout.parameters()], lr=0.03)
    query = torch.ones(D)

    def batch(n: int):
        keys = torch.randn(n, S, D).clamp(-2, 2)
        pos = torch.randint(0, S, (n,))
        keys[torch.arange(n), pos, 0] = 3.0
        return keys, pos, keys[torch.arange(n), pos, 1]

    def accuracy() -> float:
        hard.eval()
        keys, pos, _ = batch(256)
        acc = (hard(query.expand(256, D), keys).sample.argmax(-1) == pos).float().mean().item()
        hard.train()
        return acc

    before = accuracy()
    for step in range(150):
        keys, pos, y = batch(64)
        out = hard(query.expand(64, D), keys)
        sq_err = (readout(out.context).squeeze(-1) - y) ** 2
        loss = sq_err.mean()
        if estimator == "reinforce":  # reward = log-likelihood of a unit Gaussian, up to constants
            loss = loss + hard.reinforce_loss(out.log_prob, -sq_err, out.entropy)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert hard.align.W_a.weight.grad.abs().sum() > 0 and hard.align.v_a.weight.grad.abs().sum() > 0
        opt.step()
    after = accuracy()
    assert after > 0.9 and after > before + 0.3, f"{estimator}: accuracy {before:.2f} -> {after:.2f}"


def test_eval_modes_and_bad_arguments():
    q, k = _inputs()
    hard = HardAttention(DQ, DK, A, eval_mode="expectation").eval()
    out = hard(q, k)
    torch.testing.assert_close(out.context, out.soft_context)
    hard.eval_mode = "argmax"
    out = hard(q, k)
    assert torch.equal(out.sample.argmax(-1), out.weights.argmax(-1))
    with pytest.raises(ValueError, match="estimator"):
        HardAttention(DQ, DK, A, estimator="nope")
