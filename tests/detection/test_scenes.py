import json
import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from paperzoo.data.datasets import load_image_dataset
from paperzoo.detection.boxes import box_iou
from paperzoo.detection.scenes import MASK_THRESHOLD, make_scenes, mask_to_rle

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"  # as in conftest.py


@pytest.fixture(scope="module")
def scenes():
    """Shared by the read-only checks; module-scoped, so it repeats conftest's fmnist_dir skip."""
    if not os.path.exists(os.path.join(FMNIST_DIR, "t10k-images-idx3-ubyte.gz")):
        pytest.skip("Debian package dataset-fashion-mnist is not installed (make data)")
    return make_scenes("test", 60, seed=3, root=FMNIST_DIR)


def _rle_decode(rle: dict) -> torch.Tensor:
    h, w = rle["size"]
    values = torch.arange(len(rle["counts"])) % 2 == 1  # runs alternate 0, 1, 0, ... starting with zeros
    flat = values.repeat_interleave(torch.tensor(rle["counts"]))
    return flat.reshape(w, h).t()  # column-major


def test_same_arguments_give_identical_scenes_whatever_the_global_rng(fmnist_dir):
    a = make_scenes("test", 20, seed=7, root=fmnist_dir)
    torch.manual_seed(123)
    torch.rand(5)
    b = make_scenes("test", 20, seed=7, root=fmnist_dir)
    assert torch.equal(a.images, b.images)
    for name in ("boxes", "labels", "masks", "item_indices", "paste_boxes"):
        assert all(torch.equal(x, y) for x, y in zip(getattr(a, name), getattr(b, name), strict=True)), name
    c = make_scenes("test", 20, seed=8, root=fmnist_dir)
    assert not torch.equal(a.images, c.images)


def _render(ds, index, side):
    item = ds.images[index][None].float()  # (1, 1, 28, 28)
    return F.interpolate(item, size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0, 0].round()


@pytest.mark.parametrize("split", ["train", "test"])
def test_items_come_only_from_their_own_split(fmnist_dir, split):
    """Re-render every instance from its split's image: the canvas is the max over items, so it must be >= the
    item everywhere it was pasted. The other split's image at the same index fails this."""
    s = make_scenes(split, 15, seed=1, root=fmnist_dir)
    own = load_image_dataset("fashion_mnist", split, fmnist_dir)
    other = load_image_dataset("fashion_mnist", "test" if split == "train" else "train", fmnist_dir)
    compared = mismatched = 0
    for i in range(len(s)):
        for index, (x1, y1, x2, y2), label in zip(s.item_indices[i], s.paste_boxes[i].tolist(), s.labels[i]):
            assert label == own.labels[index] + 1
            canvas = s.images[i, 0, y1:y2, x1:x2].float()
            assert (canvas >= _render(own, index, y2 - y1)).all()
            if index < len(other):  # the other split's image at the same index is not in the scene
                compared += 1
                mismatched += int(not (canvas >= _render(other, index, y2 - y1)).all())
    assert compared >= 5 and mismatched == compared
    if split == "train":  # train scenes draw from all 60k items, not just the first 10k
        assert torch.cat(s.item_indices).max() >= 10_000


def test_boxes_tightly_enclose_each_mask_inside_the_canvas(scenes):
    h, w = scenes.images.shape[-2:]
    for boxes, masks in zip(scenes.boxes, scenes.masks):
        for (x1, y1, x2, y2), mask in zip(boxes.long().tolist(), masks):
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert mask.sum() == mask[y1:y2, x1:x2].sum() > 0  # encloses
            inner = mask[y1:y2, x1:x2]
            assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()  # tight


def test_masks_are_the_bright_pixels_of_the_canvas(scenes):
    """Max compositing: every mask pixel is bright in the image, and the union of masks covers every bright pixel."""
    for image, masks in zip(scenes.images[:, 0], scenes.masks):
        union = masks.any(0)
        assert (image[union] > MASK_THRESHOLD).all()
        assert not (image[~union] > MASK_THRESHOLD).any()


def test_pairwise_iou_is_at_most_max_overlap(scenes):
    for boxes in scenes.boxes:
        iou = box_iou(boxes, boxes)
        iou.fill_diagonal_(0)
        assert iou.max() <= 0.3


def test_item_counts_and_labels_are_in_range(fmnist_dir):
    s = make_scenes("test", 80, min_items=2, max_items=4, seed=2, root=fmnist_dir)
    counts = torch.tensor([len(b) for b in s.boxes])
    assert counts.min() == 2 and counts.max() == 4
    labels = torch.cat(s.labels)
    assert labels.min() >= 1 and labels.max() <= 10
    assert s.images.dtype == torch.uint8 and s.images.shape == (80, 1, 128, 128)
    assert all(m.dtype == torch.bool and m.shape == (len(b), 128, 128) for m, b in zip(s.masks, s.boxes))


def test_crowded_scenes_keep_the_overlap_limit(fmnist_dir):
    s = make_scenes("test", 10, canvas=96, min_items=6, max_items=6, max_overlap=0.0, seed=4, root=fmnist_dir)
    for boxes in s.boxes:
        assert len(boxes) == 6
        assert (box_iou(boxes, boxes).fill_diagonal_(0) == 0).all()


@pytest.mark.parametrize("kwargs", [
    {"split": "val"}, {"n": 0}, {"min_items": 0}, {"min_items": 4, "max_items": 3}, {"scale": (0.0, 1.0)},
    {"scale": (1.0, 5.0), "canvas": 64}, {"max_overlap": 1.5},
])
def test_bad_arguments_raise_value_error(kwargs):
    args = {"split": "test", "n": 1, **kwargs}
    with pytest.raises(ValueError):
        make_scenes(args.pop("split"), args.pop("n"), **args)


def test_mask_to_rle_round_trips():
    g = torch.Generator().manual_seed(0)
    for mask in (torch.rand(7, 5, generator=g) > 0.5, torch.ones(3, 4, dtype=torch.bool),
                 torch.zeros(4, 3, dtype=torch.bool)):
        rle = mask_to_rle(mask)
        assert rle["size"] == [mask.shape[0], mask.shape[1]] and sum(rle["counts"]) == mask.numel()
        assert torch.equal(_rle_decode(rle), mask)


def test_to_coco_writes_a_standard_instances_file(fmnist_dir, tmp_path):
    small = make_scenes("test", 5, seed=3, root=fmnist_dir)
    path = small.to_coco(str(tmp_path))
    assert path == str(tmp_path / "instances_test.json")
    coco = json.loads((tmp_path / "instances_test.json").read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    assert coco["categories"][0]["name"] == "T-shirt/top" and coco["categories"][9]["name"] == "Ankle boot"
    image_ids = [im["id"] for im in coco["images"]]
    assert len(set(image_ids)) == len(image_ids) == 5 and min(image_ids) >= 1
    ann_ids = [a["id"] for a in coco["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids) == sum(len(b) for b in small.boxes) and min(ann_ids) >= 1
    for im, image in zip(coco["images"], small.images):
        png = np.asarray(Image.open(tmp_path / "test" / im["file_name"]))
        assert (im["height"], im["width"]) == png.shape and np.array_equal(png, image[0].numpy())
    anns = iter(coco["annotations"])
    for i, im in enumerate(coco["images"]):
        for box, label, mask in zip(small.boxes[i].tolist(), small.labels[i].tolist(), small.masks[i]):
            a = next(anns)
            x1, y1, x2, y2 = box
            assert a["image_id"] == im["id"] and a["category_id"] == label and a["iscrowd"] == 0
            assert a["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert a["area"] == int(mask.sum())
            assert torch.equal(_rle_decode(a["segmentation"]), mask)


def test_generation_is_fast(fmnist_dir):
    make_scenes("test", 1, root=fmnist_dir)  # the split's read (~0.3 s; train ~1.5 s) is cached, not timed
    start = time.perf_counter()
    make_scenes("test", 200, root=fmnist_dir)
    assert time.perf_counter() - start < 2.0
