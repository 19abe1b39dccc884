"""The dalle task on the shared trainer: data (codes once, captions, both directions), exact resume, the
tokenizer in the metadata, and using a run (load_dalle, generate, caption_images)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import paperzoo
from paperzoo.dalle.task import DALLETask, PairLoader, caption_images, encode_captions, generate, load_dalle
from paperzoo.train.api import resolve_config
from paperzoo.train.checkpoint import find_checkpoint, read_weights
from paperzoo.train.config import ConfigError
from paperzoo.train.task import get_task

QUIET = ["run.progress=off", "run.tensorboard=false", "run.plots=false", "train.threads=1", "train.log_every=1"]
VAE = ["model.args={n_hid: 8, vocab_size: 16, n_init: 8}", "data.train_subset=64", "data.test_subset=16",
       "data.batch_size=16", "data.eval_batch_size=16", "train.epochs=1", "train.max_steps=null",
       "train.time_budget_s=null",
       "anneal.temperature_steps=2", "anneal.kl_warmup_steps=1"]
# the Debian package's directory (tests/conftest.py's fmnist_dir is per test; this module-scoped fixture needs it once,
# and `from conftest import` is ambiguous with several conftest.py files under pytest-xdist)
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
TINY = ["model.args={n_layer: 2, n_head: 2, n_embd: 16}", "data.train_subset=48", "data.test_subset=12",
        "data.batch_size=8", "data.eval_batch_size=8", "data.caption_eval=6", "data.tokenizer_vocab=400",
        "data.text_len=26",
        "train.epochs=2", "train.time_budget_s=null", "sched.warmup_epochs=0"]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A dalle_vae run of 4 steps, shared by the tests of this file."""
    if not Path(FMNIST_DIR, "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed (make data)")
    out = tmp_path_factory.mktemp("vae")
    cfg = resolve_config("dalle_vae_fmnist", [*VAE, *QUIET, f"data.root={FMNIST_DIR}", f"run.out_dir={out}"])
    return paperzoo.train(cfg).run_dir


@pytest.fixture
def cfg(tmp_path, fmnist_dir, vae_run):
    def make(*extra):
        return resolve_config("dalle_fmnist", [*TINY, *QUIET, f"data.root={fmnist_dir}", f"run.out_dir={tmp_path}",
                                               f"data.vae_run={vae_run}", f"data.token_cache={tmp_path}/codes.pt",
                                               *extra])

    return make


def test_recipe_names_the_task_and_a_missing_vae_run_is_a_config_error(cfg, fmnist_dir):
    assert get_task("dalle") is DALLETask
    c = cfg()
    assert c.task == "dalle" and c.model.name == "dalle" and c.data.both_directions
    with pytest.raises(ConfigError, match="data.vae_run"):
        DALLETask(resolve_config("dalle_fmnist", [*TINY, f"data.root={fmnist_dir}"]))


def test_a_text_len_shorter_than_a_caption_is_a_config_error_not_a_silent_cut(cfg):
    with pytest.raises(ConfigError, match="data.text_len=16 is too short"):
        DALLETask(cfg("data.text_len=16"))


def test_task_holds_every_image_as_its_dvae_codes_and_every_caption_padded(cfg, tmp_path):
    from paperzoo.dalle.captions import CaptionedFashionMNIST
    from paperzoo.dalle.vae_task import load_dvae, tokenize_images

    task = DALLETask(cfg())
    loader = task.train_loader
    ds = CaptionedFashionMNIST("train", "both", 0, n=48, root=cfg().data.root)
    vae = load_dvae(cfg().data.vae_run)
    assert torch.equal(loader.codes, tokenize_images(vae, ds.images))  # the captioned (shoe-mirrored) images
    assert (tmp_path / "codes.pt").is_file()  # cached: a second task reads the codes back
    assert torch.equal(DALLETask(cfg()).train_loader.codes, loader.codes)
    tok = task.tokenizer
    assert tok.decode(loader.text[0].tolist()) == ds.captions[0]
    assert loader.text.shape == (48, 26) and int(loader.text[0, -1]) == tok.pad_id  # padded to text_len


def test_pair_loader_draws_both_directions_and_resumes_mid_epoch():
    text, codes = torch.arange(40)[:, None].expand(40, 3), torch.arange(40)[:, None, None].expand(40, 2, 2)
    loader = PairLoader(text, codes, 4, seed=3, both_directions=True)
    loader.set_epoch(1)
    full = list(loader)
    firsts = torch.cat([f for _, _, f in full])
    assert 8 < int(firsts.sum()) < 32  # about half image first
    assert sorted(torch.cat([t[:, 0] for t, _, _ in full]).tolist()) == list(range(40))  # each item once
    loader.set_epoch(1)
    it = iter(loader)
    next(it), next(it), next(it)
    state = loader.state_dict()
    again = PairLoader(text, codes, 4, seed=3, both_directions=True)
    again.load_state_dict(state)
    again.set_epoch(1)
    rest = list(again)
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(rest, full[3:]))
    one_way = PairLoader(text, codes, 4, seed=3, both_directions=False)
    assert not any(bool(f.any()) for _, _, f in one_way)


def test_encode_captions_pads_cuts_and_refuses_a_long_prompt_when_strict():
    from paperzoo.dalle.captions import build_caption_tokenizer

    tok = build_caption_tokenizer(512)
    n = len(tok.encode("a sneaker")) + 1
    long = "a small dark sneaker pointing left"
    ids = encode_captions(tok, ["a sneaker", long], n)
    assert ids.shape == (2, n)
    assert tok.decode(ids[0].tolist()) == "a sneaker" and int(ids[0, -1]) == tok.pad_id
    assert ids[1].tolist() == tok.encode(long)[:n]  # cut
    with pytest.raises(ValueError, match=f"at most {n}"):
        encode_captions(tok, [long], n, strict=True)


def test_training_interrupted_mid_epoch_resumes_bitwise_and_the_run_generates_and_captions(cfg, monkeypatch):
    from paperzoo.train import checkpoint as ckpt

    ref = paperzoo.train(cfg("run.name=ref"))
    monkeypatch.setenv("PAPERZOO_FAULT", "step:4:INT")  # Ctrl-C mid-epoch 1 of 2 (6 steps an epoch)
    monkeypatch.setattr(ckpt, "_FAULT_COUNTS", {})
    cut = paperzoo.train(cfg("run.name=cut"))
    assert ref.status == "done" and cut.status == "interrupted"
    monkeypatch.delenv("PAPERZOO_FAULT")
    done = paperzoo.train(resume=cut.run_dir)
    wa, wb = (read_weights(find_checkpoint(r.run_dir, "final")) for r in (ref, done))
    assert done.step == ref.step == 12 and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert done.metrics == ref.metrics
    names = {"test_loss", "test_loss_text", "test_loss_image", "test_caption_loss", "test_caption_acc"}
    assert names <= set(ref.metrics)

    model, tok, meta = load_dalle(ref.run_dir)
    assert meta["tokenizer"] == tok.to_dict() and not model.training
    a = generate(ref.run_dir, "a sneaker", 3, seed=1)
    assert a.shape == (3, 1, 28, 28) and 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, generate(ref.run_dir, "a sneaker", 3, seed=1))  # seeded
    with pytest.raises(ValueError, match="at most 26"):
        generate(ref.run_dir, "a small dark sneaker " * 8, 1)
    texts = caption_images(ref.run_dir, a)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_load_dalle_refuses_a_checkpoint_of_another_task(vae_run):
    with pytest.raises(ValueError, match="not a paperzoo dalle checkpoint"):
        load_dalle(vae_run)
