"""models/fast_decode.py: the KV-cached decoding steps equal the forward of the modules they restate.

Each function runs on chunks of positions (a prompt of several, causal among themselves, then single ones)
after the ones already cached; the reference is the module's ``forward`` over all positions so far, in float64,
with LayerNorms and biases made distinct (they start at 1 and 0). Also the KVCache buffers themselves.

Run: python -m pytest -q tests/models/test_fast_decode.py
"""

import pytest
import torch

from paperzoo.layers.attention import MultiHeadAttention
from paperzoo.models import fast_decode as fd
from paperzoo.models.gpt import GPT, GPTConfig
from paperzoo.models.transformer import Transformer, TransformerConfig

CHUNKS = ((0, 3), (3, 4), (4, 6))  # positions fed per step: a 3-token prompt, then one at a time
EXACT = dict(rtol=1e-12, atol=1e-12)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only cost (conftest)


def _distinct(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return module.double().eval()


def _padded_memory(b=2, s=5, c=32):
    memory = torch.randn(b, s, c, dtype=torch.float64)
    pad = torch.zeros(b, s, dtype=torch.bool)
    pad[0, 3:] = True
    return memory, pad


@pytest.mark.parametrize("bias", [True, False])
def test_self_attention_step_equals_causal_forward(bias):
    mha = _distinct(MultiHeadAttention(16, 4, bias=bias))
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    w, cache = fd.attention_weights(mha), fd.KVCache(2)  # capacity 2: grows on the way
    with torch.no_grad():
        for lo, hi in CHUNKS:
            ref = mha(x[:, :hi], is_causal=True)[0][:, lo:hi]
            torch.testing.assert_close(fd.self_attention_step(x[:, lo:hi], cache, w), ref, **EXACT)
    assert cache.keys.shape == (2, 4, 6, 4)  # (B, heads, t, d)


def test_cross_attention_step_equals_forward_on_padded_memory():
    mha = _distinct(MultiHeadAttention(32, 4))
    x, (memory, pad) = torch.randn(2, 3, 32, dtype=torch.float64), _padded_memory()
    with torch.no_grad():
        ref = mha(x, memory, key_padding_mask=pad)[0]
        out = fd.cross_attention_step(x, fd.memory_kv(mha, memory), fd.attention_weights(mha), ~pad[:, None, None, :])
    torch.testing.assert_close(out, ref, **EXACT)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_step_equals_decoder_layer_forward(norm_first, activation):
    cfg = TransformerConfig(src_vocab_size=9, tgt_vocab_size=9, N_enc=1, N_dec=1, d_model=32, d_ff=64, h=4,
                            norm_first=norm_first, activation=activation)
    layer = _distinct(Transformer(cfg).decoder.layers[0])
    x, (memory, pad) = torch.randn(2, 6, 32, dtype=torch.float64), _padded_memory()
    kv, allowed = fd.memory_kv(layer.cross_attn, memory), ~pad[:, None, None, :]
    w, cache = fd.decoder_layer_weights(layer), fd.KVCache(2)
    with torch.no_grad():
        for lo, hi in CHUNKS:
            ref = layer(x[:, :hi], memory, pad)[:, lo:hi]
            torch.testing.assert_close(fd.decoder_layer_step(x[:, lo:hi], kv, allowed, cache, w), ref, **EXACT)


@pytest.mark.parametrize("bias,gelu_approx", [(True, True), (False, False)])
def test_block_step_equals_block_forward(bias, gelu_approx):
    cfg = GPTConfig(vocab_size=9, block_size=8, n_layer=1, n_head=4, n_embd=32, bias=bias, gelu_approx=gelu_approx)
    block = _distinct(GPT(cfg).h[0])
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    w, cache = fd.block_weights(block), fd.KVCache(2)
    with torch.no_grad():
        for lo, hi in CHUNKS:
            torch.testing.assert_close(fd.block_step(x[:, lo:hi], cache, w), block(x[:, :hi])[:, lo:hi], **EXACT)


def test_states_read_parameters_updated_in_place():
    # A state holds references to the parameters: an in-place update between steps shows through. The updated
    # tensors act after every cached key/value (the last block's MLP, the final LayerNorm), so the step must then
    # equal a fresh forward pass.
    model = GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)).eval()
    prompt = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        state = model.init_state(prompt[:, :-1])
        model.ln_f.weight.mul_(2.0)
        model.h[1].mlp.c_proj.weight.mul_(3.0)
        logits, _ = model.step(prompt[:, -1], state)
        torch.testing.assert_close(logits, model(prompt)[:, -1], rtol=1e-5, atol=1e-5)


def test_kv_cache_writes_in_place_and_keeps_its_length():
    cache = fd.KVCache(capacity=8)
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
    cache = fd.KVCache(capacity=2, max_length=5)
    k = torch.randn(1, 2, 6, 3)
    for t in range(5):
        cache.append(k[:, :, t : t + 1], -k[:, :, t : t + 1])
    assert cache.capacity == 5 and torch.equal(cache.keys, k[:, :, :5]) and torch.equal(cache.values, -k[:, :, :5])
    with pytest.raises(ValueError, match="KV cache overflow: 6 positions requested, max_length=5"):
        cache.append(k[:, :, 5:], k[:, :, 5:])
    with pytest.raises(ValueError, match="KV cache overflow: 4 positions requested, max_length=3"):
        fd.KVCache(capacity=2, max_length=3).append(k[:, :, :4], k[:, :, :4])  # already on the first write
    two = fd.KVCache()
    two.append(torch.randn(2, 2, 1, 3), torch.randn(2, 2, 1, 3))
    with pytest.raises(ValueError, match="cannot append keys"):  # a batch of 1 would broadcast into 2 rows
        two.append(torch.randn(1, 2, 1, 3), torch.randn(1, 2, 1, 3))
    with pytest.raises(ValueError, match="cannot append keys"):  # float64 would be cast silently
        two.append(torch.randn(2, 2, 1, 3, dtype=torch.float64), torch.randn(2, 2, 1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="empty"):
        _ = fd.KVCache().keys


def test_kv_cache_reorder_selects_rows_and_is_independent():
    cache = fd.KVCache(capacity=4)
    k, v = torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4)
    cache.append(k, v)
    index = torch.tensor([2, 2, 0])  # beam search: duplicate one beam, drop another
    new = cache.reorder(index)
    assert new.length == 2 and torch.equal(new.keys, k[index]) and torch.equal(new.values, v[index])
    step = torch.randn(3, 2, 1, 4)
    new.append(step, step)  # extending the copy leaves the original alone
    assert cache.length == 2 and torch.equal(cache.keys, k)
    assert torch.equal(new.keys, torch.cat([k[index], step], dim=2))
