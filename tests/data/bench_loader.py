"""Throughput of TensorLoader + batched augmentation on Fashion-MNIST (img/s). Not a test; re-run with

    python tests/data/bench_loader.py                      # default recipe's augmentation (crop 2 + flip)
    python tests/data/bench_loader.py --aug full --threads 2 --batch-size 256
    python tests/data/bench_loader.py --threads 2 --prep-threads 0   # prepare batches with 2 threads too

Prints one line per configuration: images per second over whole epochs (best of ``--repeat``), and the
per-batch time split between slicing/conversion and each transform (measured with ``--threads`` threads).
"""

from __future__ import annotations

import argparse
import time

import torch

from paperzoo.data.datasets import load_image_dataset
from paperzoo.data.loader import TensorLoader
from paperzoo.data.transforms import build_train_transform

AUGS = {
    "none": {},
    "default": {"crop_padding": 2, "hflip": 0.5},  # configs/fashion_mnist_default.yaml
    "full": {"crop_padding": 4, "hflip": 0.5, "random_erasing": 0.25, "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
}


def epoch_rate(loader: TensorLoader, repeat: int) -> float:
    best = 0.0
    for epoch in range(repeat):
        loader.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for x, _ in loader:
            n += x.shape[0]
        best = max(best, n / (time.perf_counter() - t0))
    return best


def per_stage(ds, tf, batch_size: int, iters: int = 50) -> str:
    idx = torch.randperm(len(ds))[:batch_size]
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(iters):
        x = ds.images.index_select(0, idx).float().div_(255.0)
    parts = [f"slice+float {1e3 * (time.perf_counter() - t0) / iters:.2f} ms"]
    y = ds.labels[idx]
    for t in tf.transforms:
        t0 = time.perf_counter()
        for _ in range(iters):
            out, _ = t(x, y, g)
        parts.append(f"{type(t).__name__} {1e3 * (time.perf_counter() - t0) / iters:.2f} ms")
        x, y = t(x, y, g)
    return ", ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--aug", choices=sorted(AUGS), nargs="+", default=["default"])
    p.add_argument("--batch-size", type=int, nargs="+", default=[128])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prep-threads", type=int, default=1, help="TensorLoader(prep_threads=); 0 = None")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--channels-last", action="store_true", default=True)
    p.add_argument("--root", default=None, help="Fashion-MNIST directory (default: Debian's)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_image_dataset("fashion_mnist", "train", root=args.root)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, prep_threads {args.prep_threads or None}, "
          f"{len(ds)} images {ds.image_size}")
    for aug in args.aug:
        for bs in args.batch_size:
            tf = build_train_transform(AUGS[aug], ds.mean, ds.std, ds.num_classes)
            loader = TensorLoader(ds.images, ds.labels, bs, drop_last=True, transform=tf,
                                  channels_last=args.channels_last, prep_threads=args.prep_threads or None)
            rate = epoch_rate(loader, args.repeat)
            print(f"aug={aug:8s} batch={bs:4d}: {rate:10.0f} img/s   [{per_stage(ds, tf, bs)}]")


if __name__ == "__main__":
    main()
