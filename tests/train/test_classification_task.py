"""The image-classification task: mixup targets are smoothed once (by the loss), Inception's aux head trains."""

import torch

from paperzoo.train.classification import AUX_LOSS_WEIGHT, ImageClassificationTask
from paperzoo.train.config import config_from_dict
from paperzoo.train.losses import LabelSmoothingCrossEntropy


def _task(**sections):
    base = {"data": {"dataset": "synthetic", "synthetic_size": 64, "batch_size": 16},
            "run": {"progress": "off", "tensorboard": False, "plots": False}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return ImageClassificationTask(config_from_dict(base))


def test_mixup_targets_are_not_pre_smoothed_so_label_smoothing_applies_once():
    task = _task(aug={"mixup_alpha": 0.4, "cutmix_alpha": 1.0}, loss={"name": "label_smoothing", "smoothing": 0.1})
    task.train_loader.set_epoch(0)
    x, y = next(iter(task.train_loader))
    assert y.shape == (16, task.num_classes)
    torch.testing.assert_close(y.sum(1), torch.ones(16))
    # an unsmoothed mix of two one-hot targets leaves the other classes at exactly 0
    assert (y.min(1).values == 0).all()
    logits = torch.randn(16, task.num_classes)
    torch.testing.assert_close(task.loss_fn(logits, y), LabelSmoothingCrossEntropy(0.1)(logits, y))


def test_inception_aux_logits_add_a_weighted_aux_loss():
    args = {"aux_logits": True, "small_input": True, "drop_rate": 0.0}
    task = _task(model={"name": "inception_v3", "args": args})
    model = task.build_model().train()
    task.train_loader.set_epoch(0)
    x, y = (t[:4] for t in next(iter(task.train_loader)))
    loss, stats = task.train_step(model, (x, y))
    assert torch.isfinite(loss) and stats["count"] == 4
    logits, aux = model(x)  # train-mode BN uses batch statistics: same outputs again
    expected = task.loss_fn(logits, y) + AUX_LOSS_WEIGHT * task.loss_fn(aux, y)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in model.AuxLogits.parameters())


def test_progressive_resizing_trains_low_res_epochs_downsampled_then_full_size():
    import pytest
    import torch.nn.functional as F

    task = _task(model={"name": "resnet20", "args": {"width": 4}}, aug={"low_res_size": 8, "low_res_epochs": 1},
                 train={"channels_last": True})
    model = task.build_model().train()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    for epoch, size in ((0, 8), (1, 16)):
        task.train_loader.set_epoch(epoch)
        x, y = next(iter(task.train_loader))
        assert x.shape[-2:] == (16, 16)  # the loader always yields full-size images
        task.train_step(model, (x, y))
        assert seen[-1].shape[-2:] == (size, size) and seen[-1].is_contiguous(memory_format=torch.channels_last)
        # low-res epochs see the antialiased bilinear downsampling of the augmented batch, later ones the batch
        expected = F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False) \
            if size == 8 else x
        torch.testing.assert_close(seen[-1], expected)
    task.evaluate(model)
    assert seen[-1].shape[-2:] == (16, 16)  # evaluation stays at the full size
    with pytest.raises(ValueError, match="low_res_size"):
        _task(aug={"low_res_size": 16, "low_res_epochs": 1})
