"""TensorLoader: coverage, seeded order, exact mid-epoch resume, DDP sharding, output format.

Run: python -m pytest -q tests/data/test_tensor_loader.py
"""

import pytest
import torch

from paperzoo.data.loader import TensorLoader, derive_seed
from paperzoo.data.transforms import build_train_transform


def data(n=103, c=1, hw=6, k=7):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, hw, hw), dtype=torch.uint8, generator=g)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # pixel (0, 0) identifies the sample
    return images, torch.arange(n) % k


def ids(x):
    return (x[:, 0, 0, 0] * 255).round().long()  # transform=None: x = uint8 / 255


def test_epoch_covers_every_sample_once():
    images, labels = data()
    loader = TensorLoader(images, labels, 10, seed=1)
    assert len(loader) == 11
    seen = torch.cat([ids(x) for x, _ in loader])
    assert sorted(seen.tolist()) == list(range(103))
    xs, ys = next(iter(loader))
    assert xs.dtype == torch.float32 and xs.shape == (10, 1, 6, 6) and 0 <= xs.min() and xs.max() <= 1
    assert torch.equal(ys, labels[ids(xs)])
    dl = TensorLoader(images, labels, 10, drop_last=True)
    assert len(dl) == 10 and sum(len(x) for x, _ in dl) == 100
    ordered = TensorLoader(images, labels, 50, shuffle=False)
    assert torch.equal(torch.cat([ids(x) for x, _ in ordered]), torch.arange(103))


def test_order_depends_only_on_seed_and_epoch():
    images, labels = data()
    a, b = TensorLoader(images, labels, 16, seed=3), TensorLoader(images, labels, 16, seed=3)
    ea = [ids(x) for x, _ in a]
    assert all(torch.equal(p, q) for p, q in zip(ea, [ids(x) for x, _ in b]))
    again = [ids(x) for x, _ in a]  # iterating the same epoch again replays it
    assert all(torch.equal(p, q) for p, q in zip(ea, again))
    a.set_epoch(1)
    assert not torch.equal(torch.cat(ea), torch.cat([ids(x) for x, _ in a]))
    c = TensorLoader(images, labels, 16, seed=4)
    assert not torch.equal(torch.cat(ea), torch.cat([ids(x) for x, _ in c]))
    assert derive_seed(1, 2) != derive_seed(2, 1) and derive_seed(0, 0) < 2**63


def test_resume_at_epoch_end_yields_nothing_then_restarts():
    images, labels = data()
    loader = TensorLoader(images, labels, 20)
    list(loader)
    state = loader.state_dict()
    other = TensorLoader(images, labels, 20)
    other.load_state_dict(state)
    assert list(other) == []  # that epoch was finished
    assert len(list(other)) == len(other)  # a fresh pass starts from the beginning


def test_bad_states():
    images, labels = data()
    loader = TensorLoader(images, labels, 20, seed=1)
    with pytest.raises(ValueError, match="seed"):
        loader.load_state_dict({"epoch": 0, "batch": 1, "seed": 2})
    with pytest.raises(ValueError, match="outside"):
        loader.load_state_dict({"epoch": 0, "batch": 99, "seed": 1})
    with pytest.raises(ValueError):
        TensorLoader(images, labels[:5], 4)
    with pytest.raises(ValueError):
        TensorLoader(images, labels, 4, rank=2, world_size=2)


@pytest.mark.parametrize("n", [96, 103])
def test_ddp_shards_are_disjoint_and_match_global_batches(n):
    images, labels = data(n=n)
    world, b = 3, 4
    single = TensorLoader(images, labels, b * world, seed=9)
    ranks = [TensorLoader(images, labels, b, seed=9, rank=r, world_size=world) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1  # every rank runs the same number of steps
    per_rank = [[ids(x) for x, _ in r] for r in ranks]
    everything = torch.cat([torch.cat(p) for p in per_rank])
    if n % world == 0:
        assert sorted(everything.tolist()) == list(range(n))  # disjoint and complete
        for i, (x, _) in enumerate(single):  # the union of the ranks' batch i is the global batch i
            union = torch.cat([p[i] for p in per_rank])
            assert sorted(union.tolist()) == sorted(ids(x).tolist())
    else:  # padded by wrapping around, like DistributedSampler
        assert len(everything) == -(-n // world) * world and set(everything.tolist()) == set(range(n))


def test_channels_last_and_transform_normalisation():
    images, labels = data(c=3)
    tf = build_train_transform(None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 7)
    loader = TensorLoader(images, labels, 8, transform=tf, channels_last=True, shuffle=False)
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, (images[:8].float() / 255 - 0.5) / 0.25)


def test_prep_threads_restored_and_irrelevant_to_results():
    images, labels = data()
    tf = build_train_transform({"crop_padding": 2, "hflip": 0.5}, (0.5,), (0.3,), 7)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = TensorLoader(images, labels, 16, transform=tf, prep_threads=1)
        both = TensorLoader(images, labels, 16, transform=tf, prep_threads=None)
        for (x, y), (x2, y2) in zip(one, both):
            assert torch.get_num_threads() == 2  # the consumer (the model) gets its threads back
            assert torch.equal(x, x2) and torch.equal(y, y2)
    finally:
        torch.set_num_threads(prev)


def test_float_images_are_used_as_is():
    x = torch.randn(10, 1, 4, 4)
    loader = TensorLoader(x, torch.zeros(10, dtype=torch.long), 10, shuffle=False)
    assert torch.equal(next(iter(loader))[0], x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches():
    images, labels = data(k=7)
    tf = build_train_transform({"crop_padding": 2, "hflip": 0.5, "random_erasing": 0.5, "mixup_alpha": 0.3,
                                "cutmix_alpha": 1.0}, (0.5,), (0.3,), 7)
    cpu = TensorLoader(images, labels, 16, seed=2, transform=tf)
    gpu = TensorLoader(images, labels, 16, seed=2, transform=tf, device="cuda")
    for (x, y), (gx, gy) in zip(cpu, gpu):  # all randomness is drawn on the CPU generator
        assert gx.device.type == "cuda"
        torch.testing.assert_close(gx.cpu(), x)
        torch.testing.assert_close(gy.cpu(), y)
