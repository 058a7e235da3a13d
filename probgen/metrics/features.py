r"""Feature extractors for sample-quality metrics: the bundled MNIST classifier and Inception.

A feature extractor is any callable that maps a batch of samples ``(batch, *event)`` to
vectors ``(batch, D)``; every metric of :mod:`probgen.metrics` accepts one. Two are offered:

- :func:`mnist_classifier`: a small convolutional MNIST classifier whose weights ship inside
  the package (``mnist_classifier.pt``, about 0.4 MB, loaded with ``weights_only=True``),
  trained by ``benchmarks/train_mnist_features.py`` (its test accuracy is recorded in
  ``benchmarks/RESULTS.md``). A Frechet distance in its 128-d feature space is an *MNIST
  classifier FID*, not the Inception FID of Heusel et al. (2017); the numbers of the two are
  not comparable.
- :func:`inception_extractor`: the 2048-d pool features of the FID Inception-v3 network
  (:mod:`probgen.metrics.inception`), when its weights file is on disk. Nothing is ever
  downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from probgen.metrics.inception import load_fid_inception
from probgen.utils import all_finite

__all__ = [
    "FeatureExtractor",
    "MNISTClassifier",
    "mnist_classifier",
    "inception_extractor",
    "as_mnist_images",
    "MNIST_WEIGHTS",
]

#: Any callable from samples ``(batch, *event)`` to features ``(batch, D)``.
FeatureExtractor = Callable[[Tensor], Tensor]

#: File name of the bundled classifier weights inside ``probgen.metrics``.
MNIST_WEIGHTS = "mnist_classifier.pt"

# Mean and standard deviation of MNIST training pixels in [0, 1].
_MNIST_MEAN, _MNIST_STD = 0.1307, 0.3081


def as_mnist_images(x: Tensor) -> Tensor:
    """Brings MNIST-like samples to float images ``(batch, 1, 28, 28)`` with values in [0, 1].

    Args:
        x: ``uint8`` pixels 0..255, or floats already in [0, 1], of shape
            ``(batch, 1, 28, 28)``, ``(batch, 28, 28)`` or ``(batch, 784)``.

    Returns:
        Tensor: float32 images of shape ``(batch, 1, 28, 28)``.

    Raises:
        TypeError: ``x`` is not a tensor, or neither ``uint8`` nor floating point.
        ValueError: a shape other than the three above, or NaN/Inf values.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a tensor of MNIST images, got {type(x).__name__}.")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise TypeError(f"x: expected uint8 pixels or floats in [0, 1], got dtype {x.dtype}.")
    shape = tuple(x.shape)
    if x.dim() == 2 and shape[1] == 784:
        x = x.reshape(-1, 1, 28, 28)
    elif x.dim() == 3 and shape[1:] == (28, 28):
        x = x.unsqueeze(1)
    elif not (x.dim() == 4 and shape[1:] == (1, 28, 28)):
        raise ValueError(
            "x: expected MNIST images of shape (batch, 1, 28, 28), (batch, 28, 28) or "
            f"(batch, 784), got {shape}."
        )
    if not all_finite(x):
        raise ValueError("x: contains NaN or Inf values.")
    return x.float()


def _block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MNISTClassifier(nn.Module):
    """A small convolutional MNIST classifier, used as a feature extractor for metrics.

    Layers: conv 16, conv 32, max-pool (14x14), conv 64, max-pool (7x7), conv 128 with
    stride 2 (4x4), each 3x3 with batch norm and ReLU; global average pooling gives the
    128-d features; a linear layer gives the 10 logits. About 99 000 parameters.

    Inputs are anything :func:`as_mnist_images` accepts (``uint8`` 0..255 or floats in
    [0, 1]); they are standardized inside. Call ``.eval()`` before extracting features
    (:func:`mnist_classifier` returns it in eval mode).
    """

    feature_dim: int = 128
    num_classes: int = 10

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_block(1, 16), *_block(16, 32), nn.MaxPool2d(2),
            *_block(32, 64), nn.MaxPool2d(2),
            *_block(64, 128, stride=2),
        )
        self.head = nn.Linear(128, 10)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last convolutional activations, shape ``(batch, 128, 4, 4)``."""
        x = as_mnist_images(x).to(self.head.weight.device)
        return self.body((x - _MNIST_MEAN) / _MNIST_STD)

    def features(self, x: Tensor) -> Tensor:
        """The 128-d features (global average of :meth:`feature_map`), ``(batch, 128)``."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, shape ``(batch, 10)``."""
        return self.head(self.features(x))

    def probabilities(self, x: Tensor) -> Tensor:
        """Class probabilities (softmax of the logits), shape ``(batch, 10)``."""
        return torch.softmax(self(x), dim=-1)


def _weights_path() -> Path:
    return Path(str(resources.files("probgen.metrics") / MNIST_WEIGHTS))


def mnist_classifier(
    weights: str | os.PathLike | None = None,
    *,
    device: torch.device | str | None = None,
) -> MNISTClassifier:
    """Returns the MNIST classifier with trained weights, in eval mode, gradients off.

    Args:
        weights: a file written by ``benchmarks/train_mnist_features.py``; ``None`` loads
            the weights bundled with probgen.
        device: where to put the network (CPU when ``None``).

    Returns:
        MNISTClassifier: ready to use; ``net.features`` is the feature extractor for
        FID/KID/precision-recall on MNIST, ``net.probabilities`` the classifier for
        :func:`probgen.metrics.inception_score`.

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        ValueError: the file does not hold this network's weights.

    Example:
        >>> net = mnist_classifier()
        >>> net.features(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 128])
    """
    path = Path(weights) if weights is not None else _weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights: {str(path)!r} does not exist; train it with "
            "benchmarks/train_mnist_features.py or pass weights=None for the bundled file."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"weights: {str(path)!r} holds no 'state_dict' entry.")
    net = MNISTClassifier()
    try:
        net.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"weights: {str(path)!r} does not fit MNISTClassifier: {e}") from e
    net.eval().requires_grad_(False)
    return net.to(device) if device is not None else net


#: The converted weight files of the FID Inception network, by the tools that publish them.
_INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth",
                    "pt_inception-2015-12-05-6726825d.pth")


def inception_extractor(
    weights: str | os.PathLike | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> FeatureExtractor:
    """The 2048-d FID Inception-v3 features (:mod:`probgen.metrics.inception`), from a
    weights file on disk.

    Images are ``(batch, 3, H, W)`` (``uint8`` 0..255, or floats in [0, 1]) or grayscale
    ``(batch, 1, H, W)``, repeated to three channels; the network resizes them to 299x299
    as the FID reference code does. Only a weights file already present locally is used:
    nothing is downloaded.

    Args:
        weights: path to the converted weights (torch-fidelity's
            ``weights-inception-2015-12-05-6726825d.pth`` or pytorch-fid's
            ``pt_inception-2015-12-05-6726825d.pth``); ``None`` looks for either in
            ``$TORCH_HOME/hub/checkpoints`` (torch's download cache).
        device: where to run the network.
        dtype: the network's float type.

    Returns:
        Callable: images ``(batch, C, H, W)`` to float32 features ``(batch, 2048)``.

    Raises:
        FileNotFoundError: the weights file is not on disk (it says where it looked).
        ValueError: the file is not the Inception weights.
    """
    if weights is None:
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        found = [folder / name for name in _INCEPTION_FILES if (folder / name).is_file()]
        weights = found[0] if found else folder / _INCEPTION_FILES[0]
    net = load_fid_inception(weights, dtype=dtype)
    if device is not None:
        net = net.to(device)

    def extract(x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"x: expected images of shape (batch, 1 or 3, H, W), got {tuple(x.shape)}."
            )
        if x.is_floating_point():
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        elif x.dtype != torch.uint8:
            raise TypeError(f"x: expected uint8 or floats in [0, 1], got dtype {x.dtype}.")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        with torch.no_grad():
            return net(x.to(device) if device is not None else x)[0].float()

    return extract

