"""timm checkpoints of ViT and Swin load with ``load_weights(..., source="timm")`` and give the outputs of the
original architecture.

The state dicts are built here from timm's published key layout (names and shapes written out below, not
taken from our model), filled with random values, and the reference outputs come from functional forwards
written here from the papers / official code, independent of paperzoo's modules, with the sources' LayerNorm
eps (ViT 1e-6, Swin 1e-5). The patch embeddings are shrunk so that the first LayerNorm sees a variance near
1e-6 and another eps would change the outputs far beyond the tolerance. Both Swin layouts are
covered: timm >= 0.9 (patch merging at the start of stages 1..3, ``head.fc``) and the official repo / older
timm (merging at the end of stages 0..2, ``head``, stored ``relative_position_index`` and ``attn_mask``).

torchvision's ViT (``vit_b_16`` .. ``vit_h_14``) and Swin (``swin_t/s/b``) checkpoints likewise, against
re-statements of torchvision's forward on its own layout (``nn.MultiheadAttention`` through
``F.multi_head_attention_forward``; Swin's pad-then-shift windows, bias from the stored index, -100 mask).
Every torchvision variant's full key set is also mapped, on the meta device, onto its registered model.
"""

import pytest
import torch
import torch.nn.functional as F
from source_reference import assert_matches_source

import paperzoo
from paperzoo import WeightLoadError
from paperzoo.weights import convert_state_dict

TOL = dict(rtol=1e-4, atol=1e-4)


def _rand(*shape):
    return torch.randn(*shape) * 0.1


# ------------------------------------------------------------------------------------------------------ ViT
def timm_vit_state_dict(depth=2, d=32, heads=4, patch=4, in_chans=3, grid=4, num_classes=10, mlp=64):
    sd = {
        "cls_token": _rand(1, 1, d),
        "pos_embed": _rand(1, 1 + grid * grid, d),
        "patch_embed.proj.weight": _rand(d, in_chans, patch, patch),
        "patch_embed.proj.bias": _rand(d),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": 1 + _rand(d), p + "norm1.bias": _rand(d),
            p + "attn.qkv.weight": _rand(3 * d, d), p + "attn.qkv.bias": _rand(3 * d),
            p + "attn.proj.weight": _rand(d, d), p + "attn.proj.bias": _rand(d),
            p + "norm2.weight": 1 + _rand(d), p + "norm2.bias": _rand(d),
            p + "mlp.fc1.weight": _rand(mlp, d), p + "mlp.fc1.bias": _rand(mlp),
            p + "mlp.fc2.weight": _rand(d, mlp), p + "mlp.fc2.bias": _rand(d),
        })
    sd.update({"norm.weight": 1 + _rand(d), "norm.bias": _rand(d),
               "head.weight": _rand(num_classes, d), "head.bias": _rand(num_classes)})
    return sd


def _bicubic_grid(pe, old, new):
    cls, grid = pe[:, :1], pe[:, 1:]
    d = grid.shape[-1]
    img = grid.reshape(1, old, old, d).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=new, mode="bicubic", align_corners=False)
    return torch.cat([cls, img.permute(0, 2, 3, 1).reshape(1, -1, d)], 1)


def shrink(sd, keys, factor=1e-3):
    """Scale the tensors feeding the first LayerNorm down, so that its input variance is near its eps."""
    for k in keys:
        sd[k] = sd[k] * factor
    return sd


VIT_EMBED = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias")
SWIN_EMBED = ("patch_embed.proj.weight", "patch_embed.proj.bias")


def reference_vit(sd, x, heads, patch, depth, pos_embed=None):
    """ViT Eq. 1-4 on timm-named tensors."""
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    b, n, d = x.shape
    x = torch.cat([sd["cls_token"].expand(b, 1, d), x], 1) + (sd["pos_embed"] if pos_embed is None else pos_embed)
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(
            b, n + 1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-1, -2)) / (d // heads) ** 0.5).softmax(-1) @ v
        a = a.transpose(1, 2).reshape(b, n + 1, d)
        x = x + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + h
    x = F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return F.linear(x[:, 0], sd["head.weight"], sd["head.bias"])


def _vit(img_size=16):
    return paperzoo.create_model("vit_tiny_patch16_224", num_classes=10, img_size=img_size, patch_size=4,
                                 embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0).eval()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vit_timm_checkpoint_gives_reference_outputs(tmp_path, suffix):
    sd = shrink(timm_vit_state_dict(), VIT_EMBED)
    path = tmp_path / f"vit{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    model = paperzoo.load_weights(_vit(), path, source="timm")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = reference_vit(sd, x, heads=4, patch=4, depth=2)
    assert_matches_source(model, x, ref, wrong_eps=1e-5)  # timm: partial(nn.LayerNorm, eps=1e-6)


def test_vit_timm_checkpoint_at_another_size_interpolates_pos_embed(tmp_path):
    sd = timm_vit_state_dict(grid=4)  # trained at 16x16 = 4x4 patches
    torch.save(sd, tmp_path / "vit.pth")
    model = paperzoo.load_weights(_vit(img_size=24), tmp_path / "vit.pth", source="timm")  # 6x6 patches
    pe = _bicubic_grid(sd["pos_embed"], 4, (6, 6))
    torch.testing.assert_close(model.pos_embed, pe)
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_vit(sd, x, 4, 4, 2, pos_embed=pe), **TOL)


def test_vit_mismatches_raise_weight_load_error(tmp_path):
    sd = timm_vit_state_dict()
    bad = dict(sd)
    del bad["blocks.1.mlp.fc2.bias"]
    bad["fc_norm.weight"] = torch.ones(32)  # a mean-pooling timm model's head norm: not our layout
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightLoadError, match=r"(?s)missing keys.*blocks\.1\.mlp\.fc2\.bias.*unexpected.*fc_norm"):
        paperzoo.load_weights(_vit(), tmp_path / "bad.pth", source="timm")
    torch.save(timm_vit_state_dict(d=48, heads=4), tmp_path / "wide.pth")
    with pytest.raises(WeightLoadError, match="shape mismatches"):
        paperzoo.load_weights(_vit(), tmp_path / "wide.pth", source="timm")


# ----------------------------------------------------------------------------------------------------- Swin
SWIN = dict(patch=2, c=16, depths=(2, 2, 2), heads=(2, 4, 8), window=4, num_classes=10, mlp_ratio=2)


def timm_swin_state_dict(patch, c, depths, heads, window, num_classes, mlp_ratio, in_chans=3):
    """timm >= 0.9 layout: ``layers.i.downsample`` (i >= 1) merges at the start of stage i; ``head.fc``."""
    sd = {"patch_embed.proj.weight": _rand(c, in_chans, patch, patch), "patch_embed.proj.bias": _rand(c),
          "patch_embed.norm.weight": 1 + _rand(c), "patch_embed.norm.bias": _rand(c)}
    dim = c
    for i, (depth, h) in enumerate(zip(depths, heads)):
        if i > 0:
            sd[f"layers.{i}.downsample.norm.weight"] = 1 + _rand(4 * dim)
            sd[f"layers.{i}.downsample.norm.bias"] = _rand(4 * dim)
            sd[f"layers.{i}.downsample.reduction.weight"] = _rand(2 * dim, 4 * dim)
            dim *= 2
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            hid = mlp_ratio * dim
            sd.update({
                p + "norm1.weight": 1 + _rand(dim), p + "norm1.bias": _rand(dim),
                p + "attn.relative_position_bias_table": _rand((2 * window - 1) ** 2, h),
                p + "attn.qkv.weight": _rand(3 * dim, dim), p + "attn.qkv.bias": _rand(3 * dim),
                p + "attn.proj.weight": _rand(dim, dim), p + "attn.proj.bias": _rand(dim),
                p + "norm2.weight": 1 + _rand(dim), p + "norm2.bias": _rand(dim),
                p + "mlp.fc1.weight": _rand(hid, dim), p + "mlp.fc1.bias": _rand(hid),
                p + "mlp.fc2.weight": _rand(dim, hid), p + "mlp.fc2.bias": _rand(dim),
            })
    sd.update({"norm.weight": 1 + _rand(dim), "norm.bias": _rand(dim),
               "head.fc.weight": _rand(num_classes, dim), "head.fc.bias": _rand(num_classes)})
    return sd


def _official_rel_index(ws):
    n = ws * ws
    idx = torch.empty(n, n, dtype=torch.long)
    for i in range(n):
        for j in range(n):
            dy, dx = i // ws - j // ws, i % ws - j % ws
            idx[i, j] = (dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)
    return idx


def _official_shift_mask(h, w, ws, s):
    """The official recipe: label the 3x3 slices of the rolled map, partition, -100 where labels differ."""
    img = torch.zeros(h, w)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            img[hs, wsl] = cnt
            cnt += 1
    win = img.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def reference_swin(sd, x, patch, c, depths, heads, window, **_):
    """Swin Eq. 3-4 / Fig. 3-4 on timm-named tensors, following the official algorithm step by step (every
    LayerNorm with F.layer_norm's default eps, 1e-5, that of timm's nn.LayerNorm)."""
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch).permute(0, 2, 3, 1)
    x = F.layer_norm(x, (c,), sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"])
    dim = c
    for i, depth in enumerate(depths):
        if i > 0:
            p = f"layers.{i}.downsample."
            x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
            x = F.layer_norm(x, (4 * dim,), sd[p + "norm.weight"], sd[p + "norm.bias"])
            x = F.linear(x, sd[p + "reduction.weight"])
            dim *= 2
        nh = heads[i]
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            b, hh, ww, _ = x.shape
            ws, s = window, (0 if j % 2 == 0 else window // 2)
            if min(hh, ww) <= ws:
                ws, s = min(hh, ww), 0
            shortcut = x
            h = F.layer_norm(x, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"])
            if s:
                h = torch.roll(h, (-s, -s), (1, 2))
            win = h.view(b, hh // ws, ws, ww // ws, ws, dim).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, dim)
            n = ws * ws
            q, k, v = F.linear(win, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(
                -1, n, 3, nh, dim // nh).permute(2, 0, 3, 1, 4)
            attn = (q * (dim // nh) ** -0.5) @ k.transpose(-2, -1)
            table = sd[p + "attn.relative_position_bias_table"]
            t = window  # the table is laid out for the configured window
            idx = _official_rel_index(ws) if ws == t else None
            if idx is None:  # a smaller window reads the same offsets out of the bigger table
                full = _official_rel_index(t)
                keep = torch.tensor([r * t + col for r in range(ws) for col in range(ws)])
                idx = full[keep][:, keep]
            attn = attn + table[idx.reshape(-1)].view(n, n, nh).permute(2, 0, 1)[None]
            if s:
                mask = _official_shift_mask(hh, ww, ws, s)
                nw = mask.shape[0]
                attn = (attn.view(b, nw, nh, n, n) + mask[None, :, None]).view(-1, nh, n, n)
            a = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, dim)
            a = F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
            a = a.view(b, hh // ws, ww // ws, ws, ws, dim).permute(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, dim)
            if s:
                a = torch.roll(a, (s, s), (1, 2))
            x = shortcut + a
            h = F.layer_norm(x, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
            x = x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                             sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    x = F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"]).mean((1, 2))
    return F.linear(x, sd["head.fc.weight"], sd["head.fc.bias"])


def _swin(window=4):
    return paperzoo.create_model("swin_tiny_patch4_window7_224", num_classes=10, patch_size=2, embed_dim=16,
                                 depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=window,
                                 mlp_ratio=2.0).eval()


def to_old_layout(sd, depths, window):
    """Official repo / timm < 0.9: merging at the end of stage i - 1, plain ``head``, stored buffers."""
    old = {}
    for k, v in sd.items():
        if k.startswith("layers.") and ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.downsample.", f"layers.{i - 1}.downsample.")
        old[k.replace("head.fc.", "head.")] = v
    for i, depth in enumerate(depths):
        for j in range(depth):
            old[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = _official_rel_index(window)
            if j % 2:
                old[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(4, window * window, window * window)
    return old


@pytest.mark.parametrize("layout", ["timm>=0.9", "official"])
def test_swin_timm_checkpoint_gives_reference_outputs(tmp_path, layout):
    sd = shrink(timm_swin_state_dict(**SWIN), SWIN_EMBED)
    ckpt = sd if layout == "timm>=0.9" else {"model": to_old_layout(sd, SWIN["depths"], SWIN["window"])}
    torch.save(ckpt, tmp_path / "swin.pth")
    model = paperzoo.load_weights(_swin(), tmp_path / "swin.pth", source="timm")
    x = torch.randn(2, 3, 32, 32)  # 16x16 tokens, 4x4 windows; 8x8; then 4x4 = one window, not shifted
    with torch.no_grad():
        ref = reference_swin(sd, x, **SWIN)
    assert_matches_source(model, x, ref, wrong_eps=1e-6)  # timm: the nn.LayerNorm default, 1e-5


def test_swin_window_change_resizes_relative_tables(tmp_path):
    sd = timm_swin_state_dict(**SWIN)  # window 4: 7x7 tables
    torch.save(sd, tmp_path / "swin.pth")
    model = paperzoo.load_weights(_swin(window=6), tmp_path / "swin.pth", source="timm")  # 11x11 tables
    got = model.layers[1].blocks[0].attn.rel_pos.relative_position_bias_table
    src = sd["layers.1.blocks.0.attn.relative_position_bias_table"]  # (49, heads)
    img = src.T.reshape(1, 4, 7, 7)
    expected = F.interpolate(img, size=(11, 11), mode="bicubic", align_corners=False).reshape(4, -1).T
    torch.testing.assert_close(got, expected)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_swin_mismatches_raise_weight_load_error(tmp_path):
    sd = timm_swin_state_dict(**SWIN)
    del sd["layers.2.downsample.reduction.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightLoadError, match=r"missing keys.*layers\.2\.downsample\.reduction\.weight"):
        paperzoo.load_weights(_swin(), tmp_path / "bad.pth", source="timm")
    wide = timm_swin_state_dict(**{**SWIN, "c": 24})
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(WeightLoadError, match="shape mismatches"):
        paperzoo.load_weights(_swin(), tmp_path / "wide.pth", source="timm")


# ------------------------------------------------------------------------------------------ torchvision ViT
def tv_vit_state_dict(depth=2, d=32, heads=4, patch=4, in_chans=3, grid=4, num_classes=10, mlp=64,
                      legacy_mlp=False, representation=None):
    """torchvision.models.VisionTransformer's layout (``mlp.linear_1/2``: files saved before torchvision 0.13)."""
    fc1, fc2 = ("linear_1", "linear_2") if legacy_mlp else ("0", "3")
    sd = {
        "class_token": _rand(1, 1, d),
        "conv_proj.weight": _rand(d, in_chans, patch, patch), "conv_proj.bias": _rand(d),
        "encoder.pos_embedding": _rand(1, 1 + grid * grid, d),
    }
    for i in range(depth):
        p = f"encoder.layers.encoder_layer_{i}."
        sd.update({
            p + "ln_1.weight": 1 + _rand(d), p + "ln_1.bias": _rand(d),
            p + "self_attention.in_proj_weight": _rand(3 * d, d), p + "self_attention.in_proj_bias": _rand(3 * d),
            p + "self_attention.out_proj.weight": _rand(d, d), p + "self_attention.out_proj.bias": _rand(d),
            p + "ln_2.weight": 1 + _rand(d), p + "ln_2.bias": _rand(d),
            p + f"mlp.{fc1}.weight": _rand(mlp, d), p + f"mlp.{fc1}.bias": _rand(mlp),
            p + f"mlp.{fc2}.weight": _rand(d, mlp), p + f"mlp.{fc2}.bias": _rand(d),
        })
    sd.update({"encoder.ln.weight": 1 + _rand(d), "encoder.ln.bias": _rand(d)})
    if representation:
        sd.update({"heads.pre_logits.weight": _rand(representation, d), "heads.pre_logits.bias": _rand(representation)})
    width = representation or d
    sd.update({"heads.head.weight": _rand(num_classes, width), "heads.head.bias": _rand(num_classes)})
    return sd


TV_VIT_EMBED = ("class_token", "encoder.pos_embedding", "conv_proj.weight", "conv_proj.bias")


def reference_tv_vit(sd, x, heads, patch, depth):
    """torchvision's VisionTransformer.forward on its own tensors: nn.MultiheadAttention's functional form
    (sequence-first), LayerNorm eps 1e-6, MLP Linear-GELU-Linear, [CLS] through ``heads``."""
    x = F.conv2d(x, sd["conv_proj.weight"], sd["conv_proj.bias"], stride=patch)  # (B, D, gh, gw)
    b, d = x.shape[:2]
    x = x.reshape(b, d, -1).permute(0, 2, 1)  # (B, N, D)
    x = torch.cat([sd["class_token"].expand(b, -1, -1), x], 1) + sd["encoder.pos_embedding"]
    for i in range(depth):
        p = f"encoder.layers.encoder_layer_{i}."
        fc1, fc2 = ("mlp.0", "mlp.3") if p + "mlp.0.weight" in sd else ("mlp.linear_1", "mlp.linear_2")
        h = F.layer_norm(x, (d,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps=1e-6).transpose(0, 1)
        a, _ = F.multi_head_attention_forward(
            h, h, h, d, heads, sd[p + "self_attention.in_proj_weight"], sd[p + "self_attention.in_proj_bias"],
            None, None, False, 0.0, sd[p + "self_attention.out_proj.weight"], sd[p + "self_attention.out_proj.bias"],
            training=False, need_weights=False)
        x = x + a.transpose(0, 1)  # (N, B, D) -> (B, N, D)
        h = F.layer_norm(x, (d,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, sd[p + fc1 + ".weight"], sd[p + fc1 + ".bias"])),
                         sd[p + fc2 + ".weight"], sd[p + fc2 + ".bias"])
    y = F.layer_norm(x, (d,), sd["encoder.ln.weight"], sd["encoder.ln.bias"], eps=1e-6)[:, 0]
    if "heads.pre_logits.weight" in sd:
        y = torch.tanh(F.linear(y, sd["heads.pre_logits.weight"], sd["heads.pre_logits.bias"]))
    return F.linear(y, sd["heads.head.weight"], sd["heads.head.bias"])


@pytest.mark.parametrize("variant", ["mlp.0/3", "mlp.linear_1/2", "pre_logits"])
def test_vit_torchvision_checkpoint_gives_reference_outputs(tmp_path, variant):
    rep = 24 if variant == "pre_logits" else None
    sd = shrink(tv_vit_state_dict(legacy_mlp=variant == "mlp.linear_1/2", representation=rep), TV_VIT_EMBED)
    torch.save(sd, tmp_path / "vit.pth")
    model = _vit() if rep is None else paperzoo.create_model(
        "vit_tiny_patch16_224", num_classes=10, img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4,
        mlp_ratio=2.0, head_hidden=rep).eval()
    paperzoo.load_weights(model, tmp_path / "vit.pth", source="torchvision")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = reference_tv_vit(sd, x, heads=4, patch=4, depth=2)
    assert_matches_source(model, x, ref, wrong_eps=1e-5)  # torchvision: partial(nn.LayerNorm, eps=1e-6)


def test_vit_torchvision_checkpoint_at_another_size_interpolates_pos_embed(tmp_path):
    sd = tv_vit_state_dict(grid=6)  # e.g. a SWAG checkpoint at a higher resolution: 6x6 patches
    torch.save(sd, tmp_path / "vit.pth")
    model = paperzoo.load_weights(_vit(img_size=16), tmp_path / "vit.pth", source="torchvision")  # 4x4
    torch.testing.assert_close(model.pos_embed, _bicubic_grid(sd["encoder.pos_embedding"], 6, (4, 4)))


# torchvision's builders (patch, hidden_dim, num_layers, num_heads, mlp_dim) and the num_params of their
# 224-pixel ImageNet weights (torchvision.models.*_Weights meta; vit_h_14: IMAGENET1K_SWAG_LINEAR_V1)
TORCHVISION_VIT = {
    "vit_b_16": ("vit_base_patch16_224", (16, 768, 12, 12, 3072), 86_567_656),
    "vit_b_32": ("vit_base_patch32_224", (32, 768, 12, 12, 3072), 88_224_232),
    "vit_l_16": ("vit_large_patch16_224", (16, 1024, 24, 16, 4096), 304_326_632),
    "vit_l_32": ("vit_large_patch32_224", (32, 1024, 24, 16, 4096), 306_535_400),
    "vit_h_14": ("vit_huge_patch14_224", (14, 1280, 32, 16, 5120), 632_045_800),
}


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("tv_name", TORCHVISION_VIT)
def test_every_torchvision_vit_maps_key_for_key_onto_its_registered_model(tv_name):
    ours, (patch, d, depth, heads, mlp), num_params = TORCHVISION_VIT[tv_name]
    with torch.device("meta"):  # shapes only: vit_h_14 is 632M parameters
        sd = tv_vit_state_dict(depth=depth, d=d, heads=heads, patch=patch, grid=224 // patch,
                               num_classes=1000, mlp=mlp)
        model = paperzoo.create_model(ours)
    assert sum(v.numel() for v in sd.values()) == num_params  # the layout written above is torchvision's
    assert _shapes(convert_state_dict(model, sd, "torchvision")) == _shapes(model.state_dict())


# ----------------------------------------------------------------------------------------- torchvision Swin
def tv_swin_state_dict(patch, c, depths, heads, window, num_classes, mlp_ratio, in_chans=3):
    """torchvision.models.SwinTransformer's layout: ``features.0`` = (Conv2d, Permute, LayerNorm), then blocks
    of stage i at ``features.{2i+1}`` and the patch merging after it at ``features.{2i+2}``."""
    sd = {"features.0.0.weight": _rand(c, in_chans, patch, patch), "features.0.0.bias": _rand(c),
          "features.0.2.weight": 1 + _rand(c), "features.0.2.bias": _rand(c)}
    dim = c
    for i, (depth, h) in enumerate(zip(depths, heads)):
        if i > 0:
            p = f"features.{2 * i}."
            sd.update({p + "reduction.weight": _rand(2 * dim, 4 * dim),
                       p + "norm.weight": 1 + _rand(4 * dim), p + "norm.bias": _rand(4 * dim)})
            dim *= 2
        for j in range(depth):
            p, hid = f"features.{2 * i + 1}.{j}.", mlp_ratio * dim
            sd.update({
                p + "norm1.weight": 1 + _rand(dim), p + "norm1.bias": _rand(dim),
                p + "attn.qkv.weight": _rand(3 * dim, dim), p + "attn.qkv.bias": _rand(3 * dim),
                p + "attn.proj.weight": _rand(dim, dim), p + "attn.proj.bias": _rand(dim),
                p + "attn.relative_position_bias_table": _rand((2 * window - 1) ** 2, h),
                p + "attn.relative_position_index": _official_rel_index(window).flatten(),
                p + "norm2.weight": 1 + _rand(dim), p + "norm2.bias": _rand(dim),
                p + "mlp.0.weight": _rand(hid, dim), p + "mlp.0.bias": _rand(hid),
                p + "mlp.3.weight": _rand(dim, hid), p + "mlp.3.bias": _rand(dim),
            })
    sd.update({"norm.weight": 1 + _rand(dim), "norm.bias": _rand(dim),
               "head.weight": _rand(num_classes, dim), "head.bias": _rand(num_classes)})
    return sd


def _tv_window_attention(sd, p, x, window, shift, nh):
    """torchvision's shifted_window_attention on (B, H, W, C): pad to the window, no shift along a side the
    window covers, roll, partition, attention + bias table[relative_position_index], -100 between shift
    regions, reverse, roll back, crop."""
    b, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, -w % window, 0, -h % window))
    _, ph, pw, _ = x.shape
    sh, sw = (0 if window >= ph else shift), (0 if window >= pw else shift)
    if sh or sw:
        x = torch.roll(x, (-sh, -sw), (1, 2))
    nw, n = (ph // window) * (pw // window), window * window
    x = x.view(b, ph // window, window, pw // window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nw, n, c)
    q, k, v = F.linear(x, sd[p + "qkv.weight"], sd[p + "qkv.bias"]).reshape(b * nw, n, 3, nh, c // nh).permute(
        2, 0, 3, 1, 4)
    attn = (q * (c // nh) ** -0.5) @ k.transpose(-2, -1)
    bias = sd[p + "relative_position_bias_table"][sd[p + "relative_position_index"]].view(n, n, nh)
    attn = attn + bias.permute(2, 0, 1)[None]
    if sh or sw:
        labels, count = x.new_zeros(ph, pw), 0
        for hs in ((0, -window), (-window, -sh), (-sh, None)):
            for ws in ((0, -window), (-window, -sw), (-sw, None)):
                labels[hs[0]:hs[1], ws[0]:ws[1]] = count
                count += 1
        labels = labels.view(ph // window, window, pw // window, window).permute(0, 2, 1, 3).reshape(nw, n)
        mask = (labels[:, None, :] - labels[:, :, None]) != 0
        attn = attn.view(b, nw, nh, n, n) + mask[None, :, None].float() * -100.0
        attn = attn.view(b * nw, nh, n, n)
    x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b * nw, n, c)
    x = F.linear(x, sd[p + "proj.weight"], sd[p + "proj.bias"])
    x = x.view(b, ph // window, pw // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    if sh or sw:
        x = torch.roll(x, (sh, sw), (1, 2))
    return x[:, :h, :w]


def reference_tv_swin(sd, x, patch, c, depths, heads, window, **_):
    """torchvision's SwinTransformer.forward (v1) on its own tensors; LayerNorm eps 1e-5 throughout."""
    x = F.conv2d(x, sd["features.0.0.weight"], sd["features.0.0.bias"], stride=patch).permute(0, 2, 3, 1)
    x = F.layer_norm(x, (c,), sd["features.0.2.weight"], sd["features.0.2.bias"])
    dim = c
    for i, depth in enumerate(depths):
        if i > 0:  # PatchMerging: pad odd sides, concatenate x0..x3, LayerNorm, linear 4C -> 2C
            p = f"features.{2 * i}."
            x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
            x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
            x = F.linear(F.layer_norm(x, (4 * dim,), sd[p + "norm.weight"], sd[p + "norm.bias"]),
                         sd[p + "reduction.weight"])
            dim *= 2
        for j in range(depth):
            p = f"features.{2 * i + 1}.{j}."
            h = F.layer_norm(x, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"])
            x = x + _tv_window_attention(sd, p + "attn.", h, window, 0 if j % 2 == 0 else window // 2, heads[i])
            h = F.layer_norm(x, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
            x = x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])),
                             sd[p + "mlp.3.weight"], sd[p + "mlp.3.bias"])
    x = F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"]).permute(0, 3, 1, 2).mean((2, 3))
    return F.linear(x, sd["head.weight"], sd["head.bias"])


@pytest.mark.parametrize("size", [(32, 32), (32, 64)])
def test_swin_torchvision_checkpoint_gives_reference_outputs(tmp_path, size):
    """Maps of 16x16, 8x8, 4x4 tokens (or 16x32, 8x16, 4x8): multiples of the 4x4 window, as 224 is of 7 for
    swin_t/s/b; the last stage's window covers the map's height, so neither library shifts along it."""
    sd = shrink(tv_swin_state_dict(**SWIN), ("features.0.0.weight", "features.0.0.bias"))
    torch.save(sd, tmp_path / "swin.pth")
    model = paperzoo.load_weights(_swin(), tmp_path / "swin.pth", source="torchvision")
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = reference_tv_swin(sd, x, **SWIN)
    assert_matches_source(model, x, ref, wrong_eps=1e-6)  # torchvision: partial(nn.LayerNorm, eps=1e-5)


TORCHVISION_SWIN = {  # (embed_dim, depths, num_heads) and the num_params of torchvision's weights meta
    "swin_t": ("swin_tiny_patch4_window7_224", (96, (2, 2, 6, 2), (3, 6, 12, 24)), 28_288_354),
    "swin_s": ("swin_small_patch4_window7_224", (96, (2, 2, 18, 2), (3, 6, 12, 24)), 49_606_258),
    "swin_b": ("swin_base_patch4_window7_224", (128, (2, 2, 18, 2), (4, 8, 16, 32)), 87_768_224),
}


@pytest.mark.parametrize("tv_name", TORCHVISION_SWIN)
def test_every_torchvision_swin_maps_key_for_key_onto_its_registered_model(tv_name):
    ours, (c, depths, heads), num_params = TORCHVISION_SWIN[tv_name]
    with torch.device("meta"):
        sd = tv_swin_state_dict(patch=4, c=c, depths=depths, heads=heads, window=7, num_classes=1000, mlp_ratio=4)
        model = paperzoo.create_model(ours)
    assert sum(v.numel() for k, v in sd.items() if not k.endswith("_index")) == num_params
    assert _shapes(convert_state_dict(model, sd, "torchvision")) == _shapes(model.state_dict())
