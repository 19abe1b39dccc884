"""Stand-alone self-attention (arXiv:1906.05909): the local attention layer against a naive loop over pixels
(Eq. 3 written out) and against PyTorch's SDPA, its stride/shape behaviour, k = 1 and the relative embeddings,
memory that grows with k^2 per pixel and not (H*W)^2, and the structure of the SASA-ResNets."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import paperzoo
from paperzoo.layers.local_attention import LocalSelfAttention2d
from paperzoo.models.resnet import Bottleneck, ResNet, ResNetConfig
from paperzoo.models.sasa import AttentionBottleneck


def naive_local_attention(layer: LocalSelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3 pixel by pixel: y_ij = sum_ab softmax_ab(q_ij.k_ab + q_ij.r_{a-i,b-j}) v_ab over the k x k window
    inside the image, per head, before any pooling."""
    B, _, H, W = x.shape
    k, N, d = layer.kernel_size, layer.heads, layer.dim_head
    q, key, v = (F.conv2d(x, conv.weight) for conv in (layer.to_q, layer.to_k, layer.to_v))
    y = torch.zeros(B, N * d, H, W, dtype=x.dtype)
    for b in range(B):
        for h in range(N):
            ch = slice(h * d, (h + 1) * d)
            for i in range(H):
                for j in range(W):
                    logits, values = [], []
                    for a in range(i - k // 2, i + k // 2 + 1):
                        for c in range(j - k // 2, j + k // 2 + 1):
                            if not (0 <= a < H and 0 <= c < W):
                                continue
                            r = torch.cat([layer.rel_row[h, a - i + k // 2], layer.rel_col[h, c - j + k // 2]])
                            qij = q[b, ch, i, j]
                            logits.append(layer.scale * (qij @ key[b, ch, a, c] + qij @ r))
                            values.append(v[b, ch, a, c])
                    w = torch.softmax(torch.stack(logits), 0)
                    y[b, ch, i, j] = (w[:, None] * torch.stack(values)).sum(0)
    return y


@pytest.mark.parametrize("k,heads,scale", [(3, 2, 1.0), (5, 1, 0.5)])
def test_matches_naive_equation_3(k, heads, scale):
    layer = LocalSelfAttention2d(6, 8, kernel_size=k, heads=heads, scale=scale).double()
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    ref = naive_local_attention(layer, x)
    with torch.no_grad():
        out = layer(x)
        same, attn = layer(x, return_attention=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(same, ref)
    assert attn.shape == (2, heads, 5 * 4, k * k)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, heads, 20, dtype=torch.float64))


def sdpa_local_attention(layer: LocalSelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3 through PyTorch's F.scaled_dot_product_attention: each pixel is a batch entry with one query and
    its k^2 window keys; r_{a-i,b-j} = [r_row(a-i), r_col(b-j)] is materialised and q.r enters as attn_mask."""
    B, _, H, W = x.shape
    k, N, d = layer.kernel_size, layer.heads, layer.dim_head
    q = F.conv2d(x, layer.to_q.weight).view(B, N, d, H * W).transpose(2, 3)  # (B, heads, HW, d)

    def windows(t):  # (B, C, H, W) -> (B, heads, HW, k^2, d)
        return F.unfold(t, k, padding=k // 2).view(B, N, d, k * k, H * W).permute(0, 1, 4, 3, 2)

    keys, values = windows(F.conv2d(x, layer.to_k.weight)), windows(F.conv2d(x, layer.to_v.weight))
    r = torch.cat([layer.rel_row[:, :, None, :].expand(N, k, k, d // 2),  # row offset a-i varies along dim 1
                   layer.rel_col[:, None, :, :].expand(N, k, k, d // 2)], dim=-1).reshape(N, k * k, d)
    bias = torch.einsum("bhnd,hkd->bhnk", q, r) * layer.scale  # q.r: (B, heads, HW, k^2)
    inside = F.unfold(torch.ones(1, 1, H, W, dtype=x.dtype), k, padding=k // 2)[0].t() > 0  # (HW, k^2)
    bias = bias.masked_fill(~inside, float("-inf"))
    out = F.scaled_dot_product_attention(q.unsqueeze(-2), keys, values, attn_mask=bias.unsqueeze(-2),
                                         scale=layer.scale).squeeze(-2)  # (B, heads, HW, d)
    return out.transpose(2, 3).reshape(B, N * d, H, W)


def test_agrees_with_pytorch_sdpa_and_backprops():
    layer = LocalSelfAttention2d(16, 32, kernel_size=7, heads=4, scale=0.25)
    x = torch.randn(2, 16, 9, 7, requires_grad=True)
    out = layer(x)
    torch.testing.assert_close(out, sdpa_local_attention(layer, x), rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert layer.rel_row.grad is not None and layer.rel_row.grad.abs().sum() > 0


def test_padding_never_receives_attention():
    layer = LocalSelfAttention2d(4, 4, kernel_size=5, heads=2)
    _, attn = layer(torch.randn(1, 4, 3, 3), return_attention=True)
    # corner pixel (0, 0): only window positions with offsets a, b >= 0 lie inside the 3x3 image
    window = attn[0, :, 0].view(2, 5, 5)  # (heads, k, k)
    assert (window[:, :2, :] == 0).all() and (window[:, :, :2] == 0).all()
    assert (window[:, 2:, 2:] > 0).all()


@pytest.mark.parametrize("h,w", [(8, 8), (7, 9), (1, 5)])
def test_shapes_and_stride_by_average_pooling(h, w):
    x = torch.randn(2, 8, h, w)
    same = LocalSelfAttention2d(8, 16, kernel_size=3, heads=2, stride=1)
    down = LocalSelfAttention2d(8, 16, kernel_size=3, heads=2, stride=2)
    down.load_state_dict(same.state_dict())
    assert same(x).shape == (2, 16, h, w)
    # stride 2 = attention at stride 1, then 2x2 average pooling (Sec. 3.1), ceil so odd sizes match a strided conv
    out = down(x)
    assert out.shape == (2, 16, math.ceil(h / 2), math.ceil(w / 2))
    conv = nn.Conv2d(8, 16, 3, 2, 1)
    assert out.shape == conv(x).shape
    torch.testing.assert_close(out, F.avg_pool2d(same(x), 2, 2, ceil_mode=True))


def test_one_pixel_neighbourhood_is_a_1x1_conv_of_the_values():
    # k = 1: the softmax runs over one position, its weight is 1 whatever q, k and r are: y = W_V x
    layer = LocalSelfAttention2d(5, 6, kernel_size=1, heads=3)
    x = torch.randn(2, 5, 4, 6)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.to_v.weight), rtol=1e-5, atol=1e-6)


def test_relative_embedding_selects_an_offset_like_a_shift():
    # With zero keys the logits are q.r_{a-i,b-j} only (Eq. 3). Make q positive and let the row embedding
    # favour offset a-i = +1 and the column embedding offset b-j = 0: every pixel copies the value one row
    # below it, a translation-equivariant shift decided by the relative embedding alone.
    k = 3
    layer = LocalSelfAttention2d(2, 2, kernel_size=k, heads=1).double()
    with torch.no_grad():
        layer.to_q.weight.fill_(1.0)
        layer.to_k.weight.zero_()
        layer.to_v.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        layer.rel_row.zero_()
        layer.rel_col.zero_()
        layer.rel_row[0, k // 2 + 1] = 60.0  # offset +1 row
        layer.rel_col[0, k // 2 + 0] = 60.0  # offset 0 column
        x = torch.rand(1, 2, 6, 5, dtype=torch.float64) + 0.5  # q = sum of channels > 0
        y = layer(x)
    torch.testing.assert_close(y[..., :-1, :], x[..., 1:, :])  # y_ij = v_{i+1, j} inside the image


class _MaxTensorSize(TorchDispatchMode):
    """Record the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize("return_attention", [False, True])
def test_memory_is_k_squared_per_pixel_not_quadratic_in_pixels(return_attention):
    C, k = 8, 3
    layer = LocalSelfAttention2d(C, C, kernel_size=k, heads=2)
    sizes = {}
    for side in (24, 48):
        with torch.no_grad(), _MaxTensorSize() as probe:
            layer(torch.randn(1, C, side, side), return_attention=return_attention)
        sizes[side] = probe.max_numel
        hw = side * side
        assert probe.max_numel <= C * hw * k * k  # the unfolded keys/values: k^2 entries per pixel and channel
        assert probe.max_numel < hw * hw  # a global attention map would be (H*W)^2 per head
    assert sizes[48] == 4 * sizes[24]  # 4x the pixels, 4x the memory: linear in H*W


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="odd"):
        LocalSelfAttention2d(8, 8, kernel_size=4)
    with pytest.raises(ValueError, match="divisible by 2 \\* heads"):
        LocalSelfAttention2d(8, 12, heads=4)
    with pytest.raises(ValueError, match="scale must be positive"):
        LocalSelfAttention2d(8, 8, heads=2, scale=0.0)


# ------------------------------------------------------------------------------------------------- models
def test_every_spatial_conv_is_replaced_by_attention():
    model = paperzoo.create_model("sasa_resnet26", num_classes=10)
    blocks = [m for m in model.modules() if isinstance(m, AttentionBottleneck)]
    assert len(blocks) == 1 + 2 + 4 + 1  # ResNet-26: (1, 2, 4, 1) bottlenecks (Sec. 4.1)
    attn = [m for m in model.modules() if isinstance(m, LocalSelfAttention2d)]
    assert len(attn) == len(blocks)
    assert all(a.kernel_size == 7 and a.heads == 8 for a in attn)  # k = 7, N = 8 (Sec. 4.1)
    k3_convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert k3_convs == []
    assert model.conv1.kernel_size == (7, 7)  # the conv stem of "Conv-stem + Attention"
    assert [a.stride for a in attn] == [1, 2, 1, 2, 1, 1, 1, 2]  # first block of stages 2-4 pools


@pytest.mark.parametrize("name,layers,paper_m", [("sasa_resnet26", (1, 2, 4, 1), 10.3),
                                                  ("sasa_resnet50", (3, 4, 6, 3), 18.0)])
def test_params_match_table_1_and_the_conv_swap(name, layers, paper_m):
    with torch.device("meta"):
        model = paperzoo.create_model(name)
        base = ResNet(ResNetConfig(block=Bottleneck, layers=layers))
    n, n_base = paperzoo.count_params(model), paperzoo.count_params(base)
    assert round(n / 1e6, 1) == paper_m
    # exactly: each 3x3 conv (9 p^2) becomes W_Q, W_K, W_V (3 p^2) plus k row and k column embeddings (k p)
    planes = [64 * 2**i for i, reps in enumerate(layers) for _ in range(reps)]
    assert n_base - n == sum(9 * p * p - 3 * p * p - 7 * p for p in planes)


def test_resolution_and_small_input():
    model = paperzoo.create_model("sasa_resnet26", num_classes=3, width=16, heads=2, kernel_size=3).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 64, 48)).shape == (1, 512, 2, 2)  # H/32, ceil
        small = paperzoo.create_model("sasa_resnet26", num_classes=3, width=16, heads=2, small_input=True).eval()
        assert small.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)  # H/8


def test_model_trains_one_step():
    model = paperzoo.create_model("sasa_resnet26", num_classes=4, in_chans=1, width=16, heads=2, kernel_size=3,
                                  small_input=True, drop_path_rate=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    loss0 = F.cross_entropy(model(x), y)
    loss0.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    assert torch.isfinite(F.cross_entropy(model(x), y))
