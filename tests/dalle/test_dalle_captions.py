"""Captioned Fashion-MNIST: measurements on synthetic images with known properties, templates, the tokenizer."""

from __future__ import annotations

import os

import pytest
import torch

from paperzoo.dalle.captions import (
    BRIGHTNESS,
    BRIGHTNESS_MEDIAN,
    CLASS_NAMES_EN,
    CLASS_NAMES_KO,
    DIRECTIONS,
    HELD_OUT,
    SIZE_TERTILES,
    SIZES,
    CaptionedFashionMNIST,
    all_captions,
    build_caption_tokenizer,
    caption_class,
    class_prompts,
    describes,
    make_caption,
    measure,
    quantise,
)

HAVE_FMNIST = os.path.isdir("/usr/share/datasets/fashion-mnist") or bool(os.environ.get("PAPERZOO_DATA"))
needs_data = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")


def _boot() -> torch.Tensor:
    """A boot drawn by hand: a shaft (rows 0-3, columns 20-23) above a sole (rows 4-7, columns 0-23)."""
    x = torch.zeros(28, 28)
    x[0:4, 20:24] = 1.0
    x[4:8, 0:24] = 1.0
    return x


def test_measure_rectangle_gives_its_area_box_and_ink_brightness():
    x = torch.zeros(2, 28, 28)
    x[0, 3:13, 5:25] = 0.6  # 10 x 20 box of ink at 0.6
    x[0, 20, 0] = 0.05  # below the ink threshold: not ink
    x[1, 0:28, 0:14] = 1.0  # the left half, full intensity
    m = measure(x)
    torch.testing.assert_close(m["area"], torch.tensor([200 / 784, 0.5]))
    torch.testing.assert_close(m["height"], torch.tensor([10.0, 28.0]))
    torch.testing.assert_close(m["width"], torch.tensor([20.0, 14.0]))
    torch.testing.assert_close(m["brightness"], torch.tensor([0.6, 1.0]))


def test_measure_accepts_uint8_with_a_channel_axis_and_empty_images():
    x = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    x[0, 0, 10:12, 10:12] = 255
    m = measure(x)
    torch.testing.assert_close(m["area"], torch.tensor([4 / 784, 0.0]))
    torch.testing.assert_close(m["brightness"], torch.tensor([1.0, 0.0]))
    assert m["height"][1] == 0 and m["toe_offset"][1] == 0


def test_toe_offset_matches_the_hand_computed_centroids_and_flips_sign_when_mirrored():
    boot = _boot()
    # all ink: 16 px at mean column 21.5 and 96 px at 11.5 -> 1448 / 112; upper half (rows 0-3): the shaft, 21.5
    expected = 1448 / 112 - 21.5
    m = measure(torch.stack([boot, boot.flip(-1)]))
    torch.testing.assert_close(m["toe_offset"], torch.tensor([expected, -expected]))
    attrs = quantise(m, torch.tensor([9, 9]))
    assert attrs["direction"].tolist() == [0, 1]  # left, right


def test_quantise_uses_the_class_thresholds():
    t = SIZE_TERTILES[7]
    areas = torch.stack([t[0] - 0.01, (t[0] + t[1]) / 2, t[1] + 0.01])
    b = BRIGHTNESS_MEDIAN[7]
    m = {"area": areas, "brightness": torch.stack([b - 0.01, b + 0.01, b + 0.01]), "toe_offset": torch.zeros(3)}
    q = quantise(m, torch.tensor([7, 7, 7]))
    assert q["size"].tolist() == [0, 1, 2] and q["brightness"].tolist() == [0, 1, 1]
    assert quantise(m, torch.tensor([0, 0, 0]))["direction"].tolist() == [-1, -1, -1]  # no direction for t-shirts


def test_make_caption_templates_in_english_and_natural_korean():
    full = {"size": "small", "brightness": "dark", "direction": "left"}
    assert make_caption(7, full, "en", 0) == "a small dark sneaker pointing left"
    assert make_caption(9, {"size": "medium"}, "en", 1) == "a photo of a medium-sized ankle boot"
    assert make_caption(9, {}, "en", 0) == "an ankle boot"
    assert make_caption(7, full, "en", 2) == "a sneaker that is small, dark and pointing left"
    assert make_caption(8, {"size": "large", "brightness": "light"}, "en", 3) == "this bag is large and light"
    assert make_caption(7, full, "ko", 0) == "왼쪽을 향한 작고 어두운 운동화"
    assert make_caption(8, {"brightness": "dark"}, "ko", 1) == "어두운 가방 사진"
    assert make_caption(4, {"size": "medium", "brightness": "light"}, "ko", 2) == "크기가 중간이고 색이 밝은 코트"
    assert make_caption(8, {"size": "small", "brightness": "dark"}, "ko", 3) == "이 가방은 작고 어둡다"  # 받침: 은
    assert make_caption(7, {"size": "large"}, "ko", 3) == "이 운동화는 크다"  # no 받침: 는
    assert make_caption(5, {}, "ko", 3) == "샌들 사진"  # nothing to predicate: template 1
    with pytest.raises(ValueError, match="attribute word"):
        make_caption(0, {"size": "huge"})
    with pytest.raises(ValueError, match="lang"):
        make_caption(0, {}, "fr")


def test_class_prompts_and_caption_class_recover_every_class():
    assert class_prompts("en")[7] == "a sneaker" and class_prompts("ko")[7] == "운동화"
    for lang in ("en", "ko"):
        assert [caption_class(p) for p in class_prompts(lang)] == list(range(10))
    assert caption_class("a dark t-shirt") == 0 and caption_class("a dark shirt") == 6
    assert caption_class("이 티셔츠는 크다") == 0 and caption_class("셔츠 사진") == 6
    assert caption_class("a stop sign") is None and caption_class("") is None
    assert caption_class("Two Sneakers") == 7


def test_every_template_caption_names_its_class_and_tokenizes_without_bytes():
    caps = all_captions()
    assert len(caps) > 1000 and len(set(caps)) == len(caps)
    names = [(c, n) for c in range(10) for n in (CLASS_NAMES_EN[c], CLASS_NAMES_KO[c])]
    for cap in caps:
        want = max((n for n in names if n[1] in cap), key=lambda n: len(n[1]))[0]  # "t-shirt" over "shirt"
        assert caption_class(cap) == want, cap
    tok = build_caption_tokenizer(512)
    for cap in caps:
        ids = tok.encode(cap)
        assert tok.decode(ids) == cap and all(not p.startswith("<0x") for p in tok.pieces(cap))
    assert max(len(tok.encode(c, add_bos=True, add_eos=True)) for c in caps) <= 16
    assert build_caption_tokenizer(512).fingerprint() == tok.fingerprint()  # deterministic


@needs_data
def test_dataset_is_deterministic_per_seed_and_captions_name_the_label():
    a = CaptionedFashionMNIST("train", "both", seed=0, n=1500)
    b = CaptionedFashionMNIST("train", "both", seed=0, n=1500)
    c = CaptionedFashionMNIST("train", "both", seed=1, n=1500)
    assert a.captions == b.captions and a.captions != c.captions
    assert torch.equal(a.images, b.images)
    assert all(caption_class(t) == int(y) for t, y in zip(a.captions, a.labels))
    assert 0.4 < sum(lg == "ko" for lg in a.langs) / len(a) < 0.6
    image, caption, label = a[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert isinstance(caption, str) and label == int(a.labels[0])
    # what each caption states rebuilds it, and it describes its own image
    for i in range(0, 1500, 37):
        words = {k: v[s] for (k, v), s in zip((("size", SIZES), ("brightness", BRIGHTNESS),
                                                  ("direction", DIRECTIONS)), a.stated[i, 1:].tolist()) if s >= 0}
        assert make_caption(int(a.labels[i]), words, a.langs[i], a.templates[i]) == a.captions[i]
    assert describes(a.keys, a.stated).diagonal().all()
    # the captions' words come from the pixels: every English full caption names the measured size
    sizes = ("small", "medium-sized", "large")
    for t, s, lg in zip(a.captions, a.attrs["size"], a.langs):
        named = [w for w in sizes if f" {w} " in f" {t} "]
        assert lg == "ko" or not named or named == [sizes[s]], t


def test_describes_requires_the_class_and_every_stated_attribute():
    keys = torch.tensor([[7, 0, 1, 0], [7, 2, 1, 1], [8, 0, 0, -1]])  # small light left sneaker, ..., small dark bag
    stated = torch.tensor([[7, -1, -1, -1],  # "a sneaker"
                           [7, 0, -1, -1],  # "a small sneaker"
                           [7, -1, 1, 1],  # "a light sneaker pointing right"
                           [8, 0, 0, -1]])  # "a small dark bag"
    expected = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(describes(keys, stated), expected)


@needs_data
def test_mirroring_balances_shoe_directions_measured_from_pixels():
    ds = CaptionedFashionMNIST("train", "en", seed=0, n=3000)
    shoe = ds.attrs["direction"] >= 0
    right = (ds.attrs["direction"] == 1).float()
    assert 0.4 < right[shoe].mean() < 0.6
    assert right[shoe & ~ds.flipped].mean() < 0.1  # Fashion-MNIST's own shoes point left
    assert right[shoe & ds.flipped].mean() > 0.9


@needs_data
def test_held_out_combinations_are_never_captioned_in_training_but_are_in_test():
    def named(ds):
        return sum(make_caption(c, {"size": s, "brightness": b}, "en", 0) in t or
                   make_caption(c, {"size": s, "brightness": b}, "ko", 0) in t
                   for t in ds.captions for s, b, c in HELD_OUT)

    train = CaptionedFashionMNIST("train", "both", seed=0, n=4000)
    test = CaptionedFashionMNIST("test", "both", seed=0, n=4000)
    assert train.held_out.sum() > 50 and named(train) == 0
    assert named(test) > 20


@needs_data
def test_class_thresholds_are_the_training_tertiles_and_medians():
    from paperzoo.data.datasets import load_image_dataset

    ds = load_image_dataset("fashion_mnist", "train")
    m = measure(ds.images)
    for c in range(10):
        k = ds.labels == c
        q = m["area"][k].quantile(torch.tensor([1 / 3, 2 / 3]))
        torch.testing.assert_close(q, SIZE_TERTILES[c], atol=2e-4, rtol=0)
        torch.testing.assert_close(m["brightness"][k].median(), BRIGHTNESS_MEDIAN[c], atol=2e-4, rtol=0)
