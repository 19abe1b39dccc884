"""Attention core: the explicit Eq. 1 and the fused SDPA path agree (masks included); MultiHeadAttention
equals ``nn.MultiheadAttention(batch_first=True)`` on copied weights (outputs and attention weights, self
and cross); the KV cache reproduces full causal attention; wrong mask shapes raise clear errors."""

import pytest
import torch
import torch.nn as nn

from paperzoo.layers import MultiHeadAttention, attention_explicit, merge_masks, scaled_dot_product_attention
from paperzoo.layers.attention import KVCache, cached_cross_attention, cached_self_attention

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


MASKS = ["none", "padding", "bool2d", "bool3d_heads", "float2d", "causal", "padding+bool"]
CASES = [(cross, m) for cross in (False, True) for m in MASKS if not (cross and m == "causal")]  # causal: self only


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
    if "bool2d" in masks or "bool" in masks.split("+"):
        allowed = _random_bool_mask(l, s)
        kw_ours["attn_mask"], kw_ref["attn_mask"] = allowed, ~allowed  # ours True=allowed, nn True=blocked
    if masks == "bool3d_heads":
        allowed = _random_bool_mask(b * h, l, s)
        kw_ours["attn_mask"], kw_ref["attn_mask"] = allowed, ~allowed
    if masks == "float2d":
        kw_ours["attn_mask"] = kw_ref["attn_mask"] = torch.randn(l, s)
    if masks == "causal":
        kw_ours["is_causal"] = True
        kw_ref["attn_mask"] = torch.ones(l, l, dtype=torch.bool).triu(1)
    with torch.no_grad():
        out, w = ours(x, None if not cross else mem, need_weights=True, **kw_ours)
        out_ref, w_ref = ref(x, mem, mem, need_weights=True, average_attn_weights=False, **kw_ref)
        fast, _ = ours(x, None if not cross else mem, **kw_ours)  # the SDPA path
    torch.testing.assert_close(out, out_ref, **TOL)
    torch.testing.assert_close(w, w_ref, **TOL)  # (B, heads, L, S)
    torch.testing.assert_close(fast, out_ref, **TOL)


def test_cross_attention_with_distinct_key_and_value_matches_nn():
    ours, ref = _pair(16, 2)
    x, k, v = torch.randn(2, 3, 16), torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, k, v)[0], ref(x, k, v, need_weights=False)[0], **TOL)


def test_no_bias_matches_nn():
    ours, ref = _pair(8, 2, bias=False)
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], ref(x, x, x, need_weights=False)[0], **TOL)


def test_kv_cache_reproduces_full_causal_attention():
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        full, _ = mha(x, is_causal=True)
        cache = KVCache(capacity=4)  # small, so that it grows twice on the way
        out, _ = mha(x[:, :3], is_causal=True, cache=cache)  # prompt of 3
        steps = [out]
        out, _ = mha(x[:, 3:5], is_causal=True, cache=cache)  # two at once: causal mask aligned to the last 2
        steps.append(out)
        for t in range(5, 9):  # then one token at a time (no mask at all)
            steps.append(mha(x[:, t : t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)
    assert cache.keys.shape == (2, 4, 9, 4) and cache.capacity == 16  # (B, heads, S, d); 4 -> 8 -> 16


@pytest.mark.parametrize("bias", [True, False])
def test_cached_self_attention_equals_the_module_with_a_cache(bias):
    # The functional decoding path: a prompt of 3 (causal among them), then single positions, in float64.
    mha = MultiHeadAttention(16, 4, bias=bias).double().eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # biases start at 0
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    w, ref_cache, cache = mha.decode_weights(), KVCache(2), KVCache(2)
    with torch.no_grad():
        for lo, hi in ((0, 3), (3, 4), (4, 5), (5, 7)):
            ref, _ = mha(x[:, lo:hi], is_causal=hi - lo > 1, cache=ref_cache)
            torch.testing.assert_close(cached_self_attention(x[:, lo:hi], cache, w), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cache.keys, ref_cache.keys, rtol=0, atol=0)
    torch.testing.assert_close(cache.values, ref_cache.values, rtol=0, atol=0)


def test_cached_cross_attention_equals_the_module_on_precomputed_keys_and_values():
    mha = MultiHeadAttention(16, 4).double().eval()
    x, memory = torch.randn(3, 2, 16, dtype=torch.float64), torch.randn(3, 6, 16, dtype=torch.float64)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True  # row 1 has two padding positions
    with torch.no_grad():
        ref, _ = mha(x, memory, key_padding_mask=pad)
        _, k, v = mha.project_qkv(memory, memory)  # keys/values (B, heads, S, d), as a decoder caches them
        ref_w = mha(x, memory, key_padding_mask=pad, need_weights=True)[1]
        out, _ = cached_cross_attention(x, (k, v), mha.decode_weights(), ~pad[:, None, None, :])
        _, weights = cached_cross_attention(x, (k, v), mha.decode_weights(), ~pad[:, None, None, :],
                                            need_weights=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weights, ref_w, rtol=1e-12, atol=1e-12)


def test_kv_cache_writes_in_place_and_keeps_its_length():
    cache = KVCache(capacity=8)
    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    keys, values = cache.append(k[:, :, :3], v[:, :, :3])
    buffer = cache.k
    assert cache.length == 3 and buffer.shape == (2, 3, 8, 4)
    assert keys.data_ptr() == buffer.data_ptr()  # a view of the buffer, not a copy
    keys, values = cache.append(k[:, :, 3:4], v[:, :, 3:4])
    assert cache.k is buffer and cache.length == 4  # written into the same storage: nothing reallocated
    assert torch.equal(keys, k[:, :, :4]) and torch.equal(values, v[:, :, :4])
    assert torch.equal(cache.keys, k[:, :, :4]) and torch.equal(cache.values, v[:, :, :4])


def test_kv_cache_grows_past_its_capacity_and_refuses_past_max_length():
    cache = KVCache(capacity=2, max_length=5)
    k = torch.randn(1, 2, 6, 3)
    for t in range(5):
        cache.append(k[:, :, t : t + 1], -k[:, :, t : t + 1])
    assert cache.capacity == 5 and torch.equal(cache.keys, k[:, :, :5]) and torch.equal(cache.values, -k[:, :, :5])
    with pytest.raises(ValueError, match="KV cache overflow: 6 positions requested, max_length=5"):
        cache.append(k[:, :, 5:], k[:, :, 5:])
    with pytest.raises(ValueError, match="KV cache overflow: 4 positions requested, max_length=3"):
        KVCache(capacity=2, max_length=3).append(k[:, :, :4], k[:, :, :4])  # already on the first write
    two = KVCache()
    two.append(torch.randn(2, 2, 1, 3), torch.randn(2, 2, 1, 3))
    with pytest.raises(ValueError, match="cannot append keys"):  # a batch of 1 would broadcast into 2 rows
        two.append(torch.randn(1, 2, 1, 3), torch.randn(1, 2, 1, 3))
    with pytest.raises(ValueError, match="cannot append keys"):  # float64 would be cast silently
        two.append(torch.randn(2, 2, 1, 3, dtype=torch.float64), torch.randn(2, 2, 1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="empty"):
        _ = KVCache().keys


def test_kv_cache_reorder_selects_rows_and_is_independent():
    cache = KVCache(capacity=4)
    k, v = torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4)
    cache.append(k, v)
    index = torch.tensor([2, 2, 0])  # beam search: duplicate one beam, drop another
    new = cache.reorder(index)
    assert new.length == 2 and torch.equal(new.keys, k[index]) and torch.equal(new.values, v[index])
    step = torch.randn(3, 2, 1, 4)
    new.append(step, step)  # extending the copy leaves the original alone
    assert cache.length == 2 and torch.equal(cache.keys, k)
    assert torch.equal(new.keys, torch.cat([k[index], step], dim=2))


def test_dropout_only_in_training():
    mha = MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(2, 5, 8)
    mha.eval()
    torch.testing.assert_close(mha(x)[0], mha(x)[0])
    mha.train()
    assert not torch.allclose(mha(x)[0], mha(x)[0])


@pytest.mark.parametrize("kw,match", [
    (dict(attn_mask=torch.ones(4, 5, dtype=torch.bool)), r"attn_mask has shape \(4, 5\).*L=5, S=5"),
    (dict(attn_mask=torch.ones(3, 5, 5, dtype=torch.bool)), r"attn_mask has shape \(3, 5, 5\).*B=2, heads=2"),
    (dict(attn_mask=torch.ones(2, 3, 5, 5, dtype=torch.bool)), r"attn_mask has shape \(2, 3, 5, 5\)"),
    (dict(attn_mask=torch.ones(5, dtype=torch.bool)), r"attn_mask has shape \(5,\)"),
    (dict(key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)), r"key_padding_mask has shape \(2, 4\).*S=5"),
    (dict(key_padding_mask=torch.zeros(3, 5, dtype=torch.bool)), r"key_padding_mask has shape \(3, 5\).*B=2"),
])
def test_wrong_mask_shapes_raise_clear_errors(kw, match):
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=match):
        mha(torch.randn(2, 5, 8), **kw)


def test_wrong_input_shapes_raise_clear_errors():
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"query must be \(B, L, 8\)"):
        mha(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"key must be \(B=2, S, 8\)"):
        mha(torch.randn(2, 5, 8), torch.randn(3, 5, 8))
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="size mismatch"):
        MultiHeadAttention(8, 2).load_from_torch(nn.MultiheadAttention(8, 4, batch_first=True))


def test_merge_masks_bool_and_float():
    allowed = torch.tensor([[True, False, True], [True, True, False]])
    pad = torch.tensor([[False, False, True]])
    m = merge_masks(allowed, pad, False, 2, 3, torch.float32, torch.device("cpu"))
    assert m.dtype == torch.bool and m.shape == (1, 1, 2, 3)
    assert m[0, 0].tolist() == [[True, False, False], [True, True, False]]
    f = merge_masks(torch.zeros(2, 3), pad, True, 2, 3, torch.float32, torch.device("cpu"))
    assert f.dtype == torch.float32
    # causal with S > L: query 0 sits at position 1, sees keys 0..1; key 2 is padding
    assert torch.isinf(f[0, 0]).tolist() == [[False, False, True], [False, False, True]]
