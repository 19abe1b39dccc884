"""Fine-tuning: a pretrained checkpoint gets a new head and first conv (listed), the rest loads strictly;
freezing; a lower backbone learning rate; the ImageFolder recipe end to end through the CLI.

Run: python -m pytest -q tests/train/test_finetune.py
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import paperzoo
from paperzoo.cli import main
from paperzoo.registry import create_model, list_models
from paperzoo.train import checkpoint as ckpt
from paperzoo.train.config import config_from_dict
from paperzoo.train.optim import build_optimizer_and_schedule, freeze
from paperzoo.weights import WeightLoadError, adapt_input_conv, load_pretrained

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))  # the converter tests' source layouts
from test_weights_mobile import (  # noqa: E402
    V3_SMALL,
    V3_SMALL_TIMM_STAGES,
    timm_mobilenetv2_keys,
    timm_mobilenetv3_keys,
    to_source_layout,
    tv_mobilenetv2_keys,
)

TINY_RESNET = {"small_input": True, "width": 4}


def _resnet(num_classes: int, in_chans: int = 3) -> torch.nn.Module:
    return create_model("resnet18", num_classes=num_classes, in_chans=in_chans, **TINY_RESNET)


def _save(sd: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


# ------------------------------------------------------------------------------- which layers each model names
@pytest.mark.parametrize("name", list_models(kind="image"))
def test_every_image_model_names_its_classifier_head_and_first_conv(name):
    with torch.device("meta"):  # shapes only: no memory, no init
        model = create_model(name, num_classes=7, in_chans=2)
    sd = model.state_dict()
    assert model.head_keys() and all(sd[k].shape[0] == 7 for k in model.head_keys())
    assert all(f"{m}.weight" in sd for m in model.head_names)
    assert sd[f"{model.first_conv_name}.weight"].shape[1] == 2  # (O, in_chans, kh, kw)


def test_inception_with_aux_logits_names_both_classifiers():
    with torch.device("meta"):
        model = create_model("inception_v3", num_classes=7, aux_logits=True)
    assert model.head_names == ("fc", "AuxLogits.fc")
    assert {"fc.weight", "AuxLogits.fc.weight"} <= set(model.head_keys())


# ------------------------------------------------------------------------------------ head and first conv
def test_head_is_reinitialised_and_listed_and_everything_else_is_the_checkpoint(tmp_path):
    source = _resnet(10)
    path = _save(source.state_dict(), tmp_path / "src.safetensors")
    model = _resnet(5)
    fresh_fc = {k: v.clone() for k, v in model.fc.state_dict().items()}
    changes = load_pretrained(model, path)
    assert changes == ["fc: re-initialised (checkpoint (10, 32), model (5, 32))"]
    got, want = model.state_dict(), source.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if not k.startswith("fc."))
    assert torch.equal(model.fc.weight, fresh_fc["weight"]) and torch.equal(model.fc.bias, fresh_fc["bias"])


def test_a_head_that_fits_loads_as_it_is(tmp_path):
    source = _resnet(5)
    model = _resnet(5)
    assert load_pretrained(model, _save(source.state_dict(), tmp_path / "w.pth")) == []
    assert torch.equal(model.fc.weight, source.fc.weight)


@pytest.mark.parametrize("source, layout", [("torchvision", tv_mobilenetv2_keys), ("timm", timm_mobilenetv2_keys)])
def test_torchvision_and_timm_checkpoints_get_a_new_head_after_conversion(tmp_path, source, layout):
    pretrained = create_model("mobilenetv2_050", num_classes=1000)
    path = _save(to_source_layout(pretrained, layout()), tmp_path / f"{source}.pth")
    model = create_model("mobilenetv2_050", num_classes=3, in_chans=1)
    changes = load_pretrained(model, path, source)
    assert changes == ["classifier: re-initialised (checkpoint (1000, 1280), model (3, 1280))",
                       "stem.conv: adapted from 3 to 1 input channels (summed)"]
    want = pretrained.state_dict()
    assert torch.equal(model.stem.conv.weight, want["stem.conv.weight"].sum(1, keepdim=True))
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items()
               if not k.startswith(("classifier.", "stem.conv.")))


def test_a_run_directory_is_a_paperzoo_checkpoint_to_start_from(tmp_path):
    source = _resnet(4)
    ckpt.save_checkpoint(tmp_path / "run" / "final", source.state_dict(), meta={"task": "image_classification"})
    model = _resnet(6)
    assert load_pretrained(model, tmp_path / "run") == ["fc: re-initialised (checkpoint (4, 32), model (6, 32))"]
    assert torch.equal(model.conv1.weight, source.conv1.weight)


# in_chans: a gray image shown to the 1-channel model must give what the RGB model gives on that image repeated
# in its three channels (and the other way round for 1 -> 3): summing / repeating-and-scaling filters is exact.
@pytest.mark.parametrize("name, args, size", [("resnet18", TINY_RESNET, 8), ("vit_tiny_patch4_28", {}, 28),
                                              ("mobilenetv2_050", {"small_input": True}, 16)])
@pytest.mark.parametrize("src_chans, new_chans", [(3, 1), (1, 3)])
def test_adapted_first_conv_computes_the_source_model_on_equal_channels(tmp_path, name, args, size, src_chans,
                                                                       new_chans):
    source = create_model(name, num_classes=5, in_chans=src_chans, **args).eval()
    model = create_model(name, num_classes=5, in_chans=new_chans, **args).eval()
    changes = load_pretrained(model, _save(source.state_dict(), tmp_path / "w.safetensors"))
    assert changes == [f"{model.first_conv_name}: adapted from {src_chans} to {new_chans} input channels "
                       + ("(summed)" if new_chans == 1 else "(repeated, scaled by 1/3)")]
    gray = torch.rand(2, 1, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(gray.expand(-1, new_chans, -1, -1)),
                                   source(gray.expand(-1, src_chans, -1, -1)), rtol=1e-4, atol=1e-5)


def test_adapt_input_conv_sums_for_one_channel_and_repeats_and_rescales_otherwise():
    w = torch.randn(4, 3, 3, 3)
    assert torch.equal(adapt_input_conv(w, 1), w.sum(1, keepdim=True))
    five = adapt_input_conv(w, 5)  # channels r, g, b, r, g, each scaled by 3/5
    torch.testing.assert_close(five, torch.cat([w, w[:, :2]], 1) * 0.6)
    assert adapt_input_conv(w, 3) is w


# --------------------------------------------------------------------------------------- strict elsewhere
def test_an_unexpected_key_outside_the_head_still_fails(tmp_path):
    sd = _resnet(10).state_dict()
    sd["layer1.0.extra"] = torch.zeros(3)
    with pytest.raises(WeightLoadError, match=r"unexpected keys \(1\): layer1.0.extra"):
        load_pretrained(_resnet(5), _save(sd, tmp_path / "w.pth"))


def test_a_missing_key_or_another_shape_outside_the_head_still_fails(tmp_path):
    sd = _resnet(10).state_dict()
    del sd["layer2.0.bn1.running_mean"]
    with pytest.raises(WeightLoadError, match=r"missing keys \(1\): layer2.0.bn1.running_mean"):
        load_pretrained(_resnet(5), _save(sd, tmp_path / "a.pth"))
    wide = create_model("resnet18", num_classes=10, small_input=True, width=8).state_dict()
    with pytest.raises(WeightLoadError, match="layer1.0.conv1.weight: checkpoint"):
        load_pretrained(_resnet(5), _save(wide, tmp_path / "b.pth"))


# ------------------------------------------------------------------------------------------------ freezing
def _train_from(tmp_path, pretrained: Path, name: str, **sections) -> dict:
    cfg = {"model": {"name": "resnet18", "args": TINY_RESNET, "pretrained": str(pretrained)},
           "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 64, "batch_size": 16},
           "optim": {"lr": 0.1, "weight_decay": 0.01}, "train": {"epochs": 1, "threads": 1},
           "run": {"out_dir": str(tmp_path / "runs"), "name": name, "progress": "off", "tensorboard": False,
                   "plots": False}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    result = paperzoo.train(cfg)
    assert result.status == "done"
    return ckpt.read_weights(result.run_dir / "final" / "model.safetensors")


def test_frozen_modules_are_bit_identical_after_training_and_the_rest_trains(tmp_path):
    start = _resnet(4, in_chans=1).state_dict()  # the synthetic images are gray
    path = _save(start, tmp_path / "start.safetensors")
    after = _train_from(tmp_path, path, "frozen", train={"freeze": ["conv1", "bn1", "layer1"]})
    frozen = [k for k in start if k.startswith(("conv1.", "bn1.", "layer1.")) and "running" not in k
              and "num_batches" not in k]
    assert frozen and all(torch.equal(after[k], start[k]) for k in frozen)
    assert not torch.equal(after["layer2.0.conv1.weight"], start["layer2.0.conv1.weight"])
    assert not torch.equal(after["fc.weight"], start["fc.weight"])


def test_a_resumed_fine_tuning_run_continues_from_its_checkpoint_without_the_pretrained_file(tmp_path, capsys):
    path = _save(_resnet(4, in_chans=1).state_dict(), tmp_path / "start.safetensors")
    _train_from(tmp_path, path, "resumed", train={"freeze": ["layer1"]})
    path.unlink()
    capsys.readouterr()
    result = paperzoo.train(resume=tmp_path / "runs" / "resumed", overrides=["train.epochs=2"])
    assert result.status == "done" and "starting from" not in capsys.readouterr().err


def test_freezing_the_backbone_trains_only_the_head(tmp_path):
    model = _resnet(4)
    n = freeze(model, ["backbone"])
    assert [k for k, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert n == sum(p.numel() for k, p in model.named_parameters() if not k.startswith("fc."))


def test_freezing_an_unknown_module_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'stage1' is not a module .* conv1, bn1, layer1, layer2"):
        freeze(_resnet(4), ["stage1"])


# ------------------------------------------------------------------------------------- backbone lr multiplier
def test_backbone_groups_run_at_lr_times_mult_at_every_schedule_step():
    cfg = config_from_dict({"optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.05, "backbone_lr_mult": 0.1},
                            "sched": {"name": "cosine", "warmup_epochs": 1}})
    model = _resnet(4)
    optimizer, scheduler = build_optimizer_and_schedule(cfg, model, total_steps=12, steps_per_epoch=4)
    names = {id(p): k for k, p in model.named_parameters()}
    groups = [(sorted(names[id(p)] for p in g["params"]), g) for g in optimizer.param_groups]
    assert groups[0][0] == ["fc.weight"] and groups[1][0] == ["fc.bias"]  # the head first: the logged lr
    assert sum(len(ks) for ks, _ in groups) == len(names)
    for keys, g in groups:  # no weight decay on norms and biases, in the backbone too
        assert (g["weight_decay"] == 0) == all(model.get_parameter(k).ndim <= 1 for k in keys)
    peak = []
    for _ in range(12):
        head, *_, backbone = (g["lr"] for g in optimizer.param_groups)
        assert optimizer.param_groups[1]["lr"] == head and optimizer.param_groups[2]["lr"] == backbone
        torch.testing.assert_close(backbone, 0.1 * head, rtol=1e-12, atol=0)
        peak.append(head)
        optimizer.step()
        scheduler.step()
    assert max(peak) == pytest.approx(1e-2) and peak[0] < peak[3] and peak[-1] < peak[4]  # warm-up, then decay


def test_without_a_multiplier_the_groups_are_the_two_of_before():
    optimizer, _ = build_optimizer_and_schedule(config_from_dict({}), _resnet(4), 10, 5)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]  # checkpoints of older runs resume
    assert all("lr_mult" not in g for g in optimizer.param_groups)


# ---------------------------------------------------------------------------- the recipe, end to end (CLI)
def _image_folder(root: Path) -> None:
    g = torch.Generator().manual_seed(0)
    for c, colour in (("dark", 40), ("mid", 128), ("light", 215)):
        (root / c).mkdir(parents=True)
        for i in range(6):
            px = (colour + torch.randint(-30, 30, (20, 18, 3), generator=g)).clamp(0, 255).to(torch.uint8)
            Image.fromarray(px.numpy()).save(root / c / f"{i}.png")


def test_finetune_recipe_from_a_torchvision_file_trains_evaluates_and_predicts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's defaults: ./images and the .pth next to you
    _image_folder(tmp_path / "images")
    torch.save(_resnet(1000).state_dict(), tmp_path / "resnet18-tiny.pth")  # torchvision's ResNet keys are ours
    tiny = ["model.name=resnet18", "model.args={small_input: true, width: 4}", "model.pretrained=resnet18-tiny.pth",
            "data.image_size=16", "data.batch_size=5", "data.eval_batch_size=8", "data.num_workers=0",
            "train.epochs=2", "train.threads=1", "run.progress=off", "run.tensorboard=false", "run.plots=false"]
    assert main(["train", "finetune_imagefolder", "--name", "ft", "--set", *tiny]) == 0
    err = capsys.readouterr().err
    assert "paperzoo: starting from resnet18-tiny.pth (torchvision weights)" in err
    assert "paperzoo:   fc: re-initialised (checkpoint (1000, 32), model (3, 32))" in err
    run = tmp_path / "runs" / "ft"
    assert main(["eval", str(run), "--format", "json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3  # the held-out 10 %: one image per class
    assert main(["predict", str(run), "images/light/0.png", "--format", "json"]) == 0
    (pred,) = json.loads(capsys.readouterr().out)
    assert {t["class"] for t in pred["top"]} == {"dark", "mid", "light"}  # the folder's classes


def test_finetune_recipe_refuses_a_checkpoint_that_does_not_fit_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "images")
    sd = _resnet(1000).state_dict()
    sd["layer1.0.extra"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    assert main(["train", "finetune_imagefolder", "--set", "model.name=resnet18",
                 "model.args={small_input: true, width: 4}", "model.pretrained=bad.pth", "data.image_size=16",
                 "data.num_workers=0", "run.progress=off"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line == ("paperzoo train: error: cannot load bad.pth (source=torchvision) into resnet18; "
                    "unexpected keys (1): layer1.0.extra")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run left behind


def test_a_run_fine_tuned_from_timm_mobilenetv3_records_timms_eps_so_resume_and_reload_rebuild_it(tmp_path):
    # BatchNorm eps is not in a state dict: the converter sets timm's 1e-5 on the model (ours defaults to 1e-3), and
    # the run must record it, or a resumed run / load_run would rebuild the network with the wrong eps
    layout = timm_mobilenetv3_keys(V3_SMALL, V3_SMALL_TIMM_STAGES)
    path = _save(to_source_layout(create_model("mobilenetv3_small_100"), layout), tmp_path / "timm.pth")
    cfg = {"model": {"name": "mobilenetv3_small_100", "args": {"small_input": True}, "pretrained": str(path),
                     "pretrained_source": "timm"},
           "data": {"dataset": "synthetic", "image_size": 16, "synthetic_size": 32, "batch_size": 16},
           "train": {"epochs": 1, "threads": 1, "max_steps": 1},
           "run": {"out_dir": str(tmp_path / "runs"), "name": "v3", "progress": "off", "tensorboard": False,
                   "plots": False}}
    result = paperzoo.train(cfg)
    assert result.status == "done"
    assert paperzoo.load_run(result.run_dir).cfg.bn_eps == 1e-5
    resumed = paperzoo.train(resume=result.run_dir, overrides=["train.max_steps=2", "train.epochs=2"])
    assert resumed.status == "done" and paperzoo.load_run(resumed.run_dir).cfg.bn_eps == 1e-5
