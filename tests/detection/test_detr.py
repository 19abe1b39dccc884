"""DETR: Hungarian matching against brute force, the set loss on hand-worked values, the sine positions against
the formula, the layers against PyTorch's, the official parameter count and keys, training and inference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from paperzoo.detection.boxes import box_convert, box_iou
from paperzoo.detection.detr import (
    DETRDecoderLayer,
    DETREncoderLayer,
    convert_official_state_dict,
    sine_position_encoding,
)
from paperzoo.detection.registry import create_detector
from paperzoo.detection.set_loss import SetCriterion, hungarian_match, matching_costs
from paperzoo.models.transformer import convert_torch_transformer_state_dict


def _random_set(n: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random class logits (K + 1) and cxcywh boxes inside [0, 1]."""
    logits = torch.randn(n, k + 1, generator=generator)
    centre = 0.2 + 0.6 * torch.rand(n, 2, generator=generator)
    size = 0.05 + 0.3 * torch.rand(n, 2, generator=generator)
    return logits, torch.cat([centre, size], 1)


def _giou(a: list[float], b: list[float]) -> float:
    """GIoU of two xyxy boxes, written out (Rezatofighi et al. 2019, Algorithm 1)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


# ---------------------------------------------------------------------------------------------- matching
@pytest.mark.parametrize("n,ms", [(3, [3, 2]), (6, [4, 0]), (5, [1, 5]), (2, [0, 2]), (4, [3, 4])])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hungarian_matching_finds_the_least_cost_assignment_of_brute_force(n, ms, seed):
    g = torch.Generator().manual_seed(seed)
    k = 4
    preds = [_random_set(n, k, g) for _ in ms]
    logits, boxes = torch.stack([p[0] for p in preds]), torch.stack([p[1] for p in preds])  # (B, N, K+1), (B, N, 4)
    targets = [{"labels": torch.randint(0, k, (m,), generator=g), "boxes": _random_set(m, k, g)[1]} for m in ms]
    costs = matching_costs(logits, boxes, targets)
    for b, (cost, (q, t), target) in enumerate(zip(costs, hungarian_match(costs), targets)):
        m = len(target["labels"])
        # the cost of each pair by Sec. 3.1's formula, one pair at a time
        prob = logits[b].softmax(-1)
        px = box_convert(boxes[b], "cxcywh", "xyxy").tolist()
        tx = box_convert(target["boxes"], "cxcywh", "xyxy").tolist()
        direct = torch.tensor([[-float(prob[i, target["labels"][j]])
                                + 5 * float((boxes[b, i] - target["boxes"][j]).abs().sum())
                                - 2 * _giou(px[i], tx[j]) for j in range(m)] for i in range(n)]).reshape(n, m)
        torch.testing.assert_close(cost, direct, rtol=1e-5, atol=1e-5)
        # a one-to-one assignment of min(N, M) pairs whose total cost no permutation beats
        assert len(q) == len(t) == min(n, m) and len(set(q.tolist())) == len(q) and sorted(t.tolist()) == list(range(m))
        best = min((sum(float(cost[i, j]) for j, i in enumerate(perm)) for perm in itertools.permutations(range(n), m)),
                   default=0.0)
        assert float(cost[q, t].sum()) == pytest.approx(best, abs=1e-5)


# ---------------------------------------------------------------------------------------------- set loss
def test_set_loss_matches_hand_worked_values_with_no_object_weighted_point_one():
    # K = 2 classes (0, 1) + no object (2); one target of class 1 at (0.5, 0.5, 0.2, 0.2)
    # query 0: logits (0, ln 2, 0) -> p(1) = 1/2; box (0.5, 0.5, 0.2, 0.4): L1 = 0.2, IoU = 0.04 / 0.08 = 0.5
    #          and the hull is the query's box itself, so GIoU = 0.5
    # query 1: logits (0, 0, 0) -> p(∅) = 1/3; a far box: unmatched, so its class is ∅ with weight 0.1
    logits = torch.tensor([[[0.0, math.log(2), 0.0], [0.0, 0.0, 0.0]]])[None]  # (L=1, B=1, N=2, 3)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.05, 0.05]]])[None]
    target = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    losses = SetCriterion(2)(logits, boxes, target)
    ce = (1.0 * math.log(2) + 0.1 * math.log(3)) / (1.0 + 0.1)  # weighted mean over the queries
    assert float(losses["loss_ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(losses["loss_bbox"]) == pytest.approx(5 * 0.2, rel=1e-5)  # λ_L1 = 5
    assert float(losses["loss_giou"]) == pytest.approx(2 * (1 - 0.5), rel=1e-5)  # λ_giou = 2
    # query 1's arg-max is class 0 (a tie), not ∅: two objects claimed for one
    assert float(losses["class_error"]) == 0.0 and float(losses["cardinality_error"]) == 1.0


def test_box_losses_are_divided_by_the_number_of_target_boxes_in_the_batch():
    g = torch.Generator().manual_seed(0)
    targets = [{"labels": torch.tensor([0]), "boxes": _random_set(1, 2, g)[1]},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])}]
    boxes = torch.full((3, 4, 4), 0.5)
    boxes[:, :, 2:] = 0.1
    boxes[0, 2] = targets[0]["boxes"][0] + torch.tensor([0.01, 0, 0, 0])  # each target's obvious match, off by
    boxes[2, 1] = targets[2]["boxes"][0] + torch.tensor([0, 0.02, 0, 0])  # a known L1 distance
    boxes[2, 3] = targets[2]["boxes"][1] + torch.tensor([0, 0, 0.03, 0])
    logits = torch.zeros(3, 4, 3)
    losses = SetCriterion(2)(logits[None], boxes[None], targets)
    assert float(losses["loss_bbox"]) == pytest.approx(5 * (0.01 + 0.02 + 0.03) / 3, rel=1e-4)


# ---------------------------------------------------------------------------------------------- positions
def test_sine_encoding_is_the_normalised_sin_cos_formula_and_ignores_padding():
    h, w, f = 2, 3, 4
    pe = sine_position_encoding(torch.zeros(1, h, w, dtype=torch.bool), num_pos_feats=f)
    assert pe.shape == (1, 2 * f, h, w)
    for i, j, c in itertools.product(range(h), range(w), range(f)):
        y, x = (i + 1) / h * 2 * math.pi, (j + 1) / w * 2 * math.pi  # 1-based, scaled to (0, 2π]
        fn = math.sin if c % 2 == 0 else math.cos
        denom = 10000 ** (2 * (c // 2) / f)
        assert float(pe[0, c, i, j]) == pytest.approx(fn(y / denom), abs=1e-5)  # channels 0..F-1: y
        assert float(pe[0, f + c, i, j]) == pytest.approx(fn(x / denom), abs=1e-5)  # F..2F-1: x
    padded = torch.ones(1, 4, 5, dtype=torch.bool)
    padded[0, :h, :w] = False
    torch.testing.assert_close(sine_position_encoding(padded, f)[..., :h, :w], pe)


# ---------------------------------------------------------------------------------------------- layers
def _official_encoder_layer(ref: nn.TransformerEncoderLayer, src, pos):
    """DETR's forward_post: positions on Q and K only."""
    x = ref.norm1(src + ref.self_attn(src + pos, src + pos, src, need_weights=False)[0])
    return ref.norm2(x + ref.linear2(torch.relu(ref.linear1(x))))


def _official_decoder_layer(ref: nn.TransformerDecoderLayer, tgt, memory, pos, query_pos):
    x = ref.norm1(tgt + ref.self_attn(tgt + query_pos, tgt + query_pos, tgt, need_weights=False)[0])
    x = ref.norm2(x + ref.multihead_attn(x + query_pos, memory + pos, memory, need_weights=False)[0])
    return ref.norm3(x + ref.linear2(torch.relu(ref.linear1(x))))


def test_encoder_and_decoder_layers_compute_the_official_layers_from_pytorch_weights():
    torch.manual_seed(0)
    d, heads, ff = 16, 4, 32
    src, pos, tgt, qpos = torch.randn(2, 6, d), torch.randn(2, 6, d), torch.randn(2, 3, d), torch.randn(2, 3, d)
    ref_enc = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True).eval()
    enc = DETREncoderLayer(d, heads, ff, 0.0, False).eval()
    enc.load_state_dict(convert_torch_transformer_state_dict(ref_enc.state_dict()))
    with torch.no_grad():
        torch.testing.assert_close(enc(src, torch.zeros_like(src), None), ref_enc(src))  # no positions: PyTorch's
        torch.testing.assert_close(enc(src, pos, None), _official_encoder_layer(ref_enc, src, pos))
        ref_dec = nn.TransformerDecoderLayer(d, heads, ff, dropout=0.0, batch_first=True).eval()
        dec = DETRDecoderLayer(d, heads, ff, 0.0, False).eval()
        dec.load_state_dict(convert_torch_transformer_state_dict(ref_dec.state_dict()))
        expected = _official_decoder_layer(ref_dec, tgt, src, pos, qpos)
        torch.testing.assert_close(dec(tgt, src, pos, qpos, None), expected)


def test_detr_resnet50_has_the_official_parameter_count_and_key_layout():
    model = create_detector("detr_resnet50")
    assert sum(p.numel() for p in model.parameters()) == 41_524_768
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 41_302_368  # official main.py's count
    assert model.class_embed.out_features == 92 and model.query_embed.weight.shape == (100, 256)
    # an official checkpoint's keys: its transformer layers are nn.Transformer's, its backbone under backbone.0.body
    sd = model.state_dict()
    official = {k.replace("backbone.", "backbone.0.body.", 1): v for k, v in sd.items()
                if not k.startswith("transformer.")}
    enc = nn.TransformerEncoderLayer(256, 8, 2048).state_dict()
    dec = nn.TransformerDecoderLayer(256, 8, 2048).state_dict()
    for i in range(6):
        official.update({f"transformer.encoder.layers.{i}.{k}": v for k, v in enc.items()})
        official.update({f"transformer.decoder.layers.{i}.{k}": v for k, v in dec.items()})
    official.update({f"transformer.decoder.norm.{k}": sd[f"transformer.decoder.norm.{k}"] for k in ("weight", "bias")})
    model.load_state_dict(convert_official_state_dict(official), strict=True)


# ---------------------------------------------------------------------------------------------- the model
def _tiny(**kw):
    torch.manual_seed(0)
    args = {"num_classes": 5, "d_model": 32, "nhead": 4, "num_encoder_layers": 1, "num_decoder_layers": 3,
            "dim_feedforward": 64, "num_queries": 7, "min_size": 64, "max_size": 64, "feature_level": -3}
    return create_detector("detr", **{**args, **kw})


def _images_and_targets():
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 6, 30, 40], [30, 20, 60, 50]]), "labels": torch.tensor([1, 4])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # no objects
    return images, targets


def test_training_returns_finite_losses_for_every_decoder_layer_and_an_image_without_boxes():
    model = _tiny().train()
    images, targets = _images_and_targets()
    losses = model(images, targets)
    names = {"loss_ce", "loss_bbox", "loss_giou"}
    assert {k for k in losses if k.startswith("loss")} == names | {f"{n}_{i}" for n in names for i in (0, 1)}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.query_embed.weight.grad.abs().sum() > 0
    only_last = _tiny(aux_loss=False).train()(images, targets)
    assert {k for k in only_last if k.startswith("loss")} == names


def test_inference_returns_sorted_labelled_boxes_in_original_coordinates_without_nms():
    model = _tiny().eval()
    images = [torch.rand(3, 80, 120), torch.rand(3, 64, 64)]  # resized to 64 (short side) and back
    with torch.no_grad():
        dets = model(images)
    for det, image in zip(dets, images):
        h, w = image.shape[-2:]
        assert det["boxes"].shape == (7, 4) and det["labels"].dtype == torch.int64  # one per query: no NMS
        assert (det["labels"] >= 1).all() and (det["labels"] <= 4).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all() and ((det["scores"] > 0) & (det["scores"] < 1)).all()
        assert (det["boxes"][:, 2:] <= torch.tensor([w, h])).all() and (det["boxes"] >= 0).all()
    model.score_thresh = float(dets[0]["scores"][2])
    with torch.no_grad():
        assert len(model(images)[0]["scores"]) == 2  # strictly above the threshold


def test_padding_in_a_batch_is_masked_from_attention_and_positions():
    # sizes are multiples of the stride 8 and the untrained CNN maps zeros to zeros (BatchNorm's shift is 0), so the
    # image's features are the same alone and padded: only the mask and the positions can make a difference
    model = _tiny(min_size=96, max_size=128).eval()
    small, large = torch.rand(3, 96, 112), torch.rand(3, 128, 128)
    with torch.no_grad():
        alone, together = model([small])[0], model([small, large])[0]
    torch.testing.assert_close(together["boxes"], alone["boxes"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(together["scores"], alone["scores"], atol=1e-5, rtol=1e-4)


def test_a_small_detr_overfits_two_scenes():
    from paperzoo.detection.data import ScenesDetection

    torch.set_num_threads(1)
    ds = ScenesDetection("train", 2, seed=0)
    images = [ds[i][0] for i in range(2)]
    targets = [{k: ds[i][1][k] for k in ("boxes", "labels")} for i in range(2)]
    model = create_detector("detr", num_classes=11, d_model=64, nhead=4, num_encoder_layers=1, num_decoder_layers=2,
                            dim_feedforward=128, num_queries=10, dropout=0.0, min_size=64, max_size=64,
                            feature_level=-3)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(100):
        loss = sum(v for k, v in model(images, targets).items() if k.startswith("loss"))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)  # DETR's clipping
        opt.step()
    model.eval()
    with torch.no_grad():
        dets = model(images)
    for det, t in zip(dets, targets):
        m = len(t["labels"])
        top = {k: v[:m] for k, v in det.items()}  # as many detections as objects, best first
        iou = box_iou(t["boxes"], top["boxes"])  # (M, M)
        same = t["labels"][:, None] == top["labels"][None, :]
        assert ((iou > 0.5) & same).any(1).all(), f"targets {t['labels'].tolist()}, found {top['labels'].tolist()}"


def test_backbone_starts_from_a_gray_classifiers_weights(tmp_path):
    from safetensors.torch import save_file

    import paperzoo
    from paperzoo.weights import load_backbone

    classifier = paperzoo.create_model("resnet18", num_classes=10, in_chans=1)  # e.g. a Fashion-MNIST run
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = _tiny(feature_level=-2)
    changes = load_backbone(model, tmp_path / "w.safetensors")
    assert any(c.startswith("conv1.weight: adapted") for c in changes)  # gray conv1 -> RGB
    assert any(c.startswith("layer4.") for c in changes)  # beyond the level DETR reads: not used
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, classifier.layer3[0].conv1.weight)


def test_backbone_lr_mult_gives_the_cnn_its_own_rate_as_detrs_lr_backbone():
    from paperzoo.train.optim import build_optimizer

    model = _tiny()
    opt = build_optimizer(model, "adamw", lr=1e-4, weight_decay=1e-4, backbone_lr_mult=0.1)
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in opt.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1  # a group is all CNN or all the rest
        assert group["lr"] == pytest.approx(1e-5 if in_backbone.pop() else 1e-4)


def test_cli_trains_and_evaluates_the_detr_recipe(tmp_path):
    pytest.importorskip("pycocotools")
    from paperzoo.cli import main

    tiny = ["train.time_budget_s=null", "data.n_train=4", "data.n_val=2", "data.batch_size=2",
            "data.eval_batch_size=2", "run.progress=off", "run.tensorboard=false", "run.plots=false",
            "train.threads=1", "train.max_steps=2", "train.epochs=1", "model.args.d_model=32",
            "model.args.dim_feedforward=64", "model.args.num_encoder_layers=1", "model.args.num_decoder_layers=1"]
    assert main(["detect", "train", "detect_scenes_detr", "--set", *tiny, "--out-dir", str(tmp_path),
                 "--name", "run"]) == 0
    assert main(["detect", "eval", str(tmp_path / "run"), "--score-thresh", "0.01"]) == 0
