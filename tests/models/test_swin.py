"""Swin: the cyclic-shift mask (worked by hand and by brute force), explicit vs SDPA window attention, padding
never leaking into real tokens, masks cached per size, patch merging order, attention maps, FLOPs with the
window attention included, a training step."""

import pytest
import torch

import paperzoo
import paperzoo.models.swin as swin_mod
from paperzoo.flops import flop_counter
from paperzoo.models.swin import (
    PatchMerging,
    SwinBlock,
    SwinConfig,
    SwinTransformer,
    swin_shift_mask,
    swin_shift_regions,
    window_partition,
    window_reverse,
)


def tiny(**kw) -> SwinTransformer:
    cfg = dict(img_size=16, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=2,
               num_classes=5, drop_path_rate=0.0)
    cfg.update(kw)
    return SwinTransformer(SwinConfig(**cfg)).eval()


def test_shift_mask_4x4_window2_shift1_by_hand():
    # After rolling a 4x4 map by -1, the bands along each axis are rows/cols {0, 1}, {2}, {3}:
    regions = torch.tensor([
        [0, 0, 1, 2],
        [0, 0, 1, 2],
        [3, 3, 4, 5],
        [6, 6, 7, 8],
    ])
    assert torch.equal(swin_shift_regions(4, 4, 2, 1), regions)
    m = swin_shift_mask(4, 4, 2, 1)  # (nW=4, N=4, N=4); tokens of a window in raster order
    assert m.shape == (4, 4, 4)
    everyone = torch.ones(4, 4, dtype=torch.bool)
    assert torch.equal(m[0], everyone)  # top-left window: one region, all attend to all
    # top-right window: tokens (0,2) (0,3) (1,2) (1,3) have labels 1, 2, 1, 2 -> {0, 2} and {1, 3}
    assert m[1].tolist() == [[True, False, True, False], [False, True, False, True],
                             [True, False, True, False], [False, True, False, True]]
    # bottom-left window: labels 3, 3, 6, 6 -> {0, 1} and {2, 3}
    assert m[2].tolist() == [[True, True, False, False], [True, True, False, False],
                             [False, False, True, True], [False, False, True, True]]
    assert torch.equal(m[3], torch.eye(4, dtype=torch.bool))  # four different regions: only itself
    assert torch.equal(swin_shift_mask(4, 4, 2, 0), torch.ones(4, 4, 4, dtype=torch.bool))  # W-MSA: no mask


@pytest.mark.parametrize("h,w,win,shift", [(8, 8, 4, 2), (6, 9, 3, 1), (14, 7, 7, 3)])
def test_shift_mask_matches_brute_force_adjacency(h, w, win, shift):
    # Two tokens of one shifted window may attend iff, along each axis, both or neither wrapped around
    m = swin_shift_mask(h, w, win, shift)
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    coords = torch.stack([rows, cols], -1)[None].float()  # (1, H, W, 2)
    win_coords = window_partition(coords, (win, win)).long()  # (nW, N, 2)
    wrapped = torch.stack([win_coords[..., 0] >= h - shift, win_coords[..., 1] >= w - shift], -1)  # (nW, N, 2)
    expected = (wrapped[:, :, None] == wrapped[:, None, :]).all(-1)
    assert torch.equal(m, expected)


def test_window_partition_roundtrip():
    x = torch.randn(2, 6, 8, 3)
    win = window_partition(x, (3, 4))
    assert win.shape == (2 * 4, 12, 3)
    torch.testing.assert_close(win[1].view(3, 4, 3), x[0, 0:3, 4:8])  # window 1 = top-right block
    torch.testing.assert_close(window_reverse(win, (3, 4), 6, 8), x)


def test_explicit_and_sdpa_paths_agree_and_attention_maps():
    model = tiny()
    for size in [(16, 16), (14, 22)]:  # the second needs padding at every stage
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            fast = model.forward_features(x)
            slow, maps = model.forward_features(x, return_attention=True)
        torch.testing.assert_close(slow, fast, rtol=1e-5, atol=1e-5)
        assert len(maps) == 4
    assert fast.shape == (2, 32, 4, 6)  # (B, 2C, H/4, W/4) padded up at odd sides
    first, second = maps[0], maps[1]
    assert first.shift == (0, 0) and second.shift == (1, 1) and first.window == (2, 2)
    assert first.size == (7, 11) and first.padded_size == (8, 12)
    assert first.weights.shape == (2, 4, 6, 2, 4, 4)  # (B, nW_h, nW_w, heads, N, N)
    torch.testing.assert_close(first.weights.sum(-1), torch.ones(2, 4, 6, 2, 4))
    # padding keys get no weight: the window at the bottom-right corner has real token 0 only
    corner = first.weights[:, -1, -1, :, 0]  # query 0 of that window: (B, heads, N)
    assert (corner[..., 1:] == 0).all()


def test_padding_never_reaches_real_tokens():
    torch.manual_seed(0)
    blk = SwinBlock(8, 2, window=4, shift=0, mlp_ratio=2.0, qkv_bias=True, drop=0, attn_drop=0,
                    drop_path=0).eval()
    x = torch.randn(1, 5, 6, 8)  # padded to 8x8 inside the block
    with torch.no_grad():
        out = blk(x)[0]
        # window (rows 4-7, cols 0-3) holds real tokens only in row 4: the same as a 1x4 map alone
        alone = blk(x[:, 4:5, 0:4].contiguous())[0]
        top_left = blk(x[:, :4, :4].contiguous())[0]
    torch.testing.assert_close(out[:, 4:5, 0:4], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, :4, :4], top_left, rtol=1e-5, atol=1e-5)


def test_mask_is_cached_per_input_size(monkeypatch):
    calls = []
    real = swin_mod.swin_shift_mask

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(swin_mod, "swin_shift_mask", counting)
    model = tiny()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        model(x)
        n = len(calls)
        model(x)
        assert len(calls) == n > 0  # second forward reuses the masks
        model(torch.randn(1, 3, 20, 16))
    assert len(calls) > n  # a new size builds new masks


def test_small_window_feature_map_is_one_unshifted_window():
    blk = SwinBlock(8, 2, window=7, shift=3, mlp_ratio=2.0, qkv_bias=True, drop=0, attn_drop=0, drop_path=0)
    assert blk.window_and_shift(4, 14) == ((4, 7), (0, 3))  # per side, as timm
    assert blk.window_and_shift(14, 14) == ((7, 7), (3, 3))


def test_patch_merging_concatenates_neighbours_in_official_order():
    pm = PatchMerging(2, 4)
    x = torch.randn(1, 4, 6, 2)
    ref = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)  # x0..x3
    torch.testing.assert_close(pm(x), pm.reduction(pm.norm(ref)))
    assert pm(torch.randn(1, 5, 7, 2)).shape == (1, 3, 4, 4)  # odd sides padded


def test_relative_position_bias_is_used():
    model = tiny()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        model.layers[0].blocks[0].attn.rel_pos.relative_position_bias_table.add_(1.0 * torch.randn(9, 2))
        assert not torch.allclose(model(x), before)


def test_stage_widths_and_small_input():
    model = paperzoo.create_model("swin_tiny_patch4_window7_224", num_classes=3, depths=(1, 1, 1, 1)).eval()
    assert model.min_input_size == (32, 32) and model.num_features == 768
    assert model.forward_features(torch.randn(1, 3, 64, 96)).shape == (1, 768, 2, 3)  # (B, 8C, H/32, W/32)
    small = paperzoo.create_model("swin_tiny_patch4_window7_224", small_input=True, depths=(1, 1, 1, 1))
    assert (small.cfg.patch_size, small.cfg.window_size, small.min_input_size) == (2, 4, (16, 16))


def test_flops_include_window_attention():
    model = tiny(img_size=16)
    x = torch.randn(1, 3, 16, 16)
    with flop_counter() as fc, torch.no_grad():
        model(x)
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    attn = sum(v for k, v in counts.items() if "scaled_dot_product" in k)
    # QKᵀ and AV: 2 · 2 · tokens · N · C per block; stage 1 8x8 tokens, C=16; stage 2 4x4, C=32; N = 4
    expected = 2 * (4 * 64 * 4 * 16) + 2 * (4 * 16 * 4 * 32)
    assert attn == expected


def test_training_step_reduces_loss():
    model = tiny(drop_path_rate=0.1).train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert model.layers[0].blocks[1].attn.rel_pos.relative_position_bias_table.grad is not None


def test_caches_built_under_inference_mode_still_serve_training():
    import paperzoo

    model = paperzoo.create_model("swin_tiny_patch2_window4_32", num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        model.eval()(x)  # first call builds the masks and relative-position indices
    model.train()
    loss = model(x).sum()
    loss.backward()  # would fail if the cached tensors were inference tensors
    assert model.head.weight.grad is not None
