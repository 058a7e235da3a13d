"""probgen.data: toy densities, digits and MNIST loaders, invertible preprocessing."""

from __future__ import annotations

import gzip
import math
import struct

import pytest
import torch
from torch.autograd.functional import jacobian

from probgen.data import (
    DIGITS_LEVELS,
    MNIST_FILES,
    TOY_NAMES,
    ImagePreprocess,
    LogitTransform,
    ScaleTransform,
    ToySampler,
    binarize,
    dynamic_binarize,
    find_mnist,
    from_signed,
    load_digits,
    load_mnist,
    read_idx,
    to_signed,
    toy_sample,
    uniform_dequantize,
)

# ---------------------------------------------------------------- toy densities


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_shape_dtype_determinism(name):
    x = toy_sample(name, 1001, generator=torch.Generator().manual_seed(3))
    assert x.shape == (1001, 1 if name == "mixture1d" else 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.abs().max() < (16 if name == "flower" else 10)  # petals: radius 6, std sqrt(3)
    again = toy_sample(name, 1001, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, again)
    other = toy_sample(name, 1001, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(x, other)


def test_flower_moments_and_mixture():
    # Mean 0; covariance (1/8) I + (7/8)(2 I + 36 I / 2) = 17.625 I (the petals' radial and
    # across variances 3 and 1 average to 2 I over 7 equally spaced angles, their centres'
    # outer products 36 u u^T to 18 I).
    x = toy_sample("flower", 200_000, generator=torch.Generator().manual_seed(0)).double()
    assert x.mean(0).abs().max() < 0.05
    torch.testing.assert_close(x.T.cov(), 17.625 * torch.eye(2, dtype=torch.float64),
                               atol=0.25, rtol=0)
    # Mass of the unit disk: the centre's (1 - e^-1/2) / 8 plus each petal's, integrated
    # numerically from its Gaussian density (about 1e-3 each, the disk being 6 away).
    from scipy import integrate
    from scipy.stats import multivariate_normal

    from probgen.data.toy import flower_parameters

    _, loc, cov = (t.numpy() for t in flower_parameters())
    petal = multivariate_normal(loc[1], cov[1])
    in_petal, _ = integrate.dblquad(
        lambda th, r: r * petal.pdf([r * math.cos(th), r * math.sin(th)]), 0, 1, 0,
        2 * math.pi, epsabs=1e-10)
    expected = (1 - math.exp(-0.5)) / 8 + 7 / 8 * in_petal
    inner = float((x.norm(dim=1) < 1).double().mean())
    assert inner == pytest.approx(expected, abs=4 * math.sqrt(expected / 200_000))


def test_mixture1d_moments():
    # 0.5 N(-1, 0.25) + 0.5 N(1.5, 0.49): mean 0.25, variance 0.37 + 1.5625 = 1.9325.
    x = toy_sample("mixture1d", 200_000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (200_000, 1) and toy_sample("mixture1d", 0).shape == (0, 1)
    assert float(x.mean()) == pytest.approx(0.25, abs=0.01)
    assert float(x.var()) == pytest.approx(1.9325, rel=0.01)
    # P(x < 0.25) = 0.5 Phi(2.5) + 0.5 Phi(-1.25 / 0.7)
    assert float((x < 0.25).double().mean()) == pytest.approx(0.5 * (0.99379 + 0.03707), abs=0.005)


def test_toy_does_not_touch_global_rng():
    state = torch.random.get_rng_state()
    for name in TOY_NAMES:
        toy_sample(name, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.random.get_rng_state())


def test_toy_sampler_protocol():
    from probgen.protocols import BatchSampler

    sampler = ToySampler("checkerboard")
    assert isinstance(sampler, BatchSampler)
    assert sampler.name == "checkerboard" and repr(sampler) == "ToySampler('checkerboard')"
    g = torch.Generator().manual_seed(0)
    a, b = sampler(64, generator=g), sampler(64, generator=g)
    assert a.shape == (64, 2) and not torch.equal(a, b)
    assert toy_sample("moons", 0).shape == (0, 2)


def test_toy_bad_input():
    with pytest.raises(ValueError, match=r"name: expected one of \['moons', 'circles'.*'swiss"):
        toy_sample("moon", 10)
    with pytest.raises(ValueError, match="name: expected one of"):
        ToySampler("gaussians")
    with pytest.raises(ValueError, match="n: expected a non-negative number of points, got -1"):
        toy_sample("moons", -1)
    with pytest.raises(TypeError, match="n: expected an int"):
        toy_sample("moons", 10.0)
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        toy_sample("moons", 10, generator=0)


def test_eight_gaussians_statistics():
    x = toy_sample("8gaussians", 16000, generator=torch.Generator().manual_seed(0))
    angles = torch.arange(8) * (math.pi / 4)
    centres = (4 / 1.414) * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    k = torch.cdist(x, centres).argmin(dim=1)
    counts = torch.bincount(k, minlength=8)
    assert (counts > 1800).all() and (counts < 2200).all()
    for j in range(8):
        cluster = x[k == j]
        assert torch.allclose(cluster.mean(0), centres[j], atol=0.05)
        assert torch.allclose(cluster.std(0), torch.full((2,), 0.5 / 1.414), atol=0.03)


def test_checkerboard_squares_and_moons_mean():
    x = toy_sample("checkerboard", 5000, generator=torch.Generator().manual_seed(0))
    assert x.min() >= -4 and x.max() <= 4
    cells = torch.floor(x / 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only the "black" squares
    assert len({tuple(c) for c in cells.tolist()}) == 8
    moons = toy_sample("moons", 20000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(moons.mean(0), torch.tensor([0.0, 0.3]), atol=0.03)


def test_circles_radii_and_symmetric_densities():
    x = toy_sample("circles", 10000, generator=torch.Generator().manual_seed(0))
    r = x.norm(dim=1)
    outer, inner = r[r > 2.25], r[r <= 2.25]
    assert abs(outer.numel() - 5000) < 50
    assert abs(outer.mean() - 3.0) < 0.05 and abs(inner.mean() - 1.5) < 0.05
    for name in ("2spirals", "pinwheel"):
        y = toy_sample(name, 20000, generator=torch.Generator().manual_seed(1))
        assert y.mean(0).abs().max() < 0.1, name


# ---------------------------------------------------------------- digits


def test_digits_split():
    train, train_labels = load_digits("train")
    test, test_labels = load_digits("test")
    every, every_labels = load_digits("all")
    assert train.shape == (1497, 1, 8, 8) and test.shape == (300, 1, 8, 8)
    assert every.shape == (1797, 1, 8, 8)
    for x, y in ((train, train_labels), (test, test_labels)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() == 0 and x.max() == DIGITS_LEVELS - 1
        assert torch.equal(x, x.floor())
        assert set(y.tolist()) == set(range(10))
    # the two splits partition the data set
    both = torch.cat([train, test]).flatten(1)
    assert torch.equal(both.sum(0), every.flatten(1).sum(0))
    assert torch.equal(torch.bincount(torch.cat([train_labels, test_labels])),
                       torch.bincount(every_labels))
    # the split is fixed (documented: RandomState(0).permutation, first 300 = test)
    assert test_labels[:10].tolist() == [2, 8, 2, 6, 6, 7, 1, 9, 8, 5]
    assert int(test_labels.sum()) == 1473 and float(test.sum()) == 93606.0
    with pytest.raises(ValueError, match=r"split: expected one of \['train', 'test', 'all'\]"):
        load_digits("valid")


# ---------------------------------------------------------------- MNIST


def _idx_bytes(magic: int, dims: list[int], payload: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload


@pytest.mark.mnist
def test_mnist_shared_files(mnist_root, monkeypatch):
    images, labels = load_mnist(mnist_root, "test")
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert set(labels.tolist()) == set(range(10)) and int(images.max()) == 255
    train_images, train_labels = load_mnist(mnist_root, "train")
    assert train_images.shape == (60000, 1, 28, 28) and train_labels.shape == (60000,)
    # PROBGEN_DATA with the files in its mnist/ subfolder
    monkeypatch.setenv("PROBGEN_DATA", str(mnist_root.parent))
    again, _ = load_mnist(None, "test")
    assert torch.equal(again, images)
    again[0] = 0  # callers get copies, never the cache
    assert torch.equal(load_mnist(mnist_root, "test")[0], images)


@pytest.mark.mnist
def test_mnist_raw_files(mnist_root, tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((mnist_root / f"{name}.gz").read_bytes()))
    raw_images, raw_labels = load_mnist(tmp_path, "test")
    images, labels = load_mnist(mnist_root, "test")
    assert torch.equal(raw_images, images) and torch.equal(raw_labels, labels)


def test_read_idx_raw_gzip_and_errors(tmp_path):
    payload = bytes(range(18))
    raw = tmp_path / "tiny-idx3-ubyte"
    raw.write_bytes(_idx_bytes(2051, [2, 3, 3], payload))
    packed = tmp_path / "tiny-idx3-ubyte.gz"
    packed.write_bytes(gzip.compress(raw.read_bytes()))
    for path in (raw, packed):
        x = read_idx(path, magic=2051)
        assert x.dtype == torch.uint8 and x.shape == (2, 3, 3)
        assert x.flatten().tolist() == list(range(18))
    with pytest.raises(ValueError, match="bad IDX magic number: expected 2049, got 2051"):
        read_idx(raw, magic=2049)
    with pytest.raises(ValueError, match=r"MD5 of the decompressed bytes is [0-9a-f]{32}, exp"):
        read_idx(packed, md5="0" * 32)
    short = tmp_path / "short"
    short.write_bytes(_idx_bytes(2051, [2, 3, 3], payload[:-1]))
    with pytest.raises(ValueError, match=r"announces sizes \[2, 3, 3\].*has 33 bytes"):
        read_idx(short)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x01\x02\x03\x04junk")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(junk)
    with pytest.raises(FileNotFoundError, match="path: no IDX file"):
        read_idx(tmp_path / "absent")


def test_mnist_bad_md5_and_missing_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path, "test")
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert str(tmp_path / "mnist") in message and "PROBGEN_DATA" in message
    assert "download=True" in message
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(_idx_bytes(2051, [1, 28, 28], bytes(784))))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(2049, [1], b"\x03"))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: MD5 .* expected 2646ac64"):
        load_mnist(tmp_path, "test")
    with pytest.raises(ValueError, match=r"split: expected one of \['train', 'test'\]"):
        load_mnist(tmp_path, "validation")
    monkeypatch.setenv("PROBGEN_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        load_mnist(None, "train")


def test_find_mnist_present_and_absent(tmp_path, monkeypatch):
    # absent: an empty folder, explicit or through PROBGEN_DATA
    assert find_mnist(tmp_path) is None
    monkeypatch.setenv("PROBGEN_DATA", str(tmp_path))
    assert find_mnist() is None
    # present: empty stand-ins of the four files (find_mnist checks names, not contents)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for names in MNIST_FILES.values():
        (folder / f"{names[0]}.gz").write_bytes(b"")
        (folder / names[1]).write_bytes(b"")  # raw (uncompressed) files count too
    assert find_mnist(tmp_path) == folder
    assert find_mnist() == folder  # PROBGEN_DATA
    assert find_mnist(folder, "test") == folder  # the result works as a root
    (folder / f"{MNIST_FILES['train'][0]}.gz").unlink()
    assert find_mnist(tmp_path) is None and find_mnist(tmp_path, "test") == folder
    with pytest.raises(ValueError, match=r"split: expected one of \['train', 'test'\]"):
        find_mnist(tmp_path, "validation")


@pytest.mark.mnist
def test_find_mnist_shared_files(mnist_root):
    assert find_mnist(mnist_root.parent) == mnist_root
    images, _ = load_mnist(find_mnist(mnist_root.parent), "test")
    assert images.shape == (10000, 1, 28, 28)


# ---------------------------------------------------------------- preprocessing


def test_logit_reference_values():
    t = LogitTransform(alpha=0.05)
    x = torch.tensor([0.0, 1.0, 2.0, 3.0]) / 256
    y = t(x)
    expected_y = torch.tensor([-2.944439, -2.8727808, -2.8054335, -2.7418802])
    expected_ladj = torch.tensor([2.9416652, 2.8774219, 2.8175175, 2.7614343])
    assert torch.allclose(y, expected_y, atol=1e-6)
    assert torch.allclose(t.log_abs_det_jacobian(x, y), expected_ladj, atol=1e-6)


@pytest.mark.parametrize(
    "transform", [LogitTransform(0.05), LogitTransform(0.0), ScaleTransform(17)], ids=repr
)
def test_transform_inverse_and_jacobian(transform):
    x = torch.rand(6, dtype=torch.float64) * 0.98 + 0.01
    y = transform(x)
    assert torch.allclose(transform.inv(y), x, atol=1e-10)
    jac = jacobian(transform, x)
    assert torch.allclose(jac, torch.diag(torch.diagonal(jac)))
    assert torch.allclose(transform.log_abs_det_jacobian(x, y), torch.diagonal(jac).abs().log())
    inv_jac = jacobian(transform.inv, y)
    assert torch.allclose(transform.inv.log_abs_det_jacobian(y, x),
                          torch.diagonal(inv_jac).abs().log())


def test_transform_event_dim_sums_per_example():
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    for cls, arg in ((LogitTransform, 0.05), (ScaleTransform, 256)):
        flat, per_image = cls(arg), cls(arg, event_dim=3)
        ladj = per_image.log_abs_det_jacobian(x, per_image(x))
        assert ladj.shape == (5,)
        assert torch.allclose(ladj, flat.log_abs_det_jacobian(x, flat(x)).sum((1, 2, 3)))
        assert per_image.event_dim == 3 and per_image == cls(arg, event_dim=3)
        assert per_image.with_cache(1)._cache_size == 1
    with pytest.raises(ValueError, match=r"alpha: expected a number in \[0, 0.5\), got 0.5"):
        LogitTransform(0.5)
    with pytest.raises(ValueError, match="event_dim: expected a non-negative int"):
        ScaleTransform(256, event_dim=-1)


def test_uniform_dequantize():
    x = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    x[0] = 255
    z, ladj = uniform_dequantize(x, 256, generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.get_default_dtype() and z.shape == x.shape
    assert (z >= 0).all() and (z < 1).all()
    assert torch.equal(torch.floor(z * 256).to(torch.uint8), x)
    assert torch.allclose(ladj, torch.full((64,), -16 * math.log(256)))
    again, _ = uniform_dequantize(x, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, again)
    with pytest.raises(ValueError, match=r"x_int: expected integer pixels in 0..16 \(levels=17\), "
                                         r"got values in 0..20"):
        uniform_dequantize(torch.tensor([[0.0, 20.0]]), 17)
    with pytest.raises(ValueError, match="x_int: expected integer-valued pixels"):
        uniform_dequantize(torch.tensor([[0.5]]), 17)
    with pytest.raises(ValueError, match="levels: expected an int >= 2"):
        uniform_dequantize(torch.tensor([[0]]), 1)


def test_binarize_and_signed():
    x = torch.tensor([0, 127, 128, 255], dtype=torch.uint8)
    assert binarize(x).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert torch.equal(binarize(x), (x.float() / 255 > 0.5).float())
    assert binarize(torch.tensor([0.2, 0.5]), threshold=0.5).tolist() == [0.0, 1.0]
    p = torch.full((20000,), 0.3)
    b = dynamic_binarize(p, generator=torch.Generator().manual_seed(0))
    assert set(b.unique().tolist()) <= {0.0, 1.0} and abs(b.mean() - 0.3) < 0.02
    assert torch.equal(b, dynamic_binarize(p, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match=r"x01: expected intensities in \[0, 1\]"):
        dynamic_binarize(torch.tensor([1.5]))
    u = torch.rand(10)
    assert torch.allclose(from_signed(to_signed(u)), u)
    assert to_signed(torch.tensor([0.0, 1.0])).tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("kind", ["logit", "scale", "signed"])
def test_image_preprocess_ladj_against_autograd(kind):
    pre = ImagePreprocess(levels=17, transform=kind, alpha=0.05)
    x = torch.randint(0, 17, (3, 1, 2, 2)).double()
    y, ladj = pre(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and ladj.shape == (3,) and pre.shape == (1, 2, 2)
    z = pre.to_unit(y)
    assert torch.equal(torch.floor(z * 17), x)
    for i in range(3):
        jac = jacobian(lambda v: pre.to_model(v.reshape(1, 1, 2, 2))[0].flatten(), z[i].flatten())
        assert torch.allclose(ladj[i], torch.linalg.slogdet(jac)[1])
    # deterministic bin centres map back to the integers
    centres, _ = pre(x, dequantize=False)
    assert torch.equal(pre.to_discrete(centres), x.long())


@pytest.mark.parametrize("kind", ["logit", "scale", "signed"])
def test_bits_per_dim_of_uniform_pushforward_is_log2_levels(kind):
    """The image of U[0, 1)^D under T has log p(y) = -ladj: exactly log2(levels) bits/dim."""
    pre = ImagePreprocess(levels=256, transform=kind)
    x = torch.randint(0, 256, (8, 1, 3, 3))
    y, ladj = pre(x)
    bpd = pre.bits_per_dim(-ladj, ladj)
    assert torch.allclose(bpd, torch.full((8,), 8.0), atol=1e-5)


def test_image_preprocess_flatten_and_errors():
    pre = ImagePreprocess(levels=256, transform="logit", flatten=True)
    x = torch.randint(0, 256, (4, 1, 5, 5), dtype=torch.uint8)
    y, ladj = pre(x)
    assert y.shape == (4, 25) and pre.num_dims == 25
    assert pre.to_unit(y).shape == (4, 1, 5, 5)
    assert repr(pre) == "ImagePreprocess(levels=256, transform='logit', alpha=0.05, flatten=True)"
    with pytest.raises(ValueError, match=r"x: expected images of shape \(N, 1, 5, 5\)"):
        pre(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"transform: expected one of \['logit', 'scale', "):
        ImagePreprocess(transform="tanh")
    with pytest.raises(ValueError, match="levels: expected an int >= 2"):
        ImagePreprocess(levels=256.0)
    with pytest.raises(ValueError, match="shape: unknown until the first call"):
        ImagePreprocess().num_dims  # noqa: B018
    with pytest.raises(ValueError, match=r"x: expected integer pixels in 0..255"):
        ImagePreprocess()(torch.full((1, 1, 2, 2), 256))



def test_bits_per_dim_recovers_a_discrete_entropy():
    """A model equal to the dequantized density of a known P(x) gets -log2 P(x) / D bits/dim."""
    levels, probs = 4, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    pre = ImagePreprocess(levels=levels, transform="logit", alpha=0.05)
    x = torch.randint(0, levels, (16, 1, 1, 3))
    y, ladj = pre(x.double(), generator=torch.Generator().manual_seed(0))
    # density of y when z = (x + u) / L has density L * P(floor(L z)) per pixel on [0, 1)
    z = pre.to_unit(y)
    pixel = torch.floor(z * levels).long()
    log_p_y = (torch.log(probs[pixel]) + math.log(levels)).sum((1, 2, 3)) - ladj
    bpd = pre.bits_per_dim(log_p_y, ladj)
    expected = -torch.log2(probs[x]).sum((1, 2, 3)) / 3
    assert torch.allclose(bpd, expected, atol=1e-9)
