r"""The one sampler loop: a time grid, a stepper, network-call counts, trajectories, seeds.

Every sampler of a dynamical model (DDPM's ancestral chain, DDIM, the probability-flow ODE
solvers, the reverse SDE, predictor-corrector, Langevin, MALA and annealed Langevin) is a
*stepper*: an object with ``step(x, t, t_next) -> x`` that moves the states ``x`` of shape
``(batch, *event)`` from grid time ``t`` to ``t_next``. :func:`sample_loop` owns everything
around the steps, once for all of them:

- the grid (any monotone sequence of times; probgen time for the Gaussian paths, ``t = 0``
  noise and ``t = 1`` data; the iteration index for the time-free Langevin chains);
- network-call counting: a stepper calls its network through :meth:`Run.call` (or counts a
  call made elsewhere, e.g. inside torchdiffeq, with :meth:`Run.count`);
- evaluation mode and no-grad for the networks, restored afterwards;
- the trajectory (the start, every ``record_every``-th state and the last);
- the random numbers: :meth:`Run.noise` and :meth:`Run.uniform` draw from the one seeded
  ``generator``, so a run is reproducible from its seed.

A stepper may keep state across steps (a multistep solver's last prediction, MALA's
acceptances); :meth:`Stepper.begin` resets it at the start of each run, and
:meth:`Stepper.end` may take one last step off the grid (a final denoising step to the
data; it is counted and recorded like the others).

Example:
    >>> class Halve(Stepper):
    ...     def step(self, x, t, t_next):
    ...         return self.run.call(lambda y, s: 0.5 * y, x, t)
    >>> out = sample_loop(Halve(), torch.ones(2, 3), torch.linspace(0, 1, 5))
    >>> out.samples[0].tolist(), out.nfe
    ([0.0625, 0.0625, 0.0625], 4)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from probgen.processes import check_like
from probgen.utils import check_int

__all__ = ["Stepper", "Run", "SampleResult", "sample_loop", "evaluation"]


class SampleResult(NamedTuple):
    """A sampler run's output.

    Attributes:
        samples: the final states ``(batch, *event)``.
        trajectory: ``(records, batch, *event)``: the start, every ``record_every``-th
            state and the last; ``None`` unless asked for.
        nfe: network calls (a guided call, conditional and unconditional, counts once).
        times: the grid, float64.
    """

    samples: Tensor
    trajectory: Tensor | None
    nfe: int
    times: Tensor


class Run:
    """What a stepper draws on during one :func:`sample_loop` run: counted calls and noise.

    Args:
        generator: the one generator every random draw of the run uses (``None``: torch's
            global one).
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator
        self.nfe = 0

    def count(self, calls: int = 1) -> None:
        """Counts ``calls`` network calls made outside :meth:`call`."""
        self.nfe += calls

    def call(self, fn: Callable[..., Tensor], x: Tensor, t: float | Tensor, *args: Any,
             name: str = "network", **kwargs: Any) -> Tensor:
        """``fn(x, t_batch, *args, **kwargs)``, counted, its output checked to be ``x``'s shape.

        ``t`` is a scalar time, handed to ``fn`` as a ``(batch,)`` tensor of ``x``'s dtype;
        ``name`` names ``fn`` in the error.
        """
        self.nfe += 1
        tb = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(()).expand(x.shape[0])
        return check_like(fn(x, tb, *args, **kwargs), x, name)

    def noise(self, like: Tensor) -> Tensor:
        """Standard normal draws of ``like``'s shape, dtype and device."""
        return torch.randn(like.shape, dtype=like.dtype, device=like.device,
                           generator=self.generator)

    def uniform(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """Uniform draws on [0, 1) of ``shape``, in ``like``'s dtype and device."""
        return torch.rand(tuple(shape), dtype=like.dtype, device=like.device,
                          generator=self.generator)


class Stepper(ABC):
    """Base class of a sampler's step: ``step(x, t, t_next) -> x`` on a time grid.

    Subclasses implement :meth:`step` (drawing noise and calling networks through
    ``self.run``) and may override :meth:`begin` (reset state before a run) and
    :meth:`end` (one last step after the grid).
    """

    run: Run

    def begin(self, run: Run, x: Tensor, times: Tensor) -> None:
        """Starts a run: keeps ``run`` (subclasses reset their state here, then call super)."""
        self.run = run

    @abstractmethod
    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:
        """The states at ``t_next`` from the states ``x`` ``(batch, *event)`` at ``t``."""

    def end(self, x: Tensor, t: float) -> Tensor | None:
        """An optional last step from the grid's last time (``None``: none)."""
        return None


@contextmanager
def evaluation(networks: Iterable[Any]) -> Iterator[None]:
    """Evaluation mode for the ``nn.Module``s among ``networks`` during a block (their modes
    are restored after it)."""
    modules = [m for m in networks if isinstance(m, nn.Module)]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def sample_loop(
    stepper: Stepper,
    x: Tensor,
    times: Sequence[float] | Tensor,
    *,
    generator: torch.Generator | None = None,
    record_every: int | None = None,
    networks: Iterable[Any] = (),
    grad: bool = False,
) -> SampleResult:
    r"""Runs ``stepper`` from the states ``x`` at ``times[0]`` over the grid ``times``.

    Args:
        stepper: a :class:`Stepper`.
        x: the start ``(batch, *event)``, floating.
        times: the grid, strictly monotone times (float64 internally); a single time runs
            only the stepper's :meth:`Stepper.end`.
        generator: seeds every random draw of the run (:meth:`Run.noise`).
        record_every: keep every this-many-th state in the trajectory (the start and the
            last state always).
        networks: modules put in evaluation mode for the run (their modes are restored).
        grad: keep autograd on (guidance or posterior sampling that differentiates through
            the network); by default the run is under ``torch.no_grad``.

    Returns:
        A :class:`SampleResult`.
    """
    if not isinstance(stepper, Stepper):
        raise TypeError(f"stepper: expected a probgen.inference.sampling.Stepper, got "
                        f"{type(stepper).__name__}.")
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"x: expected a floating start of shape (batch, *event), got "
                         f"{getattr(x, 'shape', type(x).__name__)}.")
    grid = torch.as_tensor(times, dtype=torch.float64, device="cpu").flatten()
    diffs = grid[1:] - grid[:-1]
    if grid.numel() < 1 or not (bool((diffs > 0).all()) or bool((diffs < 0).all())):
        raise ValueError(f"times: expected strictly monotone times, got "
                         f"{grid.tolist()[:10]}{' ...' if grid.numel() > 10 else ''}.")
    check_int("record_every", record_every, allow_none=True)
    run = Run(generator)
    ts = grid.tolist()
    x = x if grad else x.detach()
    records = [x.detach().clone()] if record_every else None
    count = 0  # the updates of the state so far

    def record(state: Tensor) -> None:
        if records is not None and count % record_every == 0:
            records.append(state.detach().clone())

    with evaluation(networks), torch.set_grad_enabled(grad):
        stepper.begin(run, x, grid)
        for k in range(len(ts) - 1):
            x, count = stepper.step(x, ts[k], ts[k + 1]), k + 1
            record(x)
        last = stepper.end(x, ts[-1])
        if last is not None:
            x, count = last, len(ts)
            record(x)
    if records is not None and count % record_every:  # the last state, unless just kept
        records.append(x.detach().clone())
    return SampleResult(x, torch.stack(records) if records is not None else None, run.nfe,
                        grid)
