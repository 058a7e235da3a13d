r"""The FID Inception-v3 network: the features every published FID, KID and IS are computed in.

Heusel et al. (2017) compute FID in the 2048-d pool features of the TensorFlow graph
``inception-2015-12-05`` (Szegedy et al., 2016), with two quirks that later Inception-v3
implementations lack: inside ``Mixed_5*``, ``Mixed_6*`` and ``Mixed_7b`` the pooling branch
averages over the valid pixels only (no zero padding counted), and ``Mixed_7c`` pools by a
maximum; images are resized to 299x299 by TensorFlow 1's bilinear rule (source coordinate
``out * in/out``, no half-pixel offset) and mapped to ``(x - 128)/128``. This module builds
that network with the parameter names of the converted weight files the FID tools
distribute (``weights-inception-2015-12-05-6726825d.pth`` of torch-fidelity,
``pt_inception-2015-12-05-6726825d.pth`` of pytorch-fid: the same tensors), so either file,
given by the user, loads with ``weights_only=True``; nothing is downloaded. Written here
because the tools that ship it depend on torchvision or download at run time.

References:
    GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium
    (Heusel et al., 2017), https://arxiv.org/abs/1706.08500
    Rethinking the Inception Architecture for Computer Vision (Szegedy et al., 2016),
    https://arxiv.org/abs/1512.00567
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["FIDInceptionV3", "INCEPTION_FEATURES", "tf1_resize", "load_fid_inception"]

#: The outputs :class:`FIDInceptionV3` can return, by name: pooled block features of width
#: 64, 192, 768 and 2048 (``"2048"``: FID's), the 1008 class logits and the logits without
#: the bias (``"logits_unbiased"``, as used for the Inception score by torch-fidelity).
INCEPTION_FEATURES: tuple[str, ...] = ("64", "192", "768", "2048", "logits_unbiased", "logits")
_SIZE = 299


def _interpolation_matrix(size_in: int, size_out: int, dtype: torch.dtype,
                          device: torch.device | None) -> Tensor:
    """``(size_out, size_in)`` weights of TensorFlow 1's bilinear resize along one axis."""
    src = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    lo = src.floor().long().clamp(max=size_in - 1)
    hi = (lo + 1).clamp(max=size_in - 1)
    frac = src - lo
    w = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    w.index_put_((rows, lo), 1 - frac, accumulate=True)
    w.index_put_((rows, hi), frac, accumulate=True)
    return w.to(dtype=dtype, device=device)


def tf1_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    r"""Resizes images ``(batch, C, H, W)`` to ``size`` by TensorFlow 1's bilinear rule.

    Output pixel ``i`` reads the source coordinate :math:`i\,H/H'` (no half-pixel offset,
    unlike ``torch.nn.functional.interpolate``), linearly between its floor and the next
    pixel (the last pixel repeated at the border): the resize of the FID reference code.
    Computed as two small matrix products, one per axis.

    Example:
        >>> x = torch.arange(4.0).reshape(1, 1, 1, 4)
        >>> [round(v, 4) for v in tf1_resize(x, (1, 8)).flatten().tolist()]
        [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x: expected floating images (batch, C, H, W), got "
                         f"{x.dtype} {tuple(x.shape)}.")
    rows = _interpolation_matrix(x.shape[2], size[0], x.dtype, x.device)
    cols = _interpolation_matrix(x.shape[3], size[1], x.dtype, x.device)
    return rows @ x @ cols.T


class _Conv(nn.Sequential):
    """Convolution (no bias), batch norm (eps 1e-3, as the TensorFlow graph), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)
        self.relu = nn.ReLU()


def _avg_valid(x: Tensor) -> Tensor:
    """3x3 average over the valid pixels (the graph's pooling branches: padding not counted)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):  # Mixed_5b-d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1
    def __init__(self, cin: int, pool: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_valid(x))], 1)


class _BlockB(nn.Module):  # Mixed_6a: stride-2 3x3 | 1x1-3x3-3x3/2 | max pool
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):  # Mixed_6b-e: factorized 7x7 convolutions
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_valid(x))], 1)


class _BlockD(nn.Module):  # Mixed_7a: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        d = x
        for i in range(1, 5):
            d = getattr(self, f"branch7x7x3_{i}")(d)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), d,
                          F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):  # Mixed_7b/c: split 1x3 / 3x1 heads; 7c pools by a maximum
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_valid(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
                          self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    r"""Creates the FID Inception-v3 network ``uint8 (batch, 3, H, W) -> features``.

    Input images of any size are resized to 299x299 (:func:`tf1_resize`) and mapped to
    ``(x - 128)/128``; the network returns the requested :data:`INCEPTION_FEATURES`. Its
    parameters are random until a weights file is loaded (:func:`load_fid_inception`);
    the module runs in eval mode (batch norm uses its running statistics).

    Args:
        features: names in :data:`INCEPTION_FEATURES` (default ``("2048",)``, FID's).

    Shapes:
        input ``(batch, 3, H, W)``, ``uint8`` 0..255 (or floats on that scale); each output
        ``(batch, D)`` float32.
    """

    def __init__(self, features: tuple[str, ...] = ("2048",)) -> None:
        super().__init__()
        bad = [f for f in features if f not in INCEPTION_FEATURES]
        if not features or bad:
            raise ValueError(f"features: expected names in {list(INCEPTION_FEATURES)}, got "
                             f"{list(features)}.")
        self.features = tuple(features)
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (_BlockA(192, 32), _BlockA(256, 64),
                                                       _BlockA(288, 64))
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FIDInceptionV3:
        """Always eval mode: a feature network's batch norm never uses batch statistics."""
        return super().train(False)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """The requested features of images ``x``, in the order of :attr:`features`."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected images (batch, 3, H, W), got {tuple(x.shape)}.")
        dtype = self.fc.weight.dtype
        h = tf1_resize(x.to(dtype), (_SIZE, _SIZE))
        h = (h - 128) / 128
        out: dict[str, Tensor] = {}
        pool = lambda t: t.mean((2, 3))  # noqa: E731 - the global average pool
        h = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(h))), 3, 2)
        out["64"] = pool(h)
        h = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(h)), 3, 2)
        out["192"] = pool(h)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e"):
            h = getattr(self, name)(h)
        out["768"] = pool(h)
        h = pool(self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(h))))
        out["2048"] = h
        out["logits_unbiased"] = h @ self.fc.weight.T
        out["logits"] = out["logits_unbiased"] + self.fc.bias
        return tuple(out[f].float() for f in self.features)


def load_fid_inception(weights: str | os.PathLike, *, features: tuple[str, ...] = ("2048",),
                       dtype: torch.dtype = torch.float32) -> FIDInceptionV3:
    """The FID Inception network with the converted TensorFlow weights from ``weights``.

    Args:
        weights: a state dict saved by torch (the FID tools' ``...-2015-12-05-6726825d.pth``
            files); read with ``weights_only=True``.
        features: the outputs (:data:`INCEPTION_FEATURES`).
        dtype: the network's float type (float64 for reference-precision features).

    Raises:
        FileNotFoundError: no file at ``weights``.
        ValueError: a file that is not a state dict of this network (one line naming the
            file and the missing or unexpected keys).
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights: no Inception weights file at {str(path)!r}; probgen "
                                "never downloads them. Place the file there or pass its path.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure: not a usable weights file
        raise ValueError(f"{path}: not a torch state dict ({type(e).__name__}).") from None
    net = FIDInceptionV3(features)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}.")
    expected = set(net.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: not the FID Inception-v3 weights ({len(missing)} missing "
                         f"keys, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. "
                         f"{unexpected[:2]}).")
    net.load_state_dict({k: v for k, v in state.items() if k in expected})
    return net.to(dtype)
