"""The dalle_vae task on the shared trainer: the config, the annealing clock read from the loader (so a resumed run
anneals exactly as an uninterrupted one: bitwise equal weights), evaluation against a hand computation, and
using a run (load_dvae, tokenize_images)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import paperzoo
from paperzoo.dalle.vae_task import DVAETask, load_dvae, tokenize_images
from paperzoo.train.api import resolve_config
from paperzoo.train.checkpoint import find_checkpoint, read_weights
from paperzoo.train.config import ConfigError
from paperzoo.train.task import get_task

TINY = ["model.args={n_hid: 8, vocab_size: 16, n_init: 8}", "data.train_subset=64", "data.test_subset=40",
        "data.batch_size=16", "data.eval_batch_size=16", "train.epochs=2", "train.max_steps=null",
        "train.time_budget_s=null", "anneal.temperature_steps=6", "anneal.kl_warmup_steps=3", "train.log_every=1",
        "run.progress=off", "run.tensorboard=false", "run.plots=false", "train.threads=1"]


@pytest.fixture
def cfg(tmp_path, fmnist_dir):
    def make(*extra):
        return resolve_config("dalle_vae_fmnist", [*TINY, f"data.root={fmnist_dir}", f"run.out_dir={tmp_path}",
                                                   *extra])

    return make


def test_recipe_names_the_task_and_bad_anneal_settings_are_config_errors(cfg):
    assert get_task("dalle_vae") is DVAETask
    c = cfg()
    assert c.task == "dalle_vae" and c.model.name == "dvae_fmnist"
    with pytest.raises(ConfigError, match="anneal.beta"):
        cfg("anneal.beta=-1")
    with pytest.raises(ConfigError, match="anneal"):
        cfg("anneal.tau=0.5")


def test_step_counts_optimizer_steps_from_the_loader_position_and_survives_a_state_round_trip(cfg):
    task = DVAETask(cfg("train.grad_accum=2"))  # 4 micro-batches an epoch: 2 optimizer steps
    seen = []
    for epoch in range(2):
        task.train_loader.set_epoch(epoch)
        for _ in task.train_loader:
            seen.append(task.step)
    assert seen == [0, 0, 1, 1, 2, 2, 3, 3]
    task.train_loader.set_epoch(1)
    batches = iter(task.train_loader)
    next(batches), next(batches), next(batches)  # the third micro-batch of epoch 1: step 3
    state = task.state_dict()
    assert state["step"] == 3
    fresh = DVAETask(cfg("train.grad_accum=2"))
    fresh.load_state_dict(state)
    fresh.train_loader.set_epoch(1)
    next(iter(fresh.train_loader))  # the fourth micro-batch, still step 3
    assert fresh.step == 3


def test_schedule_starts_at_tau_1_beta_0_and_ends_at_tau_1_16_beta_6_6(cfg):
    task = DVAETask(cfg("anneal.temperature_steps=100", "anneal.kl_warmup_steps=10", "anneal.beta=6.6"))
    assert task.schedule(0) == pytest.approx((1.0, 0.0))
    assert task.schedule(100) == pytest.approx((1 / 16, 6.6))
    assert task.schedule(5)[1] == pytest.approx(3.3)


def test_training_interrupted_mid_epoch_resumes_bitwise(cfg, monkeypatch):
    from paperzoo.train import checkpoint as ckpt

    ref = paperzoo.train(cfg("run.name=ref"))
    monkeypatch.setenv("PAPERZOO_FAULT", "step:3:INT")  # Ctrl-C after step 3 of 8, inside the schedules' ramps
    monkeypatch.setattr(ckpt, "_FAULT_COUNTS", {})
    cut = paperzoo.train(cfg("run.name=cut"))
    assert ref.status == "done" and cut.status == "interrupted" and cut.step == 3
    monkeypatch.delenv("PAPERZOO_FAULT")
    done = paperzoo.train(resume=cut.run_dir)
    wa, wb = (read_weights(find_checkpoint(r.run_dir, "final")) for r in (ref, done))
    assert done.step == 8 and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert done.metrics == ref.metrics
    logged = [json.loads(line) for line in (ref.run_dir / "metrics.jsonl").read_text().splitlines()]
    taus = [r["train_temperature"] for r in logged if "train_temperature" in r]
    assert taus[0] == pytest.approx(1.0) and taus[-1] == pytest.approx(1 / 16)  # the schedule ran to its end


def test_run_loads_tokenizes_and_its_metrics_match_a_hand_computation(cfg, fmnist_dir):
    from paperzoo.data.datasets import load_image_dataset

    result = paperzoo.train(cfg("train.epochs=1"))
    model = load_dvae(result.run_dir, "best")
    assert not model.training and model.meta["grid"] == [7, 7] and model.meta["vocab_size"] == 16
    x = load_image_dataset("fashion_mnist", "test", fmnist_dir).images[:40]
    tokens = tokenize_images(model, x, batch=7)  # uint8 accepted, in batches of 7
    assert tokens.shape == (40, 7, 7) and tokens.dtype == torch.int64
    xf = x.float() / 255
    torch.testing.assert_close(tokens, model.tokens(xf))
    metrics = result.metrics
    assert metrics["test_mse"] == pytest.approx(float(F.mse_loss(model.decode(tokens), xf)), rel=1e-5)
    p = torch.bincount(tokens.flatten(), minlength=16).double() / tokens.numel()
    p = p[p > 0]
    assert metrics["test_code_perplexity"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)
    with pytest.raises(ValueError, match=r"expected images \(N, 1, 28, 28\)"):
        tokenize_images(model, torch.rand(2, 3, 28, 28))


def test_load_dvae_refuses_a_checkpoint_of_another_task(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "meta.json").write_text(json.dumps({"task": "segmentation"}))
    with pytest.raises(ValueError, match="not a paperzoo dalle_vae checkpoint"):
        load_dvae(tmp_path / "model.safetensors")
