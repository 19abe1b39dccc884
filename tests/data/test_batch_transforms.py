"""Batched augmentation: each transform against a per-image reference, reproducibility from the generator.

Run: python -m pytest -q tests/data/test_batch_transforms.py
"""

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from paperzoo.data.transforms import (
    Compose,
    MixupCutmix,
    Normalize,
    RandomCropPad,
    RandomErasing,
    RandomHorizontalFlip,
    build_eval_transform,
    build_train_transform,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(B=16, C=2, H=9, W=7, K=5):
    x = torch.rand(B, C, H, W, generator=gen(123)) + 0.1  # strictly positive so zero padding is visible
    y = torch.arange(B) % K
    return x, y


def test_random_crop_pad_matches_per_image_reference():
    x, y = batch()
    p = 3
    out, y2 = RandomCropPad(p)(x, y, gen(7))
    assert y2 is y and out.shape == x.shape
    offsets = torch.randint(0, 2 * p + 1, (2, x.shape[0]), generator=gen(7))  # same draws as the transform
    padded = F.pad(x, (p, p, p, p))
    for b in range(x.shape[0]):  # the slow, obvious version
        dy, dx = offsets[:, b].tolist()
        torch.testing.assert_close(out[b], padded[b, :, dy:dy + x.shape[2], dx:dx + x.shape[3]], rtol=0, atol=0)
    assert (out == 0).any()  # some image was shifted into the padding
    assert RandomCropPad(0)(x, y, gen())[0] is x


def test_random_crop_pad_channels_last_input():
    x, y = batch()
    a = RandomCropPad(2)(x, y, gen(1))[0]
    b = RandomCropPad(2)(x.contiguous(memory_format=torch.channels_last), y, gen(1))[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_flip():
    x, y = batch(B=200, C=1)
    out, _ = RandomHorizontalFlip(0.5)(x, y, gen(3))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same ^ flipped).all())  # every image is either untouched or mirrored
    assert 70 < int(flipped.sum()) < 130
    assert torch.equal(RandomHorizontalFlip(1.0)(x, y, gen())[0], x.flip(3))
    assert RandomHorizontalFlip(0.0)(x, y, gen())[0] is x


def test_normalize():
    x, y = batch(C=3)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out, _ = Normalize(mean, std)(x, y, gen())
    ref = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref)
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    torch.testing.assert_close(Normalize(mean, std)(u8, y, gen())[0],
                               Normalize(mean, std)(u8.float() / 255, y, gen())[0])
    with pytest.raises(ValueError, match="channels"):
        Normalize((0.5,), (0.5,))(x, y, gen())


def test_random_erasing_boxes():
    x = torch.ones(64, 2, 20, 30)
    y = torch.zeros(64, dtype=torch.long)
    scale, ratio = (0.05, 0.3), (0.5, 2.0)
    out, _ = RandomErasing(1.0, scale, ratio, value=0.0)(x, y, gen(5))
    erased = out[:, 0] == 0  # (B, H, W)
    assert torch.equal(out[:, 0] == 0, out[:, 1] == 0)  # same box on every channel
    n = 0
    for b in range(64):
        rows, cols = erased[b].any(1).nonzero().flatten(), erased[b].any(0).nonzero().flatten()
        if len(rows) == 0:
            continue
        n += 1
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(erased[b].sum()) == h * w  # one solid rectangle
        area = h * w / (20 * 30)
        assert scale[0] * 0.7 <= area <= scale[1] * 1.3  # rounding of h and w
        assert ratio[0] * 0.6 <= h / w <= ratio[1] / 0.6
    assert n >= 60  # p = 1: (almost) every image got a box
    assert (out[~erased.unsqueeze(1).expand_as(out)] == 1).all()  # nothing else changed
    assert torch.equal(RandomErasing(0.0)(x, y, gen())[0], x)
    noisy, _ = RandomErasing(0.5)(x, y, gen(6))  # random N(0, 1) fill, about half of the images
    changed = (noisy != x).flatten(1).any(1)
    assert 15 < int(changed.sum()) < 50
    assert x.eq(1).all()  # input not modified in place


def test_mixup_formula():
    x, y = batch(K=5)
    y[-1] = 4  # image 0 (label 0) is paired with image B-1: give them different labels
    mix = MixupCutmix(5, mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0)
    out, t = mix(x, y, gen(11))
    assert t.shape == (16, 5) and torch.allclose(t.sum(1), torch.ones(16))
    # recover λ from image 0's target: λ on its own label, 1 - λ on its partner's (the reversed batch)
    lam = float(t[0, y[0]])
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.flip(0))
    torch.testing.assert_close(t, lam * F.one_hot(y, 5).float() + (1 - lam) * F.one_hot(y.flip(0), 5).float())


def test_cutmix_box_and_lambda():
    x, y = batch(B=8, C=1, H=16, W=16, K=8)
    y = torch.arange(8)
    out, t = MixupCutmix(8, mixup_alpha=0.0, cutmix_alpha=1.0)(x, y, gen(2))
    from_partner = (out == x.flip(0)) & (out != x)  # (B, C, H, W)
    kept = (out == x).float().mean((1, 2, 3))
    lam = t[torch.arange(8), y]
    torch.testing.assert_close(lam, kept)  # λ is the exact kept area fraction (Yun et al. Alg. A1)
    torch.testing.assert_close(t[torch.arange(8), y.flip(0)], 1 - kept)
    box = from_partner[0, 0]
    if box.any():  # a single axis-aligned rectangle, the same for every image
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        assert int(box.sum()) == len(rows) * len(cols)
        assert torch.equal(from_partner[:, 0], box.expand(8, -1, -1))


def test_mixup_prob_zero_and_label_smoothing():
    x, y = batch(K=5)
    out, t = MixupCutmix(5, 0.4, 1.0, prob=0.0, label_smoothing=0.1)(x, y, gen())
    assert out is x
    torch.testing.assert_close(t, F.one_hot(y, 5).float() * 0.9 + 0.02)
    switched = [MixupCutmix(5, 1.0, 1.0, switch_prob=0.5)(x, y, gen(s))[0] for s in range(12)]
    kinds = {bool(((o == x) | (o == x.flip(0))).all()) for o in switched}  # cutmix keeps pixels, mixup blends
    assert kinds == {True, False}


def test_transforms_are_reproducible_from_the_generator():
    x, y = batch(C=1, K=5)
    t = Compose([RandomCropPad(2), RandomHorizontalFlip(), Normalize((0.5,), (0.2,)), RandomErasing(0.5),
                 MixupCutmix(5, 0.2, 1.0)])
    a, ta = t(x, y, gen(42))
    b, tb = t(x, y, gen(42))
    c, _ = t(x, y, gen(43))
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)


@dataclass
class AugLike:  # the shape of paperzoo.train.config.AugConfig
    crop_padding: int = 4
    hflip: float = 0.5
    random_erasing: float = 0.25
    erasing_scale: tuple = (0.02, 0.33)
    erasing_ratio: tuple = (0.3, 3.3)
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5


def test_build_transforms():
    t = build_train_transform(AugLike(), (0.5,), (0.25,), 10, label_smoothing=0.1)
    kinds = [type(s).__name__ for s in t.transforms]
    assert kinds == ["RandomCropPad", "RandomHorizontalFlip", "Normalize", "RandomErasing", "MixupCutmix"]
    x, y = batch(C=1, K=10)
    out, target = t(x, y, gen())
    assert out.shape == x.shape and target.shape == (16, 10)
    plain = build_train_transform(None, (0.5,), (0.25,), 10)
    assert [type(s).__name__ for s in plain.transforms] == ["Normalize"]
    assert plain(x, y, gen())[1] is y  # hard labels stay hard without mixup
    d = build_train_transform({"crop_padding": 2}, (0.5,), (0.25,), 10)
    assert [type(s).__name__ for s in d.transforms] == ["RandomCropPad", "Normalize"]
    with pytest.raises(ValueError, match="unknown augmentation keys"):
        build_train_transform({"crop_pad": 2}, (0.5,), (0.25,), 10)
    ev = build_eval_transform((0.5,), (0.25,))
    torch.testing.assert_close(ev(x, y, gen())[0], (x - 0.5) / 0.25)


def test_gpu_style_device_argument_is_respected_on_cpu():
    # random numbers come from the CPU generator and are moved to x.device; on CPU this is a no-op check
    x, y = batch()
    out, _ = RandomCropPad(1)(x.to("cpu"), y, gen())
    assert out.device == x.device and not math.isnan(float(out.sum()))
