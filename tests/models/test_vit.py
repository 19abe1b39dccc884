"""ViT: explicit vs SDPA attention, attention maps, any size (interpolated position embedding, padding or a
clear error), checkpoints across sizes, small_input, pooling, FLOPs with attention included, a training step."""

import pytest
import torch

import paperzoo
from paperzoo.flops import count_flops
from paperzoo.layers import resize_pos_embed
from paperzoo.models.vit import VisionTransformer, ViTConfig


def tiny(**kw) -> VisionTransformer:
    cfg = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    cfg.update(kw)
    return VisionTransformer(ViTConfig(**cfg)).eval()


def test_attention_maps_and_explicit_path_agree_with_sdpa():
    model = tiny()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        fast = model.forward_features(x)
        slow, maps = model.forward_features(x, return_attention=True)
    torch.testing.assert_close(slow, fast, rtol=1e-5, atol=1e-5)
    assert len(maps) == 2
    for w in maps:
        assert w.shape == (2, 4, 17, 17)  # (B, heads, 1 + N, 1 + N)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 17))
    maps2 = model.attention_maps(x)
    torch.testing.assert_close(maps2[1], maps[1])


def test_token_layout_and_heads():
    model = tiny()
    feats = model.forward_features(torch.randn(1, 3, 16, 12))
    assert feats.shape == (1, 1 + 4 * 3, 32)  # [CLS] + a 4x3 patch grid
    assert model.blocks[0].attn.head_dim == 8  # D / heads


def test_any_size_interpolates_the_position_embedding():
    model = tiny()
    x = torch.randn(1, 3, 24, 20)
    out = model(x)
    assert out.shape == (1, 5)
    pe = model.pos_embed_for((6, 5))
    torch.testing.assert_close(pe, resize_pos_embed(model.pos_embed, (6, 5), (4, 4)))
    assert model.pos_embed_for((4, 4)) is model.pos_embed  # native grid: no interpolation


def test_sizes_not_divisible_by_the_patch_pad_or_raise():
    padded = tiny()
    x = torch.randn(1, 3, 18, 15)
    x_pad = torch.nn.functional.pad(x, (0, 1, 0, 2))
    torch.testing.assert_close(padded(x), padded(x_pad))  # zero padding, bottom/right
    strict = tiny(pad_input=False)
    with pytest.raises(ValueError, match=r"input 18x15 is not divisible by the patch size 4x4"):
        strict(x)


def test_checkpoint_trained_at_one_size_loads_at_another(tmp_path):
    src = paperzoo.create_model("vit_tiny_patch4_32", num_classes=3, depth=2).eval()
    path = tmp_path / "vit32.pth"
    torch.save(src.state_dict(), path)
    dst = paperzoo.create_model("vit_tiny_patch4_32", num_classes=3, depth=2, img_size=48).eval()
    assert dst.pos_embed.shape == (1, 1 + 144, 192)
    paperzoo.load_weights(dst, path)  # 8x8 grid -> 12x12, bicubic
    torch.testing.assert_close(dst.pos_embed, resize_pos_embed(src.pos_embed, (12, 12)))
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=1e-5, atol=1e-5)  # src interpolates on the fly


def test_small_input_switches_to_small_patches():
    model = paperzoo.create_model("vit_base_patch16_224", num_classes=7, in_chans=1, small_input=True,
                                  depth=1)
    assert model.cfg.patch_size == 4 and model.grid_size == (8, 8) and model.min_input_size == (4, 4)
    assert model(torch.randn(2, 1, 28, 36)).shape == (2, 7)


def test_pooling_options_and_pre_logits_head():
    mean = tiny(pool="mean")
    x = torch.randn(2, 3, 16, 16)
    feats = mean.forward_features(x)
    torch.testing.assert_close(mean.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1))
    no_cls = tiny(pool="mean", class_token=False)
    assert no_cls.forward_features(x).shape == (2, 16, 32)
    with pytest.raises(ValueError, match="class_token"):
        tiny(class_token=False)
    hidden = tiny(head_hidden=10)
    assert hidden.num_features == 10 and hidden.forward_head(hidden.forward_features(x), True).shape == (2, 10)
    assert (hidden.forward_head(hidden.forward_features(x), True).abs() <= 1).all()  # tanh


def test_flops_include_attention():
    with torch.device("meta"):
        model = paperzoo.create_model("vit_tiny_patch4_32", depth=2)
    n, d, l = 65, 192, 2  # tokens (64 patches + [CLS]), D, L
    block = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * d * 4 * d  # qkv, Wᴼ, MLP
    attn = 2 * 2 * n * n * d  # QKᵀ and AV over all heads
    expected = l * (block + attn) + 2 * 64 * (3 * 4 * 4) * d + 2 * d * 1000  # + patch embed + head
    assert count_flops(model, inputs=torch.zeros(1, 3, 32, 32, device="meta")) == expected


@pytest.mark.slow
def test_vit_base_16_is_about_35_gflops():
    with torch.device("meta"):
        model = paperzoo.create_model("vit_base_patch16_224")
    flops = count_flops(model, inputs=torch.zeros(1, 3, 224, 224, device="meta"))
    assert 35.0e9 < flops < 35.3e9  # 17.6 GMACs x 2


def test_training_step_reduces_loss_and_drop_path_is_stochastic():
    model = tiny(drop_path_rate=0.5).train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    assert not torch.equal(model(x), model(x))  # stochastic depth in training
    model = tiny().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model.pos_embed.grad is not None and model.cls_token.grad is not None


def test_vit_huge_without_head_has_exactly_timms_count():
    # timm's vit_huge_patch14_224 is the ImageNet-21k tag without a classifier: 630,764,800 parameters
    import paperzoo

    with torch.device("meta"):
        model = paperzoo.create_model("vit_huge_patch14_224", num_classes=0)
    assert paperzoo.count_params(model) == 630_764_800
