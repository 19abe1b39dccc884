"""torchvision / timm state dicts load into MobileNet V1/V2/V3 and EfficientNet and give the same outputs.

torchvision and timm cannot be imported here, so each test writes the source's key layout down *itself*
(an independent, test-side description of the published layout, below), renames the weights of a randomly
initialised paperzoo model into that layout in order, saves the file (.pth or .safetensors), loads it with
``paperzoo.load_weights(..., source=...)`` into a fresh model, and compares outputs. A wrong mapping shows up
as a WeightLoadError (names or shapes) or as different outputs.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import paperzoo
from paperzoo import WeightLoadError
from paperzoo.models.efficientnet import source_bn_args

BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


# ------------------------------------------------------------------------------ test-side layout descriptions
def _conv_bn(conv: str, bn: str) -> list[str]:
    return [f"{conv}.weight"] + [f"{bn}.{t}" for t in BN]


def _tv_seq(p: str) -> list[str]:  # torchvision Conv2dNormActivation: Sequential(conv, bn, act)
    return _conv_bn(f"{p}.0", f"{p}.1")


def _se(p: str, fc1: str, fc2: str) -> list[str]:
    return [f"{p}.{fc1}.weight", f"{p}.{fc1}.bias", f"{p}.{fc2}.weight", f"{p}.{fc2}.bias"]


def _timm_ds(p: str, se: bool) -> list[str]:  # timm DepthwiseSeparableConv
    return (_conv_bn(f"{p}.conv_dw", f"{p}.bn1") + (_se(f"{p}.se", "conv_reduce", "conv_expand") if se else [])
            + _conv_bn(f"{p}.conv_pw", f"{p}.bn2"))


def _timm_ir(p: str, se: bool) -> list[str]:  # timm InvertedResidual
    return (_conv_bn(f"{p}.conv_pw", f"{p}.bn1") + _conv_bn(f"{p}.conv_dw", f"{p}.bn2")
            + (_se(f"{p}.se", "conv_reduce", "conv_expand") if se else []) + _conv_bn(f"{p}.conv_pwl", f"{p}.bn3"))


def _tv_mbconv(p: str, expand: bool, se: bool) -> list[str]:  # torchvision V3 / EfficientNet block: p = ....block
    keys, n = [], 0
    if expand:
        keys += _tv_seq(f"{p}.{n}")
        n += 1
    keys += _tv_seq(f"{p}.{n}")  # depthwise
    n += 1
    if se:
        keys += _se(f"{p}.{n}", "fc1", "fc2")
        n += 1
    return keys + _tv_seq(f"{p}.{n}")  # projection


def timm_mobilenetv1_keys() -> list[str]:
    keys = _conv_bn("conv_stem", "bn1")
    for stage, n in enumerate([1, 2, 2, 6, 2]):  # timm arch_def: dsa_r1 c64, r2 c128, r2 c256, r6 c512, r2 c1024
        for j in range(n):
            keys += _conv_bn(f"blocks.{stage}.{j}.conv_dw", f"blocks.{stage}.{j}.bn1")
            keys += _conv_bn(f"blocks.{stage}.{j}.conv_pw", f"blocks.{stage}.{j}.bn2")
    return keys + ["classifier.weight", "classifier.bias"]


V2_REPEATS = [1, 2, 3, 4, 3, 3, 1]  # Table 2, first row t = 1


def tv_mobilenetv2_keys() -> list[str]:
    keys, k = _tv_seq("features.0"), 1
    for stage, n in enumerate(V2_REPEATS):
        for _ in range(n):
            p = f"features.{k}.conv"
            if stage == 0:  # t = 1: [dw Sequential, project conv, project bn]
                keys += _tv_seq(f"{p}.0") + _conv_bn(f"{p}.1", f"{p}.2")
            else:  # [expand Sequential, dw Sequential, project conv, project bn]
                keys += _tv_seq(f"{p}.0") + _tv_seq(f"{p}.1") + _conv_bn(f"{p}.2", f"{p}.3")
            k += 1
    return keys + _tv_seq(f"features.{k}") + ["classifier.1.weight", "classifier.1.bias"]


def timm_mobilenetv2_keys() -> list[str]:
    keys = _conv_bn("conv_stem", "bn1")
    for stage, n in enumerate(V2_REPEATS):
        for j in range(n):
            keys += (_timm_ds if stage == 0 else _timm_ir)(f"blocks.{stage}.{j}", se=False)
    return keys + _conv_bn("conv_head", "bn2") + ["classifier.weight", "classifier.bias"]


# MobileNetV3-Small, torchvision's bneck_conf rows: (input, expanded, use_se, h-swish, stride) and timm's stages.
V3_SMALL = [(16, 16, True, False, 2), (16, 72, False, False, 2), (24, 88, False, False, 1), (24, 96, True, True, 2),
            (40, 240, True, True, 1), (40, 240, True, True, 1), (40, 120, True, True, 1), (48, 144, True, True, 1),
            (48, 288, True, True, 2), (96, 576, True, True, 1), (96, 576, True, True, 1)]
V3_SMALL_TIMM_STAGES = [1, 2, 3, 2, 3]  # ds_r1; ir_r1 + ir_r1; ir_r1 + ir_r2; ir_r2; ir_r3; then cn_r1 (576)


def tv_mobilenetv3_small_keys() -> list[str]:
    keys = _tv_seq("features.0")
    for i, (inp, exp, se, _, _) in enumerate(V3_SMALL):
        keys += _tv_mbconv(f"features.{i + 1}.block", expand=exp != inp, se=se)
    keys += _tv_seq(f"features.{len(V3_SMALL) + 1}")
    return keys + ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"]


def timm_mobilenetv3_small_keys() -> list[str]:
    keys, i = _conv_bn("conv_stem", "bn1"), 0
    for stage, n in enumerate(V3_SMALL_TIMM_STAGES):
        for j in range(n):
            se = V3_SMALL[i][2]
            keys += (_timm_ds if i == 0 else _timm_ir)(f"blocks.{stage}.{j}", se=se)
            i += 1
    last = len(V3_SMALL_TIMM_STAGES)
    keys += _conv_bn(f"blocks.{last}.0.conv", f"blocks.{last}.0.bn1")
    return keys + ["conv_head.weight", "conv_head.bias", "classifier.weight", "classifier.bias"]


B0_REPEATS = [1, 2, 2, 3, 3, 4, 1]  # Table 1 of the EfficientNet paper; stage 0 is MBConv1 (no expansion)


def tv_efficientnet_b0_keys() -> list[str]:
    keys = _tv_seq("features.0")
    for stage, n in enumerate(B0_REPEATS):
        for j in range(n):
            keys += _tv_mbconv(f"features.{stage + 1}.{j}.block", expand=stage > 0, se=True)
    return keys + _tv_seq("features.8") + ["classifier.1.weight", "classifier.1.bias"]


def timm_efficientnet_b0_keys() -> list[str]:
    keys = _conv_bn("conv_stem", "bn1")
    for stage, n in enumerate(B0_REPEATS):
        for j in range(n):
            keys += (_timm_ds if stage == 0 else _timm_ir)(f"blocks.{stage}.{j}", se=True)
    return keys + _conv_bn("conv_head", "bn2") + ["classifier.weight", "classifier.bias"]


# ------------------------------------------------------------- functional reference forwards (source layouts)
# Each computes the published architecture straight from a source-layout state dict with torch.nn.functional,
# independently of paperzoo's modules: activations, SE placement and gate, strides, shortcuts, BN eps.
V1_STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]  # Table 1 (the last dw layer is stride 1 in practice)
V2_ROWS = [(1, 1), (6, 2), (6, 2), (6, 2), (6, 1), (6, 2), (6, 1)]  # Table 2 (t, s); repeats in V2_REPEATS
B0_ROWS = [(1, 1), (6, 2), (6, 2), (6, 2), (6, 1), (6, 2), (6, 1)]  # Table 1 (t, s); repeats in B0_REPEATS


def _cba(x, sd, conv, bn, eps, stride=1, act=None):
    w = sd[conv]
    groups = x.shape[1] if w.shape[1] == 1 and x.shape[1] > 1 else 1  # (C, 1, k, k): depthwise
    y = F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups)
    y = F.batch_norm(y, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"],
                     False, 0.0, eps)
    return act(y) if act else y


def _block(x, sd, eps, stride, act, names, se_act=F.relu, gate=torch.sigmoid):
    h = x
    if names.get("expand"):
        h = _cba(h, sd, *names["expand"], eps, 1, act)
    h = _cba(h, sd, *names["dw"], eps, stride, act)
    if names.get("se"):
        r, e = names["se"]
        z = se_act(F.conv2d(h.mean((2, 3), keepdim=True), sd[f"{r}.weight"], sd[f"{r}.bias"]))
        h = h * gate(F.conv2d(z, sd[f"{e}.weight"], sd[f"{e}.bias"]))
    h = _cba(h, sd, *names["project"], eps, 1, None)
    return x + h if stride == 1 and h.shape == x.shape else h


def _tv_names(p, expand, se):
    names, n = {}, 0
    if expand:
        names["expand"], n = (f"{p}.0.0.weight", f"{p}.0.1"), 1
    names["dw"], n = (f"{p}.{n}.0.weight", f"{p}.{n}.1"), n + 1
    if se:
        names["se"], n = (f"{p}.{n}.fc1", f"{p}.{n}.fc2"), n + 1
    names["project"] = (f"{p}.{n}.0.weight", f"{p}.{n}.1")
    return names


def _timm_names(p, ds, se):
    names = {"se": (f"{p}.se.conv_reduce", f"{p}.se.conv_expand")} if se else {}
    if ds:
        return {**names, "dw": (f"{p}.conv_dw.weight", f"{p}.bn1"), "project": (f"{p}.conv_pw.weight", f"{p}.bn2")}
    return {**names, "expand": (f"{p}.conv_pw.weight", f"{p}.bn1"), "dw": (f"{p}.conv_dw.weight", f"{p}.bn2"),
            "project": (f"{p}.conv_pwl.weight", f"{p}.bn3")}


def _linear(x, sd, p):
    return F.linear(x, sd[f"{p}.weight"], sd[f"{p}.bias"])


def ref_timm_mobilenetv1(sd, x, eps=1e-5):
    x, i = _cba(x, sd, "conv_stem.weight", "bn1", eps, 2, F.relu6), 0
    for stage, n in enumerate([1, 2, 2, 6, 2]):
        for j in range(n):
            p = f"blocks.{stage}.{j}"
            x = _cba(x, sd, f"{p}.conv_dw.weight", f"{p}.bn1", eps, V1_STRIDES[i], F.relu6)
            x = _cba(x, sd, f"{p}.conv_pw.weight", f"{p}.bn2", eps, 1, F.relu6)
            i += 1
    return _linear(x.mean((2, 3)), sd, "classifier")


def _v2_strides():
    return [(t, s if j == 0 else 1) for (t, s), n in zip(V2_ROWS, V2_REPEATS) for j in range(n)]


def ref_tv_mobilenetv2(sd, x, eps=1e-5):
    x = _cba(x, sd, "features.0.0.weight", "features.0.1", eps, 2, F.relu6)
    for k, (t, stride) in enumerate(_v2_strides(), start=1):
        p = f"features.{k}.conv"
        if t == 1:
            names = {"dw": (f"{p}.0.0.weight", f"{p}.0.1"), "project": (f"{p}.1.weight", f"{p}.2")}
        else:
            names = {"expand": (f"{p}.0.0.weight", f"{p}.0.1"), "dw": (f"{p}.1.0.weight", f"{p}.1.1"),
                     "project": (f"{p}.2.weight", f"{p}.3")}
        x = _block(x, sd, eps, stride, F.relu6, names)
    x = _cba(x, sd, "features.18.0.weight", "features.18.1", eps, 1, F.relu6)
    return _linear(x.mean((2, 3)), sd, "classifier.1")


def ref_timm_mobilenetv2(sd, x, eps=1e-5):
    x = _cba(x, sd, "conv_stem.weight", "bn1", eps, 2, F.relu6)
    for stage, ((t, s), n) in enumerate(zip(V2_ROWS, V2_REPEATS)):
        for j in range(n):
            x = _block(x, sd, eps, s if j == 0 else 1, F.relu6, _timm_names(f"blocks.{stage}.{j}", t == 1, False))
    x = _cba(x, sd, "conv_head.weight", "bn2", eps, 1, F.relu6)
    return _linear(x.mean((2, 3)), sd, "classifier")


def _v3_head(x, sd, conv, bn, eps, hidden, out):
    x = _cba(x, sd, conv, bn, eps, 1, F.hardswish).mean((2, 3))  # pool first, then the NBN layers (Fig. 5)
    w = sd[f"{hidden}.weight"]
    x = F.hardswish(F.linear(x, w.flatten(1), sd[f"{hidden}.bias"]))  # timm stores it as a 1x1 conv
    return _linear(x, sd, out)


def ref_tv_mobilenetv3_small(sd, x, eps=1e-3):
    x = _cba(x, sd, "features.0.0.weight", "features.0.1", eps, 2, F.hardswish)
    for i, (inp, exp, se, hs, s) in enumerate(V3_SMALL):
        names = _tv_names(f"features.{i + 1}.block", exp != inp, se)
        x = _block(x, sd, eps, s, F.hardswish if hs else F.relu, names, F.relu, F.hardsigmoid)
    return _v3_head(x, sd, "features.12.0.weight", "features.12.1", eps, "classifier.0", "classifier.3")


def ref_timm_mobilenetv3_small(sd, x, eps=1e-5):
    x, i = _cba(x, sd, "conv_stem.weight", "bn1", eps, 2, F.hardswish), 0
    for stage, n in enumerate(V3_SMALL_TIMM_STAGES):
        for j in range(n):
            _, _, se, hs, s = V3_SMALL[i]
            names = _timm_names(f"blocks.{stage}.{j}", i == 0, se)
            x = _block(x, sd, eps, s, F.hardswish if hs else F.relu, names, F.relu, F.hardsigmoid)
            i += 1
    return _v3_head(x, sd, "blocks.5.0.conv.weight", "blocks.5.0.bn1", eps, "conv_head", "classifier")


def ref_tv_efficientnet_b0(sd, x, eps=1e-5):
    x = _cba(x, sd, "features.0.0.weight", "features.0.1", eps, 2, F.silu)
    for stage, ((t, s), n) in enumerate(zip(B0_ROWS, B0_REPEATS)):
        for j in range(n):
            names = _tv_names(f"features.{stage + 1}.{j}.block", t != 1, True)
            x = _block(x, sd, eps, s if j == 0 else 1, F.silu, names, F.silu, torch.sigmoid)
    x = _cba(x, sd, "features.8.0.weight", "features.8.1", eps, 1, F.silu)
    return _linear(x.mean((2, 3)), sd, "classifier.1")


def ref_timm_efficientnet_b0(sd, x, eps=1e-5):
    x = _cba(x, sd, "conv_stem.weight", "bn1", eps, 2, F.silu)
    for stage, ((t, s), n) in enumerate(zip(B0_ROWS, B0_REPEATS)):
        for j in range(n):
            names = _timm_names(f"blocks.{stage}.{j}", t == 1, True)
            x = _block(x, sd, eps, s if j == 0 else 1, F.silu, names, F.silu, torch.sigmoid)
    x = _cba(x, sd, "conv_head.weight", "bn2", eps, 1, F.silu)
    return _linear(x.mean((2, 3)), sd, "classifier")


# --------------------------------------------------------------------------------------------------- helpers
def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random BN affine and running statistics so that a BN mix-up changes the output."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.1 * torch.randn(n, generator=g)
            m.running_mean = 0.1 * torch.randn(n, generator=g)
            m.running_var = 0.5 + torch.rand(n, generator=g)
            m.num_batches_tracked.fill_(7)
    return model.eval()


def to_source_layout(model: torch.nn.Module, source_keys: list[str]) -> dict[str, torch.Tensor]:
    """Our state dict renamed, in order, to the source's names (1x1 conv heads stored 4-D as timm does)."""
    ours = model.state_dict()
    assert len(ours) == len(source_keys), f"{len(ours)} tensors vs {len(source_keys)} source keys"
    out = {}
    for (_, v), k in zip(ours.items(), source_keys):
        out[k] = v.reshape(*v.shape, 1, 1).clone() if k == "conv_head.weight" and v.dim() == 2 else v.clone()
    return out


def _save(sd: dict, tmp_path, fmt: str):
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


CASES = [  # (model, source, test-side layout, functional reference, config for the source's BatchNorm)
    ("mobilenetv1_100", "timm", timm_mobilenetv1_keys, ref_timm_mobilenetv1, {}),
    ("mobilenetv2_100", "torchvision", tv_mobilenetv2_keys, ref_tv_mobilenetv2, {}),
    ("mobilenetv2_100", "timm", timm_mobilenetv2_keys, ref_timm_mobilenetv2, {}),
    ("mobilenetv3_small_100", "torchvision", tv_mobilenetv3_small_keys, ref_tv_mobilenetv3_small,
     {"bn_eps": 1e-3, "bn_momentum": 0.01}),
    ("mobilenetv3_small_100", "timm", timm_mobilenetv3_small_keys, ref_timm_mobilenetv3_small,
     {"bn_eps": 1e-5, "bn_momentum": 0.1}),
    ("efficientnet_b0", "torchvision", tv_efficientnet_b0_keys, ref_tv_efficientnet_b0,
     source_bn_args("efficientnet_b0", "torchvision")),
    ("efficientnet_b0", "timm", timm_efficientnet_b0_keys, ref_timm_efficientnet_b0,
     source_bn_args("efficientnet_b0", "timm")),
]


# each case is saved in one of the two file formats (alternating), so both readers are exercised for both sources
@pytest.mark.parametrize("name,source,layout,ref,bn,fmt", [(*c, ("pth", "safetensors")[i % 2])
                                                            for i, c in enumerate(CASES)],
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_source_state_dict_loads_and_outputs_match(name, source, layout, ref, bn, fmt, tmp_path):
    torch.manual_seed(0)
    original = _randomise(paperzoo.create_model(name, **bn))
    sd = to_source_layout(original, layout())
    assert not any(k.startswith(("stem.", "stages.", "head.", "last_conv.")) for k in sd)  # really renamed
    path = _save(sd, tmp_path, fmt)
    torch.manual_seed(1)
    model = paperzoo.load_weights(paperzoo.create_model(name, **bn), path, source=source).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        out, expected = model(x), original(x)
        independent = ref(sd, x)  # the source architecture computed functionally from its own keys
    assert expected.abs().max() > 1e-3  # a meaningful output, not all zeros
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(out, independent, rtol=1e-4, atol=1e-4 * independent.abs().max().item())


def test_known_key_names_of_the_published_layouts():
    # Spot checks of the test-side descriptions against key names that the published state dicts contain.
    assert "features.1.0.block.1.fc1.weight" in tv_efficientnet_b0_keys()  # MBConv1: dw, SE, project
    assert "features.2.0.block.2.fc2.bias" in tv_efficientnet_b0_keys()  # MBConv6: expand, dw, SE, project
    assert "blocks.0.0.se.conv_reduce.weight" in timm_efficientnet_b0_keys()
    assert "features.1.conv.1.weight" in tv_mobilenetv2_keys() and "features.18.1.running_var" in tv_mobilenetv2_keys()
    assert "features.12.0.weight" in tv_mobilenetv3_small_keys()  # last 1x1 conv (576)
    assert "blocks.5.0.conv.weight" in timm_mobilenetv3_small_keys()
    assert "blocks.3.5.conv_pw.weight" in timm_mobilenetv1_keys()


def _tv_b0_file(tmp_path):
    model = paperzoo.create_model("efficientnet_b0", num_classes=10)
    return model, to_source_layout(model, tv_efficientnet_b0_keys())


def test_missing_key_is_named(tmp_path):
    model, sd = _tv_b0_file(tmp_path)
    del sd["features.3.1.block.1.0.weight"]  # a depthwise conv of stage 4
    with pytest.raises(WeightLoadError, match=r"missing keys \(1\): stages\.2\.1\.dw\.conv\.weight"):
        paperzoo.load_weights(model, _save(sd, tmp_path, "pth"), source="torchvision")


def test_unexpected_key_is_named(tmp_path):
    model, sd = _tv_b0_file(tmp_path)
    sd["features.9.0.weight"] = torch.zeros(1)
    with pytest.raises(WeightLoadError, match=r"unexpected keys \(1\): features\.9\.0\.weight"):
        paperzoo.load_weights(model, _save(sd, tmp_path, "safetensors"), source="torchvision")


def test_wrong_model_size_or_classes_is_a_shape_error(tmp_path):
    model, sd = _tv_b0_file(tmp_path)
    other = paperzoo.create_model("efficientnet_b0", num_classes=1000)
    with pytest.raises(WeightLoadError, match=r"classifier\.weight: checkpoint \(10, 1280\) vs model \(1000, 1280\)"):
        paperzoo.load_weights(other, _save(sd, tmp_path, "pth"), source="torchvision")
    # V2 torchvision weights are not V3 weights: many missing and unexpected keys, not a silent partial load
    v2 = to_source_layout(paperzoo.create_model("mobilenetv2_100"), tv_mobilenetv2_keys())
    with pytest.raises(WeightLoadError, match="missing keys"):
        paperzoo.load_weights(paperzoo.create_model("mobilenetv3_small_100"), _save(v2, tmp_path, "pth"),
                              source="torchvision")


def test_mobilenetv1_has_no_torchvision_mapping(tmp_path):
    model = paperzoo.create_model("mobilenetv1_025")
    path = _save(model.state_dict(), tmp_path, "pth")
    with pytest.raises(WeightLoadError, match="no torchvision key mapping for family 'mobilenetv1'"):
        paperzoo.load_weights(model, path, source="torchvision")


def test_bn_eps_convention_per_source():
    assert source_bn_args("efficientnet_b0", "torchvision") == {"bn_eps": 1e-5, "bn_momentum": 0.1}
    assert source_bn_args("efficientnet_b7", "torchvision") == {"bn_eps": 1e-3, "bn_momentum": 0.01}
    assert source_bn_args("efficientnet_b7", "timm") == {"bn_eps": 1e-5, "bn_momentum": 0.1}
    with torch.device("meta"):
        b5 = paperzoo.create_model("efficientnet_b5")
    assert {m.eps for m in b5.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}  # torchvision default
    assert {m.momentum for m in b5.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}  # see docs


def test_loading_with_another_sources_eps_warns(tmp_path):
    timm_model = _randomise(paperzoo.create_model("mobilenetv3_small_100", bn_eps=1e-5, bn_momentum=0.1))
    path = _save(to_source_layout(timm_model, timm_mobilenetv3_small_keys()), tmp_path, "pth")
    default = paperzoo.create_model("mobilenetv3_small_100")  # torchvision's eps 1e-3
    with pytest.warns(UserWarning, match="bn_eps=1e-05"):
        paperzoo.load_weights(default, path, source="timm")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # the eps really matters: outputs differ slightly, hence the warning
        assert not torch.equal(default.eval()(x), timm_model(x))
    matching = paperzoo.create_model("mobilenetv3_small_100", bn_eps=1e-5, bn_momentum=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when the eps is the source's
        paperzoo.load_weights(matching, path, source="timm")
