"""Cells of 00_quickstart.ipynb as ("md" | "code", source) pairs, for tutorials/build.py."""

from __future__ import annotations

CELLS: list[tuple[str, str]] = [
    ("md", r"""
    # probgen in ten cells: from install to first samples

    **probgen** is one framework for deep generative models on PyTorch and Pyro. Every model
    is a `torch.distributions`-style density (normalizing flows: `log_prob`, `sample`, and
    `distribution()` gives the Pyro `TransformedDistribution`), a Pyro model/guide pair, or a
    network plus a sampler, and all of them train through the same objectives
    (`probgen.inference`) and the same trainer (`fit`), so any two models can be compared on
    the same data with the same metrics.

    **Install.** From a clone of the repository, `make demo` creates `.venv`, installs the
    pinned dependencies (CPU torch first) and trains a first model; in an environment that
    already has torch, `pip install -e .` is enough. Run this notebook with that
    environment's Python kernel. With `PROBGEN_QUICK=1` in the environment every training
    run takes a few steps only (a smoke test: the numbers then mean nothing).

    This notebook fits a RealNVP flow to the 2-D "moons" density by maximum likelihood,
    looks at its samples and density, checks its held-out likelihood and that its density
    integrates to 1, and then does the same run through the command line.
    """),
    ("code", r"""
    %matplotlib inline
    import warnings

    # Figures render inline (above); probgen's trainer imports tqdm.auto, which warns in a
    # kernel without ipywidgets: we train with progress=False, so the warning is noise.
    warnings.filterwarnings("ignore", message="IProgress not found")
    """),
    ("code", r"""
    import os
    import time

    import torch

    from probgen.data import TOY_NAMES, ToySampler, toy_sample
    from probgen.inference import MaximumLikelihood, fit
    from probgen.metrics import integrate_density_2d
    from probgen.models import RealNVP
    from probgen.plots import plot_density_2d, plot_samples, plot_training_curves

    QUICK = os.environ.get("PROBGEN_QUICK") == "1"  # smoke-test mode: a few steps only
    STEPS = 30 if QUICK else 1500
    # These models are tiny: one thread is the fastest setting, and stays fast on a busy CPU.
    torch.set_num_threads(1)
    print("quick mode (numbers are meaningless)" if QUICK else f"full run: {STEPS} steps")
    """),
    ("md", r"""
    ## 1. Data

    `toy_sample(name, n, generator=...)` draws seeded points from one of the classic 2-D toy
    densities. We keep 20000 points, drawn with their own seed, as a held-out set; training
    draws fresh batches instead (below), so the model never sees these points.
    """),
    ("code", r"""
    print("toy densities:", ", ".join(TOY_NAMES))
    x_test = toy_sample("moons", 20000, generator=torch.Generator().manual_seed(1))
    plot_samples(x_test[:2000], title="moons: 2000 of the held-out points", bounds=4)
    """),
    ("md", r"""
    ## 2. Model

    `RealNVP(features=2, transforms=8)` stacks 8 affine coupling layers (each an MLP with two
    hidden layers of 64 units) on a standard-normal base. It is an `nn.Module` (so
    `.parameters()`, `.to(device)`, `state_dict` work) with `log_prob(x)` and `sample(shape)`,
    and `flow.distribution()` returns the same model as a Pyro `TransformedDistribution`.
    """),
    ("code", r"""
    torch.manual_seed(0)
    flow = RealNVP(features=2, transforms=8, hidden_features=[64, 64])
    print(f"{sum(p.numel() for p in flow.parameters())} parameters, "
          f"event shape {tuple(flow.event_shape)}")
    print("as a distribution:", type(flow.distribution()).__name__)
    """),
    ("md", r"""
    ## 3. Train

    `MaximumLikelihood(flow)` is the objective: the mean negative log-likelihood (NLL, in nats
    per point) of a batch, which is the forward KL divergence from the data to the model up to
    a constant. `fit` is the one trainer every objective uses. `ToySampler("moons")` draws a
    fresh batch of 512 points at every step, from the trainer's seeded generator, so the run
    is reproducible. `eval_data` is averaged every `eval_every` steps and logged as
    `eval/nll`.
    """),
    ("code", r"""
    start = time.perf_counter()
    history = fit(
        MaximumLikelihood(flow), ToySampler("moons"), steps=STEPS, batch_size=512, lr=1e-3,
        eval_data=x_test, eval_every=STEPS // 5, eval_batch_size=5000, progress=False,
    )
    print(f"{STEPS} steps in {time.perf_counter() - start:.1f} s")
    print(f"training NLL over the last 10 steps: {history.final['nll']:.3f} nats/point")
    """),
    ("md", r"""
    ## 4. Training curve

    `history.records` holds one dict per log event (every 10 steps: the mean training NLL;
    every `eval_every` steps: the held-out `eval/nll`). The two curves should meet: with
    fresh data at every step there is nothing to overfit.
    """),
    ("code", r"""
    plot_training_curves(history.records, keys=["nll", "eval/nll"])
    """),
    ("md", r"""
    ## 5. Samples and density

    `flow.sample((n,))` draws `n` points (no gradients); `plot_density_2d` evaluates
    `exp(flow.log_prob)` on a 200 x 200 grid over [-4, 4]^2. A good fit shows the two
    interleaved half-moons in both.
    """),
    ("code", r"""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    with torch.no_grad():
        plot_samples(flow.sample((2000,)), ax=left, title="2000 samples", bounds=4)
        plot_density_2d(flow.log_prob, bounds=4, resolution=200, ax=right,
                        title="density exp(log_prob)")
    fig
    """),
    ("md", r"""
    ## 6. Held-out likelihood, and a density that integrates to 1

    The held-out NLL is the model's average `-log p(x)` on the 20000 held-out points, in nats
    per point (lower is better; the difference between two models is the difference of their
    KL divergences from the data). For scale we print the NLL of a Gaussian with the held-out
    points' own mean and covariance: the best any Gaussian can do, even granted a peek at the
    test set. Finally, the midpoint rule on a 400 x 400 grid over [-6, 6]^2 integrates
    `exp(log_prob)`: a normalizing flow is an exact density, so this is 1 up to the mass
    outside the box and the grid error.
    """),
    ("code", r"""
    with torch.no_grad():
        nll = -flow.log_prob(x_test).mean().item()
        gauss = torch.distributions.MultivariateNormal(x_test.mean(0), torch.cov(x_test.T))
        nll_gauss = -gauss.log_prob(x_test).mean().item()
        mass = integrate_density_2d(flow.log_prob, bounds=(-6, 6), resolution=400)
    print(f"held-out NLL, RealNVP:            {nll:.4f} nats/point")
    print(f"held-out NLL, best Gaussian:      {nll_gauss:.4f} nats/point")
    print(f"integral of the density on the box: {mass:.4f}")
    """),
    ("md", r"""
    ## 7. The same run from the command line

    `probgen fit realnvp-moons` trains the built-in preset of the same model (8 couplings,
    64-64 MLPs, batch 512, Adam 1e-3, seed 0) and writes a run folder: `config.toml`,
    `checkpoint.pt`, `metrics.jsonl`, `eval.json` and figures. `--set train.steps=...`
    overrides one setting. From a shell you would type the `probgen ...` command; here we
    call its entry point, `probgen.cli.main`, with the same arguments. It prints the
    held-out NLL (`test/nll`, on 20000 points drawn with seed 1, the same points as above),
    the training time and the files written. With the same seed, architecture and data
    stream, it reproduces the Python run above: the same NLL.
    """),
    ("code", r"""
    from probgen.cli import main

    run = "runs/quickstart"
    assert main(["fit", "realnvp-moons", "--out", run, "--set", f"train.steps={STEPS}",
                 "--quiet"]) == 0
    """),
    ("md", r"""
    `probgen eval RUN` reloads the checkpoint and recomputes the held-out metrics;
    `probgen sample RUN --n N` writes `samples_N.png` into the run folder (or a tensor with
    `--out x.pt`). `probgen list` names every preset.
    """),
    ("code", r"""
    from IPython.display import Image

    assert main(["eval", run]) == 0
    assert main(["sample", run, "--n", "2000"]) == 0
    Image(filename=f"{run}/samples_2000.png")
    """),
    ("md", r"""
    ## Where to go next

    - [`02_flows.ipynb`](02_flows.ipynb): the normalizing-flows lecture: change of variables,
      forward vs reverse KL, planar flows on the Rezende-Mohamed energies, a gallery of six
      flows with a held-out NLL table, and bits per dimension on 8x8 digit images.
    - `probgen list` shows every preset (`probgen fit <preset>` runs it); a TOML run file
      declares your own (see `probgen/run/presets/*.toml`).
    - [`README.md`](README.md) in this folder says which tutorial shows which part of the API.
    """),
]
