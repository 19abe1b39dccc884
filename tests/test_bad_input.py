"""Bad input at the command line: one line on stderr naming what is wrong, exit status 2, no traceback.

Organised by area: config values, files and images, weights and pickles, the text commands, hyper-parameter
search, and how errors are reported (--debug, bugs). Each test is a case found by trying paperzoo as a new
user would (issue 13); docs/training.md ("When things go wrong") lists what each failure does.
"""

import errno
import os
import pickle
import struct
import subprocess
import sys

import pytest
import torch
import yaml

from paperzoo.cli import main

TINY = {
    "model": {"name": "resnet18", "args": {"small_input": True, "width": 4}},
    "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 32, "batch_size": 16},
    "train": {"epochs": 1, "threads": 1, "log_every": 2},
    "run": {"tensorboard": False, "plots": False, "progress": "off"},
}


def _fails_with_one_line(capsys, argv: list[str], *expected: str) -> str:
    """Run the CLI; assert exit status 2 and a single stderr line with each expected piece. Returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"paperzoo {argv[0]}: error: "), err
    for piece in expected:
        assert piece in err, err
    return err


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


@pytest.fixture(scope="module")
def trained_run(tiny_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", str(tiny_cfg), "--out-dir", str(out), "--name", "tiny"]) == 0
    return out / "tiny"


# ------------------------------------------------------------------------------------------- config values
@pytest.mark.parametrize("override", ["optim.lr=1e-3", "optim.lr=1E-3", "optim.lr=.001", "optim.lr=0_0.001"])
def test_every_float_spelling_is_accepted(tiny_cfg, capsys, override):
    assert main(["train", str(tiny_cfg), "--print-config", "--set", override]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 0.001


def test_yaml_lr_in_exponent_form_is_a_number(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(TINY) + "optim: {lr: 1e-3}\n")
    assert main(["train", str(p), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 0.001


@pytest.mark.parametrize("override, expected", [
    ("data.train_subset=-3", "data.train_subset: must be an integer >= 1, got -3"),
    ("optim.lr=-0.1", "optim.lr: must be a finite number > 0"),
    ("optim.lr=nan", "optim.lr: expected a number, got NaN"),
    ("aug.hflip=1.5", "aug.hflip: must be in [0, 1]"),
])
def test_values_out_of_range_are_refused(tiny_cfg, tmp_path, capsys, override, expected):
    _fails_with_one_line(capsys, ["train", str(tiny_cfg), "--out-dir", str(tmp_path), "--set", override], expected)
    assert not any(tmp_path.iterdir())  # refused before a run directory was made


@pytest.mark.parametrize("n", [20, 3])
def test_num_classes_that_disagrees_with_the_data_is_refused(tiny_cfg, tmp_path, capsys, n):
    """The synthetic data has 4 classes: a 20-way head used to train silently, a 3-way one to crash deep inside."""
    _fails_with_one_line(capsys, ["train", str(tiny_cfg), "--out-dir", str(tmp_path),
                                  "--set", f"model.args.num_classes={n}"],
                         f"model.args.num_classes: {n} disagrees with the data's 4 classes")
    assert not any(tmp_path.iterdir())  # the run directory claimed for the run is given back


def _write_idx(path, array):
    """An uncompressed IDX file of uint8 values (the MNIST format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype("uint8").tobytes())


def test_train_and_test_images_of_different_sizes_are_refused(tiny_cfg, tmp_path, capsys):
    root = tmp_path / "mnist"
    root.mkdir()
    gen = torch.Generator().manual_seed(0)
    for prefix, side in (("train", 28), ("t10k", 32)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte", torch.randint(0, 255, (16, side, side), generator=gen).numpy())
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", torch.arange(16).remainder(10).numpy())
    _fails_with_one_line(capsys, ["train", str(tiny_cfg), "--out-dir", str(tmp_path / "runs"), "--set",
                                  "data.dataset=mnist", f"data.root={root}", "data.image_size=null"],
                         "training images are (1, 28, 28)", "evaluation images are (1, 32, 32)")


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    p = tmp_path / "broken.yaml"
    p.write_text("model:\n  name: resnet18\ndata: {dataset: synthetic\n")
    _fails_with_one_line(capsys, ["train", str(p)], f"{p}: invalid YAML at line ")


def test_config_that_is_not_utf8_names_the_file(tmp_path, capsys):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("model: {name: r\xe9snet}\n".encode("latin-1"))
    _fails_with_one_line(capsys, ["train", str(p)], f"{p} is not UTF-8 text")


# ----------------------------------------------------------------------------------------- files and images
def test_missing_config_file(capsys):
    _fails_with_one_line(capsys, ["train", "/nonexistent/recipe.yaml"], "config '/nonexistent/recipe.yaml' not found")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_config_file(tiny_cfg, tmp_path, capsys):
    p = tmp_path / "secret.yaml"
    p.write_text(tiny_cfg.read_text())
    p.chmod(0)
    _fails_with_one_line(capsys, ["train", str(p)], f"{p}: Permission denied")


def test_a_directory_given_as_an_image(trained_run, tmp_path, capsys):
    _fails_with_one_line(capsys, ["predict", str(trained_run), str(tmp_path)], f"{tmp_path}: Is a directory")


def test_an_image_that_cannot_be_read(trained_run, tmp_path, capsys):
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"not an image at all")
    _fails_with_one_line(capsys, ["predict", str(trained_run), str(bad)], "cannot identify image file", str(bad))


def test_a_missing_image(trained_run, tmp_path, capsys):
    _fails_with_one_line(capsys, ["predict", str(trained_run), str(tmp_path / "nope.png")],
                         f"{tmp_path / 'nope.png'}: No such file or directory")


def test_disk_full_is_one_line(monkeypatch, tiny_cfg, capsys):
    """What reaches the CLI when a write fails with ENOSPC; the trainer's own handling is tested with it."""
    import paperzoo.train.api as api

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/x/ckpt")

    monkeypatch.setattr(api, "train", full)
    _fails_with_one_line(capsys, ["train", str(tiny_cfg)], "runs/x/ckpt: No space left on device")


# ------------------------------------------------------------------------------------------------- runs
def test_a_second_run_with_the_same_name_is_refused(trained_run, tiny_cfg, capsys):
    _fails_with_one_line(capsys, ["train", str(tiny_cfg), "--out-dir", str(trained_run.parent), "--name", "tiny"],
                         f"run directory {trained_run} already exists", f"--resume {trained_run}")


# -------------------------------------------------------------------------------------- weights and pickles
class _NotATensor:
    """Pickled by reference to this module: torch.load(weights_only=True) must refuse to rebuild it."""


def test_an_unsafe_pickle_as_pretrained_weights_is_refused_in_one_line(tiny_cfg, tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    torch.save({"conv.weight": _NotATensor()}, evil)
    _fails_with_one_line(capsys, ["train", str(tiny_cfg), "--out-dir", str(tmp_path / "runs"),
                                  "--set", f"model.pretrained={evil}"],
                         f"could not read weights from {evil}: it pickles test_bad_input._NotATensor")


def test_weights_of_another_model_name_the_mismatch_in_one_line(tiny_cfg, tmp_path, capsys):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(other))
    _fails_with_one_line(capsys, ["train", str(tiny_cfg), "--out-dir", str(tmp_path / "runs"),
                                  "--set", f"model.pretrained={other}"], "cannot load")


def test_an_unsafe_cifar_pickle_is_refused_in_one_line(tiny_cfg, tmp_path, capsys):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        # a reference to a function: loading it would not run anything, but it is not data and must be refused
        (batches / name).write_bytes(pickle.dumps({"data": os.getcwd}))
    _fails_with_one_line(capsys, ["train", str(tiny_cfg), "--out-dir", str(tmp_path / "runs"), "--set",
                                  "data.dataset=cifar10", f"data.root={tmp_path}", "data.image_size=null"],
                         f"{tmp_path}/cifar-10-batches-py/data_batch_1: refusing to load global posix.getcwd")


# ------------------------------------------------------------------------------------------- text commands
@pytest.mark.parametrize("flags, expected", [
    (["--temperature", "-1"], "decode.temperature: must be a finite number >= 0, got -1.0"),
    (["--temperature", "nan"], "decode.temperature: must be a finite number >= 0, got nan"),
    (["--top-p", "0"], "decode.top_p: must be in (0, 1], got 0.0"),
    (["--top-p", "1.5"], "decode.top_p: must be in (0, 1], got 1.5"),
    (["--top-k", "-2"], "decode.top_k: must be a finite number >= 0, got -2"),
    (["--num", "0"], "--num: must be >= 1, got 0"),
    (["--max-new", "-5"], "--max-new: must be >= 1, got -5"),
])
def test_lm_sample_refuses_bad_sampling_flags(tmp_path, capsys, flags, expected):
    # checked before the checkpoint is read, so no run is needed
    _fails_with_one_line(capsys, ["lm", "sample", str(tmp_path), *flags], expected)


def test_text_config_decode_values_are_checked(capsys):
    _fails_with_one_line(capsys, ["translate", "train", "translate_en_ko", "--print-config",
                                  "--set", "decode.top_p=2"], "decode.top_p: must be in (0, 1], got 2.0")


@pytest.mark.parametrize("how", ["empty argument", "empty file", "empty stdin"])
def test_translate_refuses_empty_input(tmp_path, capsys, monkeypatch, how):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    argv = {"empty argument": [""], "empty file": ["--input", str(empty)], "empty stdin": []}[how]
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    _fails_with_one_line(capsys, ["translate", "translate", str(tmp_path), *argv],
                         "empty TEXT argument" if how == "empty argument" else "nothing to translate")


def test_translate_input_that_is_not_utf8_names_the_file(tmp_path, capsys):
    src = tmp_path / "sentences.txt"
    src.write_bytes("caf\xe9\n".encode("latin-1"))
    _fails_with_one_line(capsys, ["translate", "translate", str(tmp_path), "--input", str(src)],
                         f"{src} is not UTF-8 text")


def test_a_training_corpus_that_is_not_utf8_names_the_file(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes("Un caf\xe9 noir.\n".encode("latin-1") * 50)
    _fails_with_one_line(capsys, ["lm", "train", "lm_fortunes", "--out-dir", str(tmp_path / "runs"),
                                  "--set", f"data.train={corpus}"], f"{corpus} is not UTF-8 text")


# ---------------------------------------------------------------------------------- hyper-parameter search
def test_tune_search_space_with_a_yaml_error(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("base: fashion_mnist_default\nparams: {optim.lr: {type: float, low: 0.1\n")
    _fails_with_one_line(capsys, ["tune", str(space), "--n-trials", "1", "--out-dir", str(tmp_path)],
                         f"{space}: invalid YAML at line")


# ------------------------------------------------------------------------------------- how errors are shown
def test_debug_shows_the_traceback_and_still_exits_2(tiny_cfg, capsys, monkeypatch):
    assert main(["--debug", "train", str(tiny_cfg), "--set", "optim.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("optim.lr: must be a finite number > 0, got -1.0")
    monkeypatch.setenv("PAPERZOO_DEBUG", "1")
    assert main(["train", str(tiny_cfg), "--set", "optim.lr=-1"]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("bug", [TypeError("unsupported operand type(s)"), KeyError("val_acc")])
def test_a_bug_keeps_its_traceback(monkeypatch, tiny_cfg, bug):
    """A TypeError or a bare KeyError inside the library is not bad input: it must not hide behind one line."""
    import paperzoo.train.api as api

    def buggy(*args, **kwargs):
        raise bug

    monkeypatch.setattr(api, "train", buggy)
    with pytest.raises(type(bug)):
        main(["train", str(tiny_cfg)])


def test_an_unknown_model_is_one_line(tiny_cfg, capsys):
    _fails_with_one_line(capsys, ["train", str(tiny_cfg), "--model", "resnet19"],
                         "unknown model 'resnet19'. Did you mean: resnet18")


def test_from_a_shell_an_error_is_one_line_and_status_2(tmp_path):
    """End to end, as a user sees it: the real process, its exit status and its whole stderr."""
    proc = subprocess.run([sys.executable, "-m", "paperzoo", "train", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, env={**os.environ, "PAPERZOO_DEBUG": ""})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("paperzoo train: error: config ")
