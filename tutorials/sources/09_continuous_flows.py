"""Cells of 09_continuous_flows.ipynb as ("md" | "code", source) pairs, for tutorials/build.py."""

from __future__ import annotations

CELLS: list[tuple[str, str]] = [
    ("md", r"""
    # Continuous-time flows: neural ODEs, FFJORD, exact and Hutchinson traces, the adjoint

    A continuous normalizing flow moves base samples to data along an ODE
    $\dot x_t = v_\theta(x_t, t)$. Its density follows the *instantaneous change of
    variables*
    $$\frac{d}{dt}\log p_t(x_t) = -\operatorname{tr}\frac{\partial v_\theta}{\partial x}(x_t, t),$$
    so one ODE solve of the augmented state $[x_t, \log p_t]$ gives an exact log-likelihood,
    with no architectural constraint on $v_\theta$ (no triangular Jacobian, no coupling).

    **Time convention.** probgen puts the base (noise) at $t = 0$ and the data at $t = 1$, for
    every continuous process (flow matching and diffusion use the same one). The course's
    homework CNF integrates data -> noise over $0 \to 1$; it is the same model with
    $v'(x, s) = -v(x, 1 - s)$.

    This notebook:

    1. checks `ContinuousFlow` on a linear field against the closed form;
    2. compares the exact divergence with Hutchinson's estimator (Rademacher, Gaussian);
    3. trains the course's CNF on 2-D moons and checks that its density integrates to 1;
    4. trains FFJORD (Hutchinson trace, adjoint gradients) with and without RNODE's
       kinetic and Jacobian penalties, and compares the cost of solving them;
    5. compares the adjoint method with backpropagation through the solver;
    6. plugs an analytic field into the same `ContinuousFlow` (what flow matching and
       diffusion's probability-flow ODE will do).

    The full run takes a few minutes on one CPU thread. With `PROBGEN_QUICK=1` every fit
    takes a few steps (a smoke test; the printed numbers are then meaningless).
    """),
    ("code", r"""
    %matplotlib inline
    import warnings

    # probgen's trainer imports tqdm, which warns in a kernel without ipywidgets; we train
    # with progress=False, so the warning is noise.
    warnings.filterwarnings("ignore", message="IProgress not found")
    """),
    ("code", r"""
    import math
    import os
    import time

    import torch
    from matplotlib.figure import Figure
    from torch.distributions import Independent, Normal

    from probgen.cnf import ContinuousFlow
    from probgen.data import ToySampler, toy_sample
    from probgen.divergence import exact_divergence, hutchinson_divergence, hutchinson_noise
    from probgen.inference import MaximumLikelihood, RegularizedMaximumLikelihood, fit
    from probgen.metrics import integrate_density_2d
    from probgen.models import CNF, FFJORD
    from probgen.plots import plot_density_2d, plot_samples

    QUICK = os.environ.get("PROBGEN_QUICK") == "1"  # smoke-test mode: a few steps only


    def budget(steps: int) -> int:
        # Training steps: as given in the full run, a handful in quick mode.
        return max(5, steps // 100) if QUICK else steps


    RES = 40 if QUICK else 120  # grid cells per axis of the density plots
    torch.set_num_threads(1)  # small models: one thread is fastest and stays fast when shared
    print("quick mode (numbers are meaningless)" if QUICK else "full run")
    """),
    ("md", r"""
    ## 1. A linear field, in closed form

    For $v(x, t) = A x$ the flow is $x_t = e^{tA} x_0$, whose log-determinant is
    $t \operatorname{tr} A$, so $\log p_t(x) = \log \mathcal N(e^{-tA} x) - t\operatorname{tr} A$.
    `ContinuousFlow(field, base)` takes *any* callable `field(x, t)` (`x` of shape
    `(batch, D)`, `t` of shape `(batch,)`) and any base distribution; `t1` ends the flow
    earlier than 1. Below: `log_prob` against the closed form at three end times, in float64
    with dopri5 at tolerance $10^{-9}$, and the cost of each solve (`last_solve.nfe`, the
    number of field evaluations, is recorded on every solve).
    """),
    ("code", r"""
    A = torch.tensor([[0.3, -1.0], [0.6, -0.5]], dtype=torch.float64)
    base = Independent(Normal(torch.zeros(2, dtype=torch.float64),
                              torch.ones(2, dtype=torch.float64)), 1)
    x = torch.randn(1000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t1 in (0.25, 0.5, 1.0):
        flow = ContinuousFlow(lambda x, t: x @ A.T, base, t1=t1, rtol=1e-9, atol=1e-9)
        with torch.no_grad():
            solved = flow.log_prob(x)
        closed = base.log_prob(x @ torch.linalg.matrix_exp(-t1 * A).T) - t1 * A.trace()
        print(f"t1 = {t1:4.2f}: largest |log_prob - closed form| = "
              f"{(solved - closed).abs().max().item():.1e} nats, {flow.last_solve.nfe} NFE")
    """),
    ("md", r"""
    ## 2. Exact divergence vs Hutchinson's estimator

    The exact trace needs the $D$ diagonal entries of the Jacobian: `exact_divergence`
    evaluates the field once and takes the $D$ rows as vector-Jacobian products through that
    one graph (one vectorized backward call on a GPU; $D$ plain backward passes on a CPU,
    where they were measured faster). Hutchinson's
    estimator needs one vector-Jacobian product whatever $D$ is:
    $\operatorname{tr} J = \mathbb E_\epsilon[\epsilon^\top J \epsilon]$ for any noise with
    identity covariance. Its variance is
    $\sum_{i,j}(J_{ij}^2 + J_{ij}J_{ji})$ for Gaussian $\epsilon$ and the same without the
    diagonal terms for Rademacher $\epsilon$ (random signs), which is why FFJORD prefers the
    latter. Below, on a random $5\times 5$ matrix: 100 000 draws of each, their mean and
    variance next to the theory. In a continuous flow the probe is drawn once per solve and
    held fixed, so that the solver integrates one smooth function of time.
    """),
    ("code", r"""
    torch.manual_seed(1)
    J = torch.randn(5, 5, dtype=torch.float64)
    pts = torch.zeros(100_000, 5, dtype=torch.float64)
    print(f"exact trace: {exact_divergence(lambda y: y @ J.T, pts[:1]).divergence.item():.4f}")
    s = J * J + J * J.T
    for kind in ("rademacher", "gaussian"):
        eps = hutchinson_noise(pts, kind, generator=torch.Generator().manual_seed(2))
        est = hutchinson_divergence(lambda y: y @ J.T, pts, eps).divergence
        theory = (s.sum() - (s.diagonal().sum() if kind == "rademacher" else 0)).item()
        print(f"{kind:10s}: mean {est.mean().item():.4f} (+- {est.std().item() / 316:.4f}), "
              f"variance {est.var().item():6.2f} (theory {theory:6.2f})")
    """),
    ("md", r"""
    ## 3. The course's CNF on moons

    `CNF` is the homework's model: an MLP field of $[x, t]$ (tanh, three hidden layers of
    64), the exact trace, dopri5 at tolerance $10^{-5}$, gradients by backpropagation
    through the solver. It is a density model like every flow in probgen (`log_prob`,
    `sample`, `distribution()`), so it trains with `MaximumLikelihood` and `fit`, exactly as
    RealNVP does. The training curve logs the loss; the number of field evaluations of the
    last solve is `flow.nfe`.
    """),
    ("code", r"""
    torch.manual_seed(0)
    cnf = CNF(2, hidden_features=[64, 64, 64])
    start = time.perf_counter()
    history = fit(MaximumLikelihood(cnf), ToySampler("moons"), steps=budget(400),
                  batch_size=256, lr=3e-3, lr_schedule="cosine", progress=False, log_every=50)
    print(f"trained in {time.perf_counter() - start:.0f} s, NFE of the last training solve: "
          f"{cnf.nfe}")
    test = toy_sample("moons", 5000, generator=torch.Generator().manual_seed(123))
    cnf.eval()
    with torch.no_grad():
        print(f"held-out NLL: {-cnf.log_prob(test).mean().item():.3f} nats "
              f"(NFE {cnf.nfe})")
        total = integrate_density_2d(cnf.log_prob, bounds=(-5, 5), resolution=RES)
    print(f"the density integrates to {total:.4f} on [-5, 5]^2 ({RES}x{RES} grid)")
    """),
    ("md", r"""
    The density on a grid, 2000 samples (base draws solved from $t = 0$ to $t = 1$), and the
    trajectories of a few base points: `trajectory(z, times)` returns the states at the
    given times, here 0, 0.25, ..., 1.
    """),
    ("code", r"""
    fig = Figure(figsize=(12, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    with torch.no_grad():
        plot_density_2d(cnf.log_prob, 4.0, RES, ax=axes[0], title="density")
        plot_samples(cnf.sample((2000,)), ax=axes[1], title="samples", bounds=4.0)
        z = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
        path = cnf.distribution().trajectory(z, torch.linspace(0, 1, 5))
    for k, xs in enumerate(path):
        axes[2].scatter(xs[:, 0], xs[:, 1], s=3, alpha=0.7, label=f"t = {k / 4:.2f}")
    for i in range(0, 300, 15):
        axes[2].plot(path[:, i, 0], path[:, i, 1], color="gray", linewidth=0.6)
    axes[2].set_title("base (t = 0) -> data (t = 1)")
    axes[2].set_aspect("equal")
    axes[2].legend(fontsize=7, markerscale=3)
    fig
    """),
    ("md", r"""
    ## 4. FFJORD, and RNODE's penalties

    FFJORD replaces the exact trace by Hutchinson's estimate (one Rademacher probe per solve),
    which makes each evaluation cost one vector-Jacobian product whatever the dimension, and
    gets gradients by the adjoint method. Its field stacks *concat-squash* layers,
    $(W h + b)\odot\sigma(a t + c) + d\,t$. In eval mode `log_prob` switches to the exact
    trace (`eval_trace="exact"`), so held-out numbers are exact likelihoods, not estimates.

    Nothing in the likelihood stops a field from being needlessly curvy, and curvy fields cost
    the adaptive solver many evaluations. RNODE (Finlay et al., 2020) adds the kinetic energy
    $\int \|v\|^2 dt$ and the Jacobian norm $\int\|\partial_x v\|_F^2 dt$ to the loss; both
    are integrated in the same solve as the log-density
    (`log_prob_and_penalties`), and `RegularizedMaximumLikelihood(model, kinetic=,
    jacobian=)` weighs them. Two FFJORDs from the same initial weights, on 8 Gaussians, one
    with penalties of weight 0.05: held-out NLL, and the NFE of solving each trained field.
    """),
    ("code", r"""
    data = ToySampler("8gaussians")
    test8 = toy_sample("8gaussians", 5000, generator=torch.Generator().manual_seed(123))
    results = {}
    for name, weight in (("plain", 0.0), ("RNODE", 0.05)):
        torch.manual_seed(0)
        ffjord = FFJORD(2, hidden_features=[64, 64, 64])
        objective = RegularizedMaximumLikelihood(ffjord, kinetic=weight, jacobian=weight)
        start = time.perf_counter()
        hist = fit(objective, data, steps=budget(300), batch_size=256, lr=3e-3,
                   lr_schedule="cosine", progress=False, log_every=50)
        seconds = time.perf_counter() - start
        ffjord.eval()
        with torch.no_grad():
            nll = -ffjord.log_prob(test8).mean().item()
            _, terms = ffjord.log_prob_and_penalties(test8)
        results[name] = ffjord
        print(f"{name:5s}: {seconds:4.0f} s, held-out NLL {nll:.3f} nats, eval NFE "
              f"{ffjord.nfe:3d}, kinetic {terms['kinetic'].mean().item():6.2f}, "
              f"Jacobian {terms['jacobian'].mean().item():6.2f}, last training step: "
              f"{hist.records[-1]['nfe']:.0f} NFE forward")
    """),
    ("code", r"""
    fig = Figure(figsize=(8, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    with torch.no_grad():
        for ax, (name, model) in zip(axes, results.items()):
            plot_density_2d(model.log_prob, 4.0, RES, ax=ax, title=f"FFJORD ({name})")
    fig
    """),
    ("md", r"""
    ## 5. Adjoint method vs backpropagation through the solver

    Backpropagating through the solver stores every intermediate activation: memory grows
    with the number of function evaluations. The adjoint method (`adjoint=True`, torchdiffeq's
    `odeint_adjoint`) solves a second ODE backwards for the gradients instead, in memory
    independent of the number of steps, at the price of extra evaluations (recorded in
    `last_solve.nfe_backward`). Both compute the same gradient up to solver tolerance: below,
    the largest relative difference over all parameters of the trained CNF, with a tight
    tolerance, and the cost of each. (`benchmarks/cnf_2d.py` measures the memory: flat with
    the adjoint, about 4 MB per evaluation without it, for a batch of 1024.)
    """),
    ("code", r"""
    batch = test[:512]
    cnf.train()
    grads, stats = {}, {}
    for adjoint in (False, True):
        flow = ContinuousFlow(cnf.field, cnf.distribution().base, adjoint=adjoint,
                              rtol=1e-7, atol=1e-7)
        loss = -flow.log_prob(batch).mean()
        grads[adjoint] = torch.cat([g.flatten() for g in torch.autograd.grad(
            loss, list(cnf.field.parameters()))])
        stats[adjoint] = flow.last_solve
    diff = (grads[True] - grads[False]).norm() / grads[False].norm()
    print(f"relative difference of the gradients: {diff.item():.1e}")
    for adjoint, s in stats.items():
        print(f"adjoint={adjoint!s:5s}: forward NFE {s.nfe}, backward NFE {s.nfe_backward}")
    """),
    ("md", r"""
    ## 6. Any field: a closed-form velocity

    `ContinuousFlow` needs nothing but a field. Take the straight-line (optimal transport)
    path from $\mathcal N(0, I)$ to $\mathcal N(\mu, \sigma^2 I)$,
    $x_t = (1 + (\sigma - 1)t)\,x_0 + t\mu$, whose velocity is
    $$v(x, t) = \mu + (\sigma - 1)\,\frac{x - t\mu}{1 + (\sigma - 1)t}.$$
    Its `log_prob` must be the density of $\mathcal N(\mu, \sigma^2 I)$, and its samples must
    have that mean and standard deviation. The same call accepts a trained flow-matching
    velocity or a diffusion model's probability-flow field (later notebooks).
    """),
    ("code", r"""
    mu, sigma = torch.tensor([2.0, -1.0]), 0.5


    def ot_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = (1 + (sigma - 1) * t)[:, None]
        return mu + (sigma - 1) * (x - t[:, None] * mu) / scale


    gauss = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    flow = ContinuousFlow(ot_velocity, gauss, rtol=1e-6, atol=1e-6)
    target = Independent(Normal(mu, torch.full((2,), sigma)), 1)
    pts = target.sample((2000,))
    with torch.no_grad():
        gap = (flow.log_prob(pts) - target.log_prob(pts)).abs().max().item()
    samples = flow.sample((20000,))
    print(f"largest |log_prob - log N(mu, sigma^2)| on 2000 points: {gap:.1e}")
    print(f"samples: mean {[round(v, 3) for v in samples.mean(0).tolist()]}, "
          f"std {[round(v, 3) for v in samples.std(0).tolist()]}")
    """),
    ("md", r"""
    ## Summary

    - `probgen.cnf.ContinuousFlow(field, base)` is a `torch.distributions.Distribution` for
      any field $v(x, t[, \text{context}])$: `sample`/`rsample` solve base -> data,
      `log_prob` solves the augmented ODE back, `rsample_and_log_prob` does both in one
      forward solve; `method`, `rtol`/`atol`, `step_size`, `adjoint`, `trace` and `noise`
      are keywords, and `last_solve` records the cost of every solve.
    - `probgen.divergence` is the one exact/Hutchinson divergence the other continuous
      families reuse.
    - `CNF` (the course's) and `FFJORD` are density models; `RegularizedMaximumLikelihood`
      adds RNODE's penalties. From the command line:
      `probgen fit cnf-moons`, `probgen fit ffjord-8gaussians`,
      `probgen fit ffjord-checkerboard` (RNODE), `probgen fit ffjord-digits` (64-D vectors).
    """),
]
