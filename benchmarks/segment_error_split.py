"""Where a scenes segmenter's mean IoU goes: outlines (foreground vs background) or recognition (which class).

    python benchmarks/segment_error_split.py runs/RUN                 # its final weights, 500 test scenes
    python benchmarks/segment_error_split.py runs/RUN --split train   # 500 of its training scenes

Prints, on the Fashion-MNIST scenes of the run's canvas size:

* the model's mean IoU, and the class-agnostic foreground IoU (every item class merged into one);
* "class oracle": the mean IoU if every pixel the model calls foreground on an item took the item's true class
  (what perfect recognition with the model's outlines would score);
* "majority vote": the mean IoU if each item's pixels took the class most of them got;
* per item, whether the class most of its foreground pixels got is its own, by item size (longer box side).

Equal train and test numbers mean the model underfits: it has not learned to recognise even the items it saw.
"""

from __future__ import annotations

import argparse

import torch

from paperzoo.detection.data import ScenesDetection
from paperzoo.segmentation.data import semantic_mask
from paperzoo.segmentation.metrics import confusion_matrix, segmentation_metrics
from paperzoo.segmentation.task import IGNORE_INDEX, load_segmenter

SIDES = [(0, 24), (24, 32), (32, 40), (40, 48), (48, 129)]


def item_classes(pred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The class most foreground pixels of each item's mask got (0 where the model found none): (N,)."""
    out = torch.zeros(len(masks), dtype=torch.int64)
    for j, m in enumerate(masks):  # a handful of items per scene
        p = pred[m]
        fg = p[p > 0]
        out[j] = fg.mode().values if fg.numel() else 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--which", default="final")
    ap.add_argument("--split", choices=["test", "train"], default="test")
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args()
    ck = load_segmenter(args.run, args.which)
    canvas = ck.meta["data"].get("canvas", 128)
    ds = ScenesDetection(args.split, args.n, seed=1 if args.split == "test" else 0, canvas=canvas)  # the task's seeds
    k = len(ck.categories)
    cms = {name: torch.zeros(k, k, dtype=torch.int64) for name in ("model", "class oracle", "majority vote")}
    inter = union = 0
    sides, truth, guess = [], [], []
    for i in range(len(ds)):
        image, t = ds.load(i)
        with torch.no_grad():
            pred = ck.model(ck.normalize(image[None]))["out"].argmax(1)[0]  # (H, W)
        target = semantic_mask(t["masks"], t["labels"])  # the task's masks: the item drawn last owns a pixel
        fg, true_fg = pred > 0, target > 0
        inter, union = inter + (fg & true_fg).sum().item(), union + (fg | true_fg).sum().item()
        vote = pred.clone()
        g = item_classes(pred, t["masks"])
        for m, c in zip(t["masks"], g):
            vote[m & fg] = c
        for name, p in (("model", pred), ("class oracle", torch.where(fg & true_fg, target, pred)),
                        ("majority vote", vote)):
            cms[name] += confusion_matrix(p, target, k, IGNORE_INDEX)
        b = t["boxes"]
        sides.append(torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))
        truth.append(t["labels"])
        guess.append(g)
    print(f"{args.run} ({args.which}), {len(ds)} {args.split} scenes, CPU threads {torch.get_num_threads()}")
    for name, cm in cms.items():
        print(f"{name:>14} mean IoU {segmentation_metrics(cm, ck.categories)['mIoU']:.3f}")
    print(f"foreground IoU (class-agnostic) {inter / union:.3f}")
    side, ok = torch.cat(sides), torch.cat(truth) == torch.cat(guess)
    print(f"items {len(ok)}: majority class right {ok.float().mean():.3f}")
    for lo, hi in SIDES:
        sel = (side >= lo) & (side < hi)
        print(f"  side {lo}-{hi - 1} px: {int(sel.sum())} items, right {ok[sel].float().mean():.3f}")


if __name__ == "__main__":
    main()
