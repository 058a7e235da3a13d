"""2-D flow matching: probgen vs torchcfm vs Meta's flow_matching, same network and budget.

On moons, 8gaussians and checkerboard, five runs train copies of one network (an MLP on
``[x, t]``, SiLU, from the same initial weights) with Adam on the same data batches, one
step of each in turn (so the seconds per step are measured under the same load):

- ``probgen`` independent CFM and exact-OT CFM (``ConditionalFlowMatching`` on the
  conditional OT path, ``sigma_min = 0``; the OT pairs are the optimal permutation);
- ``torchcfm`` ``ConditionalFlowMatcher`` and ``ExactOptimalTransportConditionalFlowMatcher``
  (``sigma = 0``; POT's exact plan, pairs drawn from it);
- Meta's ``flow_matching`` ``AffineProbPath(CondOTScheduler())`` (independent pairs).

All five use the straight conditional path with no noise, so they differ in their coupling
and in library overhead only. Each trained field is then sampled with dopri5 (rtol = atol =
1e-5) through its library's solver (probgen: ``ode_sample``; flow_matching: ``ODESolver``;
torchcfm's own sampler needs torchdyn, so its fields go through torchdiffeq directly, which
torchdyn's dopri5 wraps in the same way), with the number of function evaluations counted
on the network, and with 10 Euler steps. Quality: exact W2 (``probgen.metrics.wasserstein2``)
and Gaussian-kernel MMD^2 (median bandwidth x {0.5, 1, 2}) of 2000 samples against 2000
held-out data points; the row ``data`` gives both between two independent data samples
(the floor at this sample size).

With several ``--seeds`` the report gives each run's mean W2 over seeds and the
paired difference between probgen's best run and the best peer run.

Budget: ``--steps`` optimizer steps per run, or ``--minutes`` of wall-clock per data set
(all five runs together), whichever ends first.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    command_line,
    machine,
    markdown_table,
    publish,
    set_threads,
    today,
)

DATASETS = ("moons", "8gaussians", "checkerboard")
RUNS = ("probgen-indep", "probgen-ot", "torchcfm-indep", "torchcfm-ot", "flow_matching-indep")
TOL = 1e-5


class Net(nn.Module):
    """The one network of every run: an MLP on ``[x, t]`` returning a velocity."""

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = dim + 1
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        layers.append(nn.Linear(d, dim))
        self.net = nn.Sequential(*layers)
        self.nfe = 0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        t = t.reshape(-1, 1).to(x.dtype).expand(x.shape[0], 1)
        return self.net(torch.cat([x, t], 1))


def build_runs(net: Net, names: tuple[str, ...] = RUNS) -> dict[str, dict]:
    """One entry per run of ``names``: its own copy of ``net`` and a ``loss(x1)`` closure."""
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from torchcfm.conditional_flow_matching import (
        ConditionalFlowMatcher,
        ExactOptimalTransportConditionalFlowMatcher,
    )

    from probgen.couplings import ExactOTCoupling
    from probgen.inference import ConditionalFlowMatching
    from probgen.paths import CondOTPath

    runs: dict[str, dict] = {}
    for name in names:
        module = copy.deepcopy(net)
        if name.startswith("probgen"):
            coupling = ExactOTCoupling() if name.endswith("ot") else None
            objective = ConditionalFlowMatching(module, CondOTPath(), coupling)

            def loss(x1: Tensor, objective: nn.Module = objective) -> Tensor:
                return objective(x1)["loss"]
        elif name.startswith("torchcfm"):
            matcher = (ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
                       if name.endswith("ot") else ConditionalFlowMatcher(sigma=0.0))

            def loss(x1: Tensor, matcher: object = matcher, module: Net = module) -> Tensor:
                x0 = torch.randn_like(x1)
                t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
                return (module(xt, t) - ut).pow(2).mean()
        else:
            path = AffineProbPath(scheduler=CondOTScheduler())

            def loss(x1: Tensor, path: object = path, module: Net = module) -> Tensor:
                x0 = torch.randn_like(x1)
                t = torch.rand(x1.shape[0])
                s = path.sample(x_0=x0, x_1=x1, t=t)
                return (module(s.x_t, t) - s.dx_t).pow(2).mean()
        runs[name] = {"module": module, "loss": loss}
    return runs


def train(runs: dict[str, dict], dataset: str, args: argparse.Namespace, seed: int) -> int:
    """Interleaved Adam steps on shared batches until ``--steps`` or ``--minutes``."""
    from probgen.data import toy_sample

    g = torch.Generator().manual_seed(seed + 1)
    for r in runs.values():
        r["opt"] = torch.optim.Adam(r["module"].parameters(), lr=args.lr)
        r["times"] = []
    names = list(runs)
    start = time.perf_counter()
    step = 0
    while step < args.steps and time.perf_counter() - start < 60 * args.minutes:
        x1 = toy_sample(dataset, args.batch_size, generator=g)
        for name in (names if step % 2 == 0 else names[::-1]):
            r = runs[name]
            t0 = time.perf_counter()
            loss = r["loss"](x1)
            r["opt"].zero_grad()
            loss.backward()
            r["opt"].step()
            r["times"].append(time.perf_counter() - t0)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"{name}: non-finite loss at step {step + 1}")
        step += 1
    return step


@torch.no_grad()
def sample(name: str, module: Net, x0: Tensor, method: str) -> tuple[Tensor, int]:
    """Samples of a run's field through its library's solver; returns them and the NFE."""
    from torchdiffeq import odeint

    module.eval()
    module.nfe = 0
    if name.startswith("probgen"):
        from probgen.inference import ode_sample

        res = ode_sample(module, x0, method=method, steps=10 if method == "euler" else None,
                         rtol=TOL, atol=TOL)
        x = res.samples
    elif name.startswith("flow_matching"):
        from flow_matching.solver import ODESolver

        solver = ODESolver(velocity_model=lambda x, t: module(x, t))
        x = solver.sample(x_init=x0, step_size=0.1 if method == "euler" else None,
                          method=method, atol=TOL, rtol=TOL)
    else:
        options = {"step_size": 0.1} if method == "euler" else None
        x = odeint(lambda t, y: module(y, t), x0, torch.tensor([0.0, 1.0]), method=method,
                   rtol=TOL, atol=TOL, options=options)[-1]
    return x, module.nfe


def evaluate(x: Tensor, data: Tensor) -> dict[str, float]:
    from probgen.metrics import mmd2, wasserstein2

    return {"w2": wasserstein2(x, data), "mmd2": mmd2(x, data)}


def run_dataset(dataset: str, args: argparse.Namespace, seed: int) -> dict:
    from probgen.data import toy_sample

    torch.manual_seed(seed)
    net = Net(width=args.width, depth=args.depth)
    runs = build_runs(net)
    steps = train(runs, dataset, args, seed)
    gens = [torch.Generator().manual_seed(base + seed) for base in (10_000, 20_000, 30_000)]
    data = toy_sample(dataset, args.samples, generator=gens[0])
    other = toy_sample(dataset, args.samples, generator=gens[1])
    x0 = torch.randn(args.samples, 2, generator=gens[2])
    out = {"dataset": dataset, "seed": seed, "steps": steps, "runs": {},
           "data": evaluate(other, data)}
    for name, r in runs.items():
        x, nfe = sample(name, r["module"], x0, "dopri5")
        xe, _ = sample(name, r["module"], x0, "euler")
        out["runs"][name] = {
            **evaluate(x, data), "nfe": nfe, "w2_euler10": evaluate(xe, data)["w2"],
            "ms_per_step": 1e3 * statistics.median(r["times"][min(20, len(r["times"]) - 1):]),
        }
        print(f"[fm_2d] {dataset} seed {seed} {name}: {json.dumps(out['runs'][name])}",
              flush=True)
    return out


def _header(args: argparse.Namespace, elapsed: float, title: str) -> list[str]:
    """The section's title, command, machine and setup lines."""
    return [
        title,
        "",
        f"Command: `{command_line()}`  ",
        f"Date: {today()}; {machine(args.threads)}; total {elapsed / 60:.1f} min.",
        "",
        f"Same MLP on [x, t] (width {args.width}, depth {args.depth}, SiLU) and same initial "
        f"weights for every run, Adam lr {args.lr}, batch {args.batch_size}, the same data "
        "batches, one step of each run in turn; budget per data set: "
        f"{args.steps} steps or {args.minutes:g} min of wall-clock for the five runs together. "
        f"Samples: {args.samples} from dopri5 (rtol = atol = {TOL:g}) through each library's "
        "solver (torchcfm's through torchdiffeq), NFE counted on the network; W2 (exact) "
        "and MMD^2 against as many held-out points; `W2 euler10`: 10 Euler steps. ms/step: "
        "median of the interleaved training steps (ratios are comparable within a data set).",
        "",
    ]


def report(results: list[dict], args: argparse.Namespace, elapsed: float) -> str:
    lines = _header(args, elapsed,
                    "## Flow matching on 2-D data: probgen vs torchcfm vs flow_matching (fm_2d)")
    for res in results:
        rows = []
        best_peer = min(v["w2"] for k, v in res["runs"].items() if not k.startswith("probgen"))
        for name, v in res["runs"].items():
            rows.append([name, f"{v['w2']:.4f}", f"{v['mmd2']:.5f}", f"{v['w2_euler10']:.4f}",
                         str(v["nfe"]), f"{v['ms_per_step']:.2f}"])
        rows.append(["data vs data", f"{res['data']['w2']:.4f}", f"{res['data']['mmd2']:.5f}",
                     "", "", ""])
        pg = min(res["runs"]["probgen-indep"]["w2"], res["runs"]["probgen-ot"]["w2"])
        lines += [f"**{res['dataset']}** ({res['steps']} steps per run)", "",
                  markdown_table(["run", "W2", "MMD^2", "W2 euler10", "NFE dopri5",
                                  "ms/step"], rows), "",
                  f"Best probgen W2 {pg:.4f} vs best peer {best_peer:.4f}: "
                  f"{'no worse' if pg <= best_peer else 'worse'}; NFE with exact-OT "
                  f"{res['runs']['probgen-ot']['nfe']} vs independent "
                  f"{res['runs']['probgen-indep']['nfe']} (probgen), "
                  f"{res['runs']['torchcfm-ot']['nfe']} vs "
                  f"{res['runs']['torchcfm-indep']['nfe']} (torchcfm).", ""]
    return "\n".join(lines)


def report_seeds(results: list[dict], args: argparse.Namespace, elapsed: float) -> str:
    """Means over seeds, and the paired (same seed: same initial weights, batches and
    evaluation sets) difference between probgen's best run and the best peer run."""
    which = "" if list(args.datasets) == list(DATASETS) else ", ".join(args.datasets) + ", "
    lines = _header(args, elapsed, "## Flow matching on 2-D data: probgen vs torchcfm vs "
                    f"flow_matching ({args.section}, {which}{len(args.seeds)} seeds)")
    lines += [f"Seeds {', '.join(map(str, args.seeds))}: each seed draws its own initial "
              "weights (shared by the five runs), batches and evaluation sets. 'best' is "
              "the run of lowest mean W2 within probgen and among the peers; the paired "
              "difference is taken seed by seed (same weights, batches and evaluation sets).",
              ""]
    for dataset in args.datasets:
        res = [r for r in results if r["dataset"] == dataset]
        names = list(res[0]["runs"])
        w2 = {n: [r["runs"][n]["w2"] for r in res] for n in names}
        w2["data vs data"] = [r["data"]["w2"] for r in res]
        rows = []
        for n, v in w2.items():
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            per = res[0]["runs"].get(n)
            rows.append([
                n, f"{statistics.mean(v):.4f} +- {sd:.4f}", " ".join(f"{x:.3f}" for x in v),
                f"{statistics.mean([r['runs'][n]['mmd2'] for r in res]):.5f}" if per else
                f"{statistics.mean([r['data']['mmd2'] for r in res]):.5f}",
                f"{statistics.mean([r['runs'][n]['w2_euler10'] for r in res]):.4f}" if per
                else "",
                f"{statistics.mean([r['runs'][n]['nfe'] for r in res]):.1f}" if per else "",
                f"{statistics.median([r['runs'][n]['ms_per_step'] for r in res]):.2f}" if per
                else ""])
        mean = {n: statistics.mean(w2[n]) for n in names}
        pg = min((n for n in names if n.startswith("probgen")), key=mean.get)
        peer = min((n for n in names if not n.startswith("probgen")), key=mean.get)
        diff = [a - b for a, b in zip(w2[pg], w2[peer], strict=True)]
        se = statistics.stdev(diff) / math.sqrt(len(diff))
        verdict = ("no worse" if statistics.mean(diff) <= 0 else
                   "worse, within 2 standard errors" if statistics.mean(diff) <= 2 * se
                   else "worse")
        steps = ", ".join(str(r["steps"]) for r in res)
        lines += [f"**{dataset}** (steps per run by seed: {steps})", "",
                  markdown_table(["run", "W2 mean +- sd", "W2 by seed", "MMD^2 mean",
                                  "W2 euler10 mean", "NFE dopri5 mean", "ms/step median"],
                                 rows), "",
                  f"Best probgen ({pg}) mean W2 {mean[pg]:.4f} vs best peer ({peer}) "
                  f"{mean[peer]:.4f}: paired difference {statistics.mean(diff):+.4f} "
                  f"+- {se:.4f} (standard error): {verdict}. Mean NFE with exact-OT vs "
                  "independent: probgen "
                  f"{statistics.mean([r['runs']['probgen-ot']['nfe'] for r in res]):.1f} vs "
                  f"{statistics.mean([r['runs']['probgen-indep']['nfe'] for r in res]):.1f}, "
                  "torchcfm "
                  f"{statistics.mean([r['runs']['torchcfm-ot']['nfe'] for r in res]):.1f} vs "
                  f"{statistics.mean([r['runs']['torchcfm-indep']['nfe'] for r in res]):.1f}.",
                  ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="wall-clock cap per data set for the five runs together")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds (initial weights, batches, evaluation sets); with more "
                             "than one the report gives means and paired differences")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    parser.add_argument("--section", default="fm_2d",
                        help="RESULTS.md section to write (e.g. a many-seed run of one data "
                             "set beside the main section)")
    add_quick(parser, "moons only, 20 steps of batch 64, width 64, 200 samples")
    args = parser.parse_args(argv)
    apply_quick(parser, args, datasets=["moons"], steps=20, minutes=0.5, batch_size=64,
                width=64, samples=200)
    set_threads(args.threads)
    start = time.perf_counter()
    results = [run_dataset(d, args, seed) for d in args.datasets for seed in args.seeds]
    if len(args.seeds) > 1:
        body = report_seeds(results, args, time.perf_counter() - start)
    else:
        body = report(results, args, time.perf_counter() - start)
    publish(args.section, body, args.write, echo=True, tag="[fm_2d] ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
