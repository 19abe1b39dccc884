import torch

import paperzoo
from paperzoo.viz.features import plot_feature_maps, plot_se_weights, se_channel_weights
from paperzoo.viz.posenc import plot_positional_encoding


def test_posenc_picture_is_a_real_png_of_expected_size(tmp_path, png_ok):
    path = plot_positional_encoding(tmp_path / "pe.png", num_positions=64, dim=128)
    w, h = png_ok(path)
    assert (w, h) == (1300, 500)  # figsize (13, 5) at 100 dpi


def test_se_weights_are_the_gates_of_every_se_block(tmp_path, png_ok):
    model = paperzoo.create_model("seresnet50", num_classes=10, small_input=True).eval()
    x = torch.randn(1, 3, 32, 32)
    weights = se_channel_weights(model, x)
    assert len(weights) == 16  # one SE block per bottleneck: 3 + 4 + 6 + 3
    first = weights["layer1.0.se"]
    assert first.shape == (256,) and ((first > 0) & (first < 1)).all()
    png_ok(plot_se_weights(model, x, tmp_path / "se.png"))


def test_feature_maps_picture_and_unknown_layer_error(tmp_path, png_ok):
    model = paperzoo.create_model("resnet18", num_classes=10, small_input=True)
    png_ok(plot_feature_maps(model, torch.randn(1, 3, 32, 32), "layer1", tmp_path / "fm.png", max_channels=16))
    try:
        plot_feature_maps(model, torch.randn(1, 3, 32, 32), "layer9", tmp_path / "x.png")
    except ValueError as e:
        assert "layer9" in str(e) and "layer1" in str(e)
    else:
        raise AssertionError("expected ValueError")
