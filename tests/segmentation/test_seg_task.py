"""The segmentation task on the shared trainer: the loss (CE ignoring 255, + 0.5 x aux), evaluation (a perfect
predictor scores mIoU 1), the seeded resumable loader, bitwise resume, and the DDP-summed confusion matrix.

A tiny conv segmenter registered here keeps these tests independent of the FCN module."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import paperzoo
from paperzoo.segmentation.registry import create_segmenter, register_segmenter
from paperzoo.segmentation.task import (
    SegmentationLoader,
    SegmentationTask,
    build_dataset,
    evaluate_run,
    load_segmenter,
)
from paperzoo.train.api import resolve_config
from paperzoo.train.checkpoint import find_checkpoint, read_weights


class TinySegmenter(nn.Module):
    """Two 3x3 convolutions: (B, 3, H, W) -> {"out": (B, K, H, W)} (+ "aux" from the first layer)."""

    def __init__(self, num_classes: int, width: int = 8, aux: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 3, padding=1)
        self.aux = nn.Conv2d(width, num_classes, 1) if aux else None

    def forward(self, x):
        f = self.body(x)
        out = {"out": self.head(f)}
        if self.aux is not None:
            out["aux"] = self.aux(f)
        return out


try:
    @register_segmenter(name="tiny_seg_test")
    def tiny_seg_test(*, num_classes: int = 11, width: int = 8, aux: bool = False) -> nn.Module:
        """A two-layer conv net for the tests."""
        return TinySegmenter(num_classes, width, aux)
except ValueError:  # registered already (the CLI test module registers it too)
    pass

TINY = ["model.name=tiny_seg_test", "model.args={}", "train.time_budget_s=null", "data.n_train=8", "data.n_val=4",
        "data.batch_size=2", "data.eval_batch_size=3", "train.log_every=1", "run.progress=off",
        "run.tensorboard=false", "run.plots=false", "train.threads=1", "train.precision=fp32",
        "train.channels_last=false"]


def _cfg(tmp_path, *extra):
    return resolve_config("segment_scenes", [*TINY, f"run.out_dir={tmp_path}", *extra])


class Oracle(nn.Module):
    """Returns each evaluation image's true mask as one-hot logits: a perfect segmenter."""

    def __init__(self, loader: SegmentationLoader, num_classes: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        loader.set_epoch(0)
        self.truth = {x.numpy().tobytes(): y for xb, yb in loader for x, y in zip(xb, yb)}
        self.k = num_classes

    def forward(self, x):
        y = torch.stack([self.truth[im.numpy().tobytes()] for im in x])  # (B, H, W)
        return {"out": F.one_hot(y.clamp(max=self.k - 1), self.k).permute(0, 3, 1, 2) * 30.0}  # (B, K, H, W)


def test_a_perfect_segmenter_scores_miou_one_on_the_test_split(tmp_path):
    task = SegmentationTask(_cfg(tmp_path))
    m = task.evaluate(Oracle(task.val_loader, task.num_classes))
    assert task.primary_metric == "test_mIoU" and task.num_classes == 11
    assert m["test_mIoU"] == 1.0 and m["test_pixel_acc"] == 1.0 and m["test_loss"] < 1e-9


def test_evaluation_covers_every_pixel_of_the_split_once(tmp_path):
    task = SegmentationTask(_cfg(tmp_path, "data.n_val=5"))  # 5 scenes in batches of 3: a short last batch
    cm, _ = task.confusion(create_segmenter("tiny_seg_test", num_classes=11))
    assert int(cm.sum()) == 5 * 128 * 128
    truth = torch.stack([task.val_set[i][1] for i in range(5)])
    assert cm.sum(1).tolist() == torch.bincount(truth.flatten(), minlength=11).tolist()


def test_the_loss_is_pixel_cross_entropy_ignoring_255_plus_half_the_aux_loss(tmp_path):
    task = SegmentationTask(_cfg(tmp_path, "loss.class_weights=null"))  # the recipe weights the background
    torch.manual_seed(0)
    model = create_segmenter("tiny_seg_test", num_classes=11, aux=True)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 11, (2, 16, 16))
    y[0, :4] = 255
    loss, logs = task.train_step(model, (x, y))
    out = model(x)
    expected = F.cross_entropy(out["out"], y, ignore_index=255) + 0.5 * F.cross_entropy(out["aux"], y,
                                                                                         ignore_index=255)
    torch.testing.assert_close(loss, expected)
    assert int(logs["count"]) == 2 and set(logs) == {"count", "loss_out", "loss_aux"}
    y[:] = 255  # a crop with nothing to score: zero loss, not NaN
    assert float(task.train_step(model, (x, y))[0]) == 0.0


def test_loader_order_and_flips_repeat_per_epoch_and_resume_mid_epoch(tmp_path):
    cfg = _cfg(tmp_path)
    kw = dict(seed=3, device="cpu", mean=cfg.data.mean, std=cfg.data.std)
    a = SegmentationLoader(build_dataset(cfg.data, "train", seed=3), 2, **kw)
    a.set_epoch(1)
    full = list(a)
    b = SegmentationLoader(build_dataset(cfg.data, "train", seed=3), 2, **kw)
    b.load_state_dict({"epoch": 1, "batch": 2, "seed": 3})
    b.set_epoch(1)
    rest = list(b)
    assert len(full) == 4 and len(rest) == 2
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(full[2:], rest))
    a.set_epoch(2)
    assert any(not torch.equal(p[0], q[0]) for p, q in zip(full, list(a)))


def test_batches_are_normalised_images_and_int64_masks(tmp_path):
    cfg = _cfg(tmp_path, "data.hflip=0.0", "data.crop=null")  # whole scenes, unaugmented
    x, y = next(iter(SegmentationLoader(build_dataset(cfg.data, "train"), 2, seed=0, device="cpu",
                                        mean=cfg.data.mean, std=cfg.data.std, shuffle=False)))
    raw = torch.stack([build_dataset(cfg.data, "train")[i][0] for i in range(2)])
    mean, std = torch.tensor(cfg.data.mean).view(1, 3, 1, 1), torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    assert x.shape == (2, 3, 128, 128) and y.shape == (2, 128, 128) and y.dtype == torch.int64


def test_training_interrupted_mid_epoch_resumes_bitwise(tmp_path, monkeypatch):
    from paperzoo.train import checkpoint as ckpt

    extra = ["train.epochs=2", "data.scale=[0.75,1.25]", "data.crop=96"]  # every augmentation replayed
    ref = paperzoo.train(_cfg(tmp_path, "run.name=ref", *extra))
    monkeypatch.setenv("PAPERZOO_FAULT", "step:3:INT")  # Ctrl-C after step 3 of 8 (mid-epoch 1)
    monkeypatch.setattr(ckpt, "_FAULT_COUNTS", {})
    cut = paperzoo.train(_cfg(tmp_path, "run.name=cut", *extra))
    assert ref.status == "done" and cut.status == "interrupted" and cut.step == 3
    monkeypatch.delenv("PAPERZOO_FAULT")
    done = paperzoo.train(resume=cut.run_dir)
    wa, wb = (read_weights(find_checkpoint(r.run_dir, "final")) for r in (ref, done))
    assert done.step == 8 and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert done.metrics["test_mIoU"] == ref.metrics["test_mIoU"]
    # the saved run rebuilds and scores the same (evaluate_run: float32, the table's keys)
    ck = load_segmenter(done.run_dir, "final")
    assert ck.categories[0] == "__background__" and ck.meta["model"]["args"]["num_classes"] == 11
    table = evaluate_run(done.run_dir, "final")
    assert table["mIoU"] == pytest.approx(done.metrics["test_mIoU"], abs=1e-12)
    assert len([k for k in table if k.startswith("IoU/")]) == 11


def test_model_pretrained_starts_fcn_backbone_from_a_classifier_and_a_resume_does_not_reload_it(tmp_path):
    from safetensors.torch import save_file

    from paperzoo import create_model
    from paperzoo.weights import adapt_input_conv

    args = dict(width=8, small_input=True, stem_stride=2)
    clf = create_model("resnet18", num_classes=10, in_chans=1, **args)
    save_file(clf.state_dict(), tmp_path / "clf.safetensors")
    fcn = ["model.name=fcn", "model.args={backbone: resnet18, width: 8}",
           f"model.pretrained={tmp_path}/clf.safetensors"]
    model = SegmentationTask.from_config(_cfg(tmp_path, *fcn)).build_model()
    got, src = model.backbone.state_dict(), clf.state_dict()
    assert torch.equal(got["conv1.weight"], adapt_input_conv(src["conv1.weight"], 3))  # gray -> RGB scenes
    assert all(torch.equal(got[k], src[k]) for k in got if k != "conv1.weight")  # layer3/4 dilate the same weights
    resumed = SegmentationTask.from_config(_cfg(tmp_path, *fcn), resume_meta={"step": 1}).build_model()
    assert not torch.equal(resumed.backbone.state_dict()["layer1.0.conv1.weight"], src["layer1.0.conv1.weight"])


def test_unknown_segmenter_and_bad_model_args_are_value_errors(tmp_path):
    task = SegmentationTask(_cfg(tmp_path))
    with pytest.raises(ValueError, match="unknown segmenter 'nope'"):
        SegmentationTask(_cfg(tmp_path, "model.name=nope")).build_model()
    task.cfg.model.args = {"depth": 3}
    with pytest.raises(ValueError, match="model.args do not fit tiny_seg_test"):
        task.build_model()


def test_class_weights_weight_each_pixels_loss_by_its_class_and_divide_by_the_weights_sum(tmp_path):
    task = SegmentationTask(_cfg(tmp_path, "loss.class_weights=[0.25,1,1,1,1,1,1,1,1,1,3]"))
    torch.manual_seed(0)
    model = create_segmenter("tiny_seg_test", num_classes=11, aux=True)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 11, (2, 16, 16))
    y[1, 3:] = 255
    loss, _ = task.train_step(model, (x, y))
    out, keep = model(x), y != 255
    w = torch.ones(11)
    w[0], w[10] = 0.25, 3.0
    expected = 0.0
    for name, weight in (("out", 1.0), ("aux", 0.5)):  # by hand: the per-pixel losses of the scored pixels
        per_pixel = -out[name].log_softmax(1).permute(0, 2, 3, 1)[keep].gather(1, y[keep][:, None])[:, 0]
        expected = expected + weight * (w[y[keep]] * per_pixel).sum() / w[y[keep]].sum()
    torch.testing.assert_close(loss, expected)
    y[:] = 255
    assert float(task.train_step(model, (x, y))[0]) == 0.0


def test_class_weights_of_the_wrong_length_or_sign_are_errors(tmp_path):
    from paperzoo.train.config import ConfigError

    with pytest.raises(ValueError, match="11 classes"):
        SegmentationTask(_cfg(tmp_path, "loss.class_weights=[0.2,1]"))
    with pytest.raises(ConfigError, match="loss.class_weights"):
        _cfg(tmp_path, "loss.class_weights=[-1,1,1,1,1,1,1,1,1,1,1]")
    with pytest.raises(ConfigError, match="at least one"):
        _cfg(tmp_path, "loss.class_weights=[0,0,0,0,0,0,0,0,0,0,0]")


def test_bad_data_settings_are_config_errors(tmp_path):
    from paperzoo.train.config import ConfigError

    with pytest.raises(ConfigError, match="data.scale"):
        _cfg(tmp_path, "data.scale=[1.5,0.5]")
    with pytest.raises(ConfigError, match="data.root"):
        _cfg(tmp_path, "data.dataset=voc")


def _ddp_rank(rank: int, world: int, port: int, cfg, out: dict) -> None:
    import torch.distributed as dist

    from paperzoo.train.distributed import DistInfo

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        task = SegmentationTask(cfg, DistInfo(rank=rank, world_size=world))
        cm, loss = task.confusion(create_segmenter("tiny_seg_test", num_classes=11))
        out[rank] = (cm, loss)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_sum_their_confusion_matrices_to_the_one_process_result(tmp_path):
    import socket

    import torch.multiprocessing as mp

    cfg = _cfg(tmp_path, "data.n_val=5", "data.batch_size=2")
    torch.manual_seed(0)
    single = SegmentationTask(cfg).confusion(create_segmenter("tiny_seg_test", num_classes=11))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_rank, args=(2, port, cfg, out), nprocs=2)
    for rank in range(2):
        cm, loss = out[rank]
        assert torch.equal(cm, single[0]) and loss == pytest.approx(single[1], rel=1e-6)


def test_the_scenes_recipe_is_valid_and_builds_its_fcn(tmp_path):
    from paperzoo.segmentation.registry import segmenter_names

    cfg = resolve_config("segment_scenes", [f"run.out_dir={tmp_path}"])
    assert cfg.task == "segmentation" and cfg.model.name == "fcn" and cfg.data.canvas == 128
    assert cfg.train.precision == "bf16" and cfg.train.channels_last and cfg.train.time_budget_s
    if "fcn" not in segmenter_names():
        pytest.skip("the FCN module is not there yet")
    task = SegmentationTask(resolve_config("segment_scenes", [*TINY[2:], f"run.out_dir={tmp_path}"]))
    model = task.build_model()
    out = model(torch.zeros(1, 3, 64, 96))
    assert out["out"].shape == (1, 11, 64, 96)
