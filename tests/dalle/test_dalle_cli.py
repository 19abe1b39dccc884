"""``paperzoo dalle train-vae|train-clip|train|generate|caption`` and ``paperzoo viz tokens`` end to end with tiny
models trained a few steps from the shipped recipes, the ``paperzoo.dalle`` re-exports, the image grid, and the
one-line errors (exit 2) of bad input."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import paperzoo.dalle as dalle
from paperzoo.cli import main
from paperzoo.viz.tokens import image_grid

QUIET = ["train.max_steps=2", "train.epochs=1", "train.time_budget_s=null", "train.threads=1", "run.progress=off",
         "run.tensorboard=false", "run.plots=false"]
#: (subcommand, recipe, overrides that make the model and the data tiny)
STAGES = {
    "vae": ("train-vae", "dalle_vae_fmnist", ["model.args.n_hid=8", "model.args.n_init=8", "data.train_subset=32",
                                              "data.test_subset=16", "data.batch_size=16"]),
    "clip": ("train-clip", "dalle_clip_fmnist", ["model.name=clip_tiny", "model.args={}", "data.n_train=32",
                                                 "data.n_test=16", "data.batch_size=16"]),
    "dalle": ("train", "dalle_fmnist", ["model.args.n_layer=1", "model.args.n_head=2", "model.args.n_embd=16",
                                        "data.train_subset=32", "data.test_subset=16", "data.batch_size=16",
                                        "data.caption_eval=4", "data.token_cache=null"]),
}
PROMPT = "a small dark sneaker"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three stages trained two steps each, the Transformer on the dVAE's tokens."""
    out = tmp_path_factory.mktemp("dalle")
    for key in ("vae", "clip", "dalle"):
        command, recipe, tiny = STAGES[key]
        extra = [f"data.vae_run={out / 'vae'}"] if key == "dalle" else []
        code = main(["dalle", command, recipe, "--set", *tiny, *extra, *QUIET, "--out-dir", str(out), "--name", key])
        assert code == 0, key
    image = out / "boot.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(image)
    (out / "broken.png").write_bytes(b"not a png")
    return out


def test_each_training_command_trains_its_own_task(runs):
    for key, task in (("vae", "dalle_vae"), ("clip", "dalle_clip"), ("dalle", "dalle")):
        assert yaml.safe_load((runs / key / "config.yaml").read_text())["task"] == task
        assert (runs / key / "final" / "model.safetensors").is_file()


def test_generate_writes_n_samples_as_one_grid_png(runs, tmp_path, capsys):
    assert main(["dalle", "generate", str(runs / "dalle"), PROMPT, "--n", "6", "-o", str(tmp_path / "g.png")]) == 0
    assert f"wrote 6 samples for '{PROMPT}'" in capsys.readouterr().out
    with Image.open(tmp_path / "g.png") as im:  # 3 x 2 tiles of 28 px, 2 px apart and around, 4x upscaled
        assert im.size == ((3 * 30 + 2) * 4, (2 * 30 + 2) * 4) and im.mode == "L"


def test_rerank_keeps_the_samples_clip_scores_highest_best_first(runs, tmp_path):
    """--rerank 3 draws n x 3 samples (the same seed draws the same ones) and keeps CLIP's top n, in order."""
    assert main(["dalle", "generate", str(runs / "dalle"), PROMPT, "--n", "2", "--rerank", "3",
                 "--clip", str(runs / "clip"), "-o", str(tmp_path / "r.png")]) == 0
    images = dalle.generate(runs / "dalle", PROMPT, 6)  # (6, 1, 28, 28): what the command drew
    clip, tok = dalle.load_clip(runs / "clip")
    scores = dalle.clip_scores(clip, images, dalle.tokenize_captions(tok, [PROMPT], clip.cfg.context_length))
    expected = image_grid(images[scores.argsort(descending=True)[:2]], nrow=2).repeat(4, 0).repeat(4, 1)
    with Image.open(tmp_path / "r.png") as im:
        np.testing.assert_array_equal(np.asarray(im), expected)


def test_caption_prints_one_line_per_image_as_the_python_api_captions_it(runs, capsys):
    from paperzoo.commands.dalle import read_images

    paths = [str(runs / "boot.png")] * 2
    capsys.readouterr()
    assert main(["dalle", "caption", str(runs / "dalle"), *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    texts = dalle.caption_images(runs / "dalle", read_images(paths))
    assert lines == [f"{p}: {t}" for p, t in zip(paths, texts)]


def test_viz_tokens_draws_image_codes_and_reconstruction(runs, tmp_path, capsys):
    out = tmp_path / "tokens.png"
    assert main(["viz", "tokens", str(runs / "vae"), str(runs / "boot.png"), "-o", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size[0] > 2 * im.size[1]  # three panels side by side
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["dalle", "generate", "{tmp}/nothing", PROMPT], "no checkpoint at"),
    (["dalle", "generate", "{runs}/dalle", "  "], "the prompt is empty"),
    (["dalle", "generate", "{runs}/dalle", " ".join(["a small dark sneaker"] * 8)], "reads at most"),
    (["dalle", "generate", "{runs}/dalle", PROMPT, "--rerank", "4"], "--rerank K needs --clip"),
    (["dalle", "generate", "{runs}/dalle", PROMPT, "--rerank", "2", "--clip", "{runs}/vae"],
     "not a paperzoo dalle_clip checkpoint"),
    (["dalle", "generate", "{runs}/vae", PROMPT], "not a paperzoo dalle checkpoint"),
    (["dalle", "caption", "{tmp}/nothing", "{runs}/boot.png"], "no checkpoint at"),
    (["dalle", "caption", "{runs}/dalle", "{tmp}/missing.png"], "missing.png: no such image file"),
    (["dalle", "caption", "{runs}/dalle", "{runs}/broken.png"], "broken.png: not an image file"),
    (["viz", "tokens", "{runs}/vae", "{runs}/broken.png"], "broken.png: not an image file"),
    (["viz", "tokens", "{runs}/dalle", "{runs}/boot.png"], "not a paperzoo dalle_vae checkpoint"),
    (["dalle", "train-vae", "dalle_clip_fmnist", "--print-config"], "task 'dalle_clip', not 'dalle_vae'"),
    (["dalle", "train", "dalle_fmnist", "--set", *STAGES["dalle"][2], *QUIET, "data.vae_run=null", "--out-dir",
      "{tmp}"], "data.vae_run: give the dalle_vae run"),
    (["dalle", "train", "dalle_fmnist", "--set", *STAGES["dalle"][2], *QUIET, "data.vae_run={tmp}/nothing",
      "--out-dir", "{tmp}"], "no checkpoint at"),
])
def test_bad_input_is_one_line_and_exit_status_2(runs, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{runs}", str(runs)) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith(f"paperzoo {argv[0]}: error:")


def test_every_public_name_of_the_pieces_is_exported_lazily():
    modules = sorted(set(dalle._EXPORTS.values()))
    for module in modules:
        names = set(importlib.import_module(f"paperzoo.dalle.{module}").__all__)
        assert names <= set(dalle.__all__), f"{module}: {sorted(names - set(dalle.__all__))} not exported"
    for name in dalle.__all__:
        assert getattr(dalle, name) is getattr(importlib.import_module(f"paperzoo.dalle.{dalle._EXPORTS[name]}"), name)
    with pytest.raises(AttributeError):
        dalle.no_such_name  # noqa: B018


def test_image_grid_places_tiles_in_rows_with_grey_padding():
    images = torch.stack([torch.full((1, 2, 3), v) for v in (0.0, 1.0, 0.2)])  # (3, 1, 2, 3)
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1) and grid.dtype == np.uint8  # rows: 2 tiles of 2 + 3 pads
    assert (grid[1:3, 1:4] == 0).all() and (grid[1:3, 5:8] == 255).all() and (grid[4:6, 1:4] == 51).all()
    assert grid[0, 0] == 128 and (grid[4:6, 5:8] == 128).all()  # padding and the empty cell: mid-grey
    assert image_grid(images, nrow=2, pad=1, scale=3).shape == (21, 27)


def test_benchmark_frechet_distance_matches_the_closed_form_of_a_scaled_copy():
    """b = 2a + 3: mu_b = 2 mu_a + 3 and S_b = 4 S_a, so (S_a S_b)^(1/2) = 2 S_a and the distance is
    ||mu_a - mu_b||^2 + Tr(S_a) + 4 Tr(S_a) - 4 Tr(S_a) = ||mu_a + 3||^2 + Tr(S_a); a set against itself is 0."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "bench_dalle.py"
    spec = importlib.util.spec_from_file_location("bench_dalle", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    a = torch.randn(500, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)  # correlated features
    expected = float((a.mean(0) + 3).pow(2).sum() + torch.cov(a.T).trace())
    assert bench.frechet_distance(a, 2 * a + 3) == pytest.approx(expected, rel=1e-6)
    assert bench.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
