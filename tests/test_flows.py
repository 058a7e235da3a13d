"""Every named flow: shapes, gradients, save/load, devices/dtypes, normalisation on a grid."""

from __future__ import annotations

import inspect

import pytest
import torch

from probgen.flows import NormalizingFlow
from probgen.models import FLOWS
from probgen.models.flows import IAF, MAF, NSF, PlanarFlow, RadialFlow, RealNVP

IMAGE = [1, 4, 4]
SMALL = {
    "PlanarFlow": {"transforms": 4},
    "RadialFlow": {"transforms": 4},
    "LinearFlow": {"transforms": 2},
    "MAF": {"transforms": 3, "hidden_features": [16]},
    "IAF": {"transforms": 3, "hidden_features": [16]},
    "NICE": {"transforms": 3, "hidden_features": [16]},
    "RealNVP": {"transforms": 3, "hidden_features": [16]},
    "NSF": {"transforms": 3, "hidden_features": [16]},
    "NSF-AR": {"transforms": 3, "hidden_features": [16], "autoregressive": True},
    "MultiscaleRealNVP": {"scales": 2, "hidden_channels": 4, "blocks": 1, "actnorm": True},
    "Glow": {"scales": 2, "steps": 2, "hidden_channels": 4, "blocks": 1},
}
CONDITIONAL = ["MAF", "IAF", "RealNVP", "NSF", "NSF-AR"]
# Named flows plus variants ("NSF-AR": NSF with autoregressive=True).
NAMES = [*FLOWS, "NSF-AR"]
CASES = [(name, 0) for name in NAMES] + [(name, 2) for name in CONDITIONAL]
VECTOR_CASES = [(n, c) for n, c in CASES if n not in ("Glow", "MultiscaleRealNVP")]


def _make(name, context=0, seed=0, perturb=0.0):
    torch.manual_seed(seed)
    kwargs = dict(SMALL[name])
    if context:
        kwargs["context"] = context
    first = IMAGE if name in ("Glow", "MultiscaleRealNVP") else 2
    flow = FLOWS[name.split("-")[0]](first, **kwargs).double()
    if perturb:
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(perturb * torch.randn_like(p))
    return flow


def _data(flow, n=5):
    return torch.randn(n, *flow.event_shape, dtype=torch.float64)


def _ctx(context, n=5):
    return torch.randn(n, context, dtype=torch.float64) if context else None


def _ids(cases):
    return [f"{n}-ctx{c}" if c else n for n, c in cases]


def test_registry_and_toml_friendly_signatures():
    assert set(FLOWS) >= {"PlanarFlow", "RadialFlow", "LinearFlow", "MAF", "IAF", "NICE",
                          "RealNVP", "MultiscaleRealNVP", "Glow", "NSF"}
    prim = (int, float, str, bool)
    for name, cls in FLOWS.items():
        assert issubclass(cls, NormalizingFlow)
        params = list(inspect.signature(cls).parameters.values())
        assert params[0].name in ("features", "shape"), name
        for p in params[1:]:
            d = p.default
            ok = isinstance(d, prim) or (
                isinstance(d, (list, tuple)) and all(isinstance(v, prim) for v in d))
            assert ok, f"{name}.{p.name} default {d!r} is not TOML-friendly"


@pytest.mark.parametrize("name, context", CASES, ids=_ids(CASES))
def test_log_prob_backward_sample(name, context):
    flow = _make(name, context, perturb=0.05)
    x, c = _data(flow), _ctx(context)
    lp = flow.log_prob(x, c)
    assert lp.shape == (5,) and torch.isfinite(lp).all()
    (-lp.mean()).backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    s = flow.sample((3,), _ctx(context, 1) if context else None)
    assert s.shape == ((3, 1) if context else (3,)) + tuple(flow.event_shape)
    assert not s.requires_grad
    # the distribution view agrees with the fast path
    dist_lp = flow.distribution(c).log_prob(x.clone())
    assert torch.allclose(dist_lp, lp, atol=1e-8)


@pytest.mark.parametrize("name, context", CASES, ids=_ids(CASES))
def test_rsample_and_log_prob(name, context):
    flow = _make(name, context, perturb=0.05)
    flow.log_prob(_data(flow), _ctx(context))  # data-dependent ActNorm init happens first
    c = _ctx(context, 4)
    x, log_q = flow.rsample_and_log_prob((2,), c)
    shape = (2, 4) if context else (2,)
    assert x.shape == shape + tuple(flow.event_shape) and log_q.shape == shape
    assert torch.allclose(flow.log_prob(x.detach().clone(), c), log_q.detach(), atol=1e-6)
    (x.sum() + log_q.sum()).backward()
    grads = [p.grad for p in flow.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_dtype_and_repr(name):
    flow = _make(name, perturb=0.05)
    x = _data(flow)
    lp = flow.log_prob(x)
    fresh = _make(name, seed=123)
    fresh.load_state_dict(flow.state_dict())
    assert torch.equal(fresh.log_prob(x.clone()), lp)
    first = flow.event_shape[0] if len(flow.event_shape) == 1 else IMAGE
    single = FLOWS[name.split("-")[0]](first, **SMALL[name])
    assert single.base_loc.dtype == torch.float32
    single = single.to(torch.float64)
    assert single.base_loc.dtype == torch.float64 and single.base_scale.dtype == torch.float64
    assert single.log_prob(x).dtype == torch.float64
    assert name.split("-")[0] in repr(flow) and "event_shape" in repr(flow)


def _grid_mass(flow, context=None, box=8.0, n=400):
    g = torch.linspace(-box, box, n, dtype=torch.float64)
    xy = torch.cartesian_prod(g, g)
    with torch.no_grad():
        p = flow.log_prob(xy, context).exp()
    return float(p.sum() * (g[1] - g[0]) ** 2)


@pytest.mark.parametrize("name, context", VECTOR_CASES, ids=_ids(VECTOR_CASES))
def test_density_integrates_to_one(name, context):
    flow = _make(name, context, perturb=0.2)
    c = torch.linspace(-0.5, 0.5, context, dtype=torch.float64) if context else None
    mass = _grid_mass(flow, c)
    assert abs(mass - 1) < 0.01, mass


@pytest.mark.parametrize("cls", [PlanarFlow, RadialFlow])
def test_planar_radial_inverse_round_trip(cls):
    flow = _make(cls.__name__, perturb=0.5)
    x = flow.sample((50,))
    y = x.clone()
    for t in reversed(flow.transforms):
        y = t.inv(y.clone())
    z = y
    for t in flow.transforms:
        z = t(z.clone())
    assert torch.allclose(z, x, atol=1e-8)


def test_bad_inputs_are_named():
    flow = RealNVP(2, transforms=1)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 2\), got \(4, 3\)"):
        flow.log_prob(torch.randn(4, 3))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        flow.log_prob(torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="x: contains NaN"):
        flow.log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="context: this flow is unconditional"):
        flow.log_prob(torch.randn(4, 2), torch.randn(4, 1))
    cond = MAF(2, transforms=1, hidden_features=[8], context=3)
    with pytest.raises(ValueError, match=r"context: this flow is conditional; expected"):
        cond.log_prob(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"context: expected shape \(\.\.\., 3\)"):
        cond.sample((2,), torch.randn(2))
    with pytest.raises(ValueError, match="transforms: expected a positive int"):
        NSF(2, transforms=0)
    with pytest.raises(ValueError, match="shape: the flow squeezes .* H and W must be divisible"):
        FLOWS["Glow"]([1, 6, 6], scales=2)


def test_iaf_and_maf_agree_on_direction_costs():
    # MAF density is one pass; IAF log_prob (D passes) still gives the same number as its
    # one-pass sampling log-density.
    flow = IAF(3, transforms=2, hidden_features=[8]).double()
    x, log_q = flow.rsample_and_log_prob((6,))
    assert torch.allclose(flow.log_prob(x.detach().clone()), log_q.detach(), atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_same_tensor_after_update_is_not_served_from_cache(name):
    # Pyro transforms cache their last (x, y); a reused batch after an optimizer step must
    # give the new value (and a fresh graph), not the cached one.
    flow = _make(name, perturb=0.05)
    x = _data(flow)
    opt = torch.optim.SGD(flow.parameters(), lr=0.05)
    for _ in range(2):
        loss = -flow.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fresh = _make(name, seed=5)
    fresh.load_state_dict(flow.state_dict())
    assert torch.allclose(flow.log_prob(x), fresh.log_prob(x.clone()), atol=1e-10)
    assert torch.allclose(flow.distribution().log_prob(x), fresh.log_prob(x), atol=1e-10)


def test_image_shape_error_names_the_squeezes():
    from probgen.models import Glow, MultiscaleRealNVP

    MultiscaleRealNVP([1, 6, 6], scales=2)  # one squeeze: 6 is even, fine
    with pytest.raises(ValueError, match=r"squeezes 2 time\(s\), so H and W .* by 4"):
        MultiscaleRealNVP([1, 6, 6], scales=3)
    with pytest.raises(ValueError, match=r"squeezes 3 time\(s\).* by 8; got \[1, 28, 28\]"):
        Glow([1, 28, 28], scales=3)


def test_autoregressive_nsf_in_one_dimension_is_normalised():
    # A 1-D MADE has no inputs to condition on: one learned monotone spline per layer.
    torch.manual_seed(0)
    flow = NSF(1, transforms=2, hidden_features=[8], bins=6, bound=3.0,
               autoregressive=True).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.linspace(-12, 12, 20001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        p = flow.log_prob(x).exp()
    assert abs(float(torch.trapezoid(p, x[:, 0])) - 1) < 1e-4
    with pytest.raises(ValueError, match="autoregressive=True works in any dimension"):
        NSF(1)
    with pytest.raises(ValueError, match="bound: expected a positive"):
        NSF(2, bound=0.0)


@pytest.mark.parametrize("name", ["MAF", "RealNVP", "PlanarFlow", "CNF"])
def test_rsample_takes_a_generator_and_stays_differentiable(name):
    import probgen.models as M

    kwargs = {"hidden_features": [8]} if name != "PlanarFlow" else {}
    if name == "CNF":
        kwargs = {"hidden_features": [8], "method": "rk4", "step_size": 0.25}
    flow = M.MODELS[name](2, **kwargs) if name != "PlanarFlow" else M.PlanarFlow(2, 2)
    state = torch.get_rng_state()
    a = flow.rsample((5,), generator=torch.Generator().manual_seed(1))
    b, log_q = flow.rsample_and_log_prob((5,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, b)
    assert log_q.shape == (5,)
    a.sum().backward()
    assert any(p.grad is not None for p in flow.parameters())
