"""StreamingLoader (paperzoo.data.streaming): DDP sharding of the seeded order, evaluation covering every item
once, seeded batch augmentation that a resumed run reproduces, the dataset's epoch set before the workers start.
(Resume itself is tested for every loader in test_cursor.py; a worker's decode error in test_imagefolder.py.)

Run: python -m pytest -q tests/data/test_streaming.py
"""

import torch
from torch.utils.data import TensorDataset

from paperzoo.data.streaming import StreamingLoader


def _data(n=30):
    return TensorDataset(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), torch.arange(n))


def _ids(x):
    return (x.flatten() * 255).round().long()


def _identity(x, y, g):
    return x, y


def test_ranks_split_each_global_batch_and_drop_the_tail():
    single = StreamingLoader(_data(), 8, seed=1, transform=_identity, device="cpu", num_workers=0)
    ranks = [StreamingLoader(_data(), 4, seed=1, transform=_identity, device="cpu", num_workers=0, rank=r,
                             world_size=2) for r in range(2)]
    assert len(single) == len(ranks[0]) == 3  # 30 // 8, the tail of 6 dropped
    for (x, _), (a, _), (b, _) in zip(single, *ranks):
        assert sorted(_ids(x).tolist()) == sorted(torch.cat([_ids(a), _ids(b)]).tolist())
        assert not set(_ids(a).tolist()) & set(_ids(b).tolist())


def test_evaluation_reads_every_item_once_in_order_across_ranks():
    ranks = [StreamingLoader(_data(), 4, seed=0, transform=_identity, device="cpu", num_workers=0, shuffle=False,
                             rank=r, world_size=3) for r in range(3)]
    seen = [torch.cat([_ids(x) for x, _ in loader]) for loader in ranks]
    assert [s.tolist() for s in seen] == [list(range(r, 30, 3)) for r in range(3)]


def test_augmentation_is_seeded_per_batch_so_a_resume_reproduces_it():
    def noisy(x, y, g):
        return x + torch.rand(x.shape, generator=g), y

    def make():
        return StreamingLoader(_data(), 4, seed=7, transform=noisy, device="cpu", num_workers=0)

    ref = [x for x, _ in make()]
    resumed = make()
    resumed.load_state_dict({"epoch": 0, "batch": 5, "seed": 7})
    assert all(torch.equal(a, b) for a, b in zip([x for x, _ in resumed], ref[5:]))


def test_the_dataset_learns_the_epoch_before_items_are_read():
    class Epoched(TensorDataset):
        epoch = -1

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __getitem__(self, i):
            return torch.full((1, 1, 1), self.epoch, dtype=torch.uint8), i

    loader = StreamingLoader(Epoched(torch.zeros(8)), 4, seed=0, transform=_identity, device="cpu",
                             num_workers=1)
    loader.set_epoch(3)
    assert all((_ids(x) == 3).all() for x, _ in loader)
