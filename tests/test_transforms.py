"""Every transform, both directions: round trip and log|det J| against the autograd Jacobian."""

from __future__ import annotations

import pytest
import torch
from pyro.distributions.transforms import GeneralizedChannelPermute
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN

from probgen.nn import MLP, ConvResNet
from probgen.transforms import (
    ActNorm,
    AdditiveCoupling,
    ConditionalMaskedAffineAutoregressive,
    ConditionalMaskedSplineAutoregressive,
    Invert,
    InvertiblePlanar,
    InvertibleRadial,
    LULinear,
    MaskedAffineAutoregressive,
    MaskedAffineCoupling,
    MaskedSplineAutoregressive,
    MaskedSplineCoupling,
    Partial,
    Permutation,
    Squeeze,
    Unsqueeze,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)

IMG = (2, 4, 4)


def _vec(t, d=3):
    return t, (d,), 0


def _cases():
    arn = lambda: AutoRegressiveNN(3, [8], permutation=torch.tensor([2, 0, 1]))  # noqa: E731
    carn = lambda: ConditionalAutoRegressiveNN(3, 2, [8])  # noqa: E731
    return {
        "planar": lambda: _vec(InvertiblePlanar(3)),
        "radial": lambda: _vec(InvertibleRadial(3)),
        "lulinear": lambda: _vec(LULinear(3)),
        "permutation": lambda: _vec(Permutation([2, 0, 1])),
        "additive": lambda: _vec(AdditiveCoupling(alternating_mask(3), MLP(3, 3, [8]))),
        "affine_vec": lambda: _vec(MaskedAffineCoupling(alternating_mask(3, 1), MLP(3, 6, [8]))),
        "affine_vec_ctx": lambda: (
            MaskedAffineCoupling(alternating_mask(3), MLP(3, 6, [8], context=2), 2), (3,), 2),
        "affine_checker": lambda: (
            MaskedAffineCoupling(checkerboard_mask(IMG), ConvResNet(2, 4, 8, 1)), IMG, 0),
        "affine_channel": lambda: (
            MaskedAffineCoupling(channel_mask(IMG, 1), ConvResNet(2, 4, 8, 1)), IMG, 0),
        "spline_quadratic": lambda: _vec(MaskedSplineCoupling(alternating_mask(3), [8], bound=2)),
        "spline_linear": lambda: _vec(
            MaskedSplineCoupling(alternating_mask(3), [8], bound=2, order="linear")),
        "spline_ctx": lambda: (
            MaskedSplineCoupling(alternating_mask(3), [8], context=2, bound=2), (3,), 2),
        "actnorm_vec": lambda: _vec(ActNorm([3], data_init=False)),
        "actnorm_img": lambda: (ActNorm(list(IMG), data_init=False), IMG, 0),
        "squeeze": lambda: (Squeeze(), IMG, 0),
        "unsqueeze": lambda: (Unsqueeze(), (8, 2, 2), 0),
        "partial": lambda: (Partial([Squeeze(), ActNorm([4, 2, 2], data_init=False),
                                     Unsqueeze()], channels=1), IMG, 0),
        "pyro_1x1conv": lambda: (GeneralizedChannelPermute(channels=2), IMG, 0),
        "iaf": lambda: _vec(MaskedAffineAutoregressive(arn())),
        "maf": lambda: _vec(Invert(MaskedAffineAutoregressive(arn()))),
        "maf_ctx": lambda: (Invert(ConditionalMaskedAffineAutoregressive(carn()), 2), (3,), 2),
        # NSF(autoregressive=True): monotone RQ splines over a MADE, both directions.
        "spline_ar": lambda: _vec(MaskedSplineAutoregressive(
            3, AutoRegressiveNN(3, [8], param_dims=[4, 4, 3]), count_bins=4, bound=2.0)),
        "nsf_ar": lambda: _vec(Invert(MaskedSplineAutoregressive(
            3, AutoRegressiveNN(3, [8], param_dims=[4, 4, 3]), count_bins=4, bound=2.0))),
        "nsf_ar_ctx": lambda: (Invert(ConditionalMaskedSplineAutoregressive(
            3, ConditionalAutoRegressiveNN(3, 2, [8], param_dims=[4, 4, 3]), count_bins=4,
            bound=2.0), 2), (3,), 2),
    }


CASES = _cases()


def _build(name):
    torch.manual_seed(1)
    module, shape, context = CASES[name]()
    module = module.double()
    with torch.no_grad():  # leave the identity so the checks are not trivial
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    c = torch.randn(context, dtype=torch.float64) if context else None
    t = module.condition(c) if context else module
    return module, t, shape


def _out_shape(t, shape):
    return tuple(t.forward_shape(shape)) if isinstance(t, (Squeeze, Unsqueeze)) else shape


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip(name):
    _, t, shape = _build(name)
    x = torch.randn(5, *shape, dtype=torch.float64)
    y = t(x)
    assert y.shape == (5, *_out_shape(t, shape))
    assert torch.allclose(t.inv(y.clone()), x, atol=1e-8)  # clone: no cache hit
    y2 = torch.randn_like(y)
    assert torch.allclose(t(t.inv(y2).clone()), y2, atol=1e-8)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_log_abs_det_jacobian(name, direction):
    _, t, shape = _build(name)
    if direction == "inverse":
        shape = _out_shape(t, shape)
        t = t.inv
    x = torch.randn(*shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: t(v.clone()), x)
    jac = jac.reshape(x.numel(), x.numel())
    expected = torch.linalg.slogdet(jac)[1]
    y = t(x)
    fresh = t.log_abs_det_jacobian(x.clone(), y.clone())  # no cache: recomputed from x
    cached = t.log_abs_det_jacobian(x, y)
    assert torch.allclose(fresh.sum(), expected, atol=1e-7), (fresh, expected)
    assert torch.allclose(cached.sum(), expected, atol=1e-7), (cached, expected)


@pytest.mark.parametrize(
    "module, shape",
    [
        (MaskedAffineCoupling(alternating_mask(3), MLP(3, 6, [8], zero_last=True)), (3,)),
        (AdditiveCoupling(alternating_mask(3), MLP(3, 3, [8], zero_last=True)), (3,)),
        (MaskedAffineCoupling(checkerboard_mask(IMG), ConvResNet(2, 4, 8, 1)), IMG),
        (MaskedAffineCoupling(channel_mask(IMG), ConvResNet(2, 4, 8, 1)), IMG),
    ],
)
def test_zero_init_coupling_is_identity(module, shape):
    x = torch.randn(4, *shape)
    y = module(x)
    assert torch.equal(y, x)
    assert torch.equal(module.log_abs_det_jacobian(x, y), torch.zeros(4))


def test_actnorm_data_init_and_state_dict():
    t = ActNorm(list(IMG))
    y = 3 + 2 * torch.randn(64, *IMG)
    z = t.inv(y)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(2), atol=1e-4)
    fresh = ActNorm(list(IMG))
    fresh.load_state_dict(t.state_dict())
    assert bool(fresh.initialized)
    assert torch.allclose(fresh.inv(y.clone()), z)


def test_squeeze_layout():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    s = Squeeze()(x)
    assert s[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]


def test_planar_inverse_gradient_matches_finite_differences():
    torch.manual_seed(0)
    t = InvertiblePlanar(3).double()
    with torch.no_grad():
        for p in t.parameters():
            p.normal_()
    y = torch.randn(4, 3, dtype=torch.float64)
    params = [t.bias, t.u, t.w]

    def f(*ps):
        with torch.no_grad():
            for p, v in zip(params, ps, strict=True):
                p.copy_(v)
        return t.inv(y.clone()).sum()

    base = [p.detach().clone() for p in params]
    loss = t.inv(y.clone()).sum()
    grads = torch.autograd.grad(loss, params)
    eps = 1e-6
    for i, p0 in enumerate(base):
        for j in range(p0.numel()):
            plus = [b.clone() for b in base]
            minus = [b.clone() for b in base]
            plus[i].view(-1)[j] += eps
            minus[i].view(-1)[j] -= eps
            fd = (f(*plus) - f(*minus)) / (2 * eps)
            assert abs(fd - grads[i].view(-1)[j]) < 1e-5
        f(*base)


def test_radial_inverse_gradcheck():
    t = InvertibleRadial(2).double()
    y = torch.randn(3, 2, dtype=torch.float64)
    wrapper = torch.nn.Module()
    wrapper.t = t
    wrapper.forward = lambda v: t._inverse(v)
    names = ["t.x0", "t.alpha_prime", "t.beta_prime"]

    def g(*ps):
        return torch.func.functional_call(wrapper, dict(zip(names, ps, strict=True)), (y,))

    args = [p.detach().clone().requires_grad_() for p in (t.x0, t.alpha_prime, t.beta_prime)]
    assert torch.autograd.gradcheck(g, args)


def test_conditional_transform_needs_context():
    t = MaskedAffineCoupling(alternating_mask(2), MLP(2, 4, [4], context=1), context=1)
    with pytest.raises(ValueError, match="condition"):
        t(torch.randn(3, 2))


def test_permutation_rejects_non_permutation():
    with pytest.raises(ValueError, match="permutation"):
        Permutation([0, 0, 1])


def test_rational_quadratic_spline_closed_forms():
    from probgen.transforms import rational_quadratic_spline as rqs

    # Equal bins and unit derivatives everywhere: the spline is the identity.
    k, bound = 6, 2.0
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)[:, None]
    zeros = torch.zeros(101, 1, k, dtype=torch.float64)
    # 1e-3 + softplus(logit) = 1 exactly: the interior derivatives are all one.
    logit = torch.log(torch.expm1(torch.tensor(0.999, dtype=torch.float64)))
    unit = torch.full((101, 1, k - 1), float(logit), dtype=torch.float64)
    y, ladj = rqs(x, zeros, zeros, unit, bound)
    assert torch.allclose(y, x, atol=1e-12) and torch.allclose(ladj, torch.zeros_like(x))
    # Random knots: monotone, maps [-B, B] onto itself, identity outside, exact inverse, and
    # the log-derivative equals autograd's (forward and from the inverse side).
    torch.manual_seed(0)
    w, h, d = (torch.randn(1, 1, n, dtype=torch.float64) for n in (k, k, k - 1))
    x = torch.linspace(-3, 3, 2001, dtype=torch.float64)[:, None].requires_grad_()
    y, ladj = rqs(x, w, h, d, bound)
    assert (y[1:] - y[:-1] > 0).all()
    ends = rqs(torch.tensor([[-bound], [bound]], dtype=torch.float64), w, h, d, bound)[0]
    assert torch.allclose(ends.flatten(), torch.tensor([-bound, bound], dtype=torch.float64))
    outside = (x.abs() > bound).flatten()
    assert torch.equal(y[outside], x[outside])
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(ladj, grad.log(), atol=1e-10)
    x_back, ladj_back = rqs(y.detach(), w, h, d, bound, inverse=True)
    assert torch.allclose(x_back, x.detach(), atol=1e-9)
    assert torch.allclose(ladj_back, ladj.detach(), atol=1e-8)
    with pytest.raises(ValueError, match="K widths, K heights and K - 1 derivatives"):
        rqs(x, w, h, w, bound)


@pytest.mark.parametrize("inverse", [False, True])
def test_spline_gives_the_same_values_in_a_mades_transposed_layout(inverse):
    """The bins of a MADE come as (B, K, D) viewed as (B, D, K); the softmax then runs in
    that layout: the same spline as on contiguous (B, D, K) logits, to float64 rounding."""
    from probgen.transforms import rational_quadratic_spline as rqs

    torch.manual_seed(1)
    b, d, k, bound = 64, 3, 8, 4.0
    w, h = (torch.randn(b, k, d, dtype=torch.float64).transpose(-1, -2) for _ in range(2))
    der = torch.randn(b, k - 1, d, dtype=torch.float64).transpose(-1, -2)
    assert w.stride(-1) != 1
    x = 5 * torch.rand(b, d, dtype=torch.float64) - 2.5
    y, ladj = rqs(x, w, h, der, bound, inverse)
    y_c, ladj_c = rqs(x, w.contiguous(), h.contiguous(), der.contiguous(), bound, inverse)
    assert torch.allclose(y, y_c, rtol=1e-12, atol=1e-12)
    assert torch.allclose(ladj, ladj_c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("param_dims,skip", [([8, 8, 7], False), ([8, 8, 7], True),
                                             ([1, 1], True), ([3], False)])
def test_made_feature_major_output_under_compile_is_the_same_network(monkeypatch, param_dims,
                                                                      skip):
    """While torch.compile traces, ``made`` reorders the last layer's rows so each feature's
    parameters are contiguous (the layout inductor vectorizes the spline in): the returned
    parameters are the same values as Pyro's own forward, only the memory order differs."""
    from pyro.nn import AutoRegressiveNN

    from probgen.transforms.autoregressive import made

    torch.manual_seed(0)
    arn = AutoRegressiveNN(3, [16, 16], param_dims=param_dims, skip_connections=skip).double()
    x = torch.randn(32, 3, dtype=torch.float64)
    expected = arn(x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    got = made(arn, x)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert torch.allclose(g, e, rtol=1e-12, atol=1e-12)
    if len(param_dims) > 1 or param_dims[0] > 1:
        assert got[0].stride(-1) == sum(param_dims)  # feature-major: a feature's params adjacent
