"""Segmentation data: scene masks painted in drawing order, COCO polygons / RLE, VOC palette PNGs, their one-line
errors, joint image/mask transforms and batching."""

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from paperzoo.detection.scenes import make_scenes
from paperzoo.segmentation.data import (
    IGNORE_INDEX,
    CocoSegmentation,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    ScenesSegmentation,
    VOCSegmentation,
    collate,
    paint_instances,
    resize_pair,
)
from paperzoo.viz.segmentation import voc_palette

pytest.importorskip("pycocotools")
W, H = 10, 8  # size of the synthetic COCO / VOC images


# ---------------------------------------------------------------------------------------------------- scenes
def test_scene_masks_give_each_pixel_the_class_of_the_last_item_drawn_over_it():
    ds = ScenesSegmentation("test", 12, seed=1)
    scenes = make_scenes("test", 12, seed=1)
    overlapped = 0
    for i in range(len(ds)):
        _, mask = ds[i]
        expected = torch.zeros(128, 128, dtype=torch.int64)
        for m, label in zip(scenes.masks[i], scenes.labels[i]):  # the reference: paint in drawing order
            expected[m] = label
        assert torch.equal(mask, expected)
        overlapped += int((scenes.masks[i].sum(0) > 1).sum())
    assert overlapped > 0  # the rule was exercised
    assert ds.categories[0] == "__background__" and ds.num_classes == 11


def test_scene_images_are_the_detection_scenes(tmp_path):
    from paperzoo.detection.data import ScenesDetection

    x, _ = ScenesSegmentation("train", 3, seed=0)[2]
    y, _ = ScenesDetection("train", 3, seed=0)[2]
    assert torch.equal(x, y) and x.shape == (3, 128, 128)


# ---------------------------------------------------------------------------------------------------- COCO
def test_coco_rle_of_the_scenes_decodes_to_their_masks_with_overlaps_ignored(tmp_path):
    scenes = make_scenes("test", 6, seed=1)
    scenes.to_coco(str(tmp_path))  # uncompressed RLE
    coco = CocoSegmentation(str(tmp_path / "test"), str(tmp_path / "instances_test.json"))
    ours = ScenesSegmentation("test", 6, seed=1)
    for i in range(6):
        (x, a), (y, b) = coco[i], ours[i]
        torch.testing.assert_close(x, y, atol=1 / 255, rtol=0)  # PNG round trip of the grey canvas
        overlap = scenes.masks[i].sum(0) > 1
        assert torch.equal(a[~overlap], b[~overlap]) and bool((a[overlap] == IGNORE_INDEX).all())


def _coco(tmp_path, annotations, n_images=1):
    images = [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in range(1, n_images + 1)]
    os.makedirs(tmp_path / "images", exist_ok=True)
    for img in images:
        Image.new("RGB", (W, H), (10, 20, 30)).save(tmp_path / "images" / img["file_name"])
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return str(tmp_path / "images"), str(tmp_path / "ann.json")


def _ann(id, segm, cat=3, crowd=0, bbox=(0, 0, 4, 4)):
    return {"id": id, "image_id": 1, "category_id": cat, "bbox": list(bbox), "iscrowd": crowd, "segmentation": segm}


def test_coco_polygon_and_compressed_rle_decode_to_hand_worked_pixels(tmp_path):
    from pycocotools import mask as mask_utils

    block = np.zeros((H, W), dtype=np.uint8)
    block[5:7, 6:9] = 1  # rows 5-6, columns 6-8
    rle = mask_utils.encode(np.asfortranarray(block))
    rle["counts"] = rle["counts"].decode()  # as it is stored in JSON
    square = [[1, 1, 4, 1, 4, 4, 1, 4]]  # pixel edges (1, 1)-(4, 4): pixels 1..3 in x and y
    image_dir, ann = _coco(tmp_path, [_ann(1, square, cat=3), _ann(2, rle, cat=7, bbox=(6, 5, 3, 2))])
    ds = CocoSegmentation(image_dir, ann)
    _, mask = ds[0]
    expected = torch.zeros(H, W, dtype=torch.int64)
    expected[1:4, 1:4] = 1  # "cat", the first category: label 1
    expected[5:7, 6:9] = 2  # "dog": label 2
    assert torch.equal(mask, expected) and ds.categories == ["__background__", "cat", "dog"]


def test_coco_crowds_and_pixels_of_two_instances_are_ignored(tmp_path):
    a, b, crowd = [[0, 0, 4, 0, 4, 4, 0, 4]], [[2, 2, 6, 2, 6, 6, 2, 6]], [[7, 0, 10, 0, 10, 3, 7, 3]]
    image_dir, ann = _coco(tmp_path, [_ann(1, a), _ann(2, b, cat=7), _ann(3, crowd, crowd=1, bbox=(7, 0, 3, 3))])
    _, mask = CocoSegmentation(image_dir, ann)[0]
    assert bool((mask[2:4, 2:4] == IGNORE_INDEX).all()) and int(mask[0, 0]) == 1 and int(mask[5, 5]) == 2
    assert bool((mask[0:3, 7:10] == IGNORE_INDEX).all()) and int(mask[7, 0]) == 0


def test_paint_instances_without_instances_is_all_background():
    assert torch.equal(paint_instances(torch.zeros(0, 3, 4, dtype=torch.bool), torch.zeros(0, dtype=torch.int64)),
                       torch.zeros(3, 4, dtype=torch.int64))


@pytest.mark.parametrize("segm, message", [
    (None, "annotation id 1 .*segmentation must be polygons or RLE"),
    ([[1, 1, 2, 2]], "annotation id 1 .*polygons must be lists of >= 3"),
    ({"size": [4, 4], "counts": [0, 16]}, r"annotation id 1 .*RLE size \[4, 4\] differs .*\[8, 10\]"),
])
def test_bad_coco_segmentations_are_refused_in_one_line_or_skipped(tmp_path, segm, message):
    image_dir, ann = _coco(tmp_path, [_ann(1, segm), _ann(2, [[0, 0, 3, 0, 3, 3]])])
    with pytest.raises(ValueError, match=message) as e:
        CocoSegmentation(image_dir, ann)
    assert "\n" not in str(e.value)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = CocoSegmentation(image_dir, ann, skip_invalid=True)
    assert "skipped 1" in str(w[0].message) and int(ds[0][1].max()) == 1


def test_a_coco_image_of_another_size_than_its_annotation_is_an_error(tmp_path):
    image_dir, ann = _coco(tmp_path, [_ann(1, [[0, 0, 3, 0, 3, 3]])])
    Image.new("RGB", (W + 1, H), 0).save(os.path.join(image_dir, "1.png"))
    with pytest.raises(ValueError, match="is 11x8, the annotations say 10x8"):
        CocoSegmentation(image_dir, ann)[0]


# ---------------------------------------------------------------------------------------------------- VOC
def _save_p(array, path):
    """A palette PNG as VOC's (without a palette PIL would renumber the indices)."""
    im = Image.fromarray(array, mode="P")
    im.putpalette(voc_palette().flatten().tolist())
    im.save(path)


def _voc(tmp_path, names=("a", "b"), mask_size=(W, H), mode="P"):
    for d in ("ImageSets/Segmentation", "JPEGImages", "SegmentationClass"):
        os.makedirs(tmp_path / d, exist_ok=True)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("".join(f"{n}\n" for n in names))
    for n in names:
        Image.new("RGB", (W, H), (200, 100, 50)).save(tmp_path / "JPEGImages" / f"{n}.jpg")
        m = np.zeros(mask_size[::-1], dtype=np.uint8)
        m[2:5, 3:6] = 15  # person
        m[2:5, 6] = 255  # its border
        if mode == "P":
            _save_p(m, tmp_path / "SegmentationClass" / f"{n}.png")
        else:
            Image.fromarray(m).convert(mode).save(tmp_path / "SegmentationClass" / f"{n}.png")
    return str(tmp_path)


def test_voc_palette_masks_keep_class_indices_and_the_border_value(tmp_path):
    ds = VOCSegmentation(_voc(tmp_path), "val")
    image, mask = ds[1]
    assert image.shape == (3, H, W) and mask.dtype == torch.int64 and ds.num_classes == 21
    assert ds.categories[15] == "person" and int(mask[3, 4]) == 15 and int(mask[3, 6]) == 255
    assert int((mask == 15).sum()) == 9 and int((mask == 0).sum()) == W * H - 12


@pytest.mark.parametrize("problem, error, message", [
    ("size", ValueError, r"b.png: mask is 9x8 but its image is 10x8"),
    ("rgb", ValueError, r"a.png: a RGB image; class masks are palette"),
    ("missing", FileNotFoundError, r"b.png not found"),
    ("corrupt", ValueError, r"a.png: not a readable image"),
    ("value", ValueError, r"a.png: value 40 is neither a class \(0..20\) nor 255"),
])
def test_bad_voc_files_are_one_line_errors(tmp_path, problem, error, message):
    root = _voc(tmp_path, mode="RGB" if problem == "rgb" else "P")
    masks = tmp_path / "SegmentationClass"
    if problem == "size":
        _save_p(np.zeros((H, W - 1), dtype=np.uint8), masks / "b.png")
    elif problem == "missing":
        os.remove(masks / "b.png")
    elif problem == "corrupt":
        (masks / "a.png").write_bytes(b"not a png")
    elif problem == "value":
        _save_p(np.full((H, W), 40, dtype=np.uint8), masks / "a.png")
    with pytest.raises(error, match=message) as e:
        ds = VOCSegmentation(root, "val")
        ds[0], ds[1]
    assert "\n" not in str(e.value)


def test_a_missing_voc_image_set_names_the_expected_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageSets/Segmentation/train.txt"):
        VOCSegmentation(str(tmp_path), "train")


# ---------------------------------------------------------------------------------------------------- transforms
def _pair(h=6, w=8):
    image = torch.rand(3, h, w)
    mask = torch.randint(0, 5, (h, w))
    return image, mask


def test_flip_moves_the_mask_with_the_image():
    image, mask = _pair()
    x, m = RandomHorizontalFlip(1.0)(image, mask)
    assert torch.equal(x, image.flip(-1)) and torch.equal(m, mask.flip(-1))
    assert RandomHorizontalFlip(0.0)(image, mask)[1] is mask


def test_resize_keeps_labels_by_nearest_pixel_centre():
    image, mask = _pair()
    x, m = resize_pair(image, mask, (12, 16))  # x2: each label pixel becomes a 2x2 block
    assert x.shape == (3, 12, 16)
    assert torch.equal(m, mask.repeat_interleave(2, 0).repeat_interleave(2, 1))
    _, small = Resize(3)(image, mask)  # short side 6 -> 3: output centre i + 0.5 falls in input pixel 2i + 1
    assert small.shape == (3, 4) and torch.equal(small, mask[1::2, 1::2])


def test_random_crop_pads_with_the_ignore_index_and_cuts_image_and_mask_alike():
    image, mask = _pair()
    g = torch.Generator().manual_seed(0)
    x, m = RandomCrop(10)(image, mask, g)
    assert x.shape == (3, 10, 10) and m.shape == (10, 10)
    assert bool((m[6:] == IGNORE_INDEX).all()) and bool((x[:, 6:] == 0).all())
    assert torch.equal(m[:6, :8], mask)  # 6x8 in a 10x10 window: offset 0
    x, m = RandomCrop(4)(image, mask, g)
    hits = [(i, j) for i in range(3) for j in range(5) if torch.equal(mask[i:i + 4, j:j + 4], m)]
    assert any(torch.equal(image[:, i:i + 4, j:j + 4], x) for i, j in hits)


def test_foreground_crops_are_centred_on_a_foreground_pixel_inside_the_image():
    mask = torch.zeros(40, 50, dtype=torch.int64)
    mask[2, 45], mask[30, 10], mask[0, 0] = 3, 7, IGNORE_INDEX  # two foreground pixels, one ignored
    image = torch.arange(40 * 50, dtype=torch.float32).view(1, 40, 50).expand(3, 40, 50)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        x, m = RandomCrop(16, foreground=1.0)(image, mask, g)
        y0, x0 = divmod(int(x[0, 0, 0]), 50)  # the window's corner, read from the image's pixel numbers
        assert torch.equal(m, mask[y0:y0 + 16, x0:x0 + 16])
        seen.add((y0, x0))
    # (2, 45): the window is pushed inside the image (top, right); (30, 10): centred, 8 pixels before it
    assert seen == {(0, 34), (22, 2)}
    x, m = RandomCrop(16, foreground=1.0)(image, torch.zeros(40, 50, dtype=torch.int64), g)  # no foreground
    assert m.shape == (16, 16)


def test_foreground_oversampling_raises_the_items_share_of_cropped_scene_pixels():
    scenes = ScenesSegmentation("test", 16, seed=1)
    share = {}
    for p in (0.0, 1.0):
        g, crop = torch.Generator().manual_seed(0), RandomCrop(48, foreground=p)
        masks = [crop(*scenes[i], g)[1] for i in range(16) for _ in range(4)]
        share[p] = float(torch.stack(masks).ne(0).float().mean())
    assert share[1.0] > 1.5 * share[0.0]
    with pytest.raises(ValueError, match="foreground"):
        RandomCrop(8, foreground=1.5)


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    tf = Compose([RandomScale(0.5, 1.5), RandomCrop(64), RandomHorizontalFlip(0.5)])
    a = ScenesSegmentation("test", 4, seed=1, transform=tf, transform_seed=5)
    b = ScenesSegmentation("test", 4, seed=1, transform=tf, transform_seed=5)
    assert all(torch.equal(a[i][1], b[i][1]) and torch.equal(a[i][0], b[i][0]) for i in range(4))
    b.set_epoch(1)
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(4))


def test_collate_stacks_and_pads_masks_with_the_ignore_index():
    (x1, m1), (x2, m2) = _pair(6, 8), _pair(5, 9)
    images, masks = collate([(x1, m1), (x2, m2)])
    assert images.shape == (2, 3, 6, 9) and masks.shape == (2, 6, 9) and masks.dtype == torch.int64
    assert torch.equal(masks[0, :, :8], m1) and bool((masks[0, :, 8] == IGNORE_INDEX).all())
    assert torch.equal(masks[1, :5], m2) and bool((masks[1, 5] == IGNORE_INDEX).all())
    assert torch.equal(images[1, :, :5], x2) and bool((images[1, :, 5] == 0).all())
