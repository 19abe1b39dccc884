"""GPT-style decoder-only LM: GPT-2 size and init, causality, positions, KV cache, learning.

Run: python -m pytest -q tests/models/test_gpt.py
"""

import math

import pytest
import torch
import torch.nn.functional as F

import paperzoo
from paperzoo.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only cost (conftest)


def _tiny(**kw) -> GPT:
    return GPT(GPTConfig(**{"vocab_size": 37, "block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32, **kw}))


def test_gpt2_small_has_the_reference_parameter_count():
    with torch.device("meta"):
        model = paperzoo.create_model("gpt2")
    assert paperzoo.count_params(model) == paperzoo.get_entry("gpt2").ref_params == 124_439_808
    assert model.lm_head.weight is model.wte.weight


def test_registered_small_configs_build_and_run():
    for name in ("gpt_mini", "gpt_char_small"):
        model = paperzoo.create_model(name, vocab_size=50).eval()
        assert paperzoo.get_entry(name).kind == "sequence"
        with torch.no_grad():
            assert model(torch.randint(0, 50, (2, 9))).shape == (2, 9, 50)


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    model = _tiny(n_layer=8, n_embd=128)
    proj = torch.cat([b.attn.out_proj.weight.flatten() for b in model.h])
    other = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.h])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert other.std().item() == pytest.approx(0.02, rel=0.05)
    assert all((b.attn.in_proj.bias == 0).all() for b in model.h)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_causal_future_tokens_do_not_change_past_logits(pos):
    model = _tiny(pos=pos).eval()
    x = torch.randint(0, 37, (2, 10))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 37
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_cached_steps_equal_full_forward(pos):
    model = _tiny(pos=pos).double().eval()
    x = torch.randint(0, 37, (3, 12))
    with torch.no_grad():
        full = model(x)
        state = model.init_state(x[:, :4])  # a prompt prefix fills the cache in one pass
        for t in range(4, 12):
            logits, state = model.step(x[:, t], state)
            torch.testing.assert_close(logits, full[:, t], rtol=1e-10, atol=1e-10)
        assert state.kv[0].keys.shape == (3, 4, 12, 8)  # (B, heads, t, d)


def test_default_gelu_is_gpt2_tanh_approximation():
    # OpenAI's GPT-2 code: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); exact erf GELU on request.
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    gpt2 = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(_tiny().h[0].mlp.act(x), gpt2)
    exact = _tiny(gelu_approx=False).h[0].mlp.act(x)
    torch.testing.assert_close(exact, 0.5 * x * (1 + torch.erf(x / math.sqrt(2))))
    assert (exact - gpt2).abs().max() > 1e-5  # the two forms really differ


def test_too_long_and_bad_inputs_raise():
    model = _tiny()
    with pytest.raises(ValueError, match="longer than block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.randn(1, 4))
    with pytest.raises(ValueError, match="pos must be"):
        _tiny(pos="rotary")


def test_generate_continues_past_block_size_with_a_sliding_context():
    model = _tiny().eval()
    prompt = torch.randint(0, 37, (2, 3))
    out = model.generate(prompt, 30, method="greedy")
    assert out.shape == (2, 33) and torch.equal(out[:, :3], prompt)
    assert torch.equal(out, model.generate(prompt, 30, method="greedy", use_cache=False))


def test_learns_a_repeating_text():
    torch.manual_seed(0)
    model = _tiny(vocab_size=8, block_size=16, pos="sinusoidal")
    data = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7] * 4)
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    for _ in range(60):
        starts = torch.randint(0, 16, (8,))
        x = torch.stack([data[s : s + 16] for s in starts])
        y = torch.stack([data[s + 1 : s + 17] for s in starts])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    out = model.generate(torch.tensor([[3]]), 10, method="greedy")
    assert out.tolist() == [[3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5]]


def test_checkpoint_round_trip_keeps_the_output_tied(tmp_path):
    from safetensors.torch import save_file

    kw = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)
    a = paperzoo.create_model("gpt_mini", **kw).eval()
    save_file({k: v.clone() for k, v in a.state_dict().items()}, tmp_path / "m.safetensors")
    b = paperzoo.load_weights(paperzoo.create_model("gpt_mini", **kw), tmp_path / "m.safetensors").eval()
    assert b.lm_head.weight is b.wte.weight
    x = torch.randint(0, 37, (2, 9))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
