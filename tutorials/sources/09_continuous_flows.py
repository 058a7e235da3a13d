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
       diffusion's probability-flow ODE will do);
    7. introduces the score SDEs (VP, sub-VP, VE) and checks their closed-form marginals
       against torchsde paths;
    8. solves the 1-D Fokker-Planck equation on a grid, forward and for the reverse-time SDE;
    9. compares the reverse-SDE, predictor-corrector and probability-flow samplers with an
       exact score;
    10. checks the probability-flow likelihood against the exact density;
    11. trains a score SDE on moons and samples a DDPM through the VP SDE.

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
    ## 7. Score SDEs: diffusions in continuous time

    A diffusion model noises data with an SDE $dx = f(x, s)\,ds + g(s)\,dW_s$ running in
    *diffusion time* $s$ from data ($s = 0$) to noise ($s = 1$). `probgen.sde` has the three
    of Song et al. (2021), each with its closed-form kernel $x \mid x_{\text{data}} \sim
    \mathcal N(\alpha x_{\text{data}}, \sigma^2 I)$:

    | SDE | $f(x, s)$ | $g(s)^2$ | $\alpha$ | $\sigma^2$ |
    | --- | --- | --- | --- | --- |
    | VP (DDPM's limit) | $-\tfrac12\beta(s)x$ | $\beta(s)$ | $e^{-B(s)/2}$ | $1 - e^{-B(s)}$ |
    | sub-VP | $-\tfrac12\beta(s)x$ | $\beta(s)(1 - e^{-2B(s)})$ | $e^{-B(s)/2}$ | $(1 - e^{-B(s)})^2$ |
    | VE (NCSN's limit) | $0$ | $\tfrac{d}{ds}\sigma_{\text{VE}}(s)^2$ | $1$ | $\sigma_{\text{VE}}(s)^2 - \sigma_{\min}^2$ |

    with $\beta(s) = \beta_{\min} + s(\beta_{\max} - \beta_{\min})$ (0.1 and 20),
    $B = \int_0^s \beta$ and $\sigma_{\text{VE}}(s) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^s$.

    **Time.** The SDE objects are what torchsde integrates (`f(s, y)`, `g(s, y)`,
    `noise_type`, `sde_type`), so they take diffusion time. Everything else takes probgen's
    time $t = 1 - s$ (noise at 0, data at 1, as in the rest of this notebook):
    `sde.alpha_sigma(t)`, score networks $s(x, t)$, the reverse SDE and the
    probability-flow field. Below: the schedules in probgen time, then 20 000 paths
    simulated by torchsde from the point $x = 2$, whose mean and standard deviation must
    be $2\alpha$ and $\sigma$.
    """),
    ("code", r"""
    import torchsde

    from probgen.fokker_planck import histogram_density, solve_fokker_planck
    from probgen.inference import (
        ContinuousScoreMatching,
        DiffusionLoss,
        predictor_corrector_sample,
        probability_flow_log_prob,
        probability_flow_sample,
        reverse_sde_sample,
    )
    from probgen.metrics import wasserstein2
    from probgen.models import NoiseLevelScore, VectorDDPM, VectorScoreSDE
    from probgen.score import GaussianMixture
    from probgen.sde import VESDE, VPSDE, SubVPSDE

    sdes = {"VP": VPSDE(), "sub-VP": SubVPSDE(), "VE": VESDE(sigma_min=0.01, sigma_max=10.0)}
    t = torch.linspace(0, 1, 201)
    fig = Figure(figsize=(9, 3), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for name, sde in sdes.items():
        alpha, sig = sde.alpha_sigma(t)
        ax1.plot(t, alpha, label=name)
        ax2.plot(t, sig, label=name)
    ax1.set(title=r"$\alpha_t$ (probgen time: data at t = 1)", xlabel="t")
    ax2.set(title=r"$\sigma_t$", xlabel="t", yscale="log", ylim=(1e-3, 20))
    ax1.legend()

    s_grid = torch.tensor([0.0, 0.1, 0.5, 1.0])  # diffusion time, increasing for torchsde
    n_paths = 2000 if QUICK else 20000
    print("SDE     s    mean (sim / 2 alpha)    std (sim / sigma)")
    for name, sde in sdes.items():
        paths = torchsde.sdeint(sde, torch.full((n_paths, 1), 2.0), s_grid, method="euler",
                                dt=1e-3)
        alpha, sig = sde.alpha_sigma(1 - s_grid)  # probgen time t = 1 - s
        for k in range(1, 4):
            print(f"{name:6s} {s_grid[k]:.1f}   {paths[k].mean():7.3f} / {2 * alpha[k]:7.3f}"
                  f"      {paths[k].std():7.3f} / {sig[k]:7.3f}")
    fig
    """),
    ("md", r"""
    ## 8. The Fokker-Planck equation, solved on a grid

    The density of $x_s$ obeys the Kolmogorov forward (Fokker-Planck) equation
    $$\partial_s p = -\partial_x (f p) + \tfrac12 \partial_x^2 (g^2 p).$$
    `probgen.fokker_planck.solve_fokker_planck` discretizes it in 1-D by finite volumes
    (Scharfetter-Gummel fluxes, zero flux at the ends) and integrates the stiff linear
    system with scipy's BDF. It takes the same SDE object torchsde simulates. Below, the VP
    SDE carries a two-mode density to $\mathcal N(0, 1)$: the grid solution (lines) against
    histograms of 20 000 torchsde paths (bars), and against the closed form (each Gaussian
    component $\mathcal N(m, v)$ becomes $\mathcal N(\alpha m, \alpha^2 v + \sigma^2)$).
    """),
    ("code", r"""
    mix1d = GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], std=0.3)


    def mixture_density(x: torch.Tensor, alpha: float = 1.0, sigma: float = 0.0):
        # the mixture pushed through x_s = alpha x + sigma eps: its exact density
        y = x.reshape(-1, 1) / alpha
        return (mix1d.log_prob(y, sigma / alpha).exp() / alpha).reshape(x.shape)


    vp = sdes["VP"]
    times = torch.tensor([0.0, 0.05, 0.2, 0.5, 1.0])
    fp = solve_fokker_planck(vp, mixture_density, (-6.0, 6.0), 600, times)
    paths = torchsde.sdeint(vp, mix1d.sample(n_paths)[:, :1], times, method="euler", dt=1e-3)
    fig = Figure(figsize=(12, 2.6), layout="constrained")
    axes = fig.subplots(1, len(times), sharey=True)
    coarse = fp.edges[::12]
    for k, ax in enumerate(axes):
        hist = histogram_density(paths[k], coarse)
        ax.bar(0.5 * (coarse[1:] + coarse[:-1]), hist, width=0.2, color="0.8")
        ax.plot(fp.centers, fp.density[k], "C0")
        a, s = vp.alpha_sigma(1 - times[k])
        exact = mixture_density(fp.centers, float(a), float(s))
        l1 = float((fp.density[k] - exact).abs().sum()) * fp.width
        ax.set(title=f"s = {times[k]:.2f}: L1 to exact {l1:.1e}", xlim=(-5, 5))
    print("mass on the grid at each time:", [round(m, 6) for m in fp.mass().tolist()])
    fig
    """),
    ("md", r"""
    The same solver runs the **reverse-time SDE** $dx = [-f + g^2\nabla\log p_t]\,dt +
    g\,dW_t$ (Anderson, 1982; `sde.reverse(score)`, over increasing probgen time from noise
    to data). With the exact score of the blurred mixture, started from the prior
    $\mathcal N(0, 1)$, its density must retrace the forward marginals backwards and end at
    the data. `NoiseLevelScore` turns the mixture's score at a noise level,
    $\nabla\log(p * \mathcal N(0, \sigma^2))$ (what NCSN learns), into the score of any of the
    SDEs: $\nabla \log p_t(x) = s(x/\alpha_t, \sigma_t/\alpha_t)/\alpha_t$.
    """),
    ("code", r"""
    exact_score = NoiseLevelScore(lambda y, level: mix1d.score(y, level), vp)
    reverse = vp.reverse(exact_score)
    t_rev = torch.tensor([0.0, 0.5, 0.8, 0.95, 0.999])
    fp_rev = solve_fokker_planck(reverse, lambda x: torch.exp(-0.5 * x**2), (-6.0, 6.0), 600,
                                 t_rev)
    fig = Figure(figsize=(12, 2.6), layout="constrained")
    axes = fig.subplots(1, len(t_rev), sharey=True)
    for k, ax in enumerate(axes):
        a, s = vp.alpha_sigma(t_rev[k])
        exact = mixture_density(fp_rev.centers, float(a), float(s))
        ax.plot(fp_rev.centers, exact, "0.6", lw=3, label="forward marginal")
        ax.plot(fp_rev.centers, fp_rev.density[k], "C1", label="reverse SDE")
        l1 = float((fp_rev.density[k] - exact).abs().sum()) * fp_rev.width
        ax.set(title=f"t = {t_rev[k]:.3f}: L1 {l1:.1e}", xlim=(-5, 5))
    axes[0].legend(fontsize=7)
    fig
    """),
    ("md", r"""
    ## 9. Samplers with an exact score

    On a 2-D mixture (eight Gaussians on a ring, std 0.2) the score of every marginal is
    known in closed form, so the samplers can be compared without a trained network:

    - `reverse_sde_sample`: the reverse SDE through `torchsde.sdeint` (Euler-Maruyama, or
      the stochastic Runge-Kutta `"srk"` of strong order 1.5, or the Stratonovich `"heun"`,
      valid because $g$ does not depend on $x$);
    - `predictor_corrector_sample`: the reverse-diffusion predictor plus one Langevin
      corrector step whose size keeps the ratio of signal to noise at `snr` (Song et al.,
      2021, Algorithms 2-3);
    - `probability_flow_sample`: the ODE $\dot x = -f + \tfrac12 g^2 \nabla\log p_t$ with
      the same marginals, through `ContinuousFlow` and torchdiffeq (adaptive dopri5).

    Quality is the exact $W_2$ to fresh data (its value between two data sets of the same
    size is the floor); cost is the number of score evaluations (NFE; torchsde's SRK
    evaluates the drift ten times per step). At 2000 points $W_2$ is dominated by how many
    points land in each of the eight modes: the floor itself moves between about 0.33 and
    0.47 from one draw to another, so differences below 0.1 are noise. The VE runs start
    from the prior $\mathcal N(0, 10^2 I)$, only an approximation of the true $p_0$ (the
    ring, of radius 3, blurred by $\mathcal N(0, 10^2 I)$).
    """),
    ("code", r"""
    angles = torch.arange(8) * math.pi / 4
    ring = GaussianMixture(torch.ones(8), 3 * torch.stack([angles.cos(), angles.sin()], 1),
                           std=0.2)
    n2 = 500 if QUICK else 2000
    data2 = ring.sample(n2, torch.Generator().manual_seed(0))
    floor = wasserstein2(ring.sample(n2, torch.Generator().manual_seed(1)), data2)
    print(f"floor (data vs data): W2 = {floor:.3f}")
    g2 = torch.Generator().manual_seed(2)
    runs = {}
    for name, sde in (("VP", VPSDE()), ("VE", VESDE(0.01, 10.0))):
        score = NoiseLevelScore(lambda y, level: ring.score(y, level), sde)
        for label, fn in (
            ("SDE Euler-Maruyama, 100 steps",
             lambda: reverse_sde_sample(sde, score, n2, (2,), steps=100, generator=g2)),
            ("SDE SRK, 100 steps",
             lambda: reverse_sde_sample(sde, score, n2, (2,), steps=100, method="srk",
                                        generator=g2)),
            ("predictor-corrector, 100 steps",
             lambda: predictor_corrector_sample(sde, score, n2, (2,), steps=100, snr=0.16,
                                                generator=g2)),
            ("probability flow, dopri5",
             lambda: probability_flow_sample(sde, score, n2, (2,), generator=g2)),
        ):
            start = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - start
            runs[(name, label)] = out.samples
            print(f"{name}  {label:32s} NFE {out.nfe:5d}  {seconds:5.2f} s  "
                  f"W2 {wasserstein2(out.samples, data2):.3f}")
    fig = Figure(figsize=(12, 3), layout="constrained")
    for ax, (key, x) in zip(fig.subplots(1, 4), list(runs.items())[4:]):
        plot_samples(x, ax=ax, title=f"{key[0]}: {key[1]}", bounds=4.5)
    fig
    """),
    ("md", r"""
    ## 10. Exact likelihoods through the probability-flow ODE

    The probability-flow field is an ordinary vector field in probgen's time, so
    `ContinuousFlow` turns the score model into a Distribution with an exact
    log-likelihood (`probability_flow_log_prob`, or `ScoreSDE.log_prob`). With the exact
    score and the exact density at $t = 0$ as the base, the ODE's log-density must be the
    mixture's blurred density at $t = 1 - \epsilon$ within solver tolerance; with the
    default prior $\mathcal N(0, I)$ in its place the error is what that approximation costs
    (the VP marginal at $t = 0$ still holds $\alpha_0 \approx 0.0066$ of the data).
    Images use Hutchinson's trace (`trace="hutchinson"`) and uniform dequantization
    (`probability_flow_bits_per_dim`), as in score_sde.
    """),
    ("code", r"""
    sde = VPSDE()
    score = NoiseLevelScore(lambda y, level: ring.score(y, level), sde)
    pts = data2[:300].double()
    eps = 1e-5
    a1, s1 = sde.alpha_sigma(torch.tensor(1 - eps))
    exact = ring.log_prob(pts / a1, s1 / a1) - 2 * math.log(float(a1))


    class ExactStart(torch.distributions.Distribution):
        # the true density of x_0 = alpha_0 x + sigma_0 eps (a blurred ring), event (2,)
        arg_constraints = {}

        def __init__(self) -> None:
            super().__init__(event_shape=(2,), validate_args=False)
            self.a, self.s = sde.alpha_sigma(torch.tensor(0.0))

        def log_prob(self, x: torch.Tensor) -> torch.Tensor:
            return ring.log_prob(x / self.a, self.s / self.a) - 2 * torch.log(self.a)


    for prior, label in ((ExactStart(), "exact p_0"), (None, "prior N(0, I)")):
        lp, nfe = probability_flow_log_prob(sde, score, pts, trace="exact", eps=eps,
                                            prior=prior, rtol=1e-7, atol=1e-7)
        print(f"base {label:14s}: max |log p_ODE - log p_exact| = "
              f"{(lp - exact).abs().max():.1e} nats ({nfe} NFE)")
    """),
    ("md", r"""
    ## 11. Training a score SDE, and a DDPM used as a VP-SDE score

    `VectorScoreSDE` is the course's conditional MLP plus an SDE; the network predicts the
    noise, so the score is $-\text{net}(x, t)/\sigma_t$. `ContinuousScoreMatching` is
    denoising score matching over $t$:
    $\tfrac12 E\,\lambda(t)\|s_\theta(x_t, t) + \epsilon/\sigma_t\|^2$ with
    $\lambda = \sigma_t^2$ (default), $g^2$ (likelihood weighting, optionally with
    importance-sampled times) or 1. Its `sample` runs any of the samplers above, and its
    `log_prob` is the probability-flow likelihood.

    DDPM is the VP SDE discretized ($\beta_i = \beta(s_i)/N$, `VPSDE().discrete_betas(1000)`
    is the linear schedule $10^{-4} \ldots 0.02$), and NCSN's ladder the VE SDE's
    (`VESDE.discrete_sigmas`). So a trained DDPM's noise predictor, matched by noise level,
    is a VP-SDE score: `NoiseLevelScore.from_diffusion(ddpm, VPSDE())` hands it to the
    probability-flow ODE and the predictor-corrector sampler. (The DDPM also has a
    probability-flow ODE of its own discrete schedule, `ddpm.sample(sampler="ode")` and
    `ddpm.log_prob`; the last line below compares the two likelihoods.)
    """),
    ("code", r"""
    torch.manual_seed(0)
    score_sde = VectorScoreSDE(2, sde="vp", hidden_features=[128, 128, 128])
    start = time.perf_counter()
    fit(ContinuousScoreMatching(score_sde, score_sde.sde), ToySampler("moons"),
        steps=budget(2500), batch_size=512, lr=2e-3, lr_schedule="cosine", ema_decay=0.999,
        progress=False)
    print(f"score SDE trained in {time.perf_counter() - start:.0f} s")
    score_sde.eval()
    moons = toy_sample("moons", n2, generator=torch.Generator().manual_seed(3))
    samples = {}
    with torch.no_grad():
        for label, kw in (("PC, 200 steps", {"sampler": "pc", "steps": 200, "snr": 0.1}),
                          ("probability flow", {"sampler": "ode"})):
            samples[label] = score_sde.sample((n2,), **kw)
            print(f"score SDE, {label:16s}: NFE {score_sde.last_nfe:4d}, "
                  f"W2 {wasserstein2(samples[label], moons):.3f}")
        nll = -score_sde.log_prob(moons[:500]).mean().item()
    print(f"held-out NLL by the probability-flow ODE: {nll:.3f} nats "
          f"({score_sde.last_solve.nfe} NFE)")

    torch.manual_seed(0)
    ddpm = VectorDDPM(2, num_steps=1000, schedule="linear", hidden_features=[128, 128, 128])
    fit(DiffusionLoss(ddpm), ToySampler("moons"), steps=budget(2500), batch_size=512,
        lr=2e-3, lr_schedule="cosine", ema_decay=0.999, progress=False)
    ddpm.eval()
    as_vp = NoiseLevelScore.from_diffusion(ddpm, VPSDE())
    with torch.no_grad():
        ode = probability_flow_sample(VPSDE(), as_vp, n2, (2,))
        samples["DDPM as VP-SDE score, ODE"] = ode.samples
        lp, nfe = probability_flow_log_prob(VPSDE(), as_vp, moons[:500], trace="exact")
        own = ddpm.log_prob(moons[:500])
    print(f"DDPM as a VP-SDE score, probability flow: NFE {ode.nfe}, "
          f"W2 {wasserstein2(ode.samples, moons):.3f}; held-out NLL {-lp.mean():.3f} nats")
    print(f"DDPM's own probability flow (its schedule's path): held-out NLL "
          f"{-own.mean():.3f} nats")
    fig = Figure(figsize=(12, 3), layout="constrained")
    axes = fig.subplots(1, 4)
    for ax, (label, x) in zip(axes, samples.items()):
        plot_samples(x, ax=ax, title=label, bounds=3.0)
    with torch.no_grad():
        plot_density_2d(score_sde.log_prob, 3.0, RES // 2, ax=axes[3],
                        title="score SDE density (ODE)")
    fig
    """),
    ("md", r"""
    From the command line, the presets `sde-vp-moons`, `sde-ve-8gaussians`,
    `sde-subvp-checkerboard` (likelihood weighting), `sde-vp-digits` and `sde-vp-mnist`
    train a score SDE; the `[sample]` table picks the sampler (`sampler = "pc" | "sde" |
    "ode"` or one of the fast solvers `"ddim"`, `"dpm++2m"`, `"dpm++3m"`, `"unipc"`,
    `"edm_heun"` shared with DDPM and flow matching, see notebook 10; `steps`, `method`,
    `snr`):
    """),
    ("code", r"""
    from probgen.cli import main

    main(["fit", "sde-ve-8gaussians", "--out", "runs/sde-ve", "--quiet",
          "--set", f"train.steps={budget(1500)}", "--set", f"sample.steps={budget(100)}",
          "--set", "sample.n=1000", "--set", "eval.resolution=40"])
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
    - `probgen.sde` holds the VP, sub-VP and VE SDEs (torchsde objects in diffusion time;
      `alpha_sigma`, `prior`, `reverse(score)` and `probability_flow(score)` in probgen time);
      `probgen.fokker_planck` solves their 1-D Fokker-Planck equation on a grid;
      `probgen.inference` trains them (`ContinuousScoreMatching`) and samples them
      (`reverse_sde_sample`, `predictor_corrector_sample`, `probability_flow_sample`, and
      the fast solvers through `ScoreSDE.sample(sampler=...)`), with
      exact likelihoods through `ContinuousFlow` (`probability_flow_log_prob`,
      `probability_flow_bits_per_dim`); `VectorScoreSDE`/`ImageScoreSDE` are the models and
      `NoiseLevelScore` turns DDPM and NCSN networks into SDE scores.
    """),
]
