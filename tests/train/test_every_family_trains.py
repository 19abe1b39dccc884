"""Every registered image model trains through the CLI, and every family has a recipe that trains.

Switching the model of a recipe (``--model``) fits the recipe's ``model.args`` to the new model: arguments it
does not take are dropped with one line, ``small_input`` (and the other portable ones) carry over, and an
argument the user gave that the model cannot take is one clear error.

The registry-wide run trains one representative per family (its smallest variant) in the default suite and
every other variant in the slow one: a step of an ImageNet-sized network on CPU plus three checkpoints of its
weights take seconds each; the few above 100M parameters train with fewer blocks.
"""

import json

import pytest
import torch

import paperzoo
from paperzoo.cli import main
from paperzoo.registry import (
    PORTABLE_ARGS,
    create_model,
    get_entry,
    list_models,
    model_arg_names,
    resolve_model_args,
)
from paperzoo.train.api import resolve_config
from paperzoo.train.config import RECIPE_DIR

IMAGE_MODELS = list_models(kind="image")


def _params(name: str) -> int:
    with torch.device("meta"):
        return paperzoo.count_params(create_model(name, num_classes=10, in_chans=1, small_input=True))


def _representatives() -> set[str]:
    """The smallest variant of each family."""
    best: dict[str, tuple[int, str]] = {}
    for name in IMAGE_MODELS:
        family, n = get_entry(name).family, _params(name)
        if family not in best or n < best[family][0]:
            best[family] = (n, name)
    return {name for _, name in best.values()}


REPRESENTATIVES = _representatives()
# the networks above 100M parameters train with fewer blocks (the same classes and code paths): at full size ViT-H
# alone needs 13 GB for a step and its checkpoints
HEAVY = 100_000_000
SHRINK = {"vit": ["model.args.depth=2"], "swin": ["model.args.depths=[1,1,1,1]"]}
# synthetic 16x16 grayscale images (every family's small-input stem takes them), one optimizer step
TINY_RUN = ["--set", "data.dataset=synthetic", "data.image_size=16", "data.synthetic_size=8", "data.batch_size=4",
            "data.eval_batch_size=8", "train.max_steps=1", "train.epochs=1", "train.threads=1",
            "train.precision=fp32", "run.progress=off", "run.tensorboard=false", "run.plots=false"]


# ------------------------------------------------------------------------------------------ the resolver
def test_every_image_model_names_its_arguments_and_takes_small_input():
    for name in IMAGE_MODELS:
        names = model_arg_names(name)
        assert {"num_classes", "in_chans", "small_input"} <= set(names), name


def test_switching_family_drops_the_recipes_arguments_and_keeps_the_portable_ones():
    args = {"small_input": True, "width": 16, "drop_rate": 0.1}
    kept, note = resolve_model_args("densenet121", args, written_for="resnet18")
    assert kept == {"small_input": True, "drop_rate": 0.1}
    assert note == ("model densenet121: dropped width=16 (densenet121 takes no 'width'), set by the recipe for "
                    "resnet18; kept small_input=True, drop_rate=0.1")


def test_an_argument_of_the_same_name_but_another_meaning_is_dropped_too():
    # ResNet's width is a channel count, EfficientNet's a multiplier that its builders fix per variant
    kept, note = resolve_model_args("efficientnet_b0", {"small_input": True, "width": 16}, written_for="resnet18")
    assert kept == {"small_input": True}
    assert "dropped width=16 (only small_input, drop_rate, drop_path_rate carry over" in note
    assert set(PORTABLE_ARGS) == {"small_input", "drop_rate", "drop_path_rate"}


def test_within_a_family_every_argument_carries_over_silently():
    assert resolve_model_args("seresnet50", {"small_input": True, "width": 16}, written_for="resnet18") == (
        {"small_input": True, "width": 16}, None)


def test_an_explicit_argument_the_model_cannot_take_is_an_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"model.args: densenet121 takes no 'width'; its arguments: block_layers, "
                                         r"k, bn_size, theta, stem_chs, num_classes, in_chans, small_input"):
        resolve_model_args("densenet121", {"width": 8}, explicit={"width"}, written_for="resnet18")
    with pytest.raises(ValueError, match=r"takes no 'widht' \(did you mean 'width'\?\)"):
        resolve_model_args("resnet18", {"widht": 8})


def test_a_field_the_variant_fixes_is_a_clear_error():
    with pytest.raises(ValueError, match=r"model.args.alpha: mobilenetv2_100 sets 'alpha' itself"):
        create_model("mobilenetv2_100", alpha=0.5)


def test_resolve_config_drops_with_one_line_on_stderr(capsys):
    cfg = resolve_config("fashion_mnist_default", ["model.name=vit_tiny_patch4_28"])
    assert cfg.model.args == {"small_input": True}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["paperzoo: model vit_tiny_patch4_28: dropped width=16 (vit_tiny_patch4_28 takes no 'width'), "
                   "set by the recipe for resnet18; kept small_input=True"]
    # the recipe's own model: nothing dropped, nothing said
    assert resolve_config("fashion_mnist_default").model.args == {"small_input": True, "width": 16}
    assert capsys.readouterr().err == ""


def test_cli_explicit_bad_argument_exits_2_listing_the_valid_ones(tmp_path, capsys):
    code = main(["train", "fashion_mnist_default", "--model", "densenet121", "--set", "model.args.width=8",
                 "--out-dir", str(tmp_path), "--print-config"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("paperzoo train: error: model.args: densenet121 takes no 'width'; its arguments: ")
    assert "growth" not in err and "k, bn_size" in err and "Traceback" not in err


def test_a_whole_args_override_counts_as_explicit(capsys):
    with pytest.raises(ValueError, match="vit_tiny_patch4_28 takes no 'width'"):
        resolve_config("fashion_mnist_default", ["model.name=vit_tiny_patch4_28", "model.args={width: 8}"])


# --------------------------------------------------------------------------------- every model trains
def _family_params(names):
    return [n if n in REPRESENTATIVES else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _family_params(IMAGE_MODELS))
def test_every_image_model_trains_from_the_default_recipe_through_the_cli(name, tmp_path, capsys):
    entry = get_entry(name)
    shrink = SHRINK[entry.family] if (entry.ref_params or 0) > HEAVY else []
    code = main(["train", "fashion_mnist_default", "--model", name, "--out-dir", str(tmp_path), "--name", "r",
                 *TINY_RUN, *shrink])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "status: done (step 1," in out and "_acc:" in out
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["status"] == "done" and status["step"] == 1
    if get_entry(name).family not in ("resnet", "seresnet"):  # the recipe's width was written for ResNet
        assert f"model {name}: dropped width=16" in err and "kept small_input=True" in err


def test_one_representative_per_family_runs_in_the_default_suite():
    families = {get_entry(n).family for n in IMAGE_MODELS}
    assert {get_entry(n).family for n in REPRESENTATIVES} == families
    assert len(REPRESENTATIVES) == len(families)


# ------------------------------------------------------------------------------------ a recipe per family
FAMILY_RECIPES = sorted(p.stem for p in RECIPE_DIR.glob("fashion_mnist_*.yaml")
                        if p.stem not in ("fashion_mnist_best",))


def test_every_family_has_a_fashion_mnist_recipe():
    families = {get_entry(n).family for n in IMAGE_MODELS}
    covered = {get_entry(resolve_config(r).model.name).family for r in FAMILY_RECIPES}
    assert families <= covered, sorted(families - covered)


@pytest.mark.parametrize("recipe", FAMILY_RECIPES)
def test_family_recipe_trains_its_own_model_with_its_own_arguments(recipe, tmp_path, capsys):
    cfg = resolve_config(recipe)
    assert cfg.data.dataset == "fashion_mnist" and cfg.model.args.get("small_input") is True
    if get_entry(cfg.model.name).family in ("vit", "swin"):
        assert cfg.optim.name == "adamw"
    # the recipe's model, with reduced data only: one step on synthetic images
    assert main(["train", recipe, "--out-dir", str(tmp_path), "--name", "r", *TINY_RUN]) == 0
    assert capsys.readouterr().err == ""  # nothing dropped: the arguments are the model's own
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert f"name: {cfg.model.name}" in saved
