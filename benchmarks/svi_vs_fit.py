"""Step time of a probgen VAE trained by Pyro's own SVI vs by probgen's fit(ELBO) (issue 23).

Issue 23 asks that the VAE, a Pyro program, train under plain ``pyro.infer.SVI`` at a step
time close to the trainer's: goal, SVI's step at most 1.15x ``fit``'s (Pyro's JIT ELBO
reaches 1.15x against a plain loop). Both train the same model (copies of one
initialization) on the binarized 8x8 digits, batch 128:

- ``svi``: ``SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())`` and
  ``svi.step(x)``, the way a Pyro user writes it;
- ``fit``: one step of ``probgen.inference.fit``'s update on ``ELBO(vae)`` (the mean-field
  estimator with closed-form KLs): ``zero_grad``, the objective's forward, ``backward``, an
  Adam step (``torch.optim.Adam``, foreach).

Both in one process; each round times a block of steps of each in turn (the order
alternating); the ratio of a round is the SVI block's median over fit's; reported: the
median over rounds with its distribution-free 95% CI and quartiles. ``--estimator trace``
gives the fit side Pyro's Monte Carlo KL (``ELBO(estimator="trace")``), the same estimator
as SVI's ``Trace_ELBO``, to separate the estimator from the loop.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    command_line,
    machine,
    markdown_table,
    set_threads,
    today,
    write_section,
)
from dynamics_speed import median_ci, quartiles  # noqa: E402

GOAL = 1.15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--block", type=int, default=10, help="steps per timed block")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--estimator", default="meanfield", choices=("meanfield", "trace"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    add_quick(parser, "3 rounds of 2 steps")
    args = parser.parse_args()
    apply_quick(parser, args, rounds=3, block=2)
    set_threads(args.threads)

    from probgen.data import load_digits
    from probgen.inference import ELBO
    from probgen.models import VAE

    images, _ = load_digits("train")
    data = (images / 16.0 > 0.5).float()
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_features=8, hidden_features=[256, 256],
              likelihood="bernoulli")
    svi_vae, fit_vae = copy.deepcopy(vae), copy.deepcopy(vae)
    pyro.clear_param_store()
    svi = pyro.infer.SVI(svi_vae.model, svi_vae.guide, pyro.optim.Adam({"lr": 1e-3}),
                         pyro.infer.Trace_ELBO())
    objective = ELBO(fit_vae, estimator=args.estimator)
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-3, foreach=True)
    generator = torch.Generator().manual_seed(1)

    def batch() -> torch.Tensor:
        return data[torch.randint(0, len(data), (args.batch,), generator=generator)]

    def svi_step() -> None:
        svi.step(batch())

    def fit_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        objective(batch())["loss"].backward()
        optimizer.step()

    def block(step) -> float:
        times = []
        for _ in range(args.block):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    for _ in range(3):  # untimed warm-up
        block(svi_step), block(fit_step)
    ratios, svi_ms, fit_ms = [], [], []
    for r in range(args.rounds):
        if r % 2:
            a = block(svi_step)
            b = block(fit_step)
        else:
            b = block(fit_step)
            a = block(svi_step)
        svi_ms.append(1e3 * a), fit_ms.append(1e3 * b), ratios.append(a / b)
    median = statistics.median(ratios)
    lo, hi = median_ci(ratios)
    q1, q3 = quartiles(ratios)
    moved = sum(not torch.equal(p, q) for p, q in zip(svi_vae.parameters(), vae.parameters(),
                                                        strict=True))
    verdict = ("met" if hi <= GOAL else "not met" if lo > GOAL else "undecided (noise)")
    rows = [["SVI (Trace_ELBO, pyro.optim.Adam)", f"{statistics.median(svi_ms):.2f}",
             f"{statistics.median(fit_ms):.2f}", f"{median:.3f}", f"[{lo:.3f}, {hi:.3f}]",
             f"[{q1:.3f}, {q3:.3f}]", verdict]]
    body = (f"Command: `{command_line()}`  \nDate: {today()}; {machine(args.threads)}.\n\n"
            f"VAE (1x8x8 binarized digits, MLP 256-256, latent 8, Bernoulli), batch "
            f"{args.batch}, fit side `ELBO(estimator={args.estimator!r})`; {args.rounds} "
            f"rounds of {args.block}-step blocks, alternating. SVI moved "
            f"{moved}/{len(list(vae.parameters()))} parameter tensors.\n\n"
            + markdown_table(["plain Pyro loop", "SVI ms/step", "fit ms/step",
                              "median ratio SVI/fit", "95% CI", "quartiles",
                              f"goal <= {GOAL}"], rows))
    print(body)
    if args.write:
        write_section("svi_vs_fit", "## A probgen VAE under Pyro's SVI vs fit(ELBO): step "
                      "time (svi_vs_fit)\n\n" + body)


if __name__ == "__main__":
    main()
