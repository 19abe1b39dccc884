"""The epoch/batch cursor shared by the four loaders: each resumes mid-epoch to exactly the batches it would have
produced, keeps a restored position across ``set_epoch(same epoch)``, replays an epoch when iterated again, and
refuses a state of another seed or out of range.

Run: python -m pytest -q tests/data/test_cursor.py
"""

import pytest
import torch
from torch.utils.data import TensorDataset

from paperzoo.data.cursor import EpochCursor, ResumableLoader
from paperzoo.data.loader import TensorLoader
from paperzoo.data.streaming import StreamingLoader
from paperzoo.data.transforms import build_train_transform
from paperzoo.text.data import LengthBatchLoader, LMLoader, ParallelDataset, TranslationBatch
from paperzoo.text.tokenizers import CharTokenizer

N = 40  # samples (or windows) of every toy dataset; batch size 4


def _images():
    images = torch.arange(N, dtype=torch.uint8).view(N, 1, 1, 1).expand(N, 1, 2, 2).contiguous()
    return images, torch.arange(N) % 3


def _tensor_loader(seed):
    # with random augmentation, so that resuming must also replay each batch's crops, flips and mixing exactly
    tf = build_train_transform({"crop_padding": 1, "hflip": 0.5, "random_erasing": 0.5, "mixup_alpha": 0.3,
                                "cutmix_alpha": 1.0}, (0.5,), (0.3,), 3)
    return TensorLoader(*_images(), 4, seed=seed, transform=tf, drop_last=True)


def _streaming_loader(seed):
    return StreamingLoader(TensorDataset(*_images()), 4, seed=seed, transform=lambda x, y, g: (x, y),
                           device="cpu", num_workers=0)


def _length_loader(seed):
    words = [("a" * (1 + i % 7), "b" * (1 + i % 5)) for i in range(N)]
    tok = CharTokenizer.train(["ab"])
    return LengthBatchLoader(ParallelDataset(words, tok, tok), 4, seed=seed, pool=2)


def _lm_loader(seed):
    return LMLoader(torch.arange(8 * N + 10), 8, 4, seed=seed)


LOADERS = {"TensorLoader": _tensor_loader, "StreamingLoader": _streaming_loader,
           "LengthBatchLoader": _length_loader, "LMLoader": _lm_loader}


def _key(batch):
    """What identifies a batch's samples, whatever the loader yields."""
    if isinstance(batch, TranslationBatch):
        return batch.index
    x, y = batch
    return torch.cat([x.flatten().float(), y.flatten().float()])


def _keys(batches):
    return [_key(b) for b in batches]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.fixture(params=list(LOADERS))
def make(request):
    return LOADERS[request.param]


def test_every_loader_keeps_its_position_in_the_one_cursor(make):
    loader = make(5)
    assert isinstance(loader, ResumableLoader) and isinstance(loader.cursor, EpochCursor)
    assert len(loader) >= 5


@pytest.mark.parametrize("stop_at", [0, 1, 3])
def test_resume_mid_epoch_gives_exactly_the_remaining_batches(make, stop_at):
    full = make(5)
    full.set_epoch(2)
    ref = _keys(full)
    run = make(5)
    run.set_epoch(2)
    it = iter(run)
    for _ in range(stop_at):
        next(it)
    state = run.state_dict()
    assert state == {"epoch": 2, "batch": stop_at, "seed": 5}
    resumed = make(5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the trainer calls set_epoch(saved epoch) again: the position must survive
    assert _same(_keys(resumed), ref[stop_at:])
    assert resumed.state_dict()["batch"] == len(ref)
    assert _same(_keys(resumed), ref)  # the restored position is used once: a new pass replays the epoch
    resumed.set_epoch(3)
    assert resumed.state_dict() == {"epoch": 3, "batch": 0, "seed": 5}
    assert not _same(_keys(resumed), ref)  # another epoch, another order


def test_states_of_another_seed_or_out_of_range_are_refused_old_ones_load(make):
    loader = make(1)
    with pytest.raises(ValueError, match="seed 2"):
        loader.load_state_dict({"epoch": 0, "batch": 1, "seed": 2})
    with pytest.raises(ValueError, match="outside"):
        loader.load_state_dict({"epoch": 0, "batch": len(loader) + 1, "seed": 1})
    loader.load_state_dict({"epoch": 4, "batch": 2})  # saved before states carried the seed
    assert loader.epoch == 4 and len(_keys(loader)) == len(loader) - 2


def test_epoch_cursor_counts_a_batch_before_handing_it_out():
    c = EpochCursor(seed=3)
    it = c.positions(3)
    assert c.batch == 0 and next(it) == 0 and c.batch == 1  # the consumer owns batch 0 now
    c.load_state_dict({"epoch": 0, "batch": 2, "seed": 3}, 3)
    assert c.next_start == 2 and list(c.positions(3)) == [2] and c.next_start == 0
