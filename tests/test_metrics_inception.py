"""The FID Inception-v3 network: TensorFlow 1's resize, the architecture, weight files, and
equality with the reference implementation (torch-fidelity's) on shared random weights."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from probgen.metrics import FIDInceptionV3, inception_extractor, load_fid_inception, tf1_resize


def _tf1_resize_loop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """TensorFlow 1's resize_bilinear (align_corners=False) written out pixel by pixel."""
    out = torch.empty(x.shape[0], x.shape[1], h, w, dtype=torch.float64)
    H, W = x.shape[2:]
    for i in range(h):
        sy = i * H / h
        y0 = int(sy)
        y1, fy = min(y0 + 1, H - 1), sy - y0
        for j in range(w):
            sx = j * W / w
            x0 = int(sx)
            x1, fx = min(x0 + 1, W - 1), sx - x0
            top = x[:, :, y0, x0] * (1 - fx) + x[:, :, y0, x1] * fx
            bottom = x[:, :, y1, x0] * (1 - fx) + x[:, :, y1, x1] * fx
            out[:, :, i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("size_in,size_out", [((5, 7), (13, 11)), ((8, 8), (3, 5)),
                                              ((4, 6), (4, 6)), ((1, 3), (2, 7))])
def test_tf1_resize_is_the_pixel_rule(size_in, size_out):
    x = torch.randn(2, 3, *size_in, dtype=torch.float64)
    assert torch.allclose(tf1_resize(x, size_out), _tf1_resize_loop(x, *size_out), atol=1e-12)


def _random_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights that keep activations of order one through the 94 convolutions."""
    torch.manual_seed(seed)
    net = FIDInceptionV3()
    state = {}
    for name, value in net.state_dict().items():
        if name.endswith("conv.weight"):
            fan_in = value[0].numel()
            value = torch.randn_like(value) * (2.0 / fan_in) ** 0.5
        elif name.endswith("bn.weight"):
            value = 1 + 0.1 * torch.randn_like(value)
        elif name.endswith(("bn.bias", "bn.running_mean")):
            value = 0.1 * torch.randn_like(value)
        elif name.endswith("bn.running_var"):
            value = 1 + 0.1 * torch.rand_like(value)
        elif name.startswith("fc."):
            value = 0.05 * torch.randn_like(value)
        state[name] = value
    return state


def test_architecture_shapes_and_weight_files(tmp_path):
    state = _random_weights()
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    net = load_fid_inception(path, features=("64", "192", "768", "2048", "logits"))
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    outs = net(x)
    assert [tuple(o.shape) for o in outs] == [(2, 64), (2, 192), (2, 768), (2, 2048), (2, 1008)]
    assert all(torch.isfinite(o).all() for o in outs)
    assert 0.05 < float(outs[3].std()) < 20  # activations of order one
    # features of an image depend on that image only (eval-mode batch norm)
    assert torch.allclose(net(x[:1])[3], outs[3][:1], atol=1e-5)
    # the extractor: grayscale and [0, 1] floats
    extract = inception_extractor(path)
    gray = torch.rand(2, 1, 28, 28)
    rgb = (gray.expand(-1, 3, -1, -1) * 255).round().to(torch.uint8)
    assert torch.allclose(extract(gray), load_fid_inception(path)(rgb)[0], atol=1e-5)
    # a foreign file is a one-line error naming it
    torch.save({"weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match=r"foreign.pth: not the FID Inception-v3 weights"):
        load_fid_inception(tmp_path / "foreign.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"broken.pth: not a torch state dict"):
        load_fid_inception(tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="features: expected names in"):
        FIDInceptionV3(("4096",))


@pytest.fixture
def torch_fidelity_extractor():
    """torch-fidelity's Inception class, imported beside the benchmarks' torchvision
    stand-in; the stand-in and the peer's modules are removed again afterwards."""
    if importlib.util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity (a benchmark peer: make bench) is not installed")
    before = set(sys.modules)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from _peers import stub_torchvision

        stub_torchvision()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        yield FeatureExtractorInceptionV3
    finally:
        sys.path.pop(0)
        for name in set(sys.modules) - before:
            if name.split(".")[0] in ("torchvision", "torch_fidelity", "_peers"):
                del sys.modules[name]


@pytest.mark.slow
def test_features_equal_torch_fidelity_on_shared_random_weights(tmp_path,
                                                                torch_fidelity_extractor):
    reference = torch_fidelity_extractor
    path = tmp_path / "weights.pth"
    torch.save(_random_weights(1), path)
    names = ["64", "192", "768", "2048", "logits_unbiased", "logits"]
    theirs = reference("inception-v3-compat", names, feature_extractor_weights_path=str(path))
    ours = load_fid_inception(path, features=tuple(names))
    torch.manual_seed(2)
    for size in (32, 28, 299):
        x = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
        with torch.no_grad():
            expected = theirs(x)
            got = ours(x)
        for name, a, b in zip(names, got, expected, strict=True):
            assert a.shape == b.shape, name
            assert float((a - b).abs().max()) < 1e-4, (size, name, float((a - b).abs().max()))
