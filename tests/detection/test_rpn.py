"""The RPN (Faster R-CNN Sec. 3.1-3.3): torchvision's head layout and size, Sec. 3.1.2's anchor labels on hand-built
geometry, Eq. 1's losses against a direct computation, and proposals that are clipped, sorted, suppressed, cut to
top-n per level, and decode to the anchor a hand-set head points at."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from paperzoo.detection.anchors import AnchorGenerator
from paperzoo.detection.boxes import box_iou
from paperzoo.detection.rpn import RegionProposalNetwork, RPNHead, flatten_head_outputs
from paperzoo.detection.transform import ImageList

# One level, one 16-pixel square anchor per position, stride 16 on a 64x64 image: anchor (y, x) is
# [16x - 8, 16y - 8, 16x + 8, 16y + 8] and has index 4y + x.
GRID, STRIDE = 4, 16


class FixedHead(nn.Module):
    """A head whose outputs are set by hand: logits (B, A, H, W) and deltas (B, 4A, H, W) per level."""

    def __init__(self, logits: list[torch.Tensor], deltas: list[torch.Tensor]) -> None:
        super().__init__()
        self.logits = nn.ParameterList(logits)
        self.deltas = nn.ParameterList(deltas)

    def forward(self, features):
        return list(self.logits), list(self.deltas)


def one_level_rpn(head: nn.Module, **kwargs) -> RegionProposalNetwork:
    return RegionProposalNetwork(AnchorGenerator(((16,),), ((1.0,),)), head, **kwargs)


def features(batch: int = 1, size: int = GRID, channels: int = 1) -> OrderedDict:
    return OrderedDict(p2=torch.zeros(batch, channels, size, size))


def images(batch: int = 1, size: int = 64) -> ImageList:
    return ImageList(torch.zeros(batch, 3, size, size), [(size, size)] * batch)


def anchor(y: int, x: int) -> list[float]:
    return [16.0 * x - 8, 16.0 * y - 8, 16.0 * x + 8, 16.0 * y + 8]


# ---------------------------------------------------------------------------------------------------- the head


def test_head_state_dict_keys_and_shapes_are_torchvisions():
    expected = {  # torchvision's fasterrcnn_resnet50_fpn, rpn.head.*
        "conv.0.0.weight": (256, 256, 3, 3),
        "conv.0.0.bias": (256,),
        "cls_logits.weight": (3, 256, 1, 1),
        "cls_logits.bias": (3,),
        "bbox_pred.weight": (12, 256, 1, 1),
        "bbox_pred.bias": (12,),
    }
    state = RPNHead(256, 3).state_dict()
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    rpn = RegionProposalNetwork(AnchorGenerator(), RPNHead(256, 3))
    assert list(rpn.state_dict()) == [f"head.{k}" for k in expected]  # nothing else: no anchors or coder state


def test_head_parameter_count_matches_torchvision():
    assert sum(p.numel() for p in RPNHead(256, 3).parameters()) == 593_935  # 256*256*9+256 + 256*3+3 + 256*12+12


def test_head_with_two_convs_has_v2_keys():
    assert [k for k in RPNHead(8, 3, conv_depth=2).state_dict() if k.startswith("conv")] == [
        "conv.0.0.weight", "conv.0.0.bias", "conv.1.0.weight", "conv.1.0.bias"]


def test_head_loads_pre_013_keys_directly_and_nested():
    torch.manual_seed(0)
    old = {
        "conv.weight": torch.randn(8, 8, 3, 3), "conv.bias": torch.randn(8),
        "cls_logits.weight": torch.randn(3, 8, 1, 1), "cls_logits.bias": torch.randn(3),
        "bbox_pred.weight": torch.randn(12, 8, 1, 1), "bbox_pred.bias": torch.randn(12),
    }
    head = RPNHead(8, 3)
    head.load_state_dict(old)  # strict
    assert torch.equal(head.conv[0][0].weight, old["conv.weight"])
    assert torch.equal(head.conv[0][0].bias, old["conv.bias"])
    rpn = RegionProposalNetwork(AnchorGenerator(), RPNHead(8, 3))
    rpn.load_state_dict({f"head.{k}": v for k, v in old.items()})
    assert torch.equal(rpn.head.conv[0][0].weight, old["conv.weight"])


def test_head_init_is_gaussian_001_with_zero_bias():
    torch.manual_seed(0)
    head = RPNHead(256, 3)
    assert abs(head.conv[0][0].weight.std().item() - 0.01) < 5e-4
    assert abs(head.bbox_pred.weight.std().item() - 0.01) < 1e-3
    assert all(m.bias.abs().sum() == 0 for m in head.modules() if isinstance(m, nn.Conv2d))


def test_head_output_shapes_per_level():
    logits, deltas = RPNHead(4, 3)([torch.randn(2, 4, 8, 6), torch.randn(2, 4, 4, 3)])
    assert [tuple(t.shape) for t in logits] == [(2, 3, 8, 6), (2, 3, 4, 3)]
    assert [tuple(t.shape) for t in deltas] == [(2, 12, 8, 6), (2, 12, 4, 3)]


def test_flatten_orders_entries_like_the_anchors():
    # Entry j must be (position row-major, then anchor a): logit value = 100 y + 10 x + a, delta value adds 0.1 c.
    h, w, a = 2, 3, 2
    y, x, k = torch.meshgrid(torch.arange(h), torch.arange(w), torch.arange(a), indexing="ij")  # (H, W, A)
    code = (100 * y + 10 * x + k).float()
    logits = code.permute(2, 0, 1)[None]  # (1, A, H, W)
    deltas = torch.stack([code + 0.1 * c for c in range(4)], dim=-1).permute(2, 3, 0, 1).reshape(1, a * 4, h, w)
    flat_logits, flat_deltas = flatten_head_outputs([logits, logits + 1000], [deltas, deltas + 1000])
    expected = torch.tensor([100 * yy + 10 * xx + kk for yy in range(h) for xx in range(w) for kk in range(a)]).float()
    torch.testing.assert_close(flat_logits[0], torch.cat([expected, expected + 1000]))
    torch.testing.assert_close(flat_deltas[0, : h * w * a, 3], expected + 0.3)


# ---------------------------------------------------------------------------------------------- anchor labels


def test_matcher_thresholds_07_03_and_low_quality_match():
    rpn = one_level_rpn(RPNHead(1, 1))
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 7.2],  # IoU 0.72 -> positive
        [0.0, 0.0, 10.0, 6.8],  # IoU 0.68 -> ignored
        [0.0, 0.0, 10.0, 3.2],  # IoU 0.32 -> ignored
        [0.0, 0.0, 10.0, 2.8],  # IoU 0.28 -> negative
        [100.0, 100.0, 110.0, 104.0],  # IoU 0.4 but the second box's best anchor -> positive (low-quality rule)
        [0.0, 0.0, 10.0, 10.0],  # equals the first box -> positive
    ])
    matched = rpn.assign_targets(anchors, gt)
    assert matched.tolist() == [0, -2, -2, -1, 1, 0]
    assert rpn.assign_targets(anchors, torch.zeros(0, 4)).tolist() == [-1] * 6  # no objects: all negative


def eq1_losses(logits, labels, deltas, targets, num_sampled):
    """Faster R-CNN Eq. 1 written out: mean binary log loss, and smooth L1 (beta 1/9) summed over positives."""
    p = torch.sigmoid(logits.double())
    cls = -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()
    diff, beta = (deltas - targets).abs().double(), 1 / 9
    reg = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum() / num_sampled
    return cls.float(), reg.float()


def test_losses_equal_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, GRID, GRID, generator=g)
    deltas = torch.randn(2, 4, GRID, GRID, generator=g) * 0.2
    rpn = one_level_rpn(FixedHead([logits], [deltas])).train()
    # Image 0: a box 2 px right of anchor (1, 2) (index 6): IoU 224 / 288 = 0.78, the only positive; every other
    # anchor overlaps it by less than 0.3. Image 1: no objects. 256 per image > 16 anchors: all are sampled.
    gt = torch.tensor([[26.0, 8.0, 42.0, 24.0]])
    _, losses = rpn(images(2), features(2), [{"boxes": gt}, {"boxes": torch.zeros(0, 4)}])
    labels = torch.zeros(32)
    labels[6] = 1.0
    target = torch.tensor([2 / 16, 0.0, 0.0, 0.0])  # Eq. 2: t_x = (G_x - P_x) / P_w, sizes equal
    cls, reg = eq1_losses(logits.flatten(), labels, deltas[0, :, 1, 2], target, num_sampled=32)
    torch.testing.assert_close(losses["loss_objectness"], cls)
    torch.testing.assert_close(losses["loss_rpn_box_reg"], reg)
    sum(losses.values()).backward()
    assert rpn.head.logits[0].grad.abs().sum() > 0 and rpn.head.deltas[0].grad[0, :, 1, 2].abs().sum() > 0
    assert rpn.head.deltas[0].grad[1].abs().sum() == 0  # only positives are regressed


def test_anchor_equal_to_a_box_has_label_one_and_zero_regression_target():
    def losses_with(logit_at_anchor: float) -> dict:
        logits = torch.full((1, 1, GRID, GRID), -30.0)
        logits[0, 0, 1, 2] = logit_at_anchor
        rpn = one_level_rpn(FixedHead([logits], [torch.zeros(1, 4, GRID, GRID)])).train()
        return rpn(images(), features(), [{"boxes": torch.tensor([anchor(1, 2)])}])[1]

    confident = losses_with(30.0)
    assert confident["loss_rpn_box_reg"] == 0  # zero deltas are exactly the target
    assert confident["loss_objectness"] < 1e-6  # label 1 there, 0 everywhere else
    assert losses_with(-30.0)["loss_objectness"] > 1.0  # calling it background costs 30 / 16


def test_sampler_caps_positives_and_batch():
    # batch 4, half positive at most: with many positives, the objectness mean runs over exactly 4 anchors.
    logits = torch.zeros(1, 1, GRID, GRID)
    rpn = one_level_rpn(FixedHead([logits], [torch.zeros(1, 4, GRID, GRID)]), batch_size_per_image=4).train()
    boxes = torch.tensor([anchor(y, x) for y in range(GRID) for x in range(2)])  # 8 anchors positive
    _, losses = rpn(images(), features(), [{"boxes": boxes}])
    losses["loss_objectness"].backward()
    grad = rpn.head.logits[0].grad.flatten()
    assert (grad != 0).sum() == 4
    assert (grad < 0).sum() == 2  # positives pull their logit up: 2 of them, the 2 others are negatives


def test_training_needs_targets():
    with pytest.raises(ValueError, match="needs targets"):
        one_level_rpn(RPNHead(1, 1)).train()(images(), features())


# ------------------------------------------------------------------------------------------------- proposals


def test_eval_proposal_of_the_highest_scoring_anchor_is_that_anchor_decoded():
    # Real head, hand-set: the 3x3 conv copies channel 0, so only position (y=4, x=3), where the feature is 1,
    # sees a non-zero input; anchor 2 there (ratio 2, tall) gets logit 10 and a delta t_x = 0.25.
    head = RPNHead(1, 3)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.conv[0][0].weight[0, 0, 1, 1] = 1.0
        head.cls_logits.weight[2, 0] = 10.0
        head.bbox_pred.weight[2 * 4 + 0, 0] = 0.25  # anchor 2's dx
    rpn = RegionProposalNetwork(AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),)), head).eval()
    fmap = torch.zeros(1, 1, 8, 8)
    fmap[0, 0, 4, 3] = 1.0
    proposals, losses = rpn(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), OrderedDict(p2=fmap))
    # Anchor: centre (3 * 8, 4 * 8) = (24, 32); half-width round(32 / sqrt(2) / 2) = 11, half-height 23.
    # Decoded: centre x moves by 0.25 * 22 = 5.5.
    torch.testing.assert_close(proposals[0][0], torch.tensor([13.0 + 5.5, 9.0, 35.0 + 5.5, 55.0]))
    assert losses == {}


def random_fpn_rpn(post_nms_top_n: int = 30, **kwargs) -> tuple[RegionProposalNetwork, OrderedDict, ImageList]:
    torch.manual_seed(0)
    head = RPNHead(8, 3)
    with torch.no_grad():  # spread-out objectness, deltas that move anchors by a fraction of their size
        for p in head.parameters():
            p.normal_(0, 0.5)
        head.bbox_pred.weight.mul_(0.1)
    rpn = RegionProposalNetwork(AnchorGenerator(((16,), (32,), (64,)), ((0.5, 1.0, 2.0),) * 3), head,
                                post_nms_top_n={"training": 2000, "testing": post_nms_top_n}, **kwargs).eval()
    feats = OrderedDict((str(i), torch.randn(2, 8, 48 // s, 64 // s)) for i, s in enumerate((4, 8, 16)))
    return rpn, feats, ImageList(torch.zeros(2, 3, 48, 64), [(45, 60), (30, 64)])


def filtered(rpn: RegionProposalNetwork, feats: OrderedDict, images: ImageList):
    """filter_proposals on the decoded anchors, as forward calls it, to see the scores too."""
    maps = list(feats.values())
    logits, deltas = rpn.head(maps)
    anchors = rpn.anchor_generator(images.tensors, maps)
    objectness, pred = flatten_head_outputs(logits, deltas)
    decoded = rpn.box_coder.decode(pred.reshape(-1, 4), torch.cat(anchors)).view(2, -1, 4)
    return rpn.filter_proposals(decoded, objectness, images.image_sizes, [l[0].numel() for l in logits])


def test_proposals_are_clipped_sorted_suppressed_and_at_most_post_nms_top_n():
    rpn, feats, imgs = random_fpn_rpn(post_nms_top_n=30)
    with torch.no_grad():
        proposals, _ = rpn(imgs, feats)
        boxes, scores = filtered(rpn, feats, imgs)
    for props, b, s, (h, w) in zip(proposals, boxes, scores, imgs.image_sizes):
        assert torch.equal(props, b)
        assert 0 < len(props) <= 30
        assert (props[:, 0] >= 0).all() and (props[:, 1] >= 0).all()
        assert (props[:, 2] <= w).all() and (props[:, 3] <= h).all()
        assert ((props[:, 2:] - props[:, :2]) >= 1e-3).all()
        assert (s[:-1] >= s[1:]).all()
    rpn.post_nms_top_n["testing"] = 10_000
    with torch.no_grad():
        all_boxes, _ = filtered(rpn, feats, imgs)
    assert len(all_boxes[0]) > 30  # the cut above was real


def test_pre_nms_top_n_is_per_level():
    # pre_nms_top_n 1: one candidate per level, so exactly one proposal per level survives (3 levels), each the
    # highest-scoring anchor of its level.
    rpn, feats, imgs = random_fpn_rpn(pre_nms_top_n={"training": 2000, "testing": 1})
    with torch.no_grad():
        boxes, scores = filtered(rpn, feats, imgs)
        logits, _ = rpn.head(list(feats.values()))
    assert [len(b) for b in boxes] == [3, 3]
    best_per_level = torch.stack([level[0].max().sigmoid() for level in logits])
    torch.testing.assert_close(scores[0], best_per_level.sort(descending=True).values)


def test_nms_suppresses_within_a_level_only():
    rpn, feats, imgs = random_fpn_rpn(post_nms_top_n=100_000, nms_thresh=0.5)
    with torch.no_grad():
        boxes, _ = filtered(rpn, feats, imgs)
    # some pairs overlap above 0.5: they come from different levels, which never suppress each other ...
    assert (box_iou(boxes[0], boxes[0]).fill_diagonal_(0) > 0.5).any()
    # ... while on a single level no two survivors do
    g = torch.Generator().manual_seed(0)
    head = FixedHead([torch.randn(1, 1, GRID, GRID, generator=g)], [torch.randn(1, 4, GRID, GRID, generator=g)])
    rpn = one_level_rpn(head, nms_thresh=0.5).eval()
    with torch.no_grad():
        boxes, _ = rpn(images(), features())
    assert len(boxes[0]) > 1 and box_iou(boxes[0], boxes[0]).fill_diagonal_(0).max() <= 0.5


def test_score_thresh_drops_low_objectness():
    rpn, feats, imgs = random_fpn_rpn(post_nms_top_n=100_000, score_thresh=0.6)
    with torch.no_grad():
        _, scores = filtered(rpn, feats, imgs)
    assert all((s >= 0.6).all() for s in scores) and sum(len(s) for s in scores) > 0


def test_proposals_carry_no_gradient_but_losses_do():
    rpn, feats, imgs = random_fpn_rpn()
    rpn.train()
    proposals, losses = rpn(imgs, feats, [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]])}] * 2)
    assert not any(p.requires_grad for p in proposals)
    assert all(math.isfinite(v.item()) and v.requires_grad for v in losses.values())
    assert len(proposals[0]) <= 2000
