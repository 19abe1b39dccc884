import pytest
import torch

from paperzoo.detection.matcher import BalancedPositiveNegativeSampler, Matcher

BG, IGNORE = Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS


def test_rpn_thresholds_match_at_or_above_high_and_ignore_the_band_between():
    # Faster R-CNN Sec. 3.1.2: >= 0.7 positive, < 0.3 negative, in between ignored; each takes its best gt.
    iou = torch.tensor(
        [
            [0.9, 0.5, 0.1, 0.70, 0.30, 0.0],
            [0.2, 0.6, 0.2, 0.65, 0.29, 0.8],
        ]
    )
    matches = Matcher(0.7, 0.3)(iou)
    assert matches.tolist() == [0, IGNORE, BG, 0, IGNORE, 1]
    assert matches.dtype == torch.int64


def test_box_head_thresholds_leave_no_ignored_band():
    iou = torch.tensor([[0.5, 0.49, 0.0, 0.3], [0.1, 0.2, 0.0, 0.75]])
    assert Matcher(0.5, 0.5)(iou).tolist() == [0, BG, BG, 1]


def test_low_quality_rule_rescues_every_tied_best_prediction_of_each_gt():
    # gt 0's best IoU is 0.4, shared by predictions 1 and 3 (a tie): both are rescued. Prediction 3 overlaps
    # gt 1 more (0.45), so, as in torchvision, it takes gt 1. gt 1's best (0.8, prediction 4) is matched anyway.
    iou = torch.tensor(
        [
            [0.1, 0.4, 0.2, 0.40, 0.0],
            [0.0, 0.1, 0.1, 0.45, 0.8],
        ]
    )
    assert Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou).tolist() == [BG, IGNORE, BG, IGNORE, 1]
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [BG, 0, BG, 1, 1]


def test_low_quality_rule_with_a_gt_that_overlaps_nothing_rescues_zero_iou_predictions():
    # torchvision's rule as written: gt 1's best IoU is 0, so every prediction with IoU 0 to it is "tied best";
    # those are matched to their own best gt (here gt 0 for prediction 1, whose IoU 0.1 is otherwise background).
    iou = torch.tensor([[0.9, 0.1], [0.0, 0.0]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [0, 0]


def reference_match(iou, high, low, allow_low_quality):
    """The rule, prediction by prediction, in plain Python."""
    m, n = iou.shape
    best_per_gt = [max(iou[g].tolist()) for g in range(m)]
    out = []
    for p in range(n):
        col = iou[:, p].tolist()
        best = max(col)
        gt = col.index(best)
        label = gt if best >= high else (IGNORE if best >= low else BG)
        if allow_low_quality and any(col[g] == best_per_gt[g] for g in range(m)):
            label = gt
        out.append(label)
    return out


@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_vectorized_matcher_equals_a_per_prediction_reference_on_random_matrices_with_ties(allow_low_quality):
    gen = torch.Generator().manual_seed(1)
    # Eighths: many ties, and values and thresholds exact in binary, so float32 and Python compare alike.
    iou = torch.randint(0, 9, (5, 300), generator=gen).float() / 8
    iou[:, :3] = 0.25  # three identical columns, all background
    expected = reference_match(iou, 0.75, 0.375, allow_low_quality)
    assert Matcher(0.75, 0.375, allow_low_quality)(iou).tolist() == expected


def test_no_ground_truth_makes_every_prediction_background_and_no_predictions_give_an_empty_result():
    for allow in (False, True):
        assert Matcher(0.7, 0.3, allow)(torch.zeros(0, 4)).tolist() == [BG] * 4
        assert Matcher(0.7, 0.3, allow)(torch.zeros(3, 0)).tolist() == []


def test_matcher_rejects_low_above_high_and_a_non_matrix():
    with pytest.raises(ValueError, match="above high_threshold"):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError, match=r"\(M, N\)"):
        Matcher(0.7, 0.3)(torch.zeros(4))


def labels(num_pos, num_neg, num_ignored):
    """A shuffled matcher output: gt indices 0..2, background, ignored."""
    matched = torch.cat([torch.arange(num_pos) % 3, torch.full((num_neg,), BG), torch.full((num_ignored,), IGNORE)])
    return matched[torch.randperm(len(matched))]


@pytest.mark.parametrize(
    "batch, fraction, pos, neg, want_pos, want_neg",
    [
        (256, 0.5, 500, 5000, 128, 128),  # RPN (Faster R-CNN Sec. 3.1.3): half positive when there are enough
        (256, 0.5, 10, 5000, 10, 246),  # few positives: negatives pad the batch
        (256, 0.5, 10, 20, 10, 20),  # few of both: a smaller batch
        (512, 0.25, 1000, 5000, 128, 384),  # box head: 25 % positive
        (512, 0.25, 0, 100, 0, 100),  # an image without objects
    ],
)
def test_sampler_counts(batch, fraction, pos, neg, want_pos, want_neg):
    matched = labels(pos, neg, 50)
    pos_mask, neg_mask = BalancedPositiveNegativeSampler(batch, fraction)(matched)
    assert pos_mask.dtype == torch.bool and pos_mask.shape == matched.shape
    assert (int(pos_mask.sum()), int(neg_mask.sum())) == (want_pos, want_neg)


def test_sampler_never_samples_ignored_and_labels_stay_in_their_mask():
    matched = labels(300, 300, 3000)
    pos_mask, neg_mask = BalancedPositiveNegativeSampler(256, 0.5)(matched)
    assert not (pos_mask | neg_mask)[matched == IGNORE].any()
    assert (matched[pos_mask] >= 0).all() and (matched[neg_mask] == BG).all()
    # With ignored ones in the majority, taking everything still only yields the 600 labelled predictions.
    pos_all, neg_all = BalancedPositiveNegativeSampler(10_000, 0.5)(matched)
    assert torch.equal(pos_all | neg_all, matched != IGNORE)


def test_sampler_is_deterministic_under_a_seeded_generator_and_varies_across_seeds():
    matched = labels(400, 4000, 100)
    sampler = BalancedPositiveNegativeSampler(256, 0.5)

    def draw(seed):
        return sampler(matched, generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_sampler_rejects_a_fraction_outside_zero_one():
    with pytest.raises(ValueError, match="positive_fraction"):
        BalancedPositiveNegativeSampler(256, 1.5)
