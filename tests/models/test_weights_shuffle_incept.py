"""torchvision / timm state dicts load into ShuffleNet V2, Xception and Inception-v3 and give the same outputs.

torchvision and timm cannot be imported here, so each test describes the source model independently: its
published key layout (names and shapes, written out below from torchvision's ``shufflenetv2.py`` /
``inception.py`` and timm's ``xception.py``) and a functional forward pass that reads the weights *by the
source's names*, with the source's BatchNorm eps (1e-5; Inception's TF-slim 1e-3). Random weights in that
layout, with BatchNorm statistics small enough that eps matters (``source_reference.make_eps_visible``), are
saved as ``.pth`` or ``.safetensors``, loaded with ``paperzoo.load_weights(..., source=...)``, and both forwards
are compared (same float32 kernels, so they agree to rounding; a mis-mapped tensor or another eps changes the
output by orders of magnitude more).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from source_reference import assert_close, assert_matches_source, bn, make_eps_visible

import paperzoo
from paperzoo.weights import WeightLoadError

Spec = dict[str, tuple[int, ...]]


# ------------------------------------------------------------------------------------------------ helpers
def _conv(shapes: Spec, name: str, cout: int, cin_per_group: int, kh: int, kw: int | None = None) -> None:
    shapes[f"{name}.weight"] = (cout, cin_per_group, kh, kw or kh)


def _bn(shapes: Spec, name: str, c: int) -> None:
    for field in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{field}"] = (c,)
    shapes[f"{name}.num_batches_tracked"] = ()


def _random_state_dict(shapes: Spec, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var") or (k.endswith(".weight") and len(shape) == 1):
            sd[k] = torch.rand(shape, generator=g) + 0.5  # BN scale and variance in [0.5, 1.5)
        elif len(shape) == 1:
            sd[k] = torch.randn(shape, generator=g) * 0.1  # BN shift, running mean, FC bias
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            sd[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return sd


def _bn_f(sd, name: str, x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return bn(sd, name, x, eps)  # 1e-5: the nn.BatchNorm2d default of torchvision's ShuffleNetV2 and timm's Xception


def _save(sd: dict[str, torch.Tensor], path, fmt: str) -> None:
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)


def _load_and_compare(name: str, sd, ref_forward, x, tmp_path, source: str, fmt: str, wrong_eps: float = 1e-3,
                      conv_scale: float = 0.01, **kw):
    make_eps_visible(sd, ref_forward, x, conv_scale)
    path = tmp_path / f"w.{fmt}"
    _save(sd, path, fmt)
    model = paperzoo.create_model(name, **kw).eval()
    paperzoo.load_weights(model, path, source=source)
    with torch.no_grad():
        ref = ref_forward(sd, x)
    assert_matches_source(model, x, ref, wrong_eps)
    return model


def _assert_same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert_close(ours, ref)


# ------------------------------------------------------------------------- torchvision ShuffleNetV2 layout
def tv_shufflenet_v2_layout(stage_out=(48, 96, 192), conv5=1024, repeats=(4, 8, 4), num_classes=10) -> Spec:
    """torchvision ShuffleNetV2: conv1 = Sequential(Conv, BN, ReLU); stageN.i.branch1 = Sequential(dwConv,
    BN, Conv1x1, BN, ReLU) for the first unit of a stage (empty otherwise); branch2 = Sequential(Conv1x1, BN,
    ReLU, dwConv, BN, Conv1x1, BN, ReLU); conv5 = Sequential(Conv1x1, BN, ReLU); fc."""
    s: Spec = {}
    _conv(s, "conv1.0", 24, 3, 3)
    _bn(s, "conv1.1", 24)
    cin = 24
    for stage, (cout, n) in enumerate(zip(stage_out, repeats), start=2):
        bf = cout // 2
        for i in range(n):
            p = f"stage{stage}.{i}"
            if i == 0:
                _conv(s, f"{p}.branch1.0", cin, 1, 3)
                _bn(s, f"{p}.branch1.1", cin)
                _conv(s, f"{p}.branch1.2", bf, cin, 1)
                _bn(s, f"{p}.branch1.3", bf)
            _conv(s, f"{p}.branch2.0", bf, cin if i == 0 else bf, 1)
            _bn(s, f"{p}.branch2.1", bf)
            _conv(s, f"{p}.branch2.3", bf, 1, 3)
            _bn(s, f"{p}.branch2.4", bf)
            _conv(s, f"{p}.branch2.5", bf, bf, 1)
            _bn(s, f"{p}.branch2.6", bf)
        cin = cout
    _conv(s, "conv5.0", conv5, cin, 1)
    _bn(s, "conv5.1", conv5)
    s["fc.weight"], s["fc.bias"] = (num_classes, conv5), (num_classes,)
    return s


def tv_shufflenet_v2_forward(sd, x, repeats=(4, 8, 4)):
    def conv_bn(x, conv, bn, stride=1, groups=1, relu=True):
        w = sd[f"{conv}.weight"]
        x = _bn_f(sd, bn, F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups))
        return F.relu(x) if relu else x

    x = F.max_pool2d(conv_bn(x, "conv1.0", "conv1.1", stride=2), 3, 2, 1)
    for stage, n in enumerate(repeats, start=2):
        for i in range(n):
            p = f"stage{stage}.{i}"
            stride = 2 if i == 0 else 1
            if i == 0:
                left = conv_bn(x, f"{p}.branch1.0", f"{p}.branch1.1", 2, groups=x.shape[1], relu=False)
                left = conv_bn(left, f"{p}.branch1.2", f"{p}.branch1.3")
                right = x
            else:
                left, right = x.chunk(2, dim=1)
            right = conv_bn(right, f"{p}.branch2.0", f"{p}.branch2.1")
            right = conv_bn(right, f"{p}.branch2.3", f"{p}.branch2.4", stride, groups=right.shape[1], relu=False)
            right = conv_bn(right, f"{p}.branch2.5", f"{p}.branch2.6")
            out = torch.cat([left, right], dim=1)
            b, c, h, w = out.shape
            x = out.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)  # channel shuffle, 2 groups
    x = conv_bn(x, "conv5.0", "conv5.1").mean((2, 3))
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_shufflenet_v2_torchvision_weights_give_same_output(tmp_path, fmt):
    sd = _random_state_dict(tv_shufflenet_v2_layout())
    x = torch.randn(2, 3, 64, 48)
    _load_and_compare("shufflenet_v2_x0_5", sd, tv_shufflenet_v2_forward, x, tmp_path, "torchvision", fmt,
                      num_classes=10)


def test_shufflenet_v2_x2_0_torchvision_layout_matches_keys_and_shapes(tmp_path):
    # the widest variant, conv5 of 2048: keys and shapes only (strict loading checks every one)
    sd = _random_state_dict(tv_shufflenet_v2_layout((244, 488, 976), 2048, num_classes=1000))
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) == 7_393_996
    torch.save(sd, tmp_path / "w.pth")
    paperzoo.load_weights(paperzoo.create_model("shufflenet_v2_x2_0"), tmp_path / "w.pth", source="torchvision")


# --------------------------------------------------------------------------------- timm legacy_xception
def timm_xception_blocks():
    """(in, out, reps, stride, start_with_relu, grow_first) of block1 .. block12 (timm ``Xception``)."""
    return ([(64, 128, 2, 2, False, True), (128, 256, 2, 2, True, True), (256, 728, 2, 2, True, True)]
            + [(728, 728, 3, 1, True, True)] * 8 + [(728, 1024, 2, 2, True, False)])


def timm_xception_rep(cin, cout, reps, start_with_relu, grow_first):
    """The flat ``rep`` Sequential of a timm Block: [ReLU, SeparableConv2d, BN] per rep, first ReLU
    dropped when not start_with_relu. Returns items ("relu",) / ("sep", in, out) / ("bn", c)."""
    items = []
    for i in range(reps):
        inc, outc = ((cin if i == 0 else cout), cout) if grow_first else (cin, cin if i < reps - 1 else cout)
        items += [("relu",), ("sep", inc, outc), ("bn", outc)]
    return items if start_with_relu else items[1:]


def timm_xception_layout(num_classes=10) -> Spec:
    s: Spec = {}
    _conv(s, "conv1", 32, 3, 3)
    _bn(s, "bn1", 32)
    _conv(s, "conv2", 64, 32, 3)
    _bn(s, "bn2", 64)
    for n, (cin, cout, reps, stride, swr, gf) in enumerate(timm_xception_blocks(), start=1):
        if cout != cin or stride != 1:
            _conv(s, f"block{n}.skip", cout, cin, 1)
            _bn(s, f"block{n}.skipbn", cout)
        for j, item in enumerate(timm_xception_rep(cin, cout, reps, swr, gf)):
            if item[0] == "sep":
                _conv(s, f"block{n}.rep.{j}.conv1", item[1], 1, 3)
                _conv(s, f"block{n}.rep.{j}.pointwise", item[2], item[1], 1)
            elif item[0] == "bn":
                _bn(s, f"block{n}.rep.{j}", item[1])
    for i, (cin, cout) in ((3, (1024, 1536)), (4, (1536, 2048))):
        _conv(s, f"conv{i}.conv1", cin, 1, 3)
        _conv(s, f"conv{i}.pointwise", cout, cin, 1)
        _bn(s, f"bn{i}", cout)
    s["fc.weight"], s["fc.bias"] = (num_classes, 2048), (num_classes,)
    return s


def timm_xception_forward(sd, x):
    def sep(x, name):
        x = F.conv2d(x, sd[f"{name}.conv1.weight"], padding=1, groups=x.shape[1])
        return F.conv2d(x, sd[f"{name}.pointwise.weight"])

    x = F.relu(_bn_f(sd, "bn1", F.conv2d(x, sd["conv1.weight"], stride=2)))
    x = F.relu(_bn_f(sd, "bn2", F.conv2d(x, sd["conv2.weight"])))
    for n, (cin, cout, reps, stride, swr, gf) in enumerate(timm_xception_blocks(), start=1):
        out = x
        for j, item in enumerate(timm_xception_rep(cin, cout, reps, swr, gf)):
            if item[0] == "relu":
                out = F.relu(out)
            elif item[0] == "sep":
                out = sep(out, f"block{n}.rep.{j}")
            else:
                out = _bn_f(sd, f"block{n}.rep.{j}", out)
        if stride != 1:
            out = F.max_pool2d(out, 3, stride, 1)
        skip = x
        if f"block{n}.skip.weight" in sd:
            skip = _bn_f(sd, f"block{n}.skipbn", F.conv2d(x, sd[f"block{n}.skip.weight"], stride=stride))
        x = out + skip
    x = F.relu(_bn_f(sd, "bn3", sep(x, "conv3")))
    x = F.relu(_bn_f(sd, "bn4", sep(x, "conv4"))).mean((2, 3))
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_xception_timm_weights_give_same_output(tmp_path, fmt):
    sd = _random_state_dict(timm_xception_layout())
    x = torch.randn(2, 3, 35, 41)
    # 0.1: a separable conv is two scaled convs before one BN
    _load_and_compare("xception", sd, timm_xception_forward, x, tmp_path, "timm", fmt, conv_scale=0.1,
                      num_classes=10)


def test_xception_timm_layout_param_count():
    s = timm_xception_layout(num_classes=1000)
    n = 0
    for k, shape in s.items():
        if "running" not in k and "num_batches" not in k:
            n += torch.Size(shape).numel()
    assert n == 22_855_952


# ----------------------------------------------------------------------------- torchvision Inception3
def tv_inception_convs(aux: bool) -> dict[str, tuple[int, int, tuple[int, int], int, tuple[int, int]]]:
    """Every BasicConv2d of torchvision's Inception3: name -> (in, out, kernel, stride, padding)."""
    c = {}

    def add(name, cin, cout, k, s=1, p=(0, 0)):
        c[name] = (cin, cout, (k, k) if isinstance(k, int) else k, s, (p, p) if isinstance(p, int) else p)

    add("Conv2d_1a_3x3", 3, 32, 3, 2)
    add("Conv2d_2a_3x3", 32, 32, 3)
    add("Conv2d_2b_3x3", 32, 64, 3, p=1)
    add("Conv2d_3b_1x1", 64, 80, 1)
    add("Conv2d_4a_3x3", 80, 192, 3)
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):  # InceptionA
        add(f"{name}.branch1x1", cin, 64, 1)
        add(f"{name}.branch5x5_1", cin, 48, 1)
        add(f"{name}.branch5x5_2", 48, 64, 5, p=2)
        add(f"{name}.branch3x3dbl_1", cin, 64, 1)
        add(f"{name}.branch3x3dbl_2", 64, 96, 3, p=1)
        add(f"{name}.branch3x3dbl_3", 96, 96, 3, p=1)
        add(f"{name}.branch_pool", cin, pool, 1)
    add("Mixed_6a.branch3x3", 288, 384, 3, 2)  # InceptionB
    add("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
    add("Mixed_6a.branch3x3dbl_2", 64, 96, 3, p=1)
    add("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 2)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):  # InceptionC
        add(f"{name}.branch1x1", 768, 192, 1)
        add(f"{name}.branch7x7_1", 768, c7, 1)
        add(f"{name}.branch7x7_2", c7, c7, (1, 7), p=(0, 3))
        add(f"{name}.branch7x7_3", c7, 192, (7, 1), p=(3, 0))
        add(f"{name}.branch7x7dbl_1", 768, c7, 1)
        add(f"{name}.branch7x7dbl_2", c7, c7, (7, 1), p=(3, 0))
        add(f"{name}.branch7x7dbl_3", c7, c7, (1, 7), p=(0, 3))
        add(f"{name}.branch7x7dbl_4", c7, c7, (7, 1), p=(3, 0))
        add(f"{name}.branch7x7dbl_5", c7, 192, (1, 7), p=(0, 3))
        add(f"{name}.branch_pool", 768, 192, 1)
    if aux:
        add("AuxLogits.conv0", 768, 128, 1)
        add("AuxLogits.conv1", 128, 768, 5)
    add("Mixed_7a.branch3x3_1", 768, 192, 1)  # InceptionD
    add("Mixed_7a.branch3x3_2", 192, 320, 3, 2)
    add("Mixed_7a.branch7x7x3_1", 768, 192, 1)
    add("Mixed_7a.branch7x7x3_2", 192, 192, (1, 7), p=(0, 3))
    add("Mixed_7a.branch7x7x3_3", 192, 192, (7, 1), p=(3, 0))
    add("Mixed_7a.branch7x7x3_4", 192, 192, 3, 2)
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):  # InceptionE
        add(f"{name}.branch1x1", cin, 320, 1)
        add(f"{name}.branch3x3_1", cin, 384, 1)
        add(f"{name}.branch3x3_2a", 384, 384, (1, 3), p=(0, 1))
        add(f"{name}.branch3x3_2b", 384, 384, (3, 1), p=(1, 0))
        add(f"{name}.branch3x3dbl_1", cin, 448, 1)
        add(f"{name}.branch3x3dbl_2", 448, 384, 3, p=1)
        add(f"{name}.branch3x3dbl_3a", 384, 384, (1, 3), p=(0, 1))
        add(f"{name}.branch3x3dbl_3b", 384, 384, (3, 1), p=(1, 0))
        add(f"{name}.branch_pool", cin, 192, 1)
    return c


def tv_inception_layout(num_classes=10, aux=False) -> Spec:
    s: Spec = {}
    for name, (cin, cout, (kh, kw), _, _) in tv_inception_convs(aux).items():
        _conv(s, f"{name}.conv", cout, cin, kh, kw)
        _bn(s, f"{name}.bn", cout)
    if aux:
        s["AuxLogits.fc.weight"], s["AuxLogits.fc.bias"] = (num_classes, 768), (num_classes,)
    s["fc.weight"], s["fc.bias"] = (num_classes, 2048), (num_classes,)
    return s


def tv_inception_forward(sd, x, return_aux=False):
    convs = tv_inception_convs(aux=return_aux)

    def b(name, x):  # BasicConv2d: conv -> BN(eps=0.001) -> ReLU
        _, _, _, stride, pad = convs[name]
        return F.relu(_bn_f(sd, f"{name}.bn", F.conv2d(x, sd[f"{name}.conv.weight"], stride=stride, padding=pad),
                            eps=1e-3))

    def chain(x, *names):
        for n in names:
            x = b(n, x)
        return x

    def pool_branch(m, x):
        return b(f"{m}.branch_pool", F.avg_pool2d(x, 3, 1, 1))

    x = chain(x, "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3")
    x = chain(F.max_pool2d(x, 3, 2), "Conv2d_3b_1x1", "Conv2d_4a_3x3")
    x = F.max_pool2d(x, 3, 2)
    for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = torch.cat([b(f"{m}.branch1x1", x), chain(x, f"{m}.branch5x5_1", f"{m}.branch5x5_2"),
                       chain(x, f"{m}.branch3x3dbl_1", f"{m}.branch3x3dbl_2", f"{m}.branch3x3dbl_3"),
                       pool_branch(m, x)], 1)
    m = "Mixed_6a"
    x = torch.cat([b(f"{m}.branch3x3", x),
                   chain(x, f"{m}.branch3x3dbl_1", f"{m}.branch3x3dbl_2", f"{m}.branch3x3dbl_3"),
                   F.max_pool2d(x, 3, 2)], 1)
    for m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = torch.cat([b(f"{m}.branch1x1", x), chain(x, *[f"{m}.branch7x7_{i}" for i in (1, 2, 3)]),
                       chain(x, *[f"{m}.branch7x7dbl_{i}" for i in (1, 2, 3, 4, 5)]), pool_branch(m, x)], 1)
    aux = None
    if return_aux:  # InceptionAux: avgpool 5/3 -> conv0 -> conv1 -> adaptive pool -> fc
        a = chain(F.avg_pool2d(x, 5, 3), "AuxLogits.conv0", "AuxLogits.conv1").mean((2, 3))
        aux = F.linear(a, sd["AuxLogits.fc.weight"], sd["AuxLogits.fc.bias"])
    m = "Mixed_7a"
    x = torch.cat([chain(x, f"{m}.branch3x3_1", f"{m}.branch3x3_2"),
                   chain(x, *[f"{m}.branch7x7x3_{i}" for i in (1, 2, 3, 4)]), F.max_pool2d(x, 3, 2)], 1)
    for m in ("Mixed_7b", "Mixed_7c"):
        t = b(f"{m}.branch3x3_1", x)
        d = chain(x, f"{m}.branch3x3dbl_1", f"{m}.branch3x3dbl_2")
        x = torch.cat([b(f"{m}.branch1x1", x),
                       torch.cat([b(f"{m}.branch3x3_2a", t), b(f"{m}.branch3x3_2b", t)], 1),
                       torch.cat([b(f"{m}.branch3x3dbl_3a", d), b(f"{m}.branch3x3dbl_3b", d)], 1),
                       pool_branch(m, x)], 1)
    logits = F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])
    return (logits, aux) if return_aux else logits


def test_inception_layouts_param_counts():
    def n(spec):
        return sum(torch.Size(s).numel() for k, s in spec.items() if "running" not in k and "num_batches" not in k)

    assert n(tv_inception_layout(1000, aux=False)) == 23_834_568
    assert n(tv_inception_layout(1000, aux=True)) == 27_161_264


@pytest.mark.parametrize("source,fmt", [("timm", "safetensors"), ("torchvision", "pth")])
def test_inception_v3_weights_give_same_output(tmp_path, source, fmt):
    # timm's inception_v3 has no aux head by default; torchvision's file has one, dropped for our aux-less model
    sd = _random_state_dict(tv_inception_layout(aux=source == "torchvision"))
    x = torch.randn(2, 3, 75, 83)
    _load_and_compare("inception_v3", sd, tv_inception_forward, x, tmp_path, source, fmt, wrong_eps=1e-5,
                      num_classes=10)


@pytest.mark.slow  # two passes at 299x299, the size the aux head needs
def test_inception_v3_torchvision_weights_with_aux_head(tmp_path):
    sd = _random_state_dict(tv_inception_layout(aux=True), seed=1)
    torch.save(sd, tmp_path / "w.pth")
    model = paperzoo.create_model("inception_v3", num_classes=10, aux_logits=True).eval()
    paperzoo.load_weights(model, tmp_path / "w.pth", source="torchvision")
    # the aux head sits on Mixed_6e; in eval mode forward() returns the logits only, so hook it there
    feats = {}
    model.Mixed_6e.register_forward_hook(lambda m, i, o: feats.__setitem__("6e", o))
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        ours = model(x)
        ours_aux = model.AuxLogits(feats["6e"])
        ref, ref_aux = tv_inception_forward(sd, x, return_aux=True)
    _assert_same(ours, ref)
    _assert_same(ours_aux, ref_aux)


def test_inception_transform_input_matches_torchvision_formula():
    model = paperzoo.create_model("inception_v3", num_classes=4, transform_input=True, small_input=True).eval()
    x = torch.randn(1, 3, 12, 12)
    # torchvision Inception3._transform_input, channel by channel
    ref_in = torch.cat([x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
                        x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                        x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5], 1)
    with torch.no_grad():
        out = model(x)
        model.cfg.transform_input = False  # the same weights, fed the transformed input directly
        torch.testing.assert_close(out, model(ref_in), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ strict errors
def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    sd = _random_state_dict(tv_shufflenet_v2_layout())
    model = paperzoo.create_model("shufflenet_v2_x0_5", num_classes=10)
    bad = dict(sd)
    del bad["stage3.2.branch2.5.weight"]
    bad["stage9.0.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightLoadError) as e:
        paperzoo.load_weights(model, tmp_path / "bad.pth", source="torchvision")
    msg = str(e.value)
    assert "stage3.2.branch2.2.conv.weight" in msg and "missing" in msg  # named in our layout
    assert "stage9.0.extra.weight" in msg and "unexpected" in msg

    sd1000 = _random_state_dict(tv_shufflenet_v2_layout(num_classes=1000))
    save_file(sd1000, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightLoadError, match=r"fc\.weight: checkpoint \(1000, 1024\) vs model \(10, 1024\)"):
        paperzoo.load_weights(model, tmp_path / "w.safetensors", source="torchvision")


def test_xception_and_inception_strict_errors(tmp_path):
    sd = _random_state_dict(timm_xception_layout())
    del sd["block7.rep.4.pointwise.weight"]
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(WeightLoadError, match=r"middle_flow\.3\.layers\.1\.conv\.pointwise\.weight"):
        paperzoo.load_weights(paperzoo.create_model("xception", num_classes=10), tmp_path / "x.pth", source="timm")

    # an aux-less file cannot fill a model built with the aux head
    torch.save(_random_state_dict(tv_inception_layout(aux=False)), tmp_path / "i.pth")
    model = paperzoo.create_model("inception_v3", num_classes=10, aux_logits=True)
    with pytest.raises(WeightLoadError, match=r"missing keys.*AuxLogits\.conv0\.conv\.weight"):
        paperzoo.load_weights(model, tmp_path / "i.pth", source="torchvision")


def test_shufflenet_v1_has_no_external_source(tmp_path):
    torch.save({}, tmp_path / "e.pth")
    with pytest.raises(WeightLoadError, match="no torchvision key mapping for family 'shufflenet_v1'"):
        paperzoo.load_weights(paperzoo.create_model("shufflenet_v1_g3"), tmp_path / "e.pth", source="torchvision")


def test_the_comparison_catches_a_wrong_mapping(tmp_path):
    # guard on the tests above: two units' weights swapped in the file load fine (same shapes) but the
    # outputs then differ from the reference by far more than the tolerance
    sd = _random_state_dict(tv_shufflenet_v2_layout())
    swapped = dict(sd)
    for k in sd:
        if k.startswith("stage3.1."):
            swapped[k], swapped[k.replace("stage3.1.", "stage3.2.")] = sd[k.replace("stage3.1.", "stage3.2.")], sd[k]
    torch.save(swapped, tmp_path / "s.pth")
    model = paperzoo.create_model("shufflenet_v2_x0_5", num_classes=10).eval()
    paperzoo.load_weights(model, tmp_path / "s.pth", source="torchvision")
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        with pytest.raises(AssertionError):
            _assert_same(model(x), tv_shufflenet_v2_forward(sd, x))
