"""ImageFolderDataset: class discovery, deterministic stratified split, Pillow decoding, resize/crop.

Run: python -m pytest -q tests/data/test_imagefolder.py
"""

import numpy as np
import pytest
import torch
from PIL import Image

from paperzoo.data.datasets import DatasetCorruptError, DatasetNotFoundError
from paperzoo.data.imagefolder import ImageFolderDataset


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
    bad = tmp_path / "bad" / "a"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    ds = ImageFolderDataset(str(tmp_path / "bad"), 8, "all")
    with pytest.raises(DatasetCorruptError, match="broken.png"):
        ds[0]
    with pytest.raises(ValueError, match="split"):
        ImageFolderDataset(str(tmp_path / "bad"), 8, "test")
