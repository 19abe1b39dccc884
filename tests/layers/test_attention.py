"""Attention core: the explicit Eq. 1 and the fused SDPA path agree (masks included); MultiHeadAttention
equals ``nn.MultiheadAttention(batch_first=True)`` on copied weights (outputs and attention weights, self
and cross, padding and causal masks); wrong shapes raise clear errors. (The KV cache: tests/models/test_fast_decode.py.)
"""

import pytest
import torch
import torch.nn as nn

from paperzoo.layers import MultiHeadAttention, attention_explicit, scaled_dot_product_attention

TOL = dict(rtol=1e-5, atol=1e-5)


def _qkv(b=2, h=3, l=5, s=7, d=8):
    return torch.randn(b, h, l, d), torch.randn(b, h, s, d), torch.randn(b, h, s, d)


def _random_bool_mask(*shape):
    m = torch.rand(*shape) > 0.4
    m[..., 0] = True  # every query sees at least one key (a fully blocked row is NaN on both paths)
    return m


@pytest.mark.parametrize("l,s", [(5, 5), (4, 9), (1, 6)])
@pytest.mark.parametrize("kind", ["none", "bool2d", "bool4d", "float", "causal", "bool+causal"])
def test_explicit_and_fused_agree(kind, l, s):
    q, k, v = _qkv(l=l, s=s)
    mask, causal = None, False
    if kind == "bool2d":
        mask = _random_bool_mask(l, s)
    elif kind == "bool4d":
        mask = _random_bool_mask(2, 3, l, s)
    elif kind == "float":
        mask = torch.randn(2, 1, l, s)
    elif kind == "causal":
        causal = True
    elif kind == "bool+causal":
        mask, causal = _random_bool_mask(l, s), True
        mask[..., -1] = True  # the newest key is always visible, so no row is fully blocked
    ref, w = attention_explicit(q, k, v, mask, is_causal=causal)
    out, none = scaled_dot_product_attention(q, k, v, mask, is_causal=causal)
    assert none is None
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, l))
    if causal:  # queries are the last l of s positions: query i sees keys j <= s - l + i
        blocked = torch.ones(l, s, dtype=torch.bool).triu(s - l + 1)
        assert (w[..., blocked] == 0).all()


def test_fully_blocked_query_gives_zeros_on_both_paths():
    q, k, v = (t.requires_grad_() for t in _qkv(l=2, s=3))
    mask = torch.tensor([[False, False, False], [True, True, False]])
    ref, w = attention_explicit(q, k, v, mask.float().log())  # additive form: 0 / -inf
    out, _ = scaled_dot_product_attention(q, k, v, mask)
    assert (w[..., 0, :] == 0).all() and (ref[..., 0, :] == 0).all()
    torch.testing.assert_close(out, ref, **TOL)
    ref.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_explicit_and_fused_gradients_agree():
    q, k, v = (t.requires_grad_() for t in _qkv())
    mask = _random_bool_mask(5, 7)
    attention_explicit(q, k, v, mask)[0].square().sum().backward()
    ref = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    scaled_dot_product_attention(q, k, v, mask)[0].square().sum().backward()
    for a, b in zip(ref, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(a, b, **TOL)


def _pair(e, h, bias=True):
    ref = nn.MultiheadAttention(e, h, bias=bias, batch_first=True)
    ours = MultiHeadAttention(e, h, bias=bias)
    ours.load_from_torch(ref)
    return ours.eval(), ref.eval()


SHAPES = [(2, 5, 5, 16, 4), (3, 4, 9, 32, 8), (1, 1, 6, 8, 1)]  # (B, L, S, d_model, heads)


MASKS = ["none", "padding", "causal", "padding+causal"]  # what the models pass
CASES = [(cross, m) for cross in (False, True) for m in MASKS if not (cross and "causal" in m)]  # causal: self only


@pytest.mark.parametrize("b,l,s,e,h", SHAPES)
@pytest.mark.parametrize("cross,masks", CASES)
def test_matches_nn_multihead_attention(b, l, s, e, h, cross, masks):
    if not cross:
        s = l
    ours, ref = _pair(e, h)
    x = torch.randn(b, l, e)
    mem = torch.randn(b, s, e) if cross else x
    kw_ours, kw_ref = {}, {}
    if "padding" in masks:
        pad = torch.zeros(b, s, dtype=torch.bool)
        pad[0, -1] = s > 1  # True = padding in both conventions (never the only key: that row would be NaN)
        kw_ours["key_padding_mask"] = kw_ref["key_padding_mask"] = pad
    if "causal" in masks:
        kw_ours["is_causal"] = True
        kw_ref["attn_mask"] = torch.ones(l, l, dtype=torch.bool).triu(1)  # nn's convention: True = blocked
    with torch.no_grad():
        out, w = ours(x, None if not cross else mem, need_weights=True, **kw_ours)
        out_ref, w_ref = ref(x, mem, mem, need_weights=True, average_attn_weights=False, **kw_ref)
        fast, _ = ours(x, None if not cross else mem, **kw_ours)  # the SDPA path
    torch.testing.assert_close(out, out_ref, **TOL)
    torch.testing.assert_close(w, w_ref, **TOL)  # (B, heads, L, S)
    torch.testing.assert_close(fast, out_ref, **TOL)


def test_no_bias_matches_nn():
    ours, ref = _pair(8, 2, bias=False)
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], ref(x, x, x, need_weights=False)[0], **TOL)


def test_dropout_only_in_training():
    mha = MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(2, 5, 8)
    mha.eval()
    torch.testing.assert_close(mha(x)[0], mha(x)[0])
    mha.train()
    assert not torch.allclose(mha(x)[0], mha(x)[0])


@pytest.mark.parametrize("pad,match", [
    (torch.zeros(2, 4, dtype=torch.bool), r"must be bool \(B, S\) = \(2, 5\), got torch.bool \(2, 4\)"),
    (torch.zeros(3, 5, dtype=torch.bool), r"key_padding_mask must be bool.*got torch.bool \(3, 5\)"),
    (torch.zeros(2, 5), r"key_padding_mask must be bool.*got torch.float32"),
])
def test_wrong_padding_masks_raise_clear_errors(pad, match):
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=match):
        mha(torch.randn(2, 5, 8), key_padding_mask=pad)


def test_wrong_input_shapes_raise_clear_errors():
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"query must be \(B, L, 8\)"):
        mha(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"memory must be \(B=2, S, 8\)"):
        mha(torch.randn(2, 5, 8), torch.randn(3, 5, 8))
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="size mismatch"):
        MultiHeadAttention(8, 2).load_from_torch(nn.MultiheadAttention(8, 4, batch_first=True))
