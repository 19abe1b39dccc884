"""Typed config: YAML + overrides, strict validation with the valid choices in the message, recipes."""

from pathlib import Path

import pytest
import yaml

from paperzoo.train.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    find_recipe,
    load_config,
    save_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_and_yaml_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {name: resnet34, args: {small_input: true}}\noptim: {name: adamw, lr: 0.001}\n")
    cfg = load_config(p, ["optim.lr=0.1", "train.epochs=3", "optim.betas=[0.8, 0.9]", "loss.class_weights=null",
                          "train.grad_clip=1", "model.args.width=16"])
    assert cfg.model.name == "resnet34" and cfg.model.args == {"small_input": True, "width": 16}
    assert cfg.optim.name == "adamw" and cfg.optim.lr == 0.1 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9) and cfg.train.epochs == 3
    assert cfg.train.grad_clip == 1.0 and isinstance(cfg.train.grad_clip, float)  # int accepted for float
    assert cfg.data == Config().data  # untouched sections keep their defaults
    assert load_config(p, ["run.progress=off"]).run.progress == "off"  # not YAML 1.1's false


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer'.*valid keys: .*model, data, aug"):
        config_from_dict({"optimizer": {}})
    with pytest.raises(ConfigError, match=r"unknown key optim\.'learning_rate'.*valid keys: name, lr") as e:
        load_config(None, ["optim.learning_rate=0.1"])
    assert "did you mean" not in str(e.value) or "lr" in str(e.value)
    with pytest.raises(ConfigError, match=r"did you mean 'epochs'"):
        load_config(None, ["train.epoch=3"])


def test_bad_values_list_the_choices():
    with pytest.raises(ConfigError, match=r"optim\.name: invalid value 'adam'; valid choices: sgd, adamw"):
        load_config(None, ["optim.name=adam"])
    with pytest.raises(ConfigError, match=r"train\.precision.*valid choices: fp32, bf16, fp16"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match=r"data\.dataset.*fashion_mnist, mnist, cifar10"):
        load_config(None, ["data.dataset=imagenet"])
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer, got 'many'"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_config(None, ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match=r"train\.ema: expected true or false"):
        load_config(None, ["train.ema=1"])
    with pytest.raises(ConfigError, match=r"optim\.betas: expected 2 values"):
        load_config(None, ["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"data\.batch_size: must be an integer >= 1, got 0"):
        load_config(None, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match=r"'multistep' schedule needs"):
        load_config(None, ["sched.name=multistep"])
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"unknown key 'lr'; valid keys: .*model, data"):
        load_config(None, ["lr=0.1"])
    assert issubclass(ConfigError, ValueError)  # the CLI turns it into one error line


@pytest.mark.parametrize("spelling, value", [
    ("1e-3", 1e-3), ("1E3", 1e3), (".5", 0.5), ("1_000.0", 1000.0), ("1.5e-2", 0.015), ("'2e-4'", 2e-4),
    ("3", 3.0),
])
def test_every_float_spelling_is_a_number(tmp_path, spelling, value):
    """YAML 1.1 reads 1e-3 as a string; the loader follows YAML 1.2, and float fields take numeric strings."""
    assert load_config(None, [f"optim.lr={spelling}"]).optim.lr == value
    p = tmp_path / "c.yaml"
    p.write_text(f"optim: {{lr: {spelling}}}\nmodel: {{args: {{drop_rate: {spelling}}}}}\n")
    cfg = load_config(p)
    assert cfg.optim.lr == value and isinstance(cfg.optim.lr, float)
    if spelling != "'2e-4'":  # a quoted string stays a string where the field's type is not known
        assert cfg.model.args["drop_rate"] == value


@pytest.mark.parametrize("override, message", [
    ("data.train_subset=-3", "data.train_subset: must be an integer >= 1, got -3"),
    ("optim.lr=nan", "optim.lr: expected a number, got NaN"),
    ("optim.lr=-1e-3", "optim.lr: must be a finite number > 0, got -0.001"),
    ("optim.lr=inf", "optim.lr: must be a finite number > 0, got inf"),
    ("optim.betas=[0.9, 1.5]", "optim.betas: must be in [0, 1), got (0.9, 1.5)"),
    ("aug.hflip=2", "aug.hflip: must be in [0, 1], got 2.0"),
    ("loss.smoothing=1", "loss.smoothing: must be in [0, 1), got 1.0"),
    ("train.grad_clip=0", "train.grad_clip: must be a finite number > 0, got 0.0"),
    ("train.max_steps=0", "train.max_steps: must be an integer >= 1, got 0"),
    ("sched.pct_start=0", "sched.pct_start: must be in (0, 1), got 0.0"),
])
def test_values_out_of_range_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("optim:\n  lr: 0.1\n  name: [sgd\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML at line \d+, column \d+: ") as e:
        load_config(p)
    assert "\n" not in str(e.value)
    p.write_bytes(b"optim: {name: \xff}\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not UTF-8 text"):
        load_config(p)


def test_model_args_and_image_sizes_must_match_the_data():
    from paperzoo.train.config import check_matches_data

    classes = [f"c{i}" for i in range(10)]
    check_matches_data({"num_classes": 10}, classes=classes, input_shape=(1, 28, 28), test_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match=r"model\.args\.num_classes: 20 disagrees with the data's 10 classes"):
        check_matches_data({"num_classes": 20}, classes=classes, input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match=r"model\.args\.in_chans: 3 disagrees with the data's 1 channels"):
        check_matches_data({"in_chans": 3}, classes=classes, input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match=r"training images are \(1, 28, 28\).*evaluation images are \(1, 32, 32\)"):
        check_matches_data({}, classes=classes, input_shape=(1, 28, 28), test_shape=(1, 32, 32))


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["optim.betas=[0.9, 0.95]", "sched.milestones=[2, 4]", "model.args.width=8"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config_to_dict(cfg)


def _is_image_recipe(path: Path) -> bool:
    """configs/ also holds `paperzoo tune` search spaces (with a `base:` recipe) and recipes of the sequence
    tasks (models of kind "sequence", their own config schema) and of other tasks (a `task:` field, e.g.
    detection; tests/detection/test_task.py checks those)."""
    from paperzoo.registry import list_models

    data = yaml.safe_load(path.read_text()) or {}
    name = (data.get("model") or {}).get("name", "resnet18")
    return "base" not in data and "task" not in data and name not in list_models(kind="sequence")


RECIPES = [p for p in sorted(CONFIGS.glob("*.yaml")) if _is_image_recipe(p)]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipes_are_valid_and_name_registered_models(path):
    from paperzoo.registry import get_entry

    cfg = load_config(path)
    get_entry(cfg.model.name)  # raises KeyError for an unknown model
    assert find_recipe(path.stem) == path


def test_api_accepts_a_recipe_name():
    from paperzoo.train.api import resolve_config

    cfg = resolve_config("fashion_mnist_default", ["train.epochs=1"])
    assert cfg.train.epochs == 1 and cfg.data.dataset == "fashion_mnist"


def test_find_recipe_lists_known_recipes():
    with pytest.raises(FileNotFoundError, match="fashion_mnist_default"):
        find_recipe("no_such_recipe")


def test_recipes_are_found_from_any_directory_in_the_package(tmp_path, monkeypatch):
    from paperzoo.train.config import RECIPE_DIR

    monkeypatch.chdir(tmp_path)  # no ./configs here
    found = find_recipe("fashion_mnist_default")
    assert found.parent == RECIPE_DIR and found.is_file()
    assert RECIPE_DIR.parts[-2:] == ("paperzoo", "configs")  # inside the package, not the checkout
    (tmp_path / "configs").mkdir()  # a user's own ./configs wins over the packaged recipe
    (tmp_path / "configs" / "fashion_mnist_default.yaml").write_text("train: {epochs: 1}\n")
    assert find_recipe("fashion_mnist_default").resolve() == (tmp_path / "configs" / "fashion_mnist_default.yaml")


@pytest.mark.slow
def test_a_built_wheel_ships_every_recipe(tmp_path):
    import shutil
    import subprocess
    import sys
    import zipfile

    root, src = Path(__file__).resolve().parents[2], tmp_path / "src"
    # build from a copy: an in-tree build would leave build/ and egg-info behind in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    shutil.copytree(root / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("paperzoo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {f"paperzoo/configs/{p.name}" for p in CONFIGS.glob("*.yaml")}
    assert recipes and recipes <= names
