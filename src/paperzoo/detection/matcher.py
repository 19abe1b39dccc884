"""Training targets of the two-stage detectors: which ground-truth box each anchor / proposal stands for, and
which of them a mini-batch trains on.

* :class:`Matcher` — IoU thresholds with an "ignore" band, plus Faster R-CNN's low-quality rule.
  Faster R-CNN (Ren et al. 2015, arXiv:1506.01497) Sec. 3.1.2: an anchor is positive if its IoU with some
  ground-truth box is above 0.7 (>= here, as in torchvision), or if it has the highest IoU with a ground-truth
  box (so every box gets an anchor); negative if its IoU is < 0.3 with every box; the rest do not contribute.
  Fast R-CNN (Girshick 2015, arXiv:1504.08083) Sec. 2.3: a proposal is foreground at IoU >= 0.5 and background
  below it (``Matcher(0.5, 0.5, False)``; the paper's background band [0.1, 0.5) became [0, 0.5) in torchvision).
* :class:`BalancedPositiveNegativeSampler` — RPN: 256 anchors per image, up to half positive, padded with
  negatives (Faster R-CNN Sec. 3.1.3); box head: 512 RoIs per image (torchvision's default; Fast R-CNN Sec. 2.3
  samples 128 over two images), 25 % positive.

Behaviour follows torchvision's ``models/detection/_utils.py`` (same labels, tie rules and counts) so a port of its
training recipes sees the same targets; one difference: no ground-truth box at all gives all-background instead of
an error, the way torchvision's RPN and box head special-case empty images before calling the matcher.
"""

import torch
from torch import Tensor


class Matcher:
    """Per prediction, the index of its ground-truth box, or a negative label.

    Args:
        high_threshold: IoU at or above which a prediction is matched (0.7 for the RPN, 0.5 for the box head).
        low_threshold: IoU below which it is background (0.3 / 0.5); in between it is ignored.
        allow_low_quality_matches: also match each ground-truth box to the prediction(s) of highest IoU with it,
            ties included, whatever that IoU (Faster R-CNN Sec. 3.1.2, condition (i)).
    """

    BELOW_LOW_THRESHOLD = -1  # background
    BETWEEN_THRESHOLDS = -2  # ignored: neither positive nor negative

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False) -> None:
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} is above high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tensor:
        """Match an ``(M, N)`` IoU matrix (M ground-truth boxes, N predictions) to an ``(N,)`` int64 tensor.

        Entries are a ground-truth index in ``[0, M)``, ``BELOW_LOW_THRESHOLD`` or ``BETWEEN_THRESHOLDS``.
        """
        if iou.dim() != 2:
            raise ValueError(f"expected an (M, N) IoU matrix, got shape {tuple(iou.shape)}")
        num_gt, num_pred = iou.shape
        if num_gt == 0 or num_pred == 0:  # an image without objects: every prediction is background
            return torch.full((num_pred,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)

        best_iou, best_gt = iou.max(dim=0)  # (N,) each: every prediction's best ground-truth box
        matches = best_gt.clone()
        matches[best_iou < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        matches[(best_iou >= self.low_threshold) & (best_iou < self.high_threshold)] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            matches = self._add_low_quality_matches(iou, matches, best_gt)
        return matches

    @staticmethod
    def _add_low_quality_matches(iou: Tensor, matches: Tensor, best_gt: Tensor) -> Tensor:
        """Give every prediction tied for the best IoU of some ground-truth box its own best box back.

        As in torchvision, a rescued prediction takes the ground-truth box *it* overlaps most (``best_gt``), which
        is not always the one it was best for; and a ground-truth box overlapping nothing (best IoU 0) rescues
        every prediction of IoU 0 with it. Neither changes anything when the anchors cover the boxes.
        """
        best_iou_per_gt = iou.max(dim=1, keepdim=True).values  # (M, 1)
        is_best_for_some_gt = (iou == best_iou_per_gt).any(dim=0)  # (N,)
        return torch.where(is_best_for_some_gt, best_gt, matches)


class BalancedPositiveNegativeSampler:
    """Pick one image's training mini-batch from the matcher's output: positives first, then negatives.

    Args:
        batch_size_per_image: predictions sampled per image (256 anchors for the RPN, 512 RoIs for the box head).
        positive_fraction: the most positives can take (0.5 for the RPN, 0.25 for the box head); when there are
            fewer, negatives fill the batch, and when negatives run out too the batch is smaller.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image < 0 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(
                f"need batch_size_per_image >= 0 and 0 <= positive_fraction <= 1, "
                f"got {batch_size_per_image} and {positive_fraction}"
            )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, matched_idxs: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Boolean masks ``(positive, negative)``, each shaped like ``matched_idxs``.

        Args:
            matched_idxs: one image's :class:`Matcher` output, ``(N,)``: ``>= 0`` positive, ``-1`` negative,
                ``-2`` ignored (never sampled).
            generator: the random source of ``torch.randperm``; the global one if None.
        """
        positive = torch.nonzero(matched_idxs >= 0).squeeze(1)
        negative = torch.nonzero(matched_idxs == Matcher.BELOW_LOW_THRESHOLD).squeeze(1)
        num_pos = min(int(self.batch_size_per_image * self.positive_fraction), positive.numel())
        num_neg = min(self.batch_size_per_image - num_pos, negative.numel())
        return (
            self._random_mask(positive, num_pos, matched_idxs, generator),
            self._random_mask(negative, num_neg, matched_idxs, generator),
        )

    @staticmethod
    def _random_mask(candidates: Tensor, k: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """A mask shaped like ``like``, True at k of ``candidates`` drawn uniformly without replacement."""
        device = generator.device if generator is not None else candidates.device
        chosen = candidates[torch.randperm(candidates.numel(), generator=generator, device=device)[:k].to(like.device)]
        mask = torch.zeros_like(like, dtype=torch.bool)
        mask[chosen] = True
        return mask
