"""Detection data: COCO / VOC / scenes datasets, their errors on bad annotations, box-moving transforms, batching."""

import json
import os
import warnings

import pytest
import torch
from PIL import Image

from paperzoo.detection.augment import Compose, RandomHorizontalFlip, RandomResize, hflip_boxes
from paperzoo.detection.data import (
    BACKGROUND,
    VOC_CLASSES,
    CocoDetection,
    ScenesDetection,
    VOCDetection,
    collate,
    pad_images,
)

W, H = 100, 80  # size of the synthetic images


def _save_image(path, size=(W, H)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (30, 60, 90)).save(path)


def _coco_files(tmp_path, annotations=None, categories=None, n_images=2):
    """images/1.png, images/2.png (100x80) and ann.json; image 2 has no annotation by default."""
    images = [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in range(1, n_images + 1)]
    for img in images:
        _save_image(str(tmp_path / "images" / img["file_name"]))
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 90, "bbox": [50, 5, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 80], "area": 5000, "iscrowd": 1},
        ]
    if categories is None:
        categories = [{"id": c, "name": n} for c, n in ((1, "person"), (3, "car"), (90, "toothbrush"))]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(tmp_path / "images"), str(path)


# ------------------------------------------------------------------------------------------------ COCO


def test_scenes_round_trip_through_coco_json(tmp_path, fmnist_dir):
    scenes = ScenesDetection("test", 6, seed=2, root=fmnist_dir)
    ann_file = scenes.scenes.to_coco(str(tmp_path))
    coco = CocoDetection(str(tmp_path / "test"), ann_file)
    assert len(coco) == len(scenes) == 6
    assert coco.categories == scenes.categories and coco.cat_ids == scenes.cat_ids == list(range(1, 11))
    for i in range(len(scenes)):
        (image, target), (image2, target2) = coco[i], scenes[i]
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32
        assert torch.equal(image, image2)
        assert torch.equal(target["boxes"], scenes.scenes.boxes[i]) and target["boxes"].dtype == torch.float32
        assert torch.equal(target["labels"], scenes.scenes.labels[i]) and target["labels"].dtype == torch.int64
        assert target["image_id"] == target2["image_id"] == i + 1
    file_gt, memory_gt = coco.coco_dict()["annotations"], scenes.coco_dict()["annotations"]
    assert [(a["image_id"], a["bbox"], a["area"]) for a in file_gt] == \
        [(a["image_id"], a["bbox"], a["area"]) for a in memory_gt]


def test_coco_labels_contiguous_or_raw_category_ids(tmp_path):
    image_dir, ann_file = _coco_files(tmp_path)
    ds = CocoDetection(image_dir, ann_file)
    assert ds.categories == [BACKGROUND, "person", "car", "toothbrush"] and ds.cat_ids == [1, 3, 90]
    assert ds.label_to_cat == {1: 1, 2: 3, 3: 90}
    image, target = ds[0]
    assert image.shape == (3, H, W) and float(image[2, 0, 0]) == pytest.approx(90 / 255)
    assert target["boxes"].tolist() == [[10, 20, 40, 60], [50, 5, 70, 15]]  # xywh -> xyxy; the crowd is left out
    assert target["labels"].tolist() == [2, 3]
    raw = CocoDetection(image_dir, ann_file, labels="category_id")
    assert raw.num_classes == 91 and raw.categories[3] == "car" and raw.categories[2] == "N/A"
    assert raw[0][1]["labels"].tolist() == [3, 90] and raw.label_to_cat[90] == 90


def test_image_without_annotations_has_an_empty_target_and_crowds_stay_in_the_ground_truth(tmp_path):
    ds = CocoDetection(*_coco_files(tmp_path))
    _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64 and target["image_id"] == 2
    gt = ds.coco_gt()
    assert sorted(gt.getImgIds()) == [1, 2]
    assert [a["iscrowd"] for a in gt.loadAnns(gt.getAnnIds(imgIds=[1]))] == [0, 0, 1]


def test_box_overrunning_the_edge_by_less_than_a_pixel_is_clipped(tmp_path):
    ann = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [90, 70, 10.5, 10.4]}]  # no area / iscrowd given
    ds = CocoDetection(*_coco_files(tmp_path, ann))
    assert ds[0][1]["boxes"].tolist() == [[90, 70, 100, 80]]
    gt_ann = ds.coco_dict()["annotations"][0]
    assert gt_ann["iscrowd"] == 0 and gt_ann["area"] == pytest.approx(10.5 * 10.4)


def _bad(field, value):
    ann = {"id": 7, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0}
    return [{**ann, field: value}]


@pytest.mark.parametrize(("annotations", "message"), [
    (_bad("bbox", [80, 20, 30, 40]), r"annotation id 7 \(image id 1, 1.png\): box \[80, 20, 30, 40\] \(xywh\) "
                                     r"lies outside the 100x80 image"),
    (_bad("bbox", [-5, 20, 30, 40]), "annotation id 7 .* lies outside the 100x80 image"),
    (_bad("bbox", [10, 20, 0, 40]), r"annotation id 7 .*: box \[10, 20, 0, 40\] \(xywh\) has zero or negative size"),
    (_bad("bbox", [10, 20, 30, -4]), "annotation id 7 .* has zero or negative size"),
    (_bad("bbox", [10, 20, 30]), r"annotation id 7 .*: bbox must be 4 finite numbers"),
    (_bad("category_id", 42), "annotation id 7 .*: unknown category id 42"),
    (_bad("image_id", 99), "annotation id 7: unknown image id 99"),
])
def test_bad_coco_annotation_names_its_id_and_file(tmp_path, annotations, message):
    image_dir, ann_file = _coco_files(tmp_path, annotations)
    with pytest.raises(ValueError, match=message) as err:
        CocoDetection(image_dir, ann_file)
    assert str(err.value).startswith(f"{ann_file}: ") and "\n" not in str(err.value)


def test_missing_image_file_and_malformed_json_name_the_file(tmp_path):
    image_dir, ann_file = _coco_files(tmp_path)
    os.remove(os.path.join(image_dir, "2.png"))
    with pytest.raises(FileNotFoundError, match=f"{ann_file}: image id 2: file .*2.png not found"):
        CocoDetection(image_dir, ann_file)
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"images": [')
    with pytest.raises(ValueError, match=f"{bad_json}: malformed JSON: .* line 1"):
        CocoDetection(image_dir, str(bad_json))
    bad_json.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="not a COCO instances file"):
        CocoDetection(image_dir, str(bad_json))


def test_skip_invalid_drops_bad_annotations_and_missing_images_with_one_warning(tmp_path):
    good = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40]}
    anns = [good, *_bad("category_id", 42), {**good, "id": 8, "bbox": [0, 0, 0, 1]}, {**good, "id": 9, "image_id": 3}]
    image_dir, ann_file = _coco_files(tmp_path, anns, n_images=3)
    os.remove(os.path.join(image_dir, "3.png"))
    with pytest.raises(FileNotFoundError):  # the default refuses
        CocoDetection(image_dir, ann_file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(image_dir, ann_file, skip_invalid=True)
    assert len(caught) == 1 and "skipped 3 invalid annotation(s) or image(s)" in str(caught[0].message)
    assert len(ds) == 2 and ds[0][1]["boxes"].tolist() == [[10, 20, 40, 60]]
    assert [a["id"] for a in ds.coco_dict()["annotations"]] == [1]  # the missing image's annotation 9 left too


# ------------------------------------------------------------------------------------------------ VOC


def _voc_object(name, box, difficult=0):
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def _voc_root(tmp_path, objects_per_image, image_set="val"):
    """A VOCdevkit-style folder with one 100x80 JPEG and XML per entry of ``objects_per_image``."""
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    names = [f"2007_{i:06d}" for i in range(len(objects_per_image))]
    for name, objects in zip(names, objects_per_image):
        _save_image(str(root / "JPEGImages" / f"{name}.jpg"))
        xml = (f"<annotation><filename>{name}.jpg</filename><size><width>{W}</width><height>{H}</height>"
               f"<depth>3</depth></size>{''.join(objects)}</annotation>")
        (root / "Annotations" / f"{name}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(names) + "\n")
    return str(root), names


def test_voc_boxes_convert_from_one_based_pixels_and_difficult_is_ignored(tmp_path):
    root, names = _voc_root(tmp_path, [
        [_voc_object("dog", (11, 21, 40, 60)), _voc_object("cat", (1, 1, 100, 80), difficult=1)],
        [],
        [_voc_object("tvmonitor", (5, 5, 5, 5))],  # one pixel: xmin == xmax
    ])
    ds = VOCDetection(root, "val")
    assert len(ds) == 3 and ds.image_names == names and ds.categories == [BACKGROUND, *VOC_CLASSES]
    image, target = ds[0]
    assert image.shape == (3, H, W)
    assert target["boxes"].tolist() == [[10, 20, 40, 60]]  # (xmin - 1, ymin - 1, xmax, ymax); difficult left out
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1] and target["image_id"] == 1
    assert ds[1][1]["boxes"].shape == (0, 4)
    assert ds[2][1]["boxes"].tolist() == [[4, 4, 5, 5]]
    gt = ds.coco_gt()
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[1]))
    assert [(a["bbox"], a["area"], a["iscrowd"]) for a in anns] == [([10, 20, 30, 40], 1200, 0),
                                                                     ([0, 0, 100, 80], 8000, 1)]
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == list(VOC_CLASSES)


@pytest.mark.parametrize(("obj", "message"), [
    (_voc_object("unicorn", (1, 1, 5, 5)), r"<object> #2 \('unicorn'\): unknown class"),
    (_voc_object("dog", (0, 1, 5, 5)), r"<object> #2 \('dog'\): box \[0, 1, 5, 5\] .* lies outside the 100x80"),
    (_voc_object("dog", (1, 1, 101, 5)), r"<object> #2 \('dog'\): box .* lies outside the 100x80 image"),
    (_voc_object("dog", (9, 1, 8, 5)), r"<object> #2 \('dog'\): box \[9, 1, 8, 5\] .* zero or negative size"),
    ("<object><name>dog</name><bndbox><xmin>1</xmin></bndbox></object>", "#2 .*needs numeric xmin"),
])
def test_bad_voc_object_names_the_object_and_the_xml_file(tmp_path, obj, message):
    root, names = _voc_root(tmp_path, [[_voc_object("cat", (1, 1, 5, 5)), obj]])
    with pytest.raises(ValueError, match=message) as err:
        VOCDetection(root)
    assert str(err.value).startswith(os.path.join(root, "Annotations", f"{names[0]}.xml: "))
    with pytest.warns(UserWarning, match="skipped 1 invalid"):
        assert VOCDetection(root, skip_invalid=True)[0][1]["labels"].tolist() == [VOC_CLASSES.index("cat") + 1]


def test_voc_missing_files_and_malformed_xml_name_the_file(tmp_path):
    root, names = _voc_root(tmp_path, [[_voc_object("cat", (1, 1, 5, 5))], []])
    with pytest.raises(FileNotFoundError, match="ImageSets/Main/train.txt not found"):
        VOCDetection(root, "train")
    os.remove(os.path.join(root, "JPEGImages", f"{names[1]}.jpg"))
    with pytest.raises(FileNotFoundError, match=f"{names[1]}.xml: image file .*{names[1]}.jpg not found"):
        VOCDetection(root)
    xml = os.path.join(root, "Annotations", f"{names[0]}.xml")
    with open(xml, "w") as f:
        f.write("<annotation><object>")
    with pytest.raises(ValueError, match=f"{xml}: malformed XML"):
        VOCDetection(root)
    with pytest.warns(UserWarning, match="skipped 2 invalid"):
        assert len(VOCDetection(root, skip_invalid=True)) == 0


# ------------------------------------------------------------------------------------------------ transforms


def _box_image(box, height, width):
    """A (3, H, W) image and a (1, H, W) mask that are 1 exactly on the pixels of the integer xyxy ``box``."""
    x1, y1, x2, y2 = box
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[0, y1:y2, x1:x2] = True
    return mask.float().expand(3, -1, -1).clone(), mask


def _tight_box(mask):
    ys, xs = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    return [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]


def test_flip_moves_boxes_by_hand_computed_values_and_keeps_pixels_aligned():
    assert hflip_boxes(torch.tensor([[1.0, 1.0, 4.0, 3.0]]), 10).tolist() == [[6, 1, 9, 3]]  # x' = 10 - x, swapped
    image, mask = _box_image((1, 1, 4, 3), 4, 10)
    target = {"boxes": torch.tensor([[1.0, 1.0, 4.0, 3.0]]), "labels": torch.tensor([2]), "masks": mask}
    out, t = RandomHorizontalFlip(p=1.0)(image, target)
    assert t["boxes"].tolist() == [[6, 1, 9, 3]] and t["labels"].tolist() == [2]
    assert _tight_box(out[0] > 0) == _tight_box(t["masks"][0]) == [6, 1, 9, 3]
    assert target["boxes"].tolist() == [[1, 1, 4, 3]]  # the input target is not modified
    same, t0 = RandomHorizontalFlip(p=0.0)(image, target)
    assert same is image and t0 is target


def test_resize_scales_boxes_by_the_exact_factors_and_masks_stay_aligned():
    image, mask = _box_image((2, 4, 6, 10), 10, 20)
    target = {"boxes": torch.tensor([[2.0, 4.0, 6.0, 10.0]]), "labels": torch.tensor([1]), "masks": mask}
    out, t = RandomResize([20])(image, target)  # short side 10 -> 20: factor 2
    assert out.shape == (3, 20, 40) and t["masks"].shape == (1, 20, 40)
    assert t["boxes"].tolist() == [[4, 8, 12, 20]]
    assert _tight_box(t["masks"][0]) == [4, 8, 12, 20] and int(t["masks"].sum()) == 8 * 12
    # bilinear (half-pixel centres) blurs the edge to 0.75 inside, 0.25 outside: thresholded, the box's pixels
    assert torch.equal(out[0] > 0.5, t["masks"][0])
    capped, t = RandomResize([20], max_size=30)(image, target)  # long side 20 * 1.5 = 30 caps the factor
    assert capped.shape == (3, 15, 30) and t["boxes"].tolist() == [[3, 6, 9, 15]]
    odd, t = RandomResize([7])(image, target)  # 10x20 -> 7x14: factors 14/20 and 7/10
    assert odd.shape == (3, 7, 14) and torch.allclose(t["boxes"], torch.tensor([[1.4, 2.8, 4.2, 7.0]]))


def test_transforms_accept_images_without_boxes():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 10, 20, dtype=torch.bool)}
    image, t = Compose([RandomHorizontalFlip(1.0), RandomResize([5])])(torch.rand(3, 10, 20), empty)
    assert image.shape == (3, 5, 10) and t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 5, 10)


def test_augmentation_is_a_function_of_seed_epoch_and_index(fmnist_dir):
    aug = Compose([RandomHorizontalFlip(0.5), RandomResize([96, 128, 160])])
    ds = ScenesDetection("test", 16, seed=1, root=fmnist_dir, transform=aug, transform_seed=5)
    first = [ds[i] for i in range(len(ds))]
    torch.manual_seed(123)  # the global RNG plays no part
    again = [ds[i] for i in reversed(range(len(ds)))][::-1]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) for a, b in zip(first, again))
    assert len({tuple(im.shape) for im, _ in first}) > 1  # the sizes do vary
    ds.set_epoch(1)
    other = [ds[i] for i in range(len(ds))]
    assert any(not torch.equal(a[1]["boxes"], b[1]["boxes"]) for a, b in zip(first, other))
    ds.set_epoch(0)
    assert torch.equal(ds.get(3, ds.generator(3))[1]["boxes"], first[3][1]["boxes"])
    plain = ScenesDetection("test", 16, seed=1, root=fmnist_dir)[3]  # no transform: the scene as made
    assert torch.equal(plain[1]["boxes"], ds.scenes.boxes[3]) and plain[1]["masks"].shape == (len(plain[1]["boxes"]),
                                                                                               128, 128)


# ------------------------------------------------------------------------------------------------ batching


def test_collate_keeps_lists_and_pad_images_pads_bottom_right():
    a, b = torch.rand(3, 5, 7), torch.rand(3, 9, 4)
    images, targets = collate([(a, {"image_id": 1}), (b, {"image_id": 2})])
    assert images[0] is a and images[1] is b and [t["image_id"] for t in targets] == [1, 2]
    batch, sizes = pad_images(images, size_divisible=4)
    assert batch.shape == (2, 3, 12, 8) and sizes == [(5, 7), (9, 4)]
    assert torch.equal(batch[0, :, :5, :7], a) and torch.equal(batch[1, :, :9, :4], b)
    assert batch[0, :, 5:].abs().sum() == 0 and batch[0, :, :, 7:].abs().sum() == 0
