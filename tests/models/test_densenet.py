"""DenseNet-BC (arXiv:1608.06993): the structure facts of the paper (dense connectivity, growth k per layer,
4k bottleneck, theta = 0.5 transitions, Table 1 block sizes), the CIFAR-style stem, the size limit, and
memory-efficient (checkpointed) layers equal to the plain ones, gradients included."""

import pytest
import torch

import paperzoo
from paperzoo.models.densenet import DenseBlock, DenseLayer, Transition


@pytest.mark.parametrize("name,blocks,features", [("densenet121", (6, 12, 24, 16), 1024),
                                                   ("densenet169", (6, 12, 32, 32), 1664),
                                                   ("densenet201", (6, 12, 48, 32), 1920)])
def test_table_1_channel_growth(name, blocks, features):
    with torch.device("meta"):
        model = paperzoo.create_model(name)
    k, chs = 32, 64  # growth rate, 2k stem channels (DenseNet-BC)
    for b, n in enumerate(blocks, start=1):
        block = getattr(model, f"block{b}")
        assert isinstance(block, DenseBlock) and len(block.layers) == n
        for l, layer in enumerate(block.layers):
            # layer l sees the block input plus the k maps of each preceding layer (Eq. 2)
            assert layer.conv1.in_channels == chs + l * k
            assert layer.conv1.out_channels == 4 * k  # bottleneck: 1x1 conv to 4k maps
            assert layer.conv2.kernel_size == (3, 3) and layer.conv2.out_channels == k
        chs += n * k
        assert block.out_chs == chs
        if b < len(blocks):
            trans = getattr(model, f"transition{b}")
            assert isinstance(trans, Transition)
            assert trans.conv.in_channels == chs and trans.conv.out_channels == chs // 2  # theta = 0.5
            chs //= 2
    assert model.num_features == chs == features


def test_feature_maps_resolution_and_concatenation():
    model = paperzoo.create_model("densenet121", num_classes=5, block_layers=(2, 3, 2), k=4, stem_chs=8).eval()
    shapes = {}
    for name in ("block1", "transition1", "block2", "transition2", "block3"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 64, 48))
    assert shapes["block1"] == (2, 8 + 2 * 4, 16, 12)  # stem: /4
    assert shapes["transition1"] == (2, 8, 8, 6)  # theta = 0.5, 2x2 average pool
    assert shapes["block2"] == (2, 8 + 3 * 4, 8, 6)
    assert shapes["transition2"] == (2, 10, 4, 3)
    assert feats.shape == (2, 10 + 2 * 4, 4, 3)
    assert (feats >= 0).all()  # the final BN-ReLU


def test_block_output_keeps_its_input_as_the_first_channels():
    # concatenation, not summation: x_0 is passed on unchanged, followed by each layer's k new maps
    block = DenseBlock(3, 6, k=2).eval()
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        out = block(x)
        first = block.layers[0]([x])
    assert out.shape == (2, 6 + 3 * 2, 5, 5)
    torch.testing.assert_close(out[:, :6], x)
    torch.testing.assert_close(out[:, 6:8], first)


def test_memory_efficient_layers_give_the_same_outputs_and_gradients():
    kw = dict(num_classes=3, block_layers=(3, 2), k=4, stem_chs=8, small_input=True)
    plain = paperzoo.create_model("densenet121", **kw)
    efficient = paperzoo.create_model("densenet121", memory_efficient=True, **kw)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 12, 12)
    outs = []
    for model in (plain, efficient):
        model.train()
        out = model(x)
        out.square().sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    for (n, p), (_, q) in zip(plain.named_parameters(), efficient.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)
    # the running BN statistics must not be updated twice by the recomputation
    for (n, a), (_, b) in zip(plain.named_buffers(), efficient.named_buffers()):
        torch.testing.assert_close(a, b, msg=n)


def test_small_input_stem_keeps_resolution_and_min_sizes():
    small = paperzoo.create_model("densenet121", num_classes=2, small_input=True)
    assert small.stem.conv.kernel_size == (3, 3) and small.stem.conv.stride == (1, 1)
    assert not hasattr(small.stem, "pool")
    assert small.min_input_size == (8, 8)
    with torch.no_grad():
        assert small.eval().forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 1024, 4, 4)  # /8
    big = paperzoo.create_model("densenet121", num_classes=2).eval()
    assert big.min_input_size == (29, 29)  # 29 -> 15 -> 8 -> 4 -> 2 -> 1
    with torch.no_grad():
        assert big.forward_features(torch.randn(1, 3, 29, 29)).shape == (1, 1024, 1, 1)
    with pytest.raises(ValueError, match="densenet121.*minimum size is 29x29"):
        big(torch.randn(1, 3, 28, 40))


def test_paper_dropout_only_in_training():
    layer = DenseLayer(8, 4, drop_rate=0.5)
    x = [torch.randn(2, 8, 6, 6)]
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer(x))
        layer.train()
        assert not torch.equal(layer(x), layer(x))


def test_memory_efficient_mode_saves_fewer_activations_for_backward():
    # Plain: every layer keeps its own concatenated input and BN/ReLU outputs, O(L^2) in the block depth.
    # Checkpointed: only the per-layer k-wide maps and 4k-wide bottleneck outputs remain, O(L).
    def saved_elements(memory_efficient: bool, num_layers: int) -> int:
        block = DenseBlock(num_layers, 16, k=8, memory_efficient=memory_efficient).train()
        x = torch.randn(2, 16, 8, 8, requires_grad=True)
        storages = {}  # count each saved storage once: layers share references to the same maps

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x)
        return sum(storages.values())

    plain = {n: saved_elements(False, n) for n in (8, 16)}
    efficient = {n: saved_elements(True, n) for n in (8, 16)}
    assert efficient[16] < 0.5 * plain[16]
    assert efficient[16] / efficient[8] < 2.2  # linear in depth
    assert plain[16] / plain[8] > 2.5  # quadratic-ish
