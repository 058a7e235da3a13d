"""Neural-network building blocks: MLPs, conv ResNets, time embeddings, init helpers."""

from __future__ import annotations

from probgen.nn.embeddings import FourierEmbedding, SinusoidalEmbedding
from probgen.nn.init import zero_init_
from probgen.nn.mlp import ACTIVATIONS, MLP, ResidualBlock, ResidualMLP, activation
from probgen.nn.resnet import ConvResidualBlock, ConvResNet

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
]
