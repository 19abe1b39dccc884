"""Encoder-decoder attention picture of a (tiny) trained translation model, tokens on both axes."""

import pytest
import torch

from paperzoo.cli import main
from paperzoo.viz.translation import translation_attention

TINY = ["model.name=transformer_tiny", "model.args={N_enc: 1, N_dec: 2, d_model: 16, d_ff: 32, h: 2}",
        "data.n_train=96", "data.n_val=8", "data.n_test=8", "data.batch_size=16", "data.val_decode=8",
        "decode.max_len=12", "train.epochs=1", "train.threads=1", "run.tensorboard=false", "run.plots=false",
        "run.progress=off"]


def test_translation_cross_attention_matrix_and_picture(tmp_path, png_ok):
    assert main(["translate", "train", "translate_en_ko", "--out-dir", str(tmp_path), "--name", "t",
                 "--set", *TINY]) == 0
    run = tmp_path / "t"
    weights, src, out, hyp = translation_attention(run, "Sunday, April 1, 2018")
    assert weights.shape == (2, 2, len(out), len(src))  # (decoder layers, heads, T, S)
    assert src[-1] == "</s>" and out[-1] == "</s>"
    assert len(out) <= 12 + 1
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))  # each query's weights sum to 1
    assert main(["viz", "attention", str(run), "--sentence", "Sunday, April 1, 2018", "--layer", "0",
                 "-o", str(tmp_path / "a.png")]) == 0
    png_ok(tmp_path / "a.png")


def test_font_for_picks_a_font_that_covers_korean_or_warns_what_to_install(monkeypatch):
    from matplotlib import font_manager

    from paperzoo.viz import common

    monkeypatch.setattr(common, "_FONT_CACHE", {})
    assert common.font_for(["Sunday, April 1"]) == "DejaVu Sans"  # the default covers Latin text
    hangul = "2018년 4월 1일 일요일"
    monkeypatch.setattr(common, "_charmap", lambda path: set(range(128)))  # no installed font has Hangul
    with pytest.warns(UserWarning, match="fonts-noto-cjk"):
        assert common.font_for([hangul]) is None
    cjk = font_manager.fontManager.ttflist[-1]  # pretend one installed font covers Hangul
    monkeypatch.setattr(common, "_FONT_CACHE", {})
    monkeypatch.setattr(common, "_charmap", lambda path: set(range(0x11000)) if path == cjk.fname else set(range(128)))
    assert common.font_for([hangul]) in {f.name for f in font_manager.fontManager.ttflist if f.fname == cjk.fname}


def test_font_for_finds_a_font_installed_after_matplotlib_cached_its_font_list(monkeypatch, tmp_path):
    import shutil

    from matplotlib import font_manager

    from paperzoo.viz import common

    new = tmp_path / "NewHangul.ttf"  # stands for a font installed since (a copy under a path matplotlib lacks)
    shutil.copy(font_manager.findfont(font_manager.FontProperties()), new)
    monkeypatch.setattr(common, "_FONT_CACHE", {})
    monkeypatch.setattr(font_manager.fontManager, "ttflist", list(font_manager.fontManager.ttflist))
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [str(new)])
    monkeypatch.setattr(common, "_charmap", lambda path: set(range(0x11000)) if path == str(new) else set(range(128)))
    assert common.font_for(["2018년 4월"]) == "DejaVu Sans"  # the copy's family name, found outside the cache
    assert str(new) in {f.fname for f in font_manager.fontManager.ttflist}
