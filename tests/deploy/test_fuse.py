"""paperzoo.fuse folds each BatchNorm into the conv / linear before it: same outputs, no BatchNorm left after a
conv, an eval-only copy; a pair whose conv output is used twice is refused."""

import pytest
import torch
from torch import nn

import paperzoo
from paperzoo.deploy import fold_batchnorm, fusable_pairs, fuse
from paperzoo.layers.frozen_bn import FrozenBatchNorm2d
from paperzoo.registry import create_model, get_entry, list_models


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so an unfolded BN would show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, FrozenBatchNorm2d)):
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 5, 3, bias=False), nn.Conv2d(3, 5, 3, bias=True),
                                   nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.Linear(6, 5)],
                         ids=["conv", "conv-bias", "depthwise", "linear"])
def test_folded_weights_equal_the_layer_followed_by_its_batchnorm(layer):
    out = layer.weight.shape[0]
    bn = _randomize_norms(nn.BatchNorm1d(out) if isinstance(layer, nn.Linear) else nn.BatchNorm2d(out))
    x = torch.randn(2, 6) if isinstance(layer, nn.Linear) else torch.randn(2, layer.in_channels, 7, 7)
    w, b = fold_batchnorm(layer.weight, layer.bias, bn)
    folded = copy_layer_with(layer, w, b)
    torch.testing.assert_close(folded(x), bn(layer(x)), rtol=1e-5, atol=1e-5)


def copy_layer_with(layer: nn.Module, w: torch.Tensor, b: torch.Tensor) -> nn.Module:
    import copy

    out = copy.deepcopy(layer)
    out.weight = nn.Parameter(w)
    out.bias = nn.Parameter(b)
    return out


def test_fold_batchnorm_on_hand_worked_numbers():
    bn = nn.BatchNorm1d(1, eps=0.0).eval()
    bn.running_mean.fill_(1.0), bn.running_var.fill_(4.0), bn.weight.data.fill_(3.0), bn.bias.data.fill_(0.5)
    w, b = fold_batchnorm(torch.tensor([[2.0]]), torch.tensor([5.0]), bn)
    # s = 3 / sqrt(4) = 1.5; W' = 2 * 1.5 = 3; b' = (5 - 1) * 1.5 + 0.5 = 6.5
    assert w.item() == 3.0 and b.item() == 6.5


def _representatives() -> list[str]:
    """The smallest CNN of each family with BatchNorm (ViT / Swin use LayerNorm: nothing to fold)."""
    best: dict[str, tuple[int, str]] = {}
    for name in list_models(kind="image"):
        with torch.device("meta"):
            n = paperzoo.count_params(create_model(name, num_classes=10, in_chans=1, small_input=True))
        fam = get_entry(name).family
        if fam not in best or n < best[fam][0]:
            best[fam] = (n, name)
    return sorted(name for _, name in best.values())


@pytest.mark.parametrize("name", _representatives())
@torch.no_grad()
def test_every_family_fused_gives_the_same_outputs_without_a_batchnorm_after_a_conv(name):
    torch.manual_seed(0)
    model = _randomize_norms(create_model(name, num_classes=10, in_chans=1, small_input=True))
    x = torch.randn(2, 1, 16, 16)  # every small-input stem takes 16 x 16
    fused = fuse(model, x[:1])
    torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4 * float(model(x).abs().max()))
    assert fusable_pairs(fused, x[:1]) == []  # nothing left to fold
    left = sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    # DenseNet's BNs come before their convs (pre-activation), SASA's follow its attention layers: they stay
    if get_entry(name).family not in ("densenet", "sasa"):
        assert left == 0, f"{name}: {left} BatchNorms left"


def test_fuse_returns_an_eval_only_copy_and_leaves_the_model_alone():
    model = _randomize_norms(create_model("resnet18", num_classes=10, in_chans=1, small_input=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fused = paperzoo.fuse(model)
    assert model.training and not fused.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="inference only"):
        fused.train()
    fused.eval()  # allowed


class _ConvUsedTwice(nn.Module):
    """bn(conv(x)) + conv(x): folding the BN into the conv would change the second use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_conv_whose_output_is_also_used_elsewhere_is_refused():
    with pytest.raises(RuntimeError, match="also used elsewhere"):
        fuse(_randomize_norms(_ConvUsedTwice()), torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("native", [["avx512_bf16", "amx_bf16"], []], ids=["native-bf16", "no-bf16"])
def test_fast_path_is_fused_channels_last_and_bf16_only_where_the_cpu_is_native(native, monkeypatch):
    import paperzoo.tools.bench as tb

    monkeypatch.setattr(tb, "native_bf16", lambda: native)
    model = _randomize_norms(create_model("resnet18", num_classes=10, in_chans=1, small_input=True, width=8))
    x = torch.randn(4, 1, 16, 16)
    fast = paperzoo.deploy.fast_path(model, x[:1])
    assert fast.bf16 == bool(native) and fast.label.endswith("bf16" if native else "fp32")
    assert fast.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.model.modules())
    with torch.no_grad():
        want, got = model(x), fast(x)
    # bf16 rounds activations to 8 mantissa bits; fp32 only reorders sums
    assert float((got.float() - want).abs().max() / want.abs().max()) < (5e-2 if native else 1e-5)


@pytest.mark.parametrize("native,dtype", [(["amx_bf16"], "bf16"), ([], "fp32")], ids=["native-bf16", "no-bf16"])
def test_bench_fused_defaults_to_the_fast_path_and_says_what_it_detected(native, dtype, monkeypatch, capsys):
    import paperzoo.commands.bench as cb
    from paperzoo.cli import main

    monkeypatch.setattr(cb, "native_bf16", lambda: native)
    monkeypatch.setattr(cb, "matmul_gflops", lambda *a, **k: 1.0)  # the machine's GEMM speed is not under test
    assert main(["bench", "resnet18", "--small-input", "--size", "16", "--batch", "2", "--warmup", "0",
                 "--repeats", "1", "--fused", "--mode", "infer", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    row = dict(zip(*(line.split(",") for line in out.splitlines()[:2])))
    assert row["dtype"] == dtype and row["fused"] == "True"
    assert f"fused + channels_last + {dtype} (native bf16 on this CPU: {', '.join(native) or 'none'})" in err
    # an explicit precision wins over the default
    assert main(["bench", "resnet18", "--small-input", "--size", "16", "--batch", "2", "--warmup", "0",
                 "--repeats", "1", "--fused", "--mode", "infer", "--format", "csv", "--precision", "fp32"]) == 0
    assert dict(zip(*(line.split(",") for line in capsys.readouterr().out.splitlines()[:2])))["dtype"] == "fp32"
