"""DETR: a CNN, a Transformer encoder-decoder and a set of object queries, trained with a set loss; no NMS.

Carion et al. 2020, "End-to-End Object Detection with Transformers", arXiv:2005.12872.

The CNN's last map (2048 x H/32 x W/32 for a ResNet-50) is projected by a 1x1 convolution to d = 256 channels
and flattened into HW tokens (Sec. 3.2). A Transformer encoder reads them; a decoder turns N = 100 learned
*object queries* into N output embeddings in parallel (no causal mask), each decoded by shared feed-forward heads
into a class (K + 1 logits, the last "no object" ∅) and a box (cx, cy, w, h) normalised by the image size, through
a 3-layer MLP and a sigmoid (Sec. 3.2, Fig. 2). Training matches the N predictions one-to-one to the ground truth
(:mod:`.set_loss`): nothing is predicted twice, so no NMS is needed.

Positions (Sec. 3.2 and appendix A.3): the encoder is permutation-invariant, so fixed 2-D sine encodings of each
token's (y, x) are added to the queries and keys of every attention layer — never to the values — and the
object queries (the decoder's "output positional encodings") are added to the decoder's queries and keys at every
layer, its input being zeros. Post-norm layers as the paper; the decoder's shared final LayerNorm also normalises
the intermediate outputs fed to the auxiliary losses (Sec. 3.2, "Auxiliary decoding losses").

The layers are built on :class:`~paperzoo.layers.attention.MultiHeadAttention` (SDPA, the explicit path) and
:class:`~paperzoo.models.transformer.PositionwiseFeedForward`, but not on the project's ``EncoderLayer`` /
``DecoderLayer``: those attend ``h`` to itself with one fused projection, while DETR needs different inputs for
Q and K (``h + pos``) and V (``h``) — :func:`attend` projects the three with the rows of the same ``in_proj``.

**Against the official DETR-R50** (facebookresearch/detr, ``models/detr.py``, ``transformer.py``,
``backbone.py``, ``main.py``): :func:`detr_resnet50` has the same layers, in the same order, with the same sizes:
41,524,768 parameters, of which 41,302,368 train — the number the official ``main.py`` prints (it counts
``requires_grad`` parameters; conv1 and layer1, 222,400, are frozen there as here, ``trainable_layers=3``, and
the backbone's BatchNorms are FrozenBatchNorm2d buffers). Split: ResNet-50 conv1..layer4 23,454,912, input_proj
524,544, encoder 7,890,432, decoder 9,473,024 (incl. its final LayerNorm), query_embed 25,600, class_embed
23,644 (92 logits), bbox_embed 132,612. State-dict keys match the official ones up to ``backbone.0.body.`` ->
``backbone.``, ``in_proj_weight`` -> ``in_proj.weight``, ``multihead_attn`` -> ``cross_attn`` and
``linear1/2`` -> ``ffn.linear1/2`` (:func:`convert_official_state_dict`).

Deviations from the paper / official code:

* Images go through the toolkit's :class:`~.transform.DetectionTransform` (resize so the short side is
  ``min_size``, long side at most ``max_size``; ImageNet normalisation); the official multi-scale and random-crop
  augmentations are not reproduced (``min_size`` may be a sequence, drawn per batch).
* Labels follow the toolkit's convention (0 = background, never a target): class logit 0 is trained only as a
  wrong class, and inference picks the best of classes 1..K-1, so labels are in 1..num_classes-1 (the official
  post-processing takes the arg-max over 0..K-1; with COCO's 91 ids class 0 is unused there too).
* Inference keeps the queries scoring above ``score_thresh`` (default 0: all N, as the official evaluation),
  best first, and clips their boxes to the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.attention import MultiHeadAttention, scaled_dot_product_attention
from ..layers.frozen_bn import freeze_batch_norm
from ..layers.residual import residual
from ..models.transformer import PositionwiseFeedForward, convert_torch_transformer_state_dict
from ..registry import create_model
from .boxes import box_convert, clip_boxes_to_image
from .faster_rcnn import IMAGENET_MEAN, IMAGENET_STD, freeze_levels, transform_inputs
from .registry import register_detector
from .set_loss import SetCriterion
from .transform import DetectionTransform

__all__ = ["DETR", "DETRTransformer", "MLP", "attend", "sine_position_encoding", "convert_official_state_dict",
           "detr", "detr_resnet50"]


# ----------------------------------------------------------------------------------------- positions
def sine_position_encoding(mask: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0,
                           scale: float = 2 * math.pi) -> Tensor:
    """The 2-D sine encoding of DETR (official ``PositionEmbeddingSine(normalize=True)``): ``(B, 2F, H, W)``.

    Each of y and x gets F channels, Transformer-style (Vaswani et al., Sec. 3.5) with alternating sin / cos:
    ``PE(p, 2k) = sin(p / T^(2k/F))``, ``PE(p, 2k+1) = cos(p / T^(2k/F))``, where p is the 1-based row (column)
    index scaled to (0, 2π] by the image's unpadded height (width), so that every image spans the same range
    whatever its size. Channels are [y-encoding, x-encoding].

    Args:
        mask: ``(B, H, W)`` bool, True at padding (bottom and right).
    """
    valid = ~mask
    y = valid.cumsum(1, dtype=torch.float32)  # (B, H, W): 1..h down each column
    x = valid.cumsum(2, dtype=torch.float32)  # (B, H, W): 1..w along each row
    y = y / (y[:, -1:, :] + 1e-6) * scale  # normalised by the unpadded extent (the last row's count)
    x = x / (x[:, :, -1:] + 1e-6) * scale
    k = torch.arange(num_pos_feats, dtype=torch.float32, device=mask.device)
    freq = temperature ** (2 * (k // 2) / num_pos_feats)  # (F,): T^(2k/F), shared by each sin / cos pair

    def encode(p: Tensor) -> Tensor:
        p = p[..., None] / freq  # (B, H, W, F)
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=4).flatten(3)  # interleaved sin, cos

    return torch.cat((encode(y), encode(x)), dim=3).permute(0, 3, 1, 2)  # (B, H, W, 2F) -> (B, 2F, H, W)


# ----------------------------------------------------------------------------------------- the Transformer
def attend(attn: MultiHeadAttention, query: Tensor, key: Tensor, value: Tensor,
           key_padding_mask: Tensor | None = None) -> Tensor:
    """``attn`` with separate inputs for Q, K and V (Vaswani et al. Sec. 3.2.2): ``(B, L, C)`` out.

    DETR's positions enter queries and keys but not values, so the three differ even in self-attention;
    ``attn``'s stacked ``in_proj`` [Wᑫ; Wᴷ; Wⱽ] is applied row block by row block. ``key_padding_mask``
    ``(B, S)`` is True at padding keys.
    """
    e, heads, d = attn.embed_dim, attn.num_heads, attn.head_dim
    w, b = attn.in_proj.weight, attn.in_proj.bias

    def project(x: Tensor, i: int) -> Tensor:
        x = F.linear(x, w[i * e:(i + 1) * e], None if b is None else b[i * e:(i + 1) * e])  # (B, T, C)
        return x.view(x.shape[0], x.shape[1], heads, d).transpose(1, 2)  # (B, heads, T, d)

    q, k, v = project(query, 0), project(key, 1), project(value, 2)
    mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S) may attend
    out, _ = scaled_dot_product_attention(q, k, v, mask, dropout_p=attn.dropout if attn.training else 0.0)
    out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], e)  # (B, heads, L, d) -> (B, L, C)
    return attn.out_proj(out)


class DETREncoderLayer(nn.Module):
    """Self-attention over the image tokens (positions on Q and K), then the FFN; post-norm by default."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout=dropout)
        self.ffn = PositionwiseFeedForward(d_model, dim_feedforward, act_drop=dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """src, pos: (B, S, C) -> (B, S, C)."""
        src = residual(src, lambda h: attend(self.self_attn, h + pos, h + pos, h, key_padding_mask),
                       self.norm1, self.norm_first, self.drop1)
        return residual(src, self.ffn, self.norm2, self.norm_first, self.drop2)


class DETRDecoderLayer(nn.Module):
    """Self-attention among the queries, cross-attention to the image tokens, FFN; no causal mask."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout=dropout)
        self.cross_attn = MultiHeadAttention(d_model, nhead, dropout=dropout)
        self.ffn = PositionwiseFeedForward(d_model, dim_feedforward, act_drop=dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.drop1, self.drop2, self.drop3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor,
                memory_key_padding_mask: Tensor | None) -> Tensor:
        """tgt, query_pos: (B, N, C); memory, pos: (B, S, C) -> (B, N, C)."""
        nf = self.norm_first
        tgt = residual(tgt, lambda h: attend(self.self_attn, h + query_pos, h + query_pos, h), self.norm1, nf,
                       self.drop1)
        tgt = residual(tgt, lambda h: attend(self.cross_attn, h + query_pos, memory + pos, memory,
                                             memory_key_padding_mask), self.norm2, nf, self.drop2)
        return residual(tgt, self.ffn, self.norm3, nf, self.drop3)


class DETREncoder(nn.Module):
    def __init__(self, layers: list[DETREncoderLayer], norm: nn.LayerNorm | None) -> None:
        super().__init__()
        self.layers, self.norm = nn.ModuleList(layers), norm  # the final norm only with pre-norm (official)

    def forward(self, src: Tensor, pos: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, key_padding_mask)
        return src if self.norm is None else self.norm(src)


class DETRDecoder(nn.Module):
    def __init__(self, layers: list[DETRDecoderLayer], norm: nn.LayerNorm) -> None:
        super().__init__()
        self.layers, self.norm = nn.ModuleList(layers), norm

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor,
                memory_key_padding_mask: Tensor | None) -> Tensor:
        """Every layer's output through the shared final LayerNorm: (L, B, N, C), for the auxiliary losses."""
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, memory_key_padding_mask)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class DETRTransformer(nn.Module):
    """The encoder-decoder of Sec. 3.2 / Fig. 10; Xavier-uniform matrices as the official code."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, norm_first: bool = False) -> None:
        super().__init__()
        args = (d_model, nhead, dim_feedforward, dropout, norm_first)
        self.d_model = d_model
        self.encoder = DETREncoder([DETREncoderLayer(*args) for _ in range(num_encoder_layers)],
                                   nn.LayerNorm(d_model) if norm_first else None)
        self.decoder = DETRDecoder([DETRDecoderLayer(*args) for _ in range(num_decoder_layers)], nn.LayerNorm(d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor) -> Tensor:
        """src, pos: (B, C, H, W); mask: (B, H, W) True at padding; query_embed: (N, C) -> (L, B, N, C)."""
        src = src.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        pos = pos.flatten(2).transpose(1, 2)  # (B, HW, C)
        padding = mask.flatten(1)  # (B, HW)
        padding = padding if bool(padding.any()) else None  # no mask: SDPA's fastest kernels
        query_pos = query_embed[None].expand(src.shape[0], -1, -1)  # (N, C) -> (B, N, C)
        memory = self.encoder(src, pos, padding)
        return self.decoder(torch.zeros_like(query_pos), memory, pos, query_pos, padding)


class MLP(nn.Module):
    """The box head: ``num_layers`` linear layers with ReLU between them (Sec. 3.2, "Prediction FFNs")."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


# ----------------------------------------------------------------------------------------------- the model
class DETR(nn.Module):
    """DETR (Carion et al. 2020) on one feature map of a ``features_only`` CNN.

    Args:
        backbone: a :class:`~paperzoo.models.features.FeatureExtractor` returning one map (its last level).
        num_classes: classes including the background (91 for COCO's category ids); the class head has
            ``num_classes + 1`` outputs, the last one "no object".
        num_queries: N, the most objects an image can have (100).
        d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout, norm_first: the
            Transformer (256, 8, 6, 6, 2048, 0.1, post-norm).
        aux_loss: the set loss on every decoder layer's output, not only the last (Sec. 3.2).
        min_size, max_size, image_mean, image_std, size_divisible: the transform.
        score_thresh: inference keeps queries whose best class probability exceeds it.
        cost_class, cost_bbox, cost_giou, loss_ce, loss_bbox, loss_giou, eos_coef: :class:`~.set_loss.SetCriterion`.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, num_queries: int = 100, d_model: int = 256,
                 nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, norm_first: bool = False, aux_loss: bool = True,
                 min_size: int | Sequence[int] = 800, max_size: int = 1333,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 size_divisible: int = 1, score_thresh: float = 0.0, cost_class: float = 1.0,
                 cost_bbox: float = 5.0, cost_giou: float = 2.0, loss_ce: float = 1.0, loss_bbox: float = 5.0,
                 loss_giou: float = 2.0, eos_coef: float = 0.1) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and at least one class, got {num_classes}")
        if len(backbone.feature_info.channels()) != 1:
            raise ValueError("DETR reads one feature map: build the backbone with a single out_indices level")
        self.num_classes, self.aux_loss, self.score_thresh = num_classes, aux_loss, score_thresh
        self.transform = DetectionTransform(min_size, max_size, image_mean, image_std, size_divisible)
        self.backbone = backbone
        self.input_proj = nn.Conv2d(backbone.feature_info.channels()[0], d_model, kernel_size=1)  # C -> d
        self.query_embed = nn.Embedding(num_queries, d_model)  # the object queries
        self.transformer = DETRTransformer(d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward,
                                           dropout, norm_first)
        self.class_embed = nn.Linear(d_model, num_classes + 1)  # + "no object"
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        self.criterion = SetCriterion(num_classes, cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou,
                                      loss_ce=loss_ce, loss_bbox=loss_bbox, loss_giou=loss_giou, eos_coef=eos_coef)
        # optim.backbone_lr_mult scales the rate of everything outside these (the CNN), as DETR's lr_backbone
        self.head_names = ("input_proj", "query_embed", "transformer", "class_embed", "bbox_embed")

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None,
                proposals: Any = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections in eval mode (``proposals`` is accepted and ignored).

        Args:
            images: ``(3, H_i, W_i)`` float RGB in [0, 1].
            targets: per image ``{"boxes": (M, 4) xyxy pixels, "labels": (M,) int64 in 1..num_classes-1}``.

        Returns:
            training: ``loss_ce``, ``loss_bbox``, ``loss_giou`` (and ``loss_*_<l>`` per earlier decoder layer
            with ``aux_loss``), weighted by their λ, plus the logged ``class_error`` and ``cardinality_error``;
            eval: per image ``{"boxes": (K, 4) xyxy in original coordinates, "scores": (K,), "labels": (K,)}``.
        """
        batch, targets, original_sizes = transform_inputs(self, images, targets)
        logits, boxes = self.predict(batch.tensors, batch.image_sizes)  # (L, B, N, K+1), (L, B, N, 4)
        if self.training:
            return self.criterion(logits, boxes, _normalized_targets(targets, batch.image_sizes), self.aux_loss)
        return self.postprocess(logits[-1], boxes[-1], original_sizes)

    def predict(self, images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Every decoder layer's class logits ``(L, B, N, K + 1)`` and boxes ``(L, B, N, 4)`` (cxcywh in [0, 1])."""
        feature = self.backbone(images)[0]  # (B, C, h, w)
        padding = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        for pad, (h, w) in zip(padding, image_sizes):
            pad[:h, :w] = False  # (H, W): True on the padding the batch added
        mask = F.interpolate(padding[None].float(), size=feature.shape[-2:])[0].bool()  # (B, h, w), nearest
        pos = sine_position_encoding(mask, self.transformer.d_model // 2).to(feature.dtype)  # (B, d, h, w)
        hs = self.transformer(self.input_proj(feature), mask, self.query_embed.weight, pos)  # (L, B, N, d)
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid()

    @torch.no_grad()
    def postprocess(self, logits: Tensor, boxes: Tensor, sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """One detection per query above ``score_thresh``, best first: no NMS (Sec. 3). ``logits`` (B, N, K+1)."""
        prob = logits.float().softmax(-1)
        scores, labels = prob[..., 1:-1].max(-1)  # (B, N): the best real class (not background, not ∅)
        out = []
        for s, lab, b, (h, w) in zip(scores, labels + 1, boxes.float(), sizes):
            xyxy = box_convert(b, "cxcywh", "xyxy") * b.new_tensor([w, h, w, h])  # relative -> original pixels
            order = s.argsort(descending=True)
            order = order[s[order] > self.score_thresh]
            out.append({"boxes": clip_boxes_to_image(xyxy[order], (h, w)), "scores": s[order], "labels": lab[order]})
        return out


def _normalized_targets(targets: Sequence[dict[str, Tensor]], sizes: Sequence[tuple[int, int]]
                        ) -> list[dict[str, Tensor]]:
    """Targets in the set loss's frame: boxes cxcywh relative to each (resized, unpadded) image."""
    out = []
    for t, (h, w) in zip(targets, sizes):
        scale = t["boxes"].new_tensor([w, h, w, h])
        out.append({"labels": t["labels"], "boxes": box_convert(t["boxes"], "xyxy", "cxcywh") / scale})
    return out


def convert_official_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of a facebookresearch/detr checkpoint's ``model`` dict to this file's (same tensors)."""
    sd = {k.replace("backbone.0.body.", "backbone.", 1): v for k, v in sd.items()}
    return convert_torch_transformer_state_dict(sd)  # its layers are nn.Transformer's: the same renames


# ----------------------------------------------------------------------------------------- registered models
def _backbone(name: str, level: int, frozen_bn: bool, trainable_layers: int | None,
              backbone_args: dict[str, Any] | None) -> nn.Module:
    body = create_model(name, features_only=True, out_indices=(level,), **(backbone_args or {}))
    if frozen_bn:
        freeze_batch_norm(body)
    if trainable_layers is not None:
        freeze_levels(body, trainable_layers)
    return body


@register_detector
def detr_resnet50(*, num_classes: int = 91, frozen_bn: bool = True, trainable_layers: int = 3,
                  **kw: Any) -> DETR:
    """The official DETR-R50: ResNet-50 C5, d 256, 8 heads, 6+6 layers, FFN 2048, 100 queries, 92 logits.

    41,524,768 parameters, 41,302,368 of them trainable (conv1 and layer1 frozen, FrozenBatchNorm2d): the
    official ``main.py``'s count. A checkpoint of the official repository loads after
    :func:`convert_official_state_dict`.
    """
    model = DETR(_backbone("resnet50", -1, frozen_bn, trainable_layers, None), num_classes, **kw)
    model.model_family, model.backbone_name = "detr", "resnet50"
    return model


@register_detector
def detr(*, backbone: str = "resnet18", num_classes: int = 91, feature_level: int = -2, frozen_bn: bool = False,
         trainable_layers: int | None = None, backbone_args: dict[str, Any] | None = None, **kw: Any) -> DETR:
    """DETR on any registered CNN, sized for small scenes: stride-16 map, d 128, 3+3 layers, 25 queries.

    ``feature_level`` picks the backbone level (-2: a ResNet's layer3, stride 16, so a 128-pixel scene gives
    8 x 8 tokens rather than layer4's 4 x 4); ``**kw`` go to :class:`DETR`. From scratch by default (BatchNorm,
    every level trains); for a pretrained backbone take ``frozen_bn=True, trainable_layers=3``.
    """
    small = {"num_queries": 25, "d_model": 128, "nhead": 8, "num_encoder_layers": 3, "num_decoder_layers": 3,
             "dim_feedforward": 512, "min_size": 128, "max_size": 128}
    model = DETR(_backbone(backbone, feature_level, frozen_bn, trainable_layers, backbone_args), num_classes,
                 **{**small, **kw})
    model.model_family, model.backbone_name = "detr", backbone
    return model
