"""torchvision / timm state dicts load into MobileNet V1/V2/V3 and EfficientNet and give the source's outputs.

torchvision and timm cannot be imported here, so each test writes the source down *itself*: its key layout
(an independent, test-side description of the published names, below) and its forward pass as a function of
that state dict (``F.conv2d`` / ``F.batch_norm`` with the source's eps, strides, activations, SE gate). Weights
of a randomly initialised paperzoo model are renamed into that layout in order, their BatchNorm statistics
set small enough that eps matters (``source_reference.make_eps_visible``), saved (.pth or .safetensors),
loaded with ``paperzoo.load_weights(..., source=...)`` into a model *built with the other library's eps*, and
compared with the functional forward. A wrong mapping shows up as a WeightLoadError (names or shapes) or as
different outputs; a converter that kept our eps instead of the source's fails too.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from source_reference import assert_matches_source, bn, make_eps_visible, save

import paperzoo
from paperzoo import WeightLoadError
from paperzoo.models.efficientnet import source_bn_eps
from paperzoo.models.mobilenet_v3 import SOURCE_BN_EPS
from paperzoo.weights import convert_state_dict

BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
TV_V3_EPS = 1e-3  # torchvision mobilenetv3.py: norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
DEFAULT_EPS = 1e-5  # nn.BatchNorm2d's: torchvision's MobileNetV2 and EfficientNet-B0..B4, timm's non-tf_ models


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


# MobileNetV3 rows as torchvision's bneck_conf: (input, expanded, use_se, h-swish, stride); timm's stages group
# them by output width, then a ConvBnAct stage of its own holds the last 1x1 conv.
V3_SMALL = [(16, 16, True, False, 2), (16, 72, False, False, 2), (24, 88, False, False, 1), (24, 96, True, True, 2),
            (40, 240, True, True, 1), (40, 240, True, True, 1), (40, 120, True, True, 1), (48, 144, True, True, 1),
            (48, 288, True, True, 2), (96, 576, True, True, 1), (96, 576, True, True, 1)]
V3_SMALL_TIMM_STAGES = [1, 2, 3, 2, 3]  # ds_r1; ir_r1 + ir_r1; ir_r1 + ir_r2; ir_r2; ir_r3; then cn_r1 (576)
V3_LARGE = [(16, 16, False, False, 1), (16, 64, False, False, 2), (24, 72, False, False, 1),
            (24, 72, True, False, 2), (40, 120, True, False, 1), (40, 120, True, False, 1),
            (40, 240, False, True, 2), (80, 200, False, True, 1), (80, 184, False, True, 1), (80, 184, False, True, 1),
            (80, 480, True, True, 1), (112, 672, True, True, 1),
            (112, 672, True, True, 2), (160, 960, True, True, 1), (160, 960, True, True, 1)]
V3_LARGE_TIMM_STAGES = [1, 2, 3, 4, 2, 3]  # ds_r1; ir_r1 x2; ir_r3; ir_r1 x2 + ir_r2; ir_r2; ir_r3; then cn_r1 (960)


def tv_mobilenetv3_keys(table) -> list[str]:
    keys = _tv_seq("features.0")
    for i, (inp, exp, se, _, _) in enumerate(table):
        keys += _tv_mbconv(f"features.{i + 1}.block", expand=exp != inp, se=se)
    keys += _tv_seq(f"features.{len(table) + 1}")
    return keys + ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"]


def timm_mobilenetv3_keys(table, stages) -> list[str]:
    keys, i = _conv_bn("conv_stem", "bn1"), 0
    for stage, n in enumerate(stages):
        for j in range(n):
            keys += (_timm_ds if i == 0 else _timm_ir)(f"blocks.{stage}.{j}", se=table[i][2])
            i += 1
    last = len(stages)
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
# independently of paperzoo's modules: activations, SE placement and gate, strides, shortcuts, padding (k-1)/2
# (torchvision, and timm's default pad_type), and the source's BatchNorm eps.
V1_STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]  # Table 1 (the last dw layer is stride 1 in practice)
V2_ROWS = [(1, 1), (6, 2), (6, 2), (6, 2), (6, 1), (6, 2), (6, 1)]  # Table 2 (t, s); repeats in V2_REPEATS
B0_ROWS = [(1, 1), (6, 2), (6, 2), (6, 2), (6, 1), (6, 2), (6, 1)]  # Table 1 (t, s); repeats in B0_REPEATS


def _cba(x, sd, conv, norm, eps, stride=1, act=None):
    w = sd[conv]
    groups = x.shape[1] if w.shape[1] == 1 and x.shape[1] > 1 else 1  # (C, 1, k, k): depthwise
    y = bn(sd, norm, F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups), eps)
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


def ref_timm_mobilenetv1(sd, x, eps=DEFAULT_EPS):
    x, i = _cba(x, sd, "conv_stem.weight", "bn1", eps, 2, F.relu6), 0
    for stage, n in enumerate([1, 2, 2, 6, 2]):
        for j in range(n):  # timm "dsa" blocks: ReLU6 after the pointwise conv too, no shortcut
            p = f"blocks.{stage}.{j}"
            x = _cba(x, sd, f"{p}.conv_dw.weight", f"{p}.bn1", eps, V1_STRIDES[i], F.relu6)
            x = _cba(x, sd, f"{p}.conv_pw.weight", f"{p}.bn2", eps, 1, F.relu6)
            i += 1
    return _linear(x.mean((2, 3)), sd, "classifier")


def _v2_strides():
    return [(t, s if j == 0 else 1) for (t, s), n in zip(V2_ROWS, V2_REPEATS) for j in range(n)]


def ref_tv_mobilenetv2(sd, x, eps=DEFAULT_EPS):
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


def ref_timm_mobilenetv2(sd, x, eps=DEFAULT_EPS):
    x = _cba(x, sd, "conv_stem.weight", "bn1", eps, 2, F.relu6)
    for stage, ((t, s), n) in enumerate(zip(V2_ROWS, V2_REPEATS)):
        for j in range(n):
            x = _block(x, sd, eps, s if j == 0 else 1, F.relu6, _timm_names(f"blocks.{stage}.{j}", t == 1, False))
    x = _cba(x, sd, "conv_head.weight", "bn2", eps, 1, F.relu6)
    return _linear(x.mean((2, 3)), sd, "classifier")


def _v3_head(x, sd, conv, norm, eps, hidden, out):
    x = _cba(x, sd, conv, norm, eps, 1, F.hardswish).mean((2, 3))  # pool first, then the NBN layers (Fig. 5)
    w = sd[f"{hidden}.weight"]
    x = F.hardswish(F.linear(x, w.flatten(1), sd[f"{hidden}.bias"]))  # timm stores it as a 1x1 conv
    return _linear(x, sd, out)


def ref_tv_mobilenetv3(table, sd, x, eps=TV_V3_EPS):
    x = _cba(x, sd, "features.0.0.weight", "features.0.1", eps, 2, F.hardswish)
    for i, (inp, exp, se, hs, s) in enumerate(table):
        names = _tv_names(f"features.{i + 1}.block", exp != inp, se)
        x = _block(x, sd, eps, s, F.hardswish if hs else F.relu, names, F.relu, F.hardsigmoid)
    k = len(table) + 1
    return _v3_head(x, sd, f"features.{k}.0.weight", f"features.{k}.1", eps, "classifier.0", "classifier.3")


def ref_timm_mobilenetv3(table, stages, sd, x, eps=DEFAULT_EPS):
    x, i = _cba(x, sd, "conv_stem.weight", "bn1", eps, 2, F.hardswish), 0
    for stage, n in enumerate(stages):
        for j in range(n):
            _, _, se, hs, s = table[i]
            names = _timm_names(f"blocks.{stage}.{j}", i == 0, se)
            x = _block(x, sd, eps, s, F.hardswish if hs else F.relu, names, F.relu, F.hardsigmoid)
            i += 1
    last = len(stages)
    return _v3_head(x, sd, f"blocks.{last}.0.conv.weight", f"blocks.{last}.0.bn1", eps, "conv_head", "classifier")


def ref_tv_efficientnet_b0(sd, x, eps=DEFAULT_EPS):
    x = _cba(x, sd, "features.0.0.weight", "features.0.1", eps, 2, F.silu)
    for stage, ((t, s), n) in enumerate(zip(B0_ROWS, B0_REPEATS)):
        for j in range(n):
            names = _tv_names(f"features.{stage + 1}.{j}.block", t != 1, True)
            x = _block(x, sd, eps, s if j == 0 else 1, F.silu, names, F.silu, torch.sigmoid)
    x = _cba(x, sd, "features.8.0.weight", "features.8.1", eps, 1, F.silu)
    return _linear(x.mean((2, 3)), sd, "classifier.1")


def ref_timm_efficientnet_b0(sd, x, eps=DEFAULT_EPS):
    x = _cba(x, sd, "conv_stem.weight", "bn1", eps, 2, F.silu)
    for stage, ((t, s), n) in enumerate(zip(B0_ROWS, B0_REPEATS)):
        for j in range(n):
            names = _timm_names(f"blocks.{stage}.{j}", t == 1, True)
            x = _block(x, sd, eps, s if j == 0 else 1, F.silu, names, F.silu, torch.sigmoid)
    x = _cba(x, sd, "conv_head.weight", "bn2", eps, 1, F.silu)
    return _linear(x.mean((2, 3)), sd, "classifier")


# --------------------------------------------------------------------------------------------------- helpers
def _randomise_affine(model: torch.nn.Module) -> torch.nn.Module:
    """Random BN scales and shifts (the statistics come from ``make_eps_visible``), so a BN mix-up shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand(m.num_features, generator=g)
            m.bias.data = 0.1 * torch.randn(m.num_features, generator=g)
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
    save(sd, path)
    return path


def _other(eps: float) -> float:
    return 1e-3 if eps == DEFAULT_EPS else DEFAULT_EPS


CASES = [  # (model, source, test-side layout, functional reference, the source's BatchNorm eps)
    ("mobilenetv1_100", "timm", timm_mobilenetv1_keys, ref_timm_mobilenetv1, DEFAULT_EPS),
    ("mobilenetv2_100", "torchvision", tv_mobilenetv2_keys, ref_tv_mobilenetv2, DEFAULT_EPS),
    ("mobilenetv2_100", "timm", timm_mobilenetv2_keys, ref_timm_mobilenetv2, DEFAULT_EPS),
    ("mobilenetv3_small_100", "torchvision", partial(tv_mobilenetv3_keys, V3_SMALL),
     partial(ref_tv_mobilenetv3, V3_SMALL), TV_V3_EPS),
    ("mobilenetv3_small_100", "timm", partial(timm_mobilenetv3_keys, V3_SMALL, V3_SMALL_TIMM_STAGES),
     partial(ref_timm_mobilenetv3, V3_SMALL, V3_SMALL_TIMM_STAGES), DEFAULT_EPS),
    ("mobilenetv3_large_100", "torchvision", partial(tv_mobilenetv3_keys, V3_LARGE),
     partial(ref_tv_mobilenetv3, V3_LARGE), TV_V3_EPS),
    ("mobilenetv3_large_100", "timm", partial(timm_mobilenetv3_keys, V3_LARGE, V3_LARGE_TIMM_STAGES),
     partial(ref_timm_mobilenetv3, V3_LARGE, V3_LARGE_TIMM_STAGES), DEFAULT_EPS),
    ("efficientnet_b0", "torchvision", tv_efficientnet_b0_keys, ref_tv_efficientnet_b0, DEFAULT_EPS),
    ("efficientnet_b0", "timm", timm_efficientnet_b0_keys, ref_timm_efficientnet_b0, DEFAULT_EPS),
]


# each case is saved in one of the two file formats (alternating), so both readers are exercised for both sources
@pytest.mark.parametrize("name,source,layout,ref,eps,fmt", [(*c, ("pth", "safetensors")[i % 2])
                                                             for i, c in enumerate(CASES)],
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_source_state_dict_gives_the_sources_outputs(name, source, layout, ref, eps, fmt, tmp_path):
    sd = to_source_layout(_randomise_affine(paperzoo.create_model(name)), layout())
    assert not any(k.startswith(("stem.", "stages.", "head.", "last_conv.")) for k in sd)  # really renamed
    x = torch.randn(2, 3, 64, 48)
    make_eps_visible(sd, ref, x)
    path = _save(sd, tmp_path, fmt)
    # built with the *other* library's eps: the converter must give it the source's
    model = paperzoo.load_weights(paperzoo.create_model(name, bn_eps=_other(eps)), path, source=source)
    with torch.no_grad():
        expected = ref(sd, x)  # the source architecture computed functionally from its own keys
    assert expected.abs().max() > 1e-3  # a meaningful output, not all zeros
    assert model.cfg.bn_eps == eps
    assert_matches_source(model, x, expected, wrong_eps=_other(eps))


def test_default_mobilenetv3_takes_timms_eps_from_timm_weights(tmp_path):
    # the reported bug: create_model's default eps (torchvision's 1e-3) kept for timm weights (1e-5)
    layout = timm_mobilenetv3_keys(V3_SMALL, V3_SMALL_TIMM_STAGES)
    ref = partial(ref_timm_mobilenetv3, V3_SMALL, V3_SMALL_TIMM_STAGES)
    sd = make_eps_visible(to_source_layout(paperzoo.create_model("mobilenetv3_small_100"), layout),
                          ref, torch.randn(2, 3, 32, 32))
    model = paperzoo.load_weights(paperzoo.create_model("mobilenetv3_small_100"), _save(sd, tmp_path, "pth"), "timm")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_matches_source(model, x, ref(sd, x), wrong_eps=1e-3)


def test_known_key_names_of_the_published_layouts():
    # Spot checks of the test-side descriptions against key names that the published state dicts contain.
    assert "features.1.0.block.1.fc1.weight" in tv_efficientnet_b0_keys()  # MBConv1: dw, SE, project
    assert "features.2.0.block.2.fc2.bias" in tv_efficientnet_b0_keys()  # MBConv6: expand, dw, SE, project
    assert "blocks.0.0.se.conv_reduce.weight" in timm_efficientnet_b0_keys()
    assert "features.1.conv.1.weight" in tv_mobilenetv2_keys() and "features.18.1.running_var" in tv_mobilenetv2_keys()
    assert "features.12.0.weight" in tv_mobilenetv3_keys(V3_SMALL)  # last 1x1 conv (576)
    assert "features.16.0.weight" in tv_mobilenetv3_keys(V3_LARGE)  # last 1x1 conv (960)
    assert "features.1.block.0.0.weight" in tv_mobilenetv3_keys(V3_LARGE)  # no expansion: dw first
    assert "blocks.5.0.conv.weight" in timm_mobilenetv3_keys(V3_SMALL, V3_SMALL_TIMM_STAGES)
    assert "blocks.6.0.conv.weight" in timm_mobilenetv3_keys(V3_LARGE, V3_LARGE_TIMM_STAGES)
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
    assert SOURCE_BN_EPS == {"torchvision": 1e-3, "timm": 1e-5}
    assert source_bn_eps("efficientnet_b0", "torchvision") == 1e-5
    assert source_bn_eps("efficientnet_b7", "torchvision") == 1e-3
    assert source_bn_eps("efficientnet_b7", "timm") == 1e-5
    with torch.device("meta"):
        b5 = paperzoo.create_model("efficientnet_b5")
    assert {m.eps for m in b5.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}  # torchvision default
    assert {m.momentum for m in b5.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}  # see docs


@pytest.mark.parametrize("source,eps", [("torchvision", 1e-3), ("timm", 1e-5)])
def test_efficientnet_b5_converters_set_the_sources_eps(source, eps):
    # torchvision's B5-B7 use eps 1e-3, its B0-B4 and all of timm's 1e-5; the model is built with the other
    with torch.device("meta"):
        b5 = paperzoo.create_model("efficientnet_b5", bn_eps=_other(eps))
    convert_state_dict(b5, {}, source)
    assert {m.eps for m in b5.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {eps}
    assert b5.cfg.bn_eps == eps
