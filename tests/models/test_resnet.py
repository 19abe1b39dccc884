"""ResNet options beyond the registered layouts (the small-input stem's stride) and the CIFAR-10 networks of
Sec. 4.2: their parameter counts (Table 6) and the parameter-free option-A shortcut (Sec. 3.3)."""

import pytest
import torch

import paperzoo
from paperzoo.models.resnet import BasicBlock, PadShortcut


def test_stem_stride_2_halves_stage1_resolution_and_keeps_flops_at_double_width():
    full = paperzoo.create_model("resnet18", small_input=True, width=16, num_classes=10, in_chans=1)
    half = paperzoo.create_model("resnet18", small_input=True, width=32, stem_stride=2, num_classes=10, in_chans=1)
    x = torch.randn(2, 1, 28, 28)
    f_full, f_half = {}, {}
    full.layer1.register_forward_hook(lambda m, i, o: f_full.update(l1=o.shape))  # update returns None
    half.layer1.register_forward_hook(lambda m, i, o: f_half.update(l1=o.shape))
    assert full(x).shape == half(x).shape == (2, 10)
    assert f_full["l1"] == (2, 16, 28, 28)
    assert f_half["l1"] == (2, 32, 14, 14)  # same 3x3-conv FLOPs: (28² · 16²) == (14² · 32²)
    assert half.min_input_size == (16, 16) and full.min_input_size == (8, 8)
    with pytest.raises(ValueError, match="input"):
        half(torch.randn(1, 1, 8, 8))


def test_stem_stride_is_refused_outside_the_small_input_stem_and_must_be_1_or_2():
    with pytest.raises(ValueError, match="small_input"):
        paperzoo.create_model("resnet18", stem_stride=2)
    with pytest.raises(ValueError, match="1 or 2"):
        paperzoo.create_model("resnet18", small_input=True, stem_stride=3)


def cifar_resnet_params(n: int, num_classes: int = 10) -> int:
    """Sec. 4.2 counted by hand: a 3x3 conv of 16 filters, three stages of n basic blocks (two 3x3 convs + BN
    each) at widths 16, 32, 64, the first conv of stages 2-3 reading half as many channels, option-A
    shortcuts without weights, global pooling and a 64 -> classes FC."""
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    for i, w in enumerate((16, 32, 64)):
        total += n * (2 * 9 * w * w + 2 * 2 * w)  # per block: two 3x3 convs w -> w, two BNs
        if i > 0:
            total -= 9 * w * (w - w // 2)  # the stage's first conv reads w/2 channels, not w
    return total + 64 * num_classes + num_classes


# Table 6: ResNet-20/32/44/56/110 have 0.27M, 0.46M, 0.66M, 0.85M and 1.7M parameters
@pytest.mark.parametrize("name,n,paper", [("resnet20", 3, "0.27"), ("resnet32", 5, "0.46"), ("resnet44", 7, "0.66"),
                                          ("resnet56", 9, "0.85"), ("resnet110", 18, "1.7")])
def test_cifar_resnets_have_table_6_parameter_counts(name, n, paper):
    with torch.device("meta"):
        model = paperzoo.create_model(name, num_classes=10)
    count = sum(p.numel() for p in model.parameters())
    assert count == cifar_resnet_params(n)
    assert f"{count / 1e6:.{len(paper) - 2}f}" == paper  # as the paper rounds it
    assert sum(isinstance(m, PadShortcut) for m in model.modules()) == 2  # entering stages 2 and 3
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    # Sec. 3.3 (A): "the shortcut still performs identity mapping, with extra zero entries padded for
    # increasing dimensions ... performed with a stride of 2"
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)  # channel 0: 0..15, channel 1: 16..31
    out = PadShortcut(2, 4, stride=2)(x)
    expected = torch.tensor([[[[0.0, 2.0], [8.0, 10.0]],  # every other row and column of channel 0
                              [[16.0, 18.0], [24.0, 26.0]],  # and of channel 1
                              [[0.0, 0.0], [0.0, 0.0]],  # two new channels of zeros
                              [[0.0, 0.0], [0.0, 0.0]]]])
    assert torch.equal(out, expected)
    assert list(PadShortcut(2, 4, stride=2).parameters()) == []


def test_option_a_block_adds_the_padded_input_to_its_residual():
    block = BasicBlock(2, 4, stride=2, zero_pad_shortcut=True).eval()
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        residual = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        shortcut = torch.cat([x[:, :, ::2, ::2], torch.zeros(1, 2, 3, 3)], 1)
        torch.testing.assert_close(block(x), torch.relu(residual + shortcut))
