"""Data: 2-D toy densities, offline image sets (8x8 digits, MNIST, CIFAR) and invertible
preprocessing."""

from __future__ import annotations

from probgen.data.cifar import CIFAR_SETS, CIFAR_URLS, find_cifar, load_cifar, read_cifar_batch
from probgen.data.images import (
    DIGITS_LEVELS,
    DIGITS_TEST_SIZE,
    MNIST_FILES,
    MNIST_MIRRORS,
    find_mnist,
    load_digits,
    load_mnist,
    read_idx,
)
from probgen.data.pipeline import ImagePreprocess
from probgen.data.preprocess import (
    PREPROCESS_NAMES,
    LogitTransform,
    ScaleTransform,
    binarize,
    dynamic_binarize,
    from_signed,
    to_signed,
    uniform_dequantize,
)
from probgen.data.toy import TOY_NAMES, ToySampler, toy_sample

__all__ = [
    "TOY_NAMES",
    "toy_sample",
    "ToySampler",
    "DIGITS_LEVELS",
    "DIGITS_TEST_SIZE",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "find_mnist",
    "load_digits",
    "load_mnist",
    "read_idx",
    "CIFAR_SETS",
    "CIFAR_URLS",
    "find_cifar",
    "load_cifar",
    "read_cifar_batch",
    "PREPROCESS_NAMES",
    "ImagePreprocess",
    "LogitTransform",
    "ScaleTransform",
    "binarize",
    "dynamic_binarize",
    "from_signed",
    "to_signed",
    "uniform_dequantize",
]
