"""The experiment runner: registration, run directories, report.md / report.json, errors, the CLI."""

import json

import pytest
import torch

from paperzoo.cli import main
from paperzoo.experiments import (
    _EXPERIMENTS,
    ExperimentContext,
    Report,
    UnknownExperimentError,
    get_experiment,
    markdown_table,
    register_experiment,
    run_experiment,
)
from paperzoo.viz.common import new_figure, save_figure

SEEN: dict = {}


@register_experiment("_toy", title="Toy", question="Does the runner work?")
def _toy(ctx: ExperimentContext) -> Report:
    import torch

    SEEN.update(setting=ctx.setting, threads=torch.get_num_threads(), draw=torch.rand(1).item())
    fig, ax = new_figure()
    ax[0, 0].plot([0, 1], [ctx.pick(smoke=1, short=2, full=3)] * 2)
    save_figure(fig, ctx.path("toy.png"))
    return Report("Toy", "It works.", tables=[("rows", [{"a": 1, "b": 0.123456}, {"a": 2, "c": "x|y"}])],
                  figures=[("toy.png", "a line")], numbers={"n": ctx.pick(smoke=1, short=2, full=3),
                                                             "bad": float("nan")})


@register_experiment("_broken", title="Broken", question="?")
def _broken(ctx: ExperimentContext) -> Report:
    (ctx.out_dir / "partial.txt").write_text("half")
    raise RuntimeError("boom")


@pytest.fixture(autouse=True, scope="module")
def _forget_toys():
    """The toy experiments leave the registry with this module (other tests list the real ones)."""
    yield
    _EXPERIMENTS.pop("_toy", None), _EXPERIMENTS.pop("_broken", None)


def test_run_writes_report_md_json_and_figure_into_a_fresh_directory(tmp_path):
    run_dir = run_experiment("_toy", out_dir=tmp_path, smoke=True, seed=3, threads=1)
    assert run_dir.parent == tmp_path and run_dir.name.startswith("experiment-_toy-")
    info = json.loads((run_dir / "report.json").read_text())
    assert info["numbers"] == {"n": 1.0, "bad": None}  # NaN is written as null, JSON stays strict
    assert info["settings"]["setting"] == "smoke" and info["settings"]["seed"] == 3
    assert info["environment"]["threads"] == 1 and SEEN["threads"] == 1
    assert info["seconds"] >= 0 and info["environment"]["torch"]
    md = (run_dir / "report.md").read_text()
    assert "# Toy" in md and "![a line](toy.png)" in md and "| 0.1235 |" in md and "x\\|y" in md
    assert (run_dir / "toy.png").read_bytes()[:4] == b"\x89PNG"
    again = run_experiment("_toy", out_dir=tmp_path, smoke=True, seed=3)  # same second: a new directory
    assert again != run_dir and again.is_dir()


def test_seed_makes_runs_repeatable_and_settings_pick_their_value(tmp_path):
    run_experiment("_toy", out_dir=tmp_path, seed=7)
    first = SEEN["draw"]
    assert SEEN["setting"] == "short"
    run_dir = run_experiment("_toy", out_dir=tmp_path, seed=7, full=True)
    assert SEEN["draw"] == first and SEEN["setting"] == "full"
    assert json.loads((run_dir / "report.json").read_text())["numbers"]["n"] == 3.0


def test_a_failing_experiment_leaves_no_run_directory(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        run_experiment("_broken", out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_names_and_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(UnknownExperimentError, match="did you mean _toy"):
        get_experiment("_tyo")
    with pytest.raises(ValueError, match="one of full and smoke"):
        run_experiment("_toy", out_dir=tmp_path, full=True, smoke=True)
    with pytest.raises(FileNotFoundError):
        run_experiment("_toy", out_dir=tmp_path, data_dir=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="already registered"):
        register_experiment("_toy", title="x", question="y")(lambda ctx: None)


def test_markdown_table_uses_every_key_in_first_seen_order():
    table = markdown_table([{"a": 1}, {"b": 2.0, "a": 3}])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 |  |", "| 3 | 2 |"]


def test_cli_lists_runs_and_refuses_unknown_names(tmp_path, capsys):
    assert main(["experiment", "--list"]) == 0
    assert "_toy" in capsys.readouterr().out and "_toy" in _EXPERIMENTS
    assert main(["experiment", "_toy", "--smoke", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "It works." in out and str(tmp_path) in out
    assert main(["experiment", "no_such_experiment"]) == 2
    assert "unknown experiment 'no_such_experiment'" in capsys.readouterr().err


def test_load_fashion_mnist_subsets_are_normalised_seeded_and_found_past_another_data_dir(tmp_path, fmnist_dir):
    from paperzoo.experiments import load_fashion_mnist

    x, y, xt, yt = load_fashion_mnist(500, 20, seed=1, root=str(tmp_path))  # tmp_path: no Fashion-MNIST there
    assert x.shape == (500, 1, 28, 28) and xt.shape == (20, 1, 28, 28) and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.15 and 0.85 < x.std().item() < 1.15  # the training set's mean and std
    assert torch.equal(load_fashion_mnist(500, 20, seed=1, root=fmnist_dir)[1], y)
