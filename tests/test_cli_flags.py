"""CLI flags a user can trust: every option's help shows its default, the same name means the same thing in
every command, and the training shortcuts set the config keys they name."""

import argparse
import re

import pytest
import yaml

from paperzoo.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("paperzoo",)):
    """(command path, parser) of the top-level parser and every subcommand below it, nested ones included."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(build_parser()))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings
            and not isinstance(a, argparse._HelpAction | argparse._VersionAction)]


def test_the_walk_sees_nested_subcommands():
    assert {"paperzoo train", "paperzoo eval", "paperzoo lm train", "paperzoo translate eval",
            "paperzoo viz curves", "paperzoo tune"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_that_shows_its_default(command):
    parser = COMMANDS[command]
    text = " ".join(parser.format_help().split())  # undo the line wrapping
    for action in _options(parser):
        flag = "/".join(action.option_strings)
        assert action.help, f"{command} {flag} has no help"
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in action.help:
            continue  # unset / off by default, or the help says what the default is in its own words
        assert f"(default: {action.default})" in text, f"{command} {flag}: default {action.default!r} not shown"


def test_help_output_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "-h"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--batch BATCH images per batch (default: 64)" in out
    # --precision's default depends on --fused, so its help states both defaults in words.
    assert "default fp32, and with --fused bf16" in out


def test_one_name_per_idea_across_commands():
    """Precision is --precision, an output path -o/--out, a device --device: nowhere another spelling."""
    for command, parser in COMMANDS.items():
        flags = {f for a in _options(parser) for f in a.option_strings}
        assert not flags & {"--dtype", "--output", "--out-file", "--dev"}, command
        if "--out" in flags:
            assert "-o" in flags, f"{command}: --out without its short form -o"
    takes = {c for c, p in COMMANDS.items() if "--precision" in {f for a in _options(p) for f in a.option_strings}}
    assert {"paperzoo train", "paperzoo eval", "paperzoo ensemble", "paperzoo bench", "paperzoo lm train",
            "paperzoo translate train"} <= takes
    with_device = {c for c, p in COMMANDS.items() if "--device" in {f for a in _options(p) for f in a.option_strings}}
    assert {"paperzoo train", "paperzoo predict", "paperzoo eval", "paperzoo bench"} <= with_device


@pytest.fixture
def tiny_cfg(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump({"model": {"name": "resnet18", "args": {"small_input": True, "width": 4}},
                                 "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 64}}))
    return p


@pytest.mark.parametrize("command", [["train"], ["lm", "train"], ["translate", "train"]])
def test_device_seed_precision_shortcuts_set_the_train_section(command, tiny_cfg, capsys):
    recipe = {"train": str(tiny_cfg), "lm": "lm_fortunes", "translate": "translate_en_ko"}[command[0]]
    assert main([*command, recipe, "--device", "cpu", "--seed", "7", "--precision", "bf16", "--print-config"]) == 0
    train = yaml.safe_load(capsys.readouterr().out)["train"]
    assert (train["device"], train["seed"], train["precision"]) == ("cpu", 7, "bf16")


def test_a_shortcut_wins_over_set_and_a_bad_value_is_one_line(tiny_cfg, capsys):
    assert main(["train", str(tiny_cfg), "--set", "train.seed=1", "--seed", "2", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["seed"] == 2
    assert main(["train", str(tiny_cfg), "--precision", "fp8", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"paperzoo train: error: .*valid choices: fp32, bf16, fp16\n", err)


def test_predict_takes_a_device():
    args = build_parser().parse_args(["predict", "run", "a.png", "--device", "cuda"])
    assert args.device == "cuda"
