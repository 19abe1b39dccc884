"""Loading torchvision / timm checkpoints into ResNet, SE-ResNet and DenseNet.

torchvision and timm do not import here, so the published layouts are described in this file, independently of
the models: the key names and shapes of each checkpoint, and a functional forward pass that reads those keys
directly (F.conv2d / F.batch_norm with the sources' eps 1e-5, following the published architectures). A random
checkpoint in that layout, with BatchNorm statistics small enough that eps matters
(``source_reference.make_eps_visible``), is saved as .pth and .safetensors, loaded with
``paperzoo.load_weights`` and the outputs are compared; our own
random weights, renamed to the published layout by a test-side mapping, must have exactly its keys and shapes and
come back with identical outputs; then every way a file can be wrong must give a ``WeightLoadError`` naming the
problem.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from source_reference import assert_matches_source, bn, make_eps_visible

import paperzoo
from paperzoo import WeightLoadError

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ------------------------------------------------------------------------------- published key layouts
def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.{k}": (() if k == "num_batches_tracked" else (c,)) for k in BN_KEYS}


def resnet_layout(layers, bottleneck: bool, se: bool = False, num_classes: int = 1000) -> dict[str, tuple]:
    """torchvision's ResNet (= timm's; timm's SE-ResNet adds ``se.fc1``/``se.fc2`` 1x1 convs with bias)."""
    keys = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    exp, in_c = (4 if bottleneck else 1), 64
    for s, n in enumerate(layers):
        planes = 64 * 2**s
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            if bottleneck:
                keys.update({f"{p}.conv1.weight": (planes, in_c, 1, 1), **_bn(f"{p}.bn1", planes),
                             f"{p}.conv2.weight": (planes, planes, 3, 3), **_bn(f"{p}.bn2", planes),
                             f"{p}.conv3.weight": (planes * 4, planes, 1, 1), **_bn(f"{p}.bn3", planes * 4)})
            else:
                keys.update({f"{p}.conv1.weight": (planes, in_c, 3, 3), **_bn(f"{p}.bn1", planes),
                             f"{p}.conv2.weight": (planes, planes, 3, 3), **_bn(f"{p}.bn2", planes)})
            if se:
                c, rd = planes * exp, planes * exp // 16
                keys.update({f"{p}.se.fc1.weight": (rd, c, 1, 1), f"{p}.se.fc1.bias": (rd,),
                             f"{p}.se.fc2.weight": (c, rd, 1, 1), f"{p}.se.fc2.bias": (c,)})
            if b == 0 and (s > 0 or bottleneck):
                keys.update({f"{p}.downsample.0.weight": (planes * exp, in_c, 1, 1),
                             **_bn(f"{p}.downsample.1", planes * exp)})
            in_c = planes * exp
    keys.update({"fc.weight": (num_classes, in_c), "fc.bias": (num_classes,)})
    return keys


def densenet_layout(blocks, k: int = 32, num_classes: int = 1000, legacy: bool = False) -> dict[str, tuple]:
    """torchvision's DenseNet (timm's is the same). ``legacy``: the 2017 files, with dense-layer keys
    ``norm.1`` / ``conv.1`` / ``norm.2`` / ``conv.2`` and no ``num_batches_tracked``."""
    keys = {"features.conv0.weight": (64, 3, 7, 7), **_bn("features.norm0", 64)}
    c = 64
    for b, n in enumerate(blocks, start=1):
        for l in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{l}"
            cin = c + (l - 1) * k
            keys.update({**_bn(f"{p}.norm1", cin), f"{p}.conv1.weight": (4 * k, cin, 1, 1),
                         **_bn(f"{p}.norm2", 4 * k), f"{p}.conv2.weight": (k, 4 * k, 3, 3)})
        c += n * k
        if b < len(blocks):
            keys.update({**_bn(f"features.transition{b}.norm", c),
                         f"features.transition{b}.conv.weight": (c // 2, c, 1, 1)})
            c //= 2
    keys.update({**_bn("features.norm5", c), "classifier.weight": (num_classes, c), "classifier.bias": (num_classes,)})
    if legacy:
        keys = {_to_legacy(key): s for key, s in keys.items() if not key.endswith("num_batches_tracked")}
    return keys


def _to_legacy(key: str) -> str:
    for old in ("norm1", "norm2", "conv1", "conv2"):
        if ".denselayer" in key and f".{old}." in key:
            return key.replace(f".{old}.", f".{old[:-1]}.{old[-1]}.")
    return key


def random_checkpoint(layout: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the layout's shapes; He-scaled convs and non-trivial BN statistics."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in layout.items():
        name = key.rsplit(".", 1)[1]
        if name == "num_batches_tracked":
            sd[key] = torch.tensor(123)
        elif name == "running_var":
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif name == "weight" and len(shape) == 1:  # BN gamma
            sd[key] = torch.rand(shape, generator=g) * 0.5 + 0.5
        elif len(shape) >= 2:
            sd[key] = torch.randn(shape, generator=g) * (2.0 / (torch.tensor(shape[1:]).prod())) ** 0.5
        else:  # BN beta, running_mean, biases
            sd[key] = torch.randn(shape, generator=g) * 0.1
    return sd


# ------------------------------------------------------------------- the published forward passes, functional
def _bn_f(sd, p, x):
    return bn(sd, p, x, eps=1e-5)  # torchvision and timm: the nn.BatchNorm2d default


def resnet_reference(sd, x, layers, bottleneck: bool, se: bool = False):
    x = F.max_pool2d(F.relu(_bn_f(sd, "bn1", F.conv2d(x, sd["conv1.weight"], stride=2, padding=3))), 3, 2, 1)
    for s, n in enumerate(layers):
        for b in range(n):
            p, stride = f"layer{s + 1}.{b}", (2 if b == 0 and s > 0 else 1)
            shortcut = x
            if f"{p}.downsample.0.weight" in sd:
                shortcut = _bn_f(sd, f"{p}.downsample.1", F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride))
            if bottleneck:  # stride on the 3x3 conv (torchvision's "v1.5")
                out = F.relu(_bn_f(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"])))
                out = F.relu(_bn_f(sd, f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1)))
                out = _bn_f(sd, f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv3.weight"]))
            else:
                out = F.relu(_bn_f(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1)))
                out = _bn_f(sd, f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1))
            if se:
                z = out.mean((2, 3), keepdim=True)
                z = F.relu(F.conv2d(z, sd[f"{p}.se.fc1.weight"], sd[f"{p}.se.fc1.bias"]))
                out = out * torch.sigmoid(F.conv2d(z, sd[f"{p}.se.fc2.weight"], sd[f"{p}.se.fc2.bias"]))
            x = F.relu(out + shortcut)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


def densenet_reference(sd, x, blocks):
    x = F.relu(_bn_f(sd, "features.norm0", F.conv2d(x, sd["features.conv0.weight"], stride=2, padding=3)))
    x = F.max_pool2d(x, 3, 2, 1)
    for b, n in enumerate(blocks, start=1):
        feats = [x]
        for l in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{l}"
            h = F.conv2d(F.relu(_bn_f(sd, f"{p}.norm1", torch.cat(feats, 1))), sd[f"{p}.conv1.weight"])
            feats.append(F.conv2d(F.relu(_bn_f(sd, f"{p}.norm2", h)), sd[f"{p}.conv2.weight"], padding=1))
        x = torch.cat(feats, 1)
        if b < len(blocks):
            p = f"features.transition{b}"
            x = F.avg_pool2d(F.conv2d(F.relu(_bn_f(sd, f"{p}.norm", x)), sd[f"{p}.conv.weight"]), 2, 2)
    x = F.relu(_bn_f(sd, "features.norm5", x))
    return F.linear(x.mean((2, 3)), sd["classifier.weight"], sd["classifier.bias"])


R18, R50 = (2, 2, 2, 2), (3, 4, 6, 3)
D121 = (6, 12, 24, 16)
CASES = {  # name -> (layout, reference forward)
    "resnet18": (lambda nc: resnet_layout(R18, False, num_classes=nc),
                 lambda sd, x: resnet_reference(sd, x, R18, False)),
    "resnet50": (lambda nc: resnet_layout(R50, True, num_classes=nc),
                 lambda sd, x: resnet_reference(sd, x, R50, True)),
    "seresnet50": (lambda nc: resnet_layout(R50, True, se=True, num_classes=nc),
                   lambda sd, x: resnet_reference(sd, x, R50, True, se=True)),
    "densenet121": (lambda nc: densenet_layout(D121, num_classes=nc), lambda sd, x: densenet_reference(sd, x, D121)),
}
# (format, source) pairs each model is loaded from; both formats and every source are covered per model
LOADS = {"resnet18": ((".pth", "torchvision"), (".safetensors", "timm")),
         "resnet50": ((".safetensors", "torchvision"), (".pth", "timm")),
         "seresnet50": ((".pth", "timm"), (".safetensors", "timm")),  # torchvision has no SE-ResNet
         "densenet121": ((".pth", "torchvision"), (".safetensors", "timm"))}


def _save(sd: dict, path) -> None:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)


# ------------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", list(CASES))
def test_published_checkpoint_loads_and_gives_the_same_outputs(tmp_path, name):
    layout_fn, reference = CASES[name]
    x = torch.randn(2, 3, 33, 37)
    ckpt = make_eps_visible(random_checkpoint(layout_fn(10), seed=1), reference, x)
    with torch.no_grad():
        ref = reference(ckpt, x)
    model = paperzoo.create_model(name, num_classes=10).eval()
    for ext, source in LOADS[name]:
        path = tmp_path / f"{name}{ext}"
        _save(ckpt, path)
        with torch.no_grad():  # scramble, so that each load has to bring every tensor back
            for t in model.state_dict().values():
                t.copy_(torch.randn_like(t.float()).to(t.dtype) if t.is_floating_point() else t * 0)
        paperzoo.load_weights(model, path, source=source)
        assert_matches_source(model, x, ref, wrong_eps=1e-3)
    # every tensor of the file is in the model, unchanged (no silent resizing or transposition)
    sums = sorted(v.double().sum().item() for v in model.state_dict().values())
    assert sums == pytest.approx(sorted(v.double().sum().item() for v in ckpt.values()))


def densenet_ours_to_torchvision(key: str) -> str:
    """Test-side inverse of the DenseNet mapping, written with plain string splits (not the converter's regexes)."""
    head, *rest = key.split(".")
    if head == "stem":  # stem.conv.weight -> features.conv0.weight
        return ".".join(["features", {"conv": "conv0", "bn": "norm0"}[rest[0]], *rest[1:]])
    if head.startswith("block"):  # block2.layers.3.bn1.weight -> features.denseblock2.denselayer4.norm1.weight
        _, idx, module, *tail = rest
        return ".".join([f"features.denseblock{head[5:]}", f"denselayer{int(idx) + 1}",
                         module.replace("bn", "norm"), *tail])
    if head.startswith("transition"):
        return ".".join(["features", head, {"bn": "norm", "conv": "conv"}[rest[0]], *rest[1:]])
    return {"bn_final": "features.norm5", "fc": "classifier"}[head] + "." + ".".join(rest)


@pytest.mark.parametrize("name", list(CASES))
def test_our_weights_renamed_to_the_published_layout_round_trip(tmp_path, name):
    # our random model, renamed to the published layout by this file's own description, must have exactly the
    # published keys and shapes, and must come back through load_weights with identical outputs
    original = paperzoo.create_model(name, num_classes=10).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for key, t in original.state_dict().items():
            if key.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif key.endswith("running_mean"):
                t.normal_(0, 0.1)
    rename = densenet_ours_to_torchvision if name.startswith("densenet") else (lambda k: k)
    published = {rename(k): v for k, v in original.state_dict().items()}
    layout = CASES[name][0](10)
    assert {k: tuple(v.shape) for k, v in published.items()} == {k: tuple(s) for k, s in layout.items()}
    path = tmp_path / f"{name}.safetensors"
    _save(published, path)
    fresh = paperzoo.create_model(name, num_classes=10).eval()
    paperzoo.load_weights(fresh, path, source=LOADS[name][0][1])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), original(x))


def test_published_layouts_have_the_reference_parameter_counts():
    # a check on this file's description of the layouts, against the counts torchvision/timm publish
    for name, layout_fn, ref in [("resnet18", CASES["resnet18"][0], 11_689_512),
                                 ("resnet50", CASES["resnet50"][0], 25_557_032),
                                 ("seresnet50", CASES["seresnet50"][0], 28_088_024),
                                 ("densenet121", CASES["densenet121"][0], 7_978_856)]:
        n = sum(torch.Size(s).numel() for k, s in layout_fn(1000).items()
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        assert n == ref, name


def test_densenet_legacy_torchvision_keys_without_bn_counters(tmp_path):
    # torchvision's densenet121-a639ec97.pth era: "norm.1"-style dense-layer keys, no num_batches_tracked
    legacy = random_checkpoint(densenet_layout(D121, num_classes=10, legacy=True), seed=2)
    legacy = {k: v.half() if v.is_floating_point() else v for k, v in legacy.items()}  # fp16 files load too
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121-legacy.pth"
    _save(legacy, path)
    model = paperzoo.load_weights(paperzoo.create_model("densenet121", num_classes=10).eval(), path, "torchvision")
    modern = {k: legacy[_to_legacy(k)].float() for k in densenet_layout(D121, num_classes=10)
              if not k.endswith("num_batches_tracked")}
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        torch.testing.assert_close(model(x), densenet_reference(modern, x, D121), rtol=1e-4, atol=1e-5)


def test_resnet_checkpoint_without_bn_counters_and_in_a_wrapper(tmp_path):
    ckpt = random_checkpoint(resnet_layout(R18, False, num_classes=10))
    old = {k: v for k, v in ckpt.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": {f"module.{k}": v for k, v in old.items()}}, tmp_path / "wrapped.pth")
    model = paperzoo.load_weights(paperzoo.create_model("resnet18", num_classes=10).eval(),
                                  tmp_path / "wrapped.pth", "torchvision")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), resnet_reference(ckpt, x, R18, False), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ bad files
@pytest.fixture(scope="module")
def densenet_ckpt():
    return random_checkpoint(densenet_layout(D121, num_classes=10))


@pytest.fixture(scope="module")
def densenet_model():
    return paperzoo.create_model("densenet121", num_classes=10)


def test_missing_key_is_named(tmp_path, densenet_ckpt, densenet_model):
    sd = dict(densenet_ckpt)
    del sd["features.denseblock2.denselayer3.conv2.weight"]
    _save(sd, tmp_path / "m.safetensors")
    with pytest.raises(WeightLoadError, match=r"missing keys \(1\): block2\.layers\.2\.conv2\.weight"):
        paperzoo.load_weights(densenet_model, tmp_path / "m.safetensors", source="torchvision")


def test_unexpected_key_is_named(tmp_path, densenet_ckpt, densenet_model):
    sd = dict(densenet_ckpt, **{"features.denseblock1.denselayer1.extra.weight": torch.zeros(3)})
    _save(sd, tmp_path / "u.pth")
    with pytest.raises(WeightLoadError, match=r"unexpected keys \(1\): features\.denseblock1\.denselayer1\.extra"):
        paperzoo.load_weights(densenet_model, tmp_path / "u.pth", source="timm")


def test_wrong_shape_is_named(tmp_path, densenet_ckpt, densenet_model):
    sd = dict(densenet_ckpt, **{"classifier.weight": torch.zeros(1000, 1024), "classifier.bias": torch.zeros(1000)})
    _save(sd, tmp_path / "s.pth")
    expected = r"shape mismatches:\s+fc\.weight: checkpoint \(1000, 1024\) vs model \(10, 1024\)"
    with pytest.raises(WeightLoadError, match=expected):
        paperzoo.load_weights(densenet_model, tmp_path / "s.pth", source="torchvision")


def test_resnet_errors_name_the_keys(tmp_path):
    ckpt = random_checkpoint(resnet_layout(R18, False, num_classes=10))
    del ckpt["layer3.0.downsample.1.running_var"]
    ckpt["layer2.1.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    _save(ckpt, tmp_path / "r.pth")
    with pytest.raises(WeightLoadError) as err:
        paperzoo.load_weights(paperzoo.create_model("resnet18", num_classes=10), tmp_path / "r.pth", "torchvision")
    msg = str(err.value)
    assert "layer3.0.downsample.1.running_var" in msg and "layer2.1.conv2.weight" in msg and "resnet18" in msg


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_corrupt_file_is_named(tmp_path, densenet_ckpt, densenet_model, ext):
    good = tmp_path / f"good{ext}"
    _save({k: densenet_ckpt[k] for k in list(densenet_ckpt)[:20]}, good)
    truncated = tmp_path / f"truncated{ext}"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / f"garbage{ext}"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    for path in (truncated, garbage):
        with pytest.raises(WeightLoadError, match=rf"could not read weights from .*{path.name}"):
            paperzoo.load_weights(densenet_model, path, source="torchvision")


def test_family_without_a_source_mapping_is_refused(tmp_path, densenet_ckpt):
    _save(densenet_ckpt, tmp_path / "d.pth")
    sasa = paperzoo.create_model("sasa_resnet26", num_classes=10)
    with pytest.raises(WeightLoadError, match="no torchvision key mapping for family 'sasa'"):
        paperzoo.load_weights(sasa, tmp_path / "d.pth", source="torchvision")
