"""The Transformer (arXiv:1706.03762): equal to nn.Transformer on copied weights, masks, positions, configs.

Run: python -m pytest -q tests/models/test_transformer.py   (add -m slow for the training check)
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import paperzoo
from paperzoo.layers.pos_embed import sinusoidal_position_encoding
from paperzoo.models.transformer import Transformer, TransformerConfig, load_torch_transformer

D, H, FF = 32, 4, 64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only cost (conftest)


def _tiny(**kw) -> Transformer:
    cfg = dict(src_vocab_size=23, tgt_vocab_size=19, N_enc=2, N_dec=2, d_model=D, d_ff=FF, h=H)
    return Transformer(TransformerConfig(**{**cfg, **kw}))


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("padded", [False, True], ids=["no-pad", "pad"])
def test_core_equals_nn_transformer_on_copied_weights(norm_first, padded):
    ref = nn.Transformer(D, H, 2, 2, FF, dropout=0.1, batch_first=True, norm_first=norm_first).eval()
    ours = _tiny(norm_first=norm_first, final_norm=True, attn_drop=0.1, act_drop=0.1).eval()
    load_torch_transformer(ours, ref)
    src, tgt = torch.randn(3, 7, D), torch.randn(3, 5, D)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    if padded:
        kpm[1, 5:] = True
        kpm[2, 2:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        expected = ref(src, tgt, tgt_mask=causal, tgt_is_causal=True, src_key_padding_mask=kpm if padded else None,
                       memory_key_padding_mask=kpm if padded else None)
        exp_memory = ref.encoder(src, src_key_padding_mask=kpm if padded else None)
        memory = ours.encoder(src, kpm if padded else None)
        out = ours.decoder(tgt, memory, memory_key_padding_mask=kpm if padded else None)
    # nn.TransformerEncoder's inference fast path writes zeros at padded positions: compare real ones only
    torch.testing.assert_close(memory[~kpm], exp_memory[~kpm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_target_padding_mask_equals_nn_transformer():
    ref = nn.Transformer(D, H, 1, 2, FF, dropout=0.0, batch_first=True).eval()
    ours = _tiny(N_enc=1, final_norm=True).eval()
    load_torch_transformer(ours, ref)
    src, tgt = torch.randn(2, 6, D), torch.randn(2, 5, D)
    tkpm = torch.tensor([[False, False, False, True, True], [False] * 5])  # padded queries 3, 4 see keys 0..2
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)  # nn's convention: True = blocked
    with torch.no_grad():
        expected = ref(src, tgt, tgt_mask=causal, tgt_key_padding_mask=tkpm)
        out = ours.decoder(tgt, ours.encoder(src), tgt_key_padding_mask=tkpm)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_load_from_mismatched_nn_transformer_fails():
    ref = nn.Transformer(D, H, 3, 2, FF, batch_first=True)
    with pytest.raises(ValueError, match=r"(?s)does not fit.*Unexpected key.*layers\.2"):
        load_torch_transformer(_tiny(final_norm=True), ref)
    with pytest.raises(ValueError, match="final_norm=True"):  # nn.Transformer always has final norms
        load_torch_transformer(_tiny(final_norm=False), nn.Transformer(D, H, 2, 2, FF, batch_first=True))


def test_sinusoidal_positions_follow_sec_3_5():
    pe = sinusoidal_position_encoding(50, 16)
    for pos in (0, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    model = _tiny(max_len=8)
    x = torch.zeros(1, 20, D)
    torch.testing.assert_close(model.pos(x, offset=3)[0], sinusoidal_position_encoding(23, D)[3:])  # grows
    assert "pos.pe" not in model.state_dict()  # fixed, so never saved


def test_embeddings_scaled_by_sqrt_d_model_plus_positions():
    model = _tiny().eval()
    tokens = torch.tensor([[3, 4, 5]])
    expected = model.src_embed.weight[tokens] * math.sqrt(D) + sinusoidal_position_encoding(3, D)
    torch.testing.assert_close(model.embed(tokens, model.src_embed), expected)


def test_padding_does_not_change_the_output():
    model = _tiny().eval()
    src = torch.randint(3, 23, (1, 5))
    tgt = torch.randint(3, 19, (1, 4))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], dim=1)  # pad_id = 0
    with torch.no_grad():
        torch.testing.assert_close(model(padded, tgt), model(src, tgt), rtol=1e-5, atol=1e-5)
        # with lengths instead of pad ids
        lengths_mask = model.src_padding_mask(padded, torch.tensor([5]))
        assert lengths_mask.tolist() == [[False] * 5 + [True] * 3]


def test_decoder_is_causal():
    model = _tiny().eval()
    src, tgt = torch.randint(3, 23, (2, 6)), torch.randint(3, 19, (2, 5))
    changed = tgt.clone()
    changed[:, 3:] = 7
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_shared_and_tied_embeddings():
    shared = _tiny(src_vocab_size=19, share_embeddings=True)
    assert shared.src_embed is shared.tgt_embed
    assert shared.generator.weight is shared.tgt_embed.weight
    separate = _tiny(src_vocab_size=19, tie_output=False)
    n = paperzoo.count_params
    assert n(separate) - n(shared) == 2 * 19 * D
    with pytest.raises(ValueError, match="share_embeddings needs one vocabulary"):
        _tiny(share_embeddings=True)


@pytest.mark.parametrize("norm_first", [False, True])
def test_forward_backward_and_dropout(norm_first):
    model = _tiny(norm_first=norm_first, P_drop=0.1)
    src, tgt = torch.randint(0, 23, (2, 6)), torch.randint(0, 19, (2, 5))
    logits = model(src, tgt)
    assert logits.shape == (2, 5, 19) and torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not torch.equal(model(src, tgt), model(src, tgt))  # dropout active in training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(src, tgt), model(src, tgt))


def test_registered_base_config_is_the_paper():
    with torch.device("meta"):
        model = paperzoo.create_model("transformer_base")
    cfg = model.cfg
    assert (cfg.N_enc, cfg.N_dec, cfg.d_model, cfg.d_ff, cfg.h, cfg.P_drop) == (6, 6, 512, 2048, 8, 0.1)
    assert cfg.share_embeddings and not cfg.norm_first
    # Table 3: 65M parameters for the base model with its ~37k shared BPE vocabulary
    assert paperzoo.count_params(model) == pytest.approx(65e6, rel=0.03)
    assert paperzoo.get_entry("transformer_base").kind == "sequence"
    with torch.device("meta"):
        big = paperzoo.create_model("transformer_big")
    assert paperzoo.count_params(big) == pytest.approx(213e6, rel=0.03)  # Table 3: 213M
    small = paperzoo.create_model("transformer_small", src_vocab_size=50, tgt_vocab_size=60)
    assert small.generator.out_features == 60


def test_bad_inputs_raise_clear_errors():
    model = _tiny()
    with pytest.raises(ValueError, match="src must be integer token ids"):
        model(torch.randn(2, 5), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="activation"):
        _tiny(activation="tanh")


@pytest.mark.slow
def test_learns_to_reverse_sequences():
    """End to end: a tiny model trained for a few hundred steps reverses unseen sequences with greedy decoding."""
    torch.manual_seed(0)
    vocab = 12

    def batch(n, gen=None):
        lengths = torch.randint(2, 6, (n,), generator=gen)
        src = torch.zeros(n, 5, dtype=torch.long)
        tgt = torch.zeros(n, 7, dtype=torch.long)
        for i, n_i in enumerate(lengths.tolist()):
            s = torch.randint(3, vocab, (n_i,), generator=gen)
            src[i, :n_i] = s
            tgt[i, 0], tgt[i, 1 : n_i + 1], tgt[i, n_i + 1] = 1, s.flip(0), 2
        return src, tgt

    model = _tiny(src_vocab_size=vocab, tgt_vocab_size=vocab, share_embeddings=True, P_drop=0.0, norm_first=True)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(300):
        src, tgt = batch(64)
        loss = F.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    src, tgt = batch(100, torch.Generator().manual_seed(123))
    out = model.generate(src, max_len=7)
    hits = sum(torch.equal(out[i, : int((tgt[i] > 0).sum()) - 1], tgt[i, 1 : int((tgt[i] > 0).sum())])
               for i in range(100))
    beam = model.generate(src, max_len=7, method="beam", beam_size=3)
    assert hits >= 90, hits
    assert beam.tokens.shape[:2] == (100, 1)


def test_checkpoint_round_trip_keeps_embeddings_tied(tmp_path):
    from safetensors.torch import save_file

    kw = dict(src_vocab_size=30, tgt_vocab_size=30, share_embeddings=True, d_model=D, d_ff=FF, h=H)
    a = paperzoo.create_model("transformer_tiny", **kw).eval()
    save_file({k: v.clone() for k, v in a.state_dict().items()}, tmp_path / "m.safetensors")  # ties saved twice
    b = paperzoo.load_weights(paperzoo.create_model("transformer_tiny", **kw), tmp_path / "m.safetensors").eval()
    assert b.generator.weight is b.tgt_embed.weight is b.src_embed.weight
    src, tgt = torch.randint(3, 30, (2, 6)), torch.randint(3, 30, (2, 4))
    with torch.no_grad():
        assert torch.equal(a(src, tgt), b(src, tgt))


def test_attention_maps_explicit_path_agrees_and_respects_masks():
    model = _tiny().eval()
    src = torch.randint(3, 23, (2, 6))
    src[1, 4:] = 0  # padding
    tgt = torch.randint(3, 19, (2, 5))
    with torch.no_grad():
        fast = model(src, tgt)
    maps = model.attention_maps(src, tgt)
    assert model.decoder.layers[0].keep_attn is False and model.decoder.layers[0].cross_weights is None
    assert [m.shape for m in maps["cross"]] == [(2, H, 5, 6)] * 2
    assert [m.shape for m in maps["encoder"]] == [(2, H, 6, 6)] * 2
    for m in maps["encoder"] + maps["decoder"] + maps["cross"]:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))  # each row is a distribution
    for m in maps["decoder"]:
        assert (m.triu(1) == 0).all()  # masked self-attention: nothing from the future
    for m in maps["cross"] + maps["encoder"]:
        assert (m[1, :, :, 4:] == 0).all()  # nothing from source padding
    # the explicit path (used for the maps) gives the same logits as the fused one
    for layer in [*model.encoder.layers, *model.decoder.layers]:
        layer.keep_attn = True
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt), fast, rtol=1e-5, atol=1e-5)
