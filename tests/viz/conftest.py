import numpy as np
import pytest
from PIL import Image


def check_png(path, min_size=(300, 200)):
    """A valid PNG, at least ``min_size`` pixels (w, h), and not blank (many distinct colours)."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= min_size[0] and h >= min_size[1], im.size
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 5, "image looks blank"
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20, "too few colours for a real plot"
    return w, h


@pytest.fixture
def png_ok():
    return check_png
