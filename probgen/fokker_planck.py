r"""The Fokker-Planck equation of a 1-D SDE, solved numerically on a grid.

For :math:`dx = f(x, s)\,ds + g(x, s)\,dW_s` (Ito) the density of :math:`x_s` obeys the
Kolmogorov forward (Fokker-Planck) equation

.. math:: \partial_s p = -\partial_x \big(f p\big) + \tfrac12 \partial_x^2 \big(g^2 p\big)
          = -\partial_x J, \qquad J = f p - \partial_x (D p), \quad D = \tfrac12 g^2 .

:func:`solve_fokker_planck` discretizes it by finite volumes (the method of lines): cell
averages on a uniform grid, the flux :math:`J` on each face by the Scharfetter-Gummel
scheme (exact for a locally constant drift and diffusion, so it stays stable and positive
whatever the ratio of drift to diffusion: it tends to upwinding where :math:`D \to 0` and
to central differences where the drift vanishes), zero flux through the two ends (mass is
conserved), and the resulting linear ODE system :math:`\dot p = A(s)\,p` with a tridiagonal
:math:`A` integrated by scipy's implicit ``solve_ivp`` (BDF or Radau, with the sparse
Jacobian :math:`A`), since diffusion makes it stiff. scipy does not solve PDEs itself; this
module only adds the spatial discretization.

The SDE is any torchsde-style object with ``f(s, y)`` and ``g(s, y)`` on states of shape
``(batch, 1)`` (diagonal noise): the same object torchsde simulates, e.g.
:class:`probgen.sde.VPSDE` (diffusion time) or a :meth:`probgen.sde.SDE.reverse` SDE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from probgen.utils import check_choice, check_int

__all__ = ["FokkerPlanckSolution", "solve_fokker_planck", "histogram_density"]

#: scipy's implicit solvers that take a sparse Jacobian.
METHODS: tuple[str, ...] = ("BDF", "Radau", "LSODA")


@dataclass
class FokkerPlanckSolution:
    """The density of an SDE on a grid at the requested times.

    Attributes:
        edges: cell edges, shape ``(cells + 1,)``, float64.
        centers: cell centres, shape ``(cells,)``.
        times: the times, shape ``(T,)``, in the SDE's own time variable.
        density: cell-averaged densities, shape ``(T, cells)`` (each row integrates to the
            initial mass, 1 when the initial density is normalized).
        nfev: right-hand-side evaluations of the ODE solver.
    """

    edges: Tensor
    centers: Tensor
    times: Tensor
    density: Tensor
    nfev: int

    @property
    def width(self) -> float:
        """The cell width."""
        return float(self.edges[1] - self.edges[0])

    def mass(self) -> Tensor:
        """The total mass at each time, shape ``(T,)``."""
        return self.density.sum(-1) * self.width

    def mean(self) -> Tensor:
        """The mean of each density, shape ``(T,)``."""
        return (self.density * self.centers).sum(-1) * self.width / self.mass()

    def std(self) -> Tensor:
        """The standard deviation of each density, shape ``(T,)``."""
        m = self.mean()
        var = (self.density * (self.centers - m[:, None]) ** 2).sum(-1) * self.width
        return (var / self.mass()).sqrt()


def _bernoulli(z: np.ndarray) -> np.ndarray:
    """:math:`B(z) = z / (e^z - 1)`, with :math:`B(0) = 1`, stable for large ``|z|``."""
    out = 1.0 - 0.5 * z  # |z| < 1e-8
    pos, neg = z >= 1e-8, z <= -1e-8
    out[neg] = z[neg] / np.expm1(z[neg])
    out[pos] = z[pos] * np.exp(-z[pos]) / -np.expm1(-z[pos])  # no overflow for large z
    return out


def _evaluate(sde: Any, name: str, x: np.ndarray, s: float) -> np.ndarray:
    y = torch.as_tensor(x, dtype=torch.float64)[:, None]
    with torch.no_grad():
        out = getattr(sde, name)(torch.tensor(s, dtype=torch.float64), y)
    if not isinstance(out, Tensor) or out.numel() != x.size:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"sde.{name}: expected a diagonal-noise output of shape "
                         f"({x.size}, 1) for states of shape ({x.size}, 1), got {got}.")
    out = out.detach().double().reshape(-1).numpy()
    if not np.isfinite(out).all():
        raise ValueError(f"sde.{name}: returned NaN or Inf at time {s:g}.")
    return out


def _operator(sde: Any, centers: np.ndarray, dx: float, s: float) -> Any:
    """The tridiagonal finite-volume operator :math:`A(s)` with :math:`\\dot p = A p`."""
    from scipy.sparse import diags

    faces = 0.5 * (centers[:-1] + centers[1:])
    # Drift on the faces, diffusion D = g^2 / 2 at the centres (its x-derivative enters the
    # face drift, so x-dependent diffusion is handled: J = (f - D') p - D p').
    f = _evaluate(sde, "f", faces, s)
    d_centres = 0.5 * _evaluate(sde, "g", centers, s) ** 2
    d = 0.5 * (d_centres[:-1] + d_centres[1:])
    f = f - (d_centres[1:] - d_centres[:-1]) / dx
    # Scharfetter-Gummel face flux J = a p_left - b p_right.
    positive = d > 0
    pe = np.where(positive, f * dx / np.where(positive, d, 1.0), 0.0)
    a = np.where(positive, d / dx * _bernoulli(-pe), np.maximum(f, 0.0))
    b = np.where(positive, d / dx * _bernoulli(pe), np.maximum(-f, 0.0))
    # dp_i/ds = (J_{i-1/2} - J_{i+1/2}) / dx with zero flux at both ends.
    n = centers.size
    main = np.zeros(n)
    main[:-1] -= a
    main[1:] -= b
    upper = b  # coefficient of p_{i+1} in row i
    lower = a  # coefficient of p_{i-1} in row i
    return diags([lower / dx, main / dx, upper / dx], [-1, 0, 1], format="csr")


def solve_fokker_planck(
    sde: Any,
    initial: Callable[[Tensor], Tensor] | Tensor,
    bounds: tuple[float, float],
    cells: int,
    times: Sequence[float] | Tensor,
    *,
    method: str = "BDF",
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> FokkerPlanckSolution:
    r"""Solves the Fokker-Planck equation of a 1-D SDE on ``[lo, hi]`` with ``cells`` cells.

    Args:
        sde: an object with ``f(s, y)`` and ``g(s, y)`` (torchsde's interface, diagonal
            noise), ``y`` of shape ``(batch, 1)``; integrated over its own time variable.
        initial: the density at ``times[0]``: a callable on the cell centres (a tensor of
            shape ``(cells,)``, float64) or its values there, shape ``(cells,)``. It is
            normalized to mass 1 on the grid.
        bounds: ``(lo, hi)``; nothing flows out of the ends, so choose them where the density
            is negligible at all times.
        cells: number of cells.
        times: increasing times, at least two; the first is the initial time.
        method: scipy's implicit ``solve_ivp`` method, one of ``"BDF"``, ``"Radau"``,
            ``"LSODA"``.
        rtol: relative tolerance of the time integration.
        atol: absolute tolerance of the time integration.

    Returns:
        A :class:`FokkerPlanckSolution` (densities at every requested time).

    Raises:
        ValueError: bad bounds, cells, times, method, or an initial density that is not
            finite, is negative or has no mass.

    Example:
        >>> from probgen.sde import VPSDE
        >>> init = lambda x: torch.exp(-0.5 * ((x - 2) / 0.1) ** 2)
        >>> sol = solve_fokker_planck(VPSDE(), init, (-6.0, 6.0), 600, [0.0, 1.0])
        >>> round(float(sol.mass()[-1]), 6), round(float(sol.std()[-1]), 2)  # -> N(0, 1)
        (1.0, 1.0)
    """
    from scipy.integrate import solve_ivp

    lo, hi = (float(b) for b in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds: expected finite lo < hi, got {bounds!r}.")
    check_int("cells", cells, low=3)
    check_choice("method", method, METHODS)
    ts = torch.as_tensor(times, dtype=torch.float64).flatten()
    if ts.numel() < 2 or not bool((ts[1:] > ts[:-1]).all()):
        raise ValueError(f"times: expected at least two increasing times, got {ts.tolist()}.")
    edges = torch.linspace(lo, hi, cells + 1, dtype=torch.float64)
    centers = 0.5 * (edges[:-1] + edges[1:])
    dx = (hi - lo) / cells
    p0 = initial(centers) if callable(initial) else torch.as_tensor(initial)
    p0 = torch.as_tensor(p0, dtype=torch.float64).flatten()
    if p0.shape != (cells,) or not torch.isfinite(p0).all() or (p0 < 0).any():
        raise ValueError(f"initial: expected {cells} finite non-negative values, got shape "
                         f"{tuple(p0.shape)}.")
    mass = float(p0.sum()) * dx
    if not mass > 0:
        raise ValueError("initial: the density has no mass on the grid; widen bounds.")
    p0 = p0 / mass
    c = centers.numpy()

    def rhs(s: float, p: np.ndarray) -> np.ndarray:
        return _operator(sde, c, dx, s) @ p

    def jac(s: float, p: np.ndarray) -> Any:
        return _operator(sde, c, dx, s)

    kwargs: dict[str, Any] = {"jac": jac} if method != "LSODA" else {}
    out = solve_ivp(rhs, (float(ts[0]), float(ts[-1])), p0.numpy(), method=method,
                    t_eval=ts.numpy(), rtol=rtol, atol=atol, **kwargs)
    if not out.success:
        raise RuntimeError(f"solve_fokker_planck: scipy's {method} failed: {out.message}")
    density = torch.as_tensor(out.y.T.copy(), dtype=torch.float64)
    return FokkerPlanckSolution(edges, centers, ts, density, int(out.nfev))


def histogram_density(samples: Tensor, edges: Tensor) -> Tensor:
    """The histogram of ``samples`` on ``edges`` as a density (counts / (n * width)).

    Samples outside the edges count towards ``n`` but fall in no bin.

    Args:
        samples: any shape (flattened).
        edges: increasing bin edges, shape ``(bins + 1,)``.

    Returns:
        Shape ``(bins,)``, float64.
    """
    x = samples.detach().double().flatten()
    e = edges.double().contiguous()
    idx = torch.bucketize(x, e, right=True) - 1
    keep = (idx >= 0) & (idx < e.numel() - 1)
    counts = torch.bincount(idx[keep], minlength=e.numel() - 1).double()
    return counts / (x.numel() * (e[1:] - e[:-1]))
