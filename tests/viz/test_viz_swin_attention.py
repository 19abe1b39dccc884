"""Swin shift-mask picture and ViT/Swin attention maps (per head, rollout)."""

import pytest
import torch

import paperzoo
from paperzoo.cli import main
from paperzoo.viz import attention as attention_viz
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
    assert main(["viz", "attention", "vit_tiny_patch4_32", "--size", "32", "--max-heads", "2", "--per-head-scale",
                 "-o", str(tmp_path / "p.png")]) == 0
    png_ok(tmp_path / "p.png")
    assert main(["viz", "attention", "resnet18", "--size", "32", "-o", str(tmp_path / "r.png")]) == 2


@pytest.fixture
def drawn(monkeypatch):
    """plot_attention's figure, kept open instead of saved: (its head panels' images, suptitle, caption)."""
    figs = []
    monkeypatch.setattr(attention_viz, "save_figure", lambda fig, path: figs.append(fig) or path)

    def draw(model, **kw):
        img = torch.rand(3, 32, 32)
        plot_attention(model, ((img - 0.5) / 0.25)[None], img, "unused.png", **kw)
        fig = figs.pop()
        heads = [ax for ax in fig.axes if "head" in ax.get_title()]
        return heads, fig._suptitle.get_text(), fig._supxlabel.get_text()

    return draw


def test_heads_share_one_colour_scale_unless_asked_and_the_picture_says_which(drawn):
    torch.manual_seed(0)
    vit = paperzoo.create_model("vit_tiny_patch4_32", num_classes=10).eval()
    heads, title, _ = drawn(vit, layer=0, max_heads=3)
    clims = {ax.images[-1].get_clim() for ax in heads}
    assert len(heads) == 3 and len(clims) == 1  # one scale for every head ...
    vmax = clims.pop()[1]
    assert 0 < vmax < 1 and "share one colour scale" in title  # ... the largest raw weight, not 1
    assert max(ax.images[-1].get_array().max() for ax in heads) == pytest.approx(vmax, rel=0.05)
    heads, title, _ = drawn(vit, layer=0, max_heads=3, per_head_scale=True)
    assert {ax.images[-1].get_clim() for ax in heads} == {(0.0, 1.0)} and "OWN colour scale" in title


def test_titles_give_the_layer_number_and_the_caption_the_rollout_caveats(drawn):
    vit = paperzoo.create_model("vit_tiny_patch4_32", num_classes=10).eval()  # 12 blocks
    heads, title, caption = drawn(vit, layer=-1, max_heads=2)
    assert [ax.get_title() for ax in heads] == ["layer 11, head 0", "layer 11, head 1"]
    assert "layer 11 (of 0–11)" in title
    flat = " ".join(caption.split())
    assert "0.5·I" in flat and "averages the heads" in flat and "not an attribution" in flat
    swin = paperzoo.create_model("swin_tiny_patch2_window4_32", num_classes=10).eval()  # depths (2, 2, 6, 2)
    heads, title, caption = drawn(swin, layer=3, max_heads=1)
    assert heads[0].get_title() == "layer 3, head 0"
    assert "stage 2, shifted windows" in title and "No rollout" in " ".join(caption.split())
    with pytest.raises(ValueError, match="the model has 12 blocks"):
        drawn(swin, layer=12)
