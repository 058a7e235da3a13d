"""Neural-network building blocks: MLPs, conv ResNets, masked layers, time embeddings, init,
conditional networks net(x, t, labels) (a 2-D MLP, a U-Net and a
diffusion transformer), ViT encoders and decoders."""

from __future__ import annotations

from probgen.nn.conditional import (
    ConditionalMLP,
    ConditionEmbedding,
    check_labels,
    check_time,
    image_condition,
)
from probgen.nn.dit import DiT
from probgen.nn.embeddings import FourierEmbedding, SinusoidalEmbedding
from probgen.nn.init import zero_init_
from probgen.nn.masked import (
    MaskedConv2d,
    MaskedLinear,
    MaskedMLP,
    causal_mask,
    channel_groups,
    conv_mask,
    made_masks,
)
from probgen.nn.mlp import ACTIVATIONS, MLP, ResidualBlock, ResidualMLP, activation
from probgen.nn.resnet import ConvResidualBlock, ConvResNet
from probgen.nn.transformer import SelfAttention, TransformerBlock, sincos_positions
from probgen.nn.unet import UNet, UNetClassifier
from probgen.nn.vit import ViTDecoder, ViTEncoder

__all__ = [
    "ACTIVATIONS",
    "activation",
    "MLP",
    "ResidualBlock",
    "ResidualMLP",
    "ConvResidualBlock",
    "ConvResNet",
    "SinusoidalEmbedding",
    "FourierEmbedding",
    "zero_init_",
    "MaskedLinear",
    "MaskedMLP",
    "made_masks",
    "MaskedConv2d",
    "conv_mask",
    "channel_groups",
    "causal_mask",
    "ConditionEmbedding",
    "ConditionalMLP",
    "check_time",
    "check_labels",
    "image_condition",
    "UNet",
    "UNetClassifier",
    "DiT",
    "SelfAttention",
    "TransformerBlock",
    "sincos_positions",
    "ViTEncoder",
    "ViTDecoder",
]
