"""Swin shift-mask picture and ViT/Swin attention maps (per head, rollout)."""

import torch

import paperzoo
from paperzoo.cli import main
from paperzoo.viz.attention import attention_rollout, plot_attention
from paperzoo.viz.swin_mask import plot_swin_mask, swin_window_labels


def test_swin_mask_picture_is_drawn_from_the_models_mask(tmp_path, png_ok):
    from paperzoo.models.swin import swin_shift_regions

    png_ok(plot_swin_mask(tmp_path / "m.png", 8, 8, 4, 2), min_size=(1200, 500))
    # the seed note's example: after the shift the four windows hold 1, 2, 2 and 4 regions
    labels = swin_window_labels(swin_shift_regions(8, 8, 4, 2), (4, 4))
    assert [len(torch.unique(row)) for row in labels] == [1, 2, 2, 4]
    assert main(["viz", "swin-mask", "--height", "14", "--width", "14", "--window", "7",
                 "-o", str(tmp_path / "m2.png")]) == 0
    png_ok(tmp_path / "m2.png")


def test_rollout_of_identity_attention_gives_no_patch_flow_and_matches_by_hand():
    t = 5
    eye = torch.eye(t)[None, None]  # (1, 1, T, T): every token attends to itself only
    assert torch.allclose(attention_rollout([eye, eye]), torch.zeros(1, t - 1))
    a1 = torch.softmax(torch.randn(1, 2, t, t), -1)
    a2 = torch.softmax(torch.randn(1, 2, t, t), -1)

    def step(a):
        m = 0.5 * a.mean(1)[0] + 0.5 * torch.eye(t)
        return m / m.sum(-1, keepdim=True)

    expected = (step(a2) @ step(a1))[0, 1:]
    torch.testing.assert_close(attention_rollout([a1, a2])[0], expected)


def test_vit_and_swin_attention_pictures(tmp_path, png_ok):
    img = torch.rand(3, 32, 32)
    x = ((img - 0.5) / 0.25)[None]
    vit = paperzoo.create_model("vit_tiny_patch4_32", num_classes=10).eval()
    png_ok(plot_attention(vit, x, img, tmp_path / "v.png", layer=0, max_heads=3))
    swin = paperzoo.create_model("swin_tiny_patch2_window4_32", num_classes=10).eval()
    png_ok(plot_attention(swin, x, img, tmp_path / "s.png", layer=1))
    assert main(["viz", "attention", "vit_tiny_patch4_32", "--size", "32", "--max-heads", "2",
                 "-o", str(tmp_path / "c.png")]) == 0
    png_ok(tmp_path / "c.png")
    assert main(["viz", "attention", "resnet18", "--size", "32", "-o", str(tmp_path / "r.png")]) == 2
