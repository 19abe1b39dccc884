"""Layers that recur across families, one job per file."""

from .activations import HardSigmoid, HardSwish, Swish, hard_sigmoid, hard_swish
from .additive_attention import AdditiveAttention, HardAttention, HardAttentionOutput
from .attention import MultiHeadAttention, attention_explicit, scaled_dot_product_attention
from .channel_shuffle import ChannelShuffle, channel_shuffle, channel_unshuffle
from .conv_norm_act import ConvNormAct
from .drop_path import DropPath, drop_path, drop_path_rates
from .helpers import make_divisible, to_2tuple
from .mlp import Mlp
from .mobile_blocks import DepthwiseSeparableConv, InvertedResidual, separable_conv_cost
from .patch_embed import PatchEmbed
from .pos_embed import (
    LearnedPositionEmbedding,
    RelativePositionBias,
    SinusoidalPositionalEncoding,
    relative_position_index,
    resize_pos_embed,
    resize_rel_pos_bias_table,
    sinusoidal_position_encoding,
)
from .squeeze_excite import SqueezeExcite

__all__ = [
    "AdditiveAttention",
    "HardAttention",
    "HardAttentionOutput",
    "MultiHeadAttention",
    "attention_explicit",
    "scaled_dot_product_attention",
    "LearnedPositionEmbedding",
    "Mlp",
    "PatchEmbed",
    "RelativePositionBias",
    "SinusoidalPositionalEncoding",
    "relative_position_index",
    "resize_pos_embed",
    "resize_rel_pos_bias_table",
    "sinusoidal_position_encoding",
    "ChannelShuffle",
    "ConvNormAct",
    "DepthwiseSeparableConv",
    "DropPath",
    "HardSigmoid",
    "HardSwish",
    "InvertedResidual",
    "SqueezeExcite",
    "Swish",
    "channel_shuffle",
    "channel_unshuffle",
    "drop_path",
    "drop_path_rates",
    "hard_sigmoid",
    "hard_swish",
    "make_divisible",
    "separable_conv_cost",
    "to_2tuple",
]
