"""Position encodings: the sinusoidal formula of Sec. 3.5, learned embeddings, ViT grid interpolation, Swin's
relative-position index (worked by hand) and bias table resizing; patch embedding sizes and errors."""

import math

import pytest
import torch

from paperzoo.layers import (
    LearnedPositionEmbedding,
    Mlp,
    PatchEmbed,
    RelativePositionBias,
    SinusoidalPositionalEncoding,
    relative_position_index,
    resize_pos_embed,
    resize_rel_pos_bias_table,
    sinusoidal_position_encoding,
)


def test_sinusoidal_matches_the_formula_of_sec_3_5():
    n, d = 11, 8
    pe = sinusoidal_position_encoding(n, d)
    for pos in range(n):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_offsets_are_linear_maps():
    # Sec. 3.5: "for any fixed offset k, PE_pos+k can be represented as a linear function of PE_pos"
    pe = sinusoidal_position_encoding(20, 6).double()
    k = 3
    freqs = 1 / 10000 ** (torch.arange(0, 6, 2, dtype=torch.float64) / 6)
    for i, w in enumerate(freqs):
        c, s = math.cos(k * w), math.sin(k * w)
        sin_p, cos_p = pe[:-k, 2 * i], pe[:-k, 2 * i + 1]
        torch.testing.assert_close(pe[k:, 2 * i], sin_p * c + cos_p * s, atol=1e-6, rtol=0)
        torch.testing.assert_close(pe[k:, 2 * i + 1], cos_p * c - sin_p * s, atol=1e-6, rtol=0)


def test_sinusoidal_module_offset_and_growth():
    enc = SinusoidalPositionalEncoding(8, max_len=4)
    x = torch.zeros(2, 6, 8)
    out = enc(x)  # longer than max_len: the table grows
    torch.testing.assert_close(out[0], sinusoidal_position_encoding(6, 8))
    torch.testing.assert_close(enc(x[:, :1], offset=5)[0, 0], sinusoidal_position_encoding(6, 8)[5])
    assert "pe" not in enc.state_dict()
    with pytest.raises(ValueError, match="even"):
        sinusoidal_position_encoding(4, 5)


def test_learned_position_embedding():
    emb = LearnedPositionEmbedding(5, 4)
    x = torch.zeros(2, 3, 4)
    torch.testing.assert_close(emb(x, offset=1)[1], emb.weight[0, 1:4])
    with pytest.raises(ValueError, match="exceeds the 5 learned positions"):
        emb(torch.zeros(1, 6, 4))


def test_resize_pos_embed_keeps_prefix_and_interpolates_the_grid():
    gh, gw, c = 3, 4, 2
    rows = torch.arange(gh).float()[:, None].expand(gh, gw)
    cols = torch.arange(gw).float()[None, :].expand(gh, gw)
    grid = torch.stack([rows, cols], -1).reshape(1, gh * gw, c)  # channel 0 = row, channel 1 = column
    cls = torch.tensor([[[7.0, -7.0]]])
    pe = torch.cat([cls, grid], 1)
    assert resize_pos_embed(pe, (gh, gw), (gh, gw)) is pe
    out = resize_pos_embed(pe, (6, 5), (gh, gw))
    assert out.shape == (1, 1 + 30, 2)
    torch.testing.assert_close(out[:, :1], cls)
    new = out[0, 1:].reshape(6, 5, 2)
    # the row channel varies only down the rows and the column channel only across columns, both increasing
    torch.testing.assert_close(new[..., 0], new[:, :1, 0].expand(6, 5))
    torch.testing.assert_close(new[..., 1], new[:1, :, 1].expand(6, 5))
    assert (new[1:, 0, 0] >= new[:-1, 0, 0]).all() and (new[0, 1:, 1] >= new[0, :-1, 1]).all()
    # a square grid is inferred; a non-square count needs old_grid
    assert resize_pos_embed(torch.randn(1, 1 + 16, 3), (2, 2)).shape == (1, 5, 3)
    with pytest.raises(ValueError, match="old_grid"):
        resize_pos_embed(torch.randn(1, 1 + 12, 3), (2, 2))


def test_relative_position_index_by_hand_2x2():
    # tokens (0,0), (0,1), (1,0), (1,1); table 3x3 rows (dy+1)*3 + (dx+1); dy, dx = query - key
    expected = torch.tensor([
        [4, 3, 1, 0],
        [5, 4, 2, 1],
        [7, 6, 4, 3],
        [8, 7, 5, 4],
    ])
    assert torch.equal(relative_position_index(2), expected)


def test_relative_position_index_of_a_sub_window_indexes_the_same_table():
    full = relative_position_index((3, 3))
    sub = relative_position_index((2, 3), table_window=(3, 3))
    keep = torch.tensor([0, 1, 2, 3, 4, 5])  # the first two rows of the 3x3 window
    assert torch.equal(sub, full[keep][:, keep])
    with pytest.raises(ValueError, match="larger"):
        relative_position_index(4, table_window=3)


def test_relative_position_bias_is_translation_invariant():
    rpb = RelativePositionBias(3, num_heads=2)
    bias = rpb()  # (heads, N, N)
    assert bias.shape == (2, 9, 9)
    # token 0=(0,0) -> 4=(1,1) and token 4=(1,1) -> 8=(2,2) have the same offset
    torch.testing.assert_close(bias[:, 0, 4], bias[:, 4, 8])
    assert not torch.allclose(bias[:, 0, 4], bias[:, 4, 0])
    assert rpb((2, 2)).shape == (2, 4, 4)
    assert "relative_position_index" not in rpb.state_dict()


def test_resize_rel_pos_bias_table():
    t = torch.randn(13 * 13, 3)
    assert resize_rel_pos_bias_table(t, 7) is t
    out = resize_rel_pos_bias_table(t, 12)
    assert out.shape == (23 * 23, 3)
    const = torch.full((13 * 13, 2), 0.5)
    torch.testing.assert_close(resize_rel_pos_bias_table(const, (4, 5)), torch.full((7 * 9, 2), 0.5))
    with pytest.raises(ValueError, match="old_window"):
        resize_rel_pos_bias_table(torch.randn(12, 2), 3)


def test_patch_embed_shapes_padding_and_errors():
    pe = PatchEmbed(4, in_chans=1, embed_dim=8)
    assert pe(torch.randn(2, 1, 28, 32)).shape == (2, 7, 8, 8)  # (B, gh, gw, D)
    with pytest.raises(ValueError, match=r"input 30x32 is not divisible by the patch size 4x4"):
        pe(torch.randn(1, 1, 30, 32))
    padded = PatchEmbed(4, in_chans=1, embed_dim=8, pad=True)
    padded.load_state_dict(pe.state_dict())
    x = torch.randn(1, 1, 30, 33)
    out = padded(x)
    assert out.shape == (1, 8, 9, 8) and padded.grid_size(30, 33) == (8, 9)
    x_pad = torch.nn.functional.pad(x, (0, 3, 0, 2))
    torch.testing.assert_close(out, pe(x_pad))


def test_patch_embed_is_a_linear_map_of_each_flattened_patch():
    pe = PatchEmbed(2, in_chans=3, embed_dim=5)
    x = torch.randn(1, 3, 4, 6)
    out = pe(x)
    patch = x[0, :, 2:4, 4:6].reshape(-1)  # patch (row 1, col 2), flattened (C, P, P)
    ref = pe.proj.weight.reshape(5, -1) @ patch + pe.proj.bias
    torch.testing.assert_close(out[0, 1, 2], ref)


def test_mlp_shapes():
    assert Mlp(8, 32)(torch.randn(2, 3, 8)).shape == (2, 3, 8)
    assert Mlp(8, 32, 4)(torch.randn(2, 8)).shape == (2, 4)
