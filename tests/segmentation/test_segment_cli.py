"""``paperzoo segment train|eval|predict`` end to end with a tiny segmenter, and its one-line errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch.nn as nn
from PIL import Image

from paperzoo.cli import main
from paperzoo.segmentation.registry import register_segmenter

try:
    @register_segmenter(name="tiny_seg_test")
    def tiny_seg_test(*, num_classes: int = 11, width: int = 8, aux: bool = False) -> nn.Module:
        """A two-layer conv net for the tests."""
        from test_seg_task import TinySegmenter

        return TinySegmenter(num_classes, width, aux)
except ValueError:  # registered already by test_seg_task
    pass

TINY = ["model.name=tiny_seg_test", "model.args={}", "train.time_budget_s=null", "data.n_train=8", "data.n_val=4",
        "data.batch_size=2", "data.eval_batch_size=4", "run.progress=off", "run.tensorboard=false",
        "run.plots=false", "train.threads=1", "train.max_steps=2", "train.epochs=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    code = main(["segment", "train", "segment_scenes", "--set", *TINY, "--out-dir", str(out), "--name", "run"])
    assert code == 0
    return out / "run"


def test_train_then_eval_prints_miou_pixel_accuracy_and_a_row_per_class(run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["segment", "eval", str(run), "--which", "final", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "mean IoU" in out and "pixel accuracy" in out and "T-shirt/top" in out and "__background__" in out
    stats = json.loads((tmp_path / "m.json").read_text())
    assert {"mIoU", "pixel_acc", "mean_acc", "IoU/Ankle boot"} <= set(stats)
    assert 0.0 <= stats["mIoU"] <= 1.0


def test_predict_writes_a_class_mask_png_at_the_image_size_and_an_overlay(run, tmp_path, capsys):
    image = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56)) * 255).astype(np.uint8)).save(image)
    assert main(["segment", "predict", str(run), str(image), "-o", str(tmp_path / "pred")]) == 0
    with Image.open(tmp_path / "pred" / "scene_mask.png") as m:
        assert m.mode == "P" and m.size == (56, 40)
        assert int(np.asarray(m).max()) <= 10
    assert (tmp_path / "pred" / "scene.png").stat().st_size > 0
    assert str(image) in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["segment", "eval", "{tmp}/nothing"], "nothing"),
    (["segment", "predict", "{run}", "{tmp}/missing.png", "-o", "{tmp}/o"], "missing.png: no such image file"),
    (["segment", "train", "segment_scenes", "--set", *TINY, "model.name=nope", "--out-dir", "{tmp}"],
     "unknown segmenter 'nope'"),
    (["segment", "train", "segment_scenes", "--set", "data.dataset=coco", "data.root={tmp}", *TINY[1:],
      "model.name=tiny_seg_test", "--out-dir", "{tmp}"], "no instances_train.json"),
])
def test_bad_input_is_one_line_and_exit_status_2(run, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run)) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("paperzoo segment: error:")


def test_a_checkpoint_of_another_task_is_refused(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "det.safetensors"
    save_file({"w": torch.zeros(1)}, path, metadata={"paperzoo": json.dumps({"task": "detection"})})
    assert main(["segment", "eval", str(path)]) == 2
    assert "is not a paperzoo segmentation checkpoint (task='detection')" in capsys.readouterr().err
