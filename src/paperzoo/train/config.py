"""Typed training configuration: dataclasses loaded from YAML, plus ``section.key=value`` overrides.

A config file mirrors :class:`Config` section by section::

    model: {name: resnet18, args: {small_input: true, width: 32}}
    data: {dataset: fashion_mnist, batch_size: 128}
    optim: {name: sgd, lr: 0.1, weight_decay: 5.0e-4}
    train: {epochs: 10, precision: bf16}

Every value is checked against the field's type when the config is built: an unknown section or key, a
value of the wrong type or a choice outside a ``Literal`` raises :class:`ConfigError` (a ``ValueError``) that
lists the valid keys or choices; each section's ``__post_init__`` then checks ranges (``optim.lr > 0``,
``data.train_subset >= 1``...) with :func:`check_fields`. Override values are parsed as YAML scalars/lists, so
``train.epochs=3``, ``optim.betas=[0.9,0.95]`` and ``loss.class_weights=null`` all work. Numbers follow YAML 1.2,
so ``1e-3`` is a float (PyYAML's YAML 1.1 would read it as a string), and a float field also takes a string
Python reads as a float (``"1e-3"``, ``"1_000.0"``, ``"inf"``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = [
    "AugConfig", "Config", "ConfigError", "DataConfig", "LossConfig", "ModelConfig", "OptimConfig",
    "RunConfig", "SchedConfig", "TrainConfig", "apply_overrides", "build_config", "check_fields",
    "check_matches_data", "config_from_dict", "config_to_dict", "find_recipe", "load_config", "parse_yaml",
    "read_config_data", "read_yaml", "save_config",
]


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type or a value outside the valid choices or range."""


# ------------------------------------------------------------------------------------------- range checks
#: rule name -> (test, how the rule reads in a message). Every test fails for NaN.
_RULES = {
    "positive": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "count": (lambda v: v >= 1, "an integer >= 1"),
    "non_negative": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "probability": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "open_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "nucleus": (lambda v: 0 < v <= 1, "in (0, 1]"),
}


def check_fields(obj: Any, section: str, **rules: str) -> None:
    """Check fields of a config section against named rules (see ``_RULES``); ``None`` means unset and passes.

    A list or tuple passes when each of its items does. Example, in a section's ``__post_init__``::

        check_fields(self, "optim", lr="positive", weight_decay="non_negative", betas="fraction")

    Raises:
        ConfigError: naming ``section.field``, the rule and the value, for the first field that breaks its rule.
    """
    for name, rule in rules.items():
        value = getattr(obj, name)
        test, text = _RULES[rule]
        items = value if isinstance(value, list | tuple) else [value]
        if value is not None and not all(test(v) for v in items):
            raise ConfigError(f"{section}.{name}: must be {text}, got {value!r}")


@dataclass
class ModelConfig:
    name: str = "resnet18"
    #: overrides of the family's config dataclass, passed to ``create_model`` (e.g. ``small_input: true``).
    args: dict[str, Any] = field(default_factory=dict)
    #: optional weights to start from (a ``.safetensors``/``.pth`` file) and their key layout.
    pretrained: str | None = None
    pretrained_source: Literal["paperzoo", "torchvision", "timm"] = "paperzoo"


@dataclass
class DataConfig:
    dataset: Literal["fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic",
                     "scene_crops"] = "fashion_mnist"
    #: dataset directory; ``None`` = the Debian location for Fashion-MNIST (required for the others).
    root: str | None = None
    batch_size: int = 128  # global batch (split over DDP ranks), per optimizer micro-step
    eval_batch_size: int = 512
    #: fraction of the training set held out for validation (model selection). 0 = monitor on the test set.
    val_fraction: float = 0.0
    #: use only the first N (shuffled with the seed) training / test images: quick experiments and tests.
    train_subset: int | None = None
    test_subset: int | None = None
    image_size: int | None = None  # resize target: ImageFolder images; tensor datasets resized once at load
    in_chans: Literal[1, 3] = 3  # ImageFolder: decode as RGB (3) or grayscale (1)
    train_crop: Literal["center", "random_resized"] = "center"  # ImageFolder training crop
    num_workers: int = 2  # ImageFolder DataLoader workers
    synthetic_size: int = 512  # images per split of the generated ``synthetic`` dataset

    def __post_init__(self) -> None:
        check_fields(self, "data", batch_size="count", eval_batch_size="count", val_fraction="fraction",
                     train_subset="count", test_subset="count", image_size="count", num_workers="non_negative",
                     synthetic_size="count")
        if self.dataset == "imagefolder" and self.root is None:
            raise ConfigError("data.root: dataset 'imagefolder' needs data.root (one sub-directory per class)")


@dataclass
class AugConfig:
    """Batched tensor augmentation (see :mod:`paperzoo.data.transforms`)."""

    crop_padding: int = 0  # random crop after zero padding by this many pixels; 0 = off
    hflip: float = 0.0  # horizontal-flip probability
    random_erasing: float = 0.0  # probability of erasing one rectangle per image
    erasing_scale: tuple[float, float] = (0.02, 0.33)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0  # probability of applying mixup/cutmix to a batch
    switch_prob: float = 0.5  # probability of cutmix instead of mixup when both are on
    # progressive resizing (Howard's fast.ai DAWNBench recipe; Touvron et al., FixRes, arXiv:1906.06423, on the
    # train/test resolution gap): the first `low_res_epochs` epochs see the augmented images downsampled
    # (antialiased bilinear) to low_res_size x low_res_size, which costs ~(low_res_size / size)² of a step;
    # later epochs and every evaluation use the full size. 0 = off.
    low_res_size: int = 0
    low_res_epochs: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "aug", crop_padding="non_negative", hflip="probability", random_erasing="probability",
                     erasing_scale="probability", erasing_ratio="positive", mixup_alpha="non_negative",
                     cutmix_alpha="non_negative", mix_prob="probability", switch_prob="probability",
                     low_res_size="non_negative", low_res_epochs="non_negative")


@dataclass
class LossConfig:
    name: Literal["ce", "label_smoothing", "focal"] = "ce"
    smoothing: float = 0.0  # epsilon of Inception-v3's label smoothing (also used with mixup targets)
    gamma: float = 2.0  # focal loss
    alpha: float | None = None
    class_weights: list[float] | None = None

    def __post_init__(self) -> None:
        check_fields(self, "loss", smoothing="fraction", gamma="non_negative", alpha="probability",
                     class_weights="non_negative")


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    #: fine-tuning: learning rate of every parameter outside the classifier head, as a multiple of lr
    backbone_lr_mult: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self, "optim", lr="positive", weight_decay="non_negative", momentum="fraction",
                     betas="fraction", backbone_lr_mult="positive")


@dataclass
class SchedConfig:
    name: Literal["cosine", "step", "multistep", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    step_epochs: float | None = None  # "step": decay every this many epochs
    milestones: list[float] = field(default_factory=list)  # "multistep": epochs at which to decay
    gamma: float = 0.1
    pct_start: float = 0.3  # "onecycle": fraction of steps spent warming up

    def __post_init__(self) -> None:
        check_fields(self, "sched", warmup_epochs="non_negative", min_lr_ratio="probability",
                     step_epochs="positive", milestones="non_negative", gamma="positive", pct_start="open_fraction")
        if self.name == "step" and not self.step_epochs:
            raise ConfigError("sched.step_epochs: the 'step' schedule needs step_epochs > 0")
        if self.name == "multistep" and not self.milestones:
            raise ConfigError("sched.milestones: the 'multistep' schedule needs a list of epochs")


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs when smaller)
    #: seconds of training (evaluation and checkpoints not counted): without max_steps, a short throughput probe
    #: sets epochs / max_steps so that the schedule ends inside it; training stops at the budget in any case
    time_budget_s: float | None = None
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float | None = None  # max global grad norm
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16 autocast (CPU/GPU); fp16 + GradScaler (GPU)
    ema: bool = False
    ema_decay: float = 0.9998
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None  # torch intra-op threads (None = torch's default)
    sync_bn: bool = False  # DDP only: convert BatchNorm to SyncBatchNorm (GPU)
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    checkpoint_every: int | None = None  # optimizer steps between checkpoints (always at epoch ends)
    keep_last: int = 2  # resumable checkpoints kept (the best weights are kept separately)
    log_every: int = 50  # optimizer steps between log lines / metric records
    retain_memory: bool = True  # CPU: glibc keeps freed blocks for reuse, no page faults per step (allocator.py)
    #: modules not trained (fine-tuning): module paths such as conv1 or layer1, or backbone (all but the head)
    freeze: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_fields(self, "train", epochs="count", max_steps="count", time_budget_s="positive", grad_accum="count",
                     grad_clip="positive", ema_decay="fraction", threads="count", eval_every="count",
                     checkpoint_every="count", keep_last="count", log_every="count")


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: str | None = None  # run directory name; None = "<model>-<dataset>-<time>"
    progress: Literal["auto", "bar", "lines", "off"] = "auto"
    tensorboard: bool = True
    plots: bool = True


@dataclass
class EvalConfig:
    """How the recipe's model is meant to be evaluated (used by ``paperzoo demo``; ``paperzoo eval`` takes flags)."""

    tta: list[Literal["flip", "shift"]] = field(default_factory=list)  # test-time augmentation modes
    ema: bool = False  # evaluate the EMA weights (needs train.ema)


@dataclass
class Config:
    task: Literal["image_classification"] = "image_classification"  # picks the Task (paperzoo.train.task)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------- validation
def _check_value(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` coerced to type ``tp`` (int -> float, list -> tuple) or raise ``ConfigError``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _check_value(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        if isinstance(value, bool) and "off" in args:  # YAML 1.1 reads a bare `off` as false
            value = "on" if value else "off"
        if value not in args:
            raise ConfigError(f"{where}: invalid value {value!r}; valid choices: {', '.join(map(str, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
            return tuple(_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        return _as_float(value, where)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")  # pragma: no cover - programming error


def _as_float(value: Any, where: str) -> float:
    """A float from a number or from any spelling Python reads (``"1e-3"``, ``"1_000.0"``, ``"inf"``); not NaN."""
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError
        number = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if math.isnan(number):
        raise ConfigError(f"{where}: expected a number, got NaN")
    return number


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {where}{key!r}{hint}; valid keys: {', '.join(valid)}")


def build_config(cls: type, data: dict, where: str = "") -> Any:
    """Build the config dataclass ``cls`` from nested dicts, checking every key and value against its type hints.

    Nested dataclass fields are built recursively; missing keys take their defaults. This is the validation
    behind :func:`config_from_dict` and ``paperzoo.text.config.text_config_from_dict``; other tasks can use it
    for their own config dataclasses (cross-field checks are left to the caller).

    Args:
        cls: a dataclass whose fields are typed with the types :func:`_check_value` knows (bool, int, float,
            str, Literal, Optional/unions, list/tuple, dict, nested dataclasses).
        data: the mapping to read, e.g. ``yaml.safe_load`` of a recipe with overrides applied.
        where: prefix of the dotted key path used in error messages (``"optim."`` for a section).

    Raises:
        ConfigError: an unknown key (naming the valid ones and the closest match), a value of the wrong type or
            a choice outside a ``Literal`` (listing the valid choices).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(key, names, where)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_config(tp, value or {}, f"{where}{key}.")
        else:
            kwargs[key] = _check_value(value, tp, f"{where}{key}")
    return cls(**kwargs)


def config_from_dict(data: dict | None) -> Config:
    """Build and validate a :class:`Config` from nested dicts (missing keys take their defaults)."""
    return build_config(Config, data or {})


def check_matches_data(model_args: dict[str, Any], *, classes: list[str], input_shape: tuple[int, ...],
                       test_shape: tuple[int, ...] | None = None) -> None:
    """Checks that need the data: call where a task has loaded it, before building the model.

    Args:
        model_args: ``model.args`` of the config (what the user set, not the task's defaults).
        classes: the dataset's class names; ``model.args.num_classes``, if set, must equal their number.
        input_shape: ``(C, H, W)`` of the training images; ``model.args.in_chans``, if set, must equal C.
        test_shape: ``(C, H, W)`` of the evaluation images, which must equal ``input_shape``.

    Raises:
        ConfigError: naming the key, the value and what the data holds.
    """
    n = model_args.get("num_classes")
    if n is not None and n != len(classes):
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        raise ConfigError(f"model.args.num_classes: {n} disagrees with the data's {len(classes)} classes "
                          f"({shown}); remove it to use the data's")
    c = model_args.get("in_chans")
    if c is not None and c != input_shape[0]:
        raise ConfigError(f"model.args.in_chans: {c} disagrees with the data's {input_shape[0]} channels")
    if test_shape is not None and tuple(test_shape) != tuple(input_shape):
        raise ConfigError(f"data: training images are {tuple(input_shape)} (C, H, W) but evaluation images are "
                          f"{tuple(test_shape)}; use one size for both (e.g. data.image_size)")


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dicts (tuples as lists) suitable for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to nested dicts (values parsed as YAML). Returns ``data``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. optim.lr=0.1)")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")  # a top-level key (task=...) or section.key; unknown ones fail validation
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value: {_one_line(e)}") from None
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return data


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-3`` and ``1E3`` are numbers, not strings."""


# Checked after YAML 1.1's own resolvers (which take every float with a dot), so only the dot-less exponent
# forms that YAML 1.1 leaves as strings reach it.
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"))


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 floats (see :class:`_Yaml12Loader`)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader: plain data only, never arbitrary objects


def _one_line(e: yaml.YAMLError) -> str:
    """A YAML error's problem and position on one line (PyYAML's own text spans several with a snippet)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file's contents, with errors that name the file (missing, not UTF-8, a syntax error and its line).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: the file is not UTF-8 text or not valid YAML.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    try:
        return parse_yaml(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not UTF-8 text: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML at {_one_line(e)}") from None


def read_config_data(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> dict:
    """The nested dict of a YAML recipe (or ``{}``) with ``section.key=value`` overrides applied, unvalidated."""
    data: dict = {}
    if path is not None:
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return apply_overrides(data, list(overrides or []))


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe (or start from defaults), apply overrides and validate."""
    return config_from_dict(read_config_data(path, overrides))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically: it is read back by ``--resume``)."""
    from .checkpoint import atomic_write_bytes

    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    atomic_write_bytes(Path(path), text.encode())


RECIPE_DIR = Path(__file__).resolve().parents[1] / "configs"  # the recipes shipped with the package


def find_recipe(name: str | os.PathLike, kind: str = "recipe") -> Path:
    """A config path, or the name of a recipe (``fashion_mnist_default`` or with ``.yaml``).

    Recipes are looked up in ``./configs`` (a user's own) and then in the recipes shipped inside the package
    (``paperzoo/configs/``, which the checkout's top-level ``configs/`` links to), so they are found from any
    working directory and after a regular, non-editable install. ``kind="search space"`` looks in the
    ``tune/`` folder of both instead (the search spaces of ``paperzoo tune``).
    """
    p = Path(name)
    if p.is_file():
        return p
    stem = p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml"
    sub = "tune" if kind == "search space" else ""
    dirs = list(dict.fromkeys([Path.cwd() / "configs" / sub, RECIPE_DIR / sub]))
    for d in dirs:
        if (d / stem).is_file():
            return d / stem
    known = sorted({f.stem for d in dirs if d.is_dir() for f in d.glob("*.yaml")})
    what = "config" if kind == "recipe" else kind
    raise FileNotFoundError(f"{what} {str(name)!r} not found (looked for the file and for {stem} in "
                            f"{', '.join(str(d) for d in dirs)}); {kind}s: {', '.join(known) or 'none'}")
