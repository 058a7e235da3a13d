"""The bundled MNIST classifier: file, loading, inputs, and >= 99% test accuracy on MNIST."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch

from probgen.data import load_mnist
from probgen.metrics import (
    MNISTClassifier,
    as_mnist_images,
    fid,
    inception_extractor,
    inception_score,
    mnist_classifier,
)

WEIGHTS = resources.files("probgen.metrics") / "mnist_classifier.pt"


def test_bundled_weights_are_small_and_load_with_weights_only():
    assert WEIGHTS.is_file()
    assert Path(str(WEIGHTS)).stat().st_size < 1_000_000
    state = torch.load(str(WEIGHTS), weights_only=True)
    assert state["test_accuracy"] >= 0.99
    net = mnist_classifier()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    fresh = MNISTClassifier()
    assert set(fresh.state_dict()) == set(state["state_dict"])


def test_inputs_in_every_accepted_layout_give_the_same_features():
    net = mnist_classifier()
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (5, 1, 28, 28), generator=g, dtype=torch.uint8)
    unit = pixels.float() / 255
    f = net.features(unit)
    assert f.shape == (5, 128) and (f >= 0).all()  # averaged ReLU activations
    torch.testing.assert_close(net.features(pixels), f)
    torch.testing.assert_close(net.features(unit.reshape(5, 784)), f)
    torch.testing.assert_close(net.features(unit[:, 0]), f)
    p = net.probabilities(unit)
    torch.testing.assert_close(p.sum(1), torch.ones(5))
    assert net.feature_map(unit).shape == (5, 128, 4, 4)


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"\(batch, 784\)"):
        as_mnist_images(torch.zeros(2, 3, 28, 28))
    with pytest.raises(TypeError, match="uint8 pixels or floats"):
        as_mnist_images(torch.zeros(2, 784, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        as_mnist_images(torch.full((1, 784), float("nan")))
    with pytest.raises(FileNotFoundError, match="train_mnist_features"):
        mnist_classifier("/nonexistent/weights.pt")
    # Never downloads: without its weights on disk it refuses, saying where it looked.
    with pytest.raises(FileNotFoundError, match="/nonexistent/inception.pth"):
        inception_extractor("/nonexistent/inception.pth")


@pytest.mark.mnist
def test_test_accuracy_is_at_least_99_percent(mnist_root):
    images, labels = load_mnist(mnist_root, "test")
    net = mnist_classifier()
    with torch.no_grad():
        pred = torch.cat([net(b).argmax(1) for b in images.split(2000)])
    accuracy = (pred == labels).double().mean().item()
    assert accuracy >= 0.99, accuracy


@pytest.mark.mnist
def test_classifier_fid_and_score_separate_real_from_corrupted_digits(mnist_root):
    test, _ = load_mnist(mnist_root, "test")
    train, _ = load_mnist(mnist_root, "train")
    net = mnist_classifier()
    real, other = test[:2000], train[:2000]
    g = torch.Generator().manual_seed(0)
    noisy = (real.float() / 255 + 0.3 * torch.randn(real.shape, generator=g)).clamp(0, 1)
    same = fid(real, other, net.features)
    corrupted = fid(real, noisy, net.features)
    assert corrupted > 10 * same
    score = inception_score(real, net.probabilities)
    assert score.mean > 8.5  # confident and balanced over 10 classes (at most 10)
