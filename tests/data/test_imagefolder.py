"""ImageFolderDataset: class discovery, deterministic stratified split, Pillow decoding, resize/crop, and the
start-up scan (symlinked directories not followed, empty classes kept with a warning, unreadable images named
before training, a file damaged later named mid-epoch).

Run: python -m pytest -q tests/data/test_imagefolder.py
"""

import os
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from paperzoo.data.datasets import DatasetCorruptError, DatasetNotFoundError
from paperzoo.data.imagefolder import ImageFolderDataset
from paperzoo.data.streaming import StreamingLoader


def make_folder(root, per_class=10, classes=("cat", "dog", "emu")):
    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        d = root / c
        (d / "nested").mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(12, 40)), int(rng.integers(12, 40))
            arr = np.full((h, w, 3), 40 * ci, dtype=np.uint8)
            sub = d / "nested" if i == 0 else d
            Image.fromarray(arr).save(sub / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
        (d / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


def test_classes_and_items(tmp_path):
    root = make_folder(tmp_path)
    ds = ImageFolderDataset(str(root), 16, split="all")
    assert ds.classes == ["cat", "dog", "emu"] and len(ds) == 30
    x, label = ds[len(ds) - 1]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and label == 2
    assert int(x.float().mean().round()) == 80  # solid colour 40 * 2 survives resize + crop
    gray = ImageFolderDataset(str(root), 8, split="all", in_chans=1)
    assert gray[0][0].shape == (1, 8, 8) and gray.mean == (0.5,)


def test_split_is_deterministic_stratified_and_disjoint(tmp_path):
    root = make_folder(tmp_path)
    tr = ImageFolderDataset(str(root), 8, "train", val_fraction=0.2, seed=1)
    va = ImageFolderDataset(str(root), 8, "val", val_fraction=0.2, seed=1)
    assert len(tr) == 24 and len(va) == 6
    assert sorted(va.targets) == [0, 0, 1, 1, 2, 2]
    paths_tr, paths_va = {p for p, _ in tr.samples}, {p for p, _ in va.samples}
    assert not paths_tr & paths_va and len(paths_tr | paths_va) == 30
    assert [p for p, _ in ImageFolderDataset(str(root), 8, "val", val_fraction=0.2, seed=1).samples] == \
        [p for p, _ in va.samples]
    other = ImageFolderDataset(str(root), 8, "val", val_fraction=0.2, seed=2)
    assert {p for p, _ in other.samples} != paths_va


def test_center_crop_geometry(tmp_path):
    d = tmp_path / "only"
    d.mkdir()
    arr = np.zeros((64, 128, 3), dtype=np.uint8)  # wide image: left half black, right half white
    arr[:, 64:] = 255
    Image.fromarray(arr).save(d / "a.png")
    ds = ImageFolderDataset(str(tmp_path), 28, split="all", crop_pct=1.0)
    x, _ = ds[0]  # shorter side -> 28 (56 wide), centre 28 columns straddle the edge at column 14
    assert x[:, :, :12].max() == 0 and x[:, :, 16:].min() == 255


def test_random_resized_crop_is_seeded_per_epoch_and_index(tmp_path):
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "a" / "x.png")
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "a" / "y.png")
    ds = ImageFolderDataset(str(root), 16, "train", val_fraction=0.0, train_crop="random_resized")
    a0 = ds[0][0]
    assert torch.equal(a0, ds[0][0])  # same (seed, epoch, index) -> same crop
    ds.set_epoch(1)
    assert not torch.equal(a0, ds[0][0])
    val_style = ImageFolderDataset(str(root), 16, "all", train_crop="random_resized")
    assert torch.equal(val_style[0][0], val_style[0][0]) and not val_style.random_crop


def test_dataloader_and_to_image_dataset(tmp_path):
    root = make_folder(tmp_path, per_class=4)
    ds = ImageFolderDataset(str(root), 8, "all")
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.uint8 and y.dtype == torch.int64
    mem = ds.to_image_dataset()
    assert mem.images.shape == (12, 3, 8, 8) and mem.classes == ds.classes and mem.mean == ds.mean


def test_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        ImageFolderDataset(str(tmp_path / "nope"), 8)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no images"):
        ImageFolderDataset(str(tmp_path / "empty"), 8)
    with pytest.raises(ValueError, match="split"):
        ImageFolderDataset(str(tmp_path / "empty"), 8, "test")


def _no_warnings(root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return ImageFolderDataset(str(root), 8, "all", **kw)


def test_a_symlink_loop_is_not_followed_so_images_are_counted_once_with_their_label(tmp_path):
    root = make_folder(tmp_path / "data", per_class=3)
    clean = [(os.path.relpath(p, root), label) for p, label in _no_warnings(root).samples]
    (root / "cat" / "loop").symlink_to(root)  # would relist every class under "cat", forever
    (root / "dog" / "nested" / "up").symlink_to(root / "dog")
    with pytest.warns(UserWarning, match=r"not following symlinked directories \(2; .*\): cat/loop, dog/nested/up"):
        ds = ImageFolderDataset(str(root), 8, "all")
    assert [(os.path.relpath(p, root), label) for p, label in ds.samples] == clean


def test_directory_symlinks_out_of_the_tree_are_skipped_file_symlinks_are_read(tmp_path):
    root = make_folder(tmp_path / "data", per_class=2)
    outside = make_folder(tmp_path / "elsewhere", per_class=4, classes=("bird",))
    (root / "dog" / "more").symlink_to(outside / "bird")
    (root / "bird").symlink_to(outside / "bird")  # a symlinked class folder is not a class either
    (root / "emu" / "linked.png").symlink_to(outside / "bird" / "001.png")
    with pytest.warns(UserWarning, match=r"not following symlinked directories \(2; ") as rec:
        ds = ImageFolderDataset(str(root), 8, "all")
    assert len(rec) == 1 and ds.classes == ["cat", "dog", "emu"] and len(ds) == 7
    assert not any(str(outside) in os.path.realpath(p) for p, label in ds.samples if label != 2)
    all_links = tmp_path / "links"
    all_links.mkdir()
    (all_links / "bird").symlink_to(outside / "bird")
    with pytest.raises(DatasetNotFoundError, match=r"not following symlinked directories \(1\): bird"):
        ImageFolderDataset(str(all_links), 8, "all")


def test_an_empty_class_folder_is_kept_as_a_class_with_a_warning(tmp_path):
    root = make_folder(tmp_path, per_class=2)
    (tmp_path / "bee").mkdir()
    (tmp_path / "dog" / "notes2.txt").write_text("")
    with pytest.warns(UserWarning, match=r"class folders without images \(1\): bee \(kept as classes"):
        ds = ImageFolderDataset(str(root), 8, "all")
    assert ds.classes == ["bee", "cat", "dog", "emu"]  # labels follow the folder names
    assert sorted(set(ds.targets)) == [1, 2, 3] and ds[0][1] == 1


def test_unreadable_images_fail_at_construction_naming_the_first_and_the_count(tmp_path):
    root = make_folder(tmp_path, per_class=3)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "emu" / "empty.jpg").write_bytes(b"")
    png = tmp_path / "cat" / "001.png"
    raw = bytearray(png.read_bytes())
    raw[-20] ^= 0xFF  # a flipped bit in the pixel data: the header still parses, the chunk checksum fails
    png.write_bytes(bytes(raw))
    with pytest.raises(DatasetCorruptError, match=r"3 of 11 images under .* cannot be read, first .*cat.001.png"):
        ImageFolderDataset(str(root), 8, "all")
    lazy = ImageFolderDataset(str(root), 8, "all", verify=False)  # the check can be skipped ...
    with pytest.raises(DatasetCorruptError, match="broken.png"):
        lazy[[p for p, _ in lazy.samples].index(str(tmp_path / "dog" / "broken.png"))]  # ... then decoding fails


def test_an_image_damaged_after_the_scan_is_named_in_one_line_from_a_worker(tmp_path):
    root = make_folder(tmp_path, per_class=2)
    ds = ImageFolderDataset(str(root), 8, "all")
    (tmp_path / "emu" / "001.png").write_bytes(b"\x89PNG gone")
    loader = StreamingLoader(ds, 2, seed=0, transform=lambda x, y, g: (x, y), device="cpu", num_workers=1,
                             shuffle=False)
    with pytest.raises(DatasetCorruptError) as e:
        list(loader)
    assert str(e.value).startswith("cannot decode image ") and "emu/001.png" in str(e.value)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_cli_train_on_a_folder_with_a_bad_image_is_one_line_and_status_2(tmp_path, capsys):
    from paperzoo.cli import main

    make_folder(tmp_path / "data", per_class=4)
    (tmp_path / "data" / "cat" / "bad.jpg").write_bytes(b"GIF89a")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "resnet20", "args": {"width": 4}},
        "data": {"dataset": "imagefolder", "root": str(tmp_path / "data"), "image_size": 8, "batch_size": 4,
                 "val_fraction": 0.0, "num_workers": 0},
        "run": {"out_dir": str(tmp_path / "runs"), "tensorboard": False, "plots": False, "progress": "off"}}))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be read, first " in err and "bad.jpg" in err, err
