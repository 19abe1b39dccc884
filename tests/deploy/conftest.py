"""A tiny trained classifier run for the export and quantization tests (synthetic data, ResNet-18 small stem)."""

import pytest

from paperzoo.train.api import train


def train_tiny(out, *, width: int, image_size: int, images: int, batch_size: int, epochs: int):
    """The run directory of a ResNet-18 (``width``) trained on ``images`` synthetic ``image_size`` images."""
    result = train({
        "model": {"name": "resnet18", "args": {"small_input": True, "width": width}},
        "data": {"dataset": "synthetic", "image_size": image_size, "synthetic_size": images,
                 "batch_size": batch_size},
        "train": {"epochs": epochs, "threads": 1},
        "run": {"out_dir": str(out), "name": "tiny", "progress": "off", "tensorboard": False, "plots": False}})
    assert result.status == "done"
    return result.run_dir


@pytest.fixture(scope="module")
def tiny_run():
    return train_tiny
