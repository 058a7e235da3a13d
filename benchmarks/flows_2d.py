"""2-D density estimation: probgen's MAF, NSF and RealNVP against zuko and normflows."""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import math
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    command_line,
    draw_batches,
    held_out,
    machine,
    markdown_table,
    set_threads,
    summarize_times,
    today,
    write_section,
)

DATASETS = ("moons", "8gaussians", "checkerboard", "2spirals")
ARCHS = ("MAF", "NSF", "RealNVP")
# The peer library that implements each architecture.
PEERS = {"MAF": "zuko", "NSF": "zuko", "RealNVP": "normflows"}


@dataclass
class Arch:
    """The architecture every library builds: same transforms, hidden layers and bins."""

    transforms: int
    hidden: tuple[int, ...]
    bins: int = 8
    bound: float = 5.0
    # NSF only: autoregressive spline layers (zuko's NSF layout) or spline couplings.
    autoregressive: bool = True


def default_archs(args: argparse.Namespace) -> dict[str, Arch]:
    hidden = tuple(args.hidden)
    return {
        "MAF": Arch(args.maf_transforms, hidden),
        "NSF": Arch(args.nsf_transforms, hidden, bins=args.bins, bound=args.bound,
                    autoregressive=not args.nsf_coupling),
        "RealNVP": Arch(args.realnvp_transforms, hidden),
    }


# --------------------------------------------------------------------------- models


@dataclass
class Runner:
    """One model of one library, with its loss (mean NLL of a batch) and log-density."""

    label: str
    library: str
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    loss: Callable[[Tensor], Tensor]
    variant: str = ""
    times: list[float] = field(default_factory=list)
    diverged_at: int | None = None
    # median over steps of (this step's time / the peer's step time just before or after it)
    paired_ratio: float = float("nan")


def build_zuko(arch_name: str, arch: Arch) -> Runner:
    import zuko

    hidden = list(arch.hidden)
    if arch_name == "MAF":
        flow = zuko.flows.MAF(features=2, transforms=arch.transforms, hidden_features=hidden)
    elif arch_name == "NSF":
        flow = zuko.flows.NSF(
            features=2, transforms=arch.transforms, hidden_features=hidden, bins=arch.bins
        )
        if arch.bound != 5.0:  # zuko's spline bound is fixed at 5 in NSF's constructor
            raise ValueError("zuko.flows.NSF has a fixed spline bound of 5; use --bound 5.")
    else:
        raise ValueError(f"zuko has no {arch_name} here")

    def log_prob(x: Tensor) -> Tensor:
        return flow().log_prob(x)

    def loss(x: Tensor) -> Tensor:
        return -flow().log_prob(x).mean()

    return Runner(f"zuko {arch_name}", "zuko", flow, log_prob, loss)


def build_normflows(arch_name: str, arch: Arch) -> Runner:
    import normflows as nf

    if arch_name != "RealNVP":
        raise ValueError(f"normflows peer is only used for RealNVP, not {arch_name}")
    # normflows' own RealNVP recipe (its README): affine coupling blocks whose MLP maps the
    # kept half to (shift, log-scale) of the other half, with a swap between blocks.
    # The base is a fixed standard normal, as in probgen and zuko.
    flows = []
    for _ in range(arch.transforms):
        param_map = nf.nets.MLP([1, *arch.hidden, 2], init_zeros=True)
        flows.append(nf.flows.AffineCouplingBlock(param_map))
        flows.append(nf.flows.Permute(2, mode="swap"))
    base = nf.distributions.base.DiagGaussian(2, trainable=False)
    model = nf.NormalizingFlow(base, flows)
    return Runner(f"normflows {arch_name}", "normflows", model, model.log_prob, model.forward_kld)


def _accepted(cls: type, wanted: dict) -> dict:
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return wanted
    return {k: v for k, v in wanted.items() if k in params}


def build_probgen(arch_name: str, arch: Arch) -> Runner:
    from probgen import models

    cls = getattr(models, arch_name)
    kwargs = {"features": 2, "transforms": arch.transforms, "hidden_features": list(arch.hidden)}
    if arch_name == "NSF":
        kwargs.update(bins=arch.bins, bound=arch.bound, autoregressive=arch.autoregressive)
    flow = cls(**_accepted(cls, kwargs))

    def loss(x: Tensor) -> Tensor:
        return -flow.log_prob(x).mean()

    return Runner(f"probgen {arch_name}", "probgen", flow, flow.log_prob, loss)


def probgen_available() -> str | None:
    """``None`` when probgen's flows and trainer import, else the reason they do not."""
    try:
        from probgen import models
        from probgen.inference import MaximumLikelihood, fit  # noqa: F401

        missing = [a for a in ARCHS if not hasattr(models, a)]
        if missing:
            return f"probgen.models lacks {missing}"
    except Exception as e:  # noqa: BLE001 - report whatever stops the import
        return f"{type(e).__name__}: {e}"
    return None


BUILDERS = {"probgen": build_probgen, "zuko": build_zuko, "normflows": build_normflows}


# --------------------------------------------------------------------------- training


def adam_step(r: Runner, opt: torch.optim.Optimizer, x: Tensor, step: int) -> float:
    """One plain training step (the peers' idiom); returns its wall time in seconds."""
    t0 = time.perf_counter()
    loss = r.loss(x)
    opt.zero_grad()
    loss.backward()
    opt.step()
    elapsed = time.perf_counter() - t0
    if r.diverged_at is None and not math.isfinite(float(loss.detach())):
        r.diverged_at = step
    return elapsed


def paired_ratio(times: list[float], peer: list[float], warmup: int) -> float:
    """Median of the per-step time ratios after ``warmup`` steps (steps timed side by side)."""
    pairs = [a / b for a, b in zip(times[warmup:], peer[warmup:], strict=False) if b > 0]
    return statistics.median(pairs) if pairs else float("nan")


def train_interleaved(peer: Runner, ours: Runner | None, batches: Tensor, lr: float) -> None:
    """Plain Adam loops, one step of each runner in turn on the same batch.

    Interleaving puts both libraries under the same background load (the cores may be
    shared), so the per-step times are paired; who goes first alternates every step.
    """
    runners = [peer] if ours is None else [peer, ours]
    opts = [torch.optim.Adam(r.module.parameters(), lr=lr) for r in runners]
    for r in runners:
        r.module.train()
    for i, x in enumerate(batches):
        order = range(len(runners)) if i % 2 == 0 else reversed(range(len(runners)))
        for j in order:
            runners[j].times.append(adam_step(runners[j], opts[j], x, i + 1))


class ReplaySampler:
    """A sampler for ``probgen.inference.fit`` that hands out the pre-drawn batches in order."""

    def __init__(self, batches: Tensor) -> None:
        self.batches = batches
        self.i = 0

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if n != self.batches.shape[1]:
            raise ValueError(f"ReplaySampler: asked for {n} points, holds batches of "
                             f"{self.batches.shape[1]}")
        if self.i >= self.batches.shape[0]:
            raise IndexError("ReplaySampler: fit asked for more batches than were drawn")
        x = self.batches[self.i]
        self.i += 1
        return x


def train_fit(ours: Runner, companion: Runner, batches: Tensor, lr: float, seed: int,
              log_every: int = 10) -> None:
    """Trains ``ours`` through ``probgen.inference.fit``, timed against a peer in chunks.

    fit calls its callbacks after each record (every ``log_every`` steps). The wall time
    between two callbacks, over the steps between them, is fit's per-step time. Inside each
    callback the ``companion`` (a fresh peer model) takes the same ``log_every`` steps on
    the same batches with a plain loop, so fit and the peer are timed in adjacent chunks,
    under the same background load. The callback's own time is not charged to fit.
    """
    from probgen.inference import MaximumLikelihood, fit

    steps, batch_size = batches.shape[0], batches.shape[1]
    opt = torch.optim.Adam(companion.module.parameters(), lr=lr)
    companion.module.train()
    state = {"step": 0, "t": 0.0}

    def chunk(step: int, record: dict) -> bool:
        t_enter = time.perf_counter()
        n = step - state["step"]
        ours.times += [(t_enter - state["t"]) / n] * n
        t_peer = time.perf_counter()
        for i in range(state["step"], step):
            adam_step(companion, opt, batches[i], i + 1)
        companion.times += [(time.perf_counter() - t_peer) / n] * n
        state["step"] = step
        state["t"] = time.perf_counter()
        return False

    objective = MaximumLikelihood(ours.module)
    ours.module.train()
    state["t"] = time.perf_counter()
    fit(objective, ReplaySampler(batches), steps=steps, batch_size=batch_size, lr=lr,
        optimizer="adam", log_every=log_every, seed=seed, progress=False, callbacks=[chunk])


@torch.no_grad()
def evaluate(runner: Runner, x: Tensor, chunk: int = 5000) -> float:
    runner.module.eval()
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        total += float(runner.log_prob(x[start : start + chunk]).sum())
    return -total / x.shape[0]


# --------------------------------------------------------------------------- profiling


def profile_probgen(arch_name: str, arch: Arch, batches: Tensor, lr: float, top: int) -> str:
    """cProfile and torch.profiler tables of probgen's plain training step, and the peer's."""
    out = io.StringIO()
    for library in ("probgen", PEERS[arch_name]):
        torch.manual_seed(0)
        r = BUILDERS[library](arch_name, arch)
        opt = torch.optim.Adam(r.module.parameters(), lr=lr)

        def step(x: Tensor, r: Runner = r, opt: torch.optim.Optimizer = opt) -> None:
            loss = r.loss(x)
            opt.zero_grad()
            loss.backward()
            opt.step()

        for x in batches[:20]:
            step(x)
        prof = cProfile.Profile()
        prof.enable()
        for x in batches[20:]:
            step(x)
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
        out.write(f"\n===== cProfile, {r.label}, {len(batches) - 20} steps (by tottime) =====\n")
        out.write(s.getvalue())
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
            for x in batches[20:120]:
                step(x)
        out.write(f"\n===== torch.profiler, {r.label}, 100 steps =====\n")
        out.write(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    return out.getvalue()


# --------------------------------------------------------------------------- main


def fmt(v: float, digits: int = 3) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.{digits}f}"


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    archs = {k: v for k, v in default_archs(args).items() if k in args.models}
    reason = probgen_available()
    if reason is not None:
        print(f"[flows_2d] probgen flows unavailable ({reason}); running the peers only.")
    warmup = min(50, args.steps // 10)
    rows: list[dict] = []
    t_start = time.perf_counter()
    for seed, dataset in [(sd, d) for sd in args.seeds for d in args.datasets]:
        args.seed = seed
        batches = draw_batches(dataset, args.steps, args.batch_size, args.seed)
        x_test = held_out(dataset, args.eval_size, args.seed)
        for arch_name, arch in archs.items():
            library = PEERS[arch_name]
            torch.manual_seed(args.seed)
            peer = BUILDERS[library](arch_name, arch)
            runners = [peer]
            ours = None
            if reason is None and not args.no_loop:
                torch.manual_seed(args.seed)
                ours = build_probgen(arch_name, arch)
                ours.variant = "plain loop"
                runners.append(ours)
            train_interleaved(peer, ours, batches, args.lr)
            if ours is not None:
                ours.paired_ratio = paired_ratio(ours.times, peer.times, warmup)
            if reason is None and not args.no_fit:
                torch.manual_seed(args.seed)
                ours = build_probgen(arch_name, arch)
                ours.variant = "fit"
                torch.manual_seed(args.seed)
                companion = BUILDERS[library](arch_name, arch)
                train_fit(ours, companion, batches, args.lr, args.seed)
                ours.paired_ratio = paired_ratio(ours.times, companion.times, warmup)
                runners.append(ours)
            for r in runners:
                nll = evaluate(r, x_test)
                t = summarize_times(r.times, warmup)
                nparams = sum(p.numel() for p in r.module.parameters())
                rows.append(dict(dataset=dataset, arch=arch_name, library=r.library,
                                 variant=r.variant, nll=nll, params=nparams, seed=seed,
                                 diverged_at=r.diverged_at, ratio=r.paired_ratio, **t))
                name = f"{r.label} ({r.variant})" if r.variant else r.label
                print(f"[flows_2d] {dataset:12s} {name:28s} NLL {fmt(nll):>7s} nats  "
                      f"{t['median_ms']:6.2f} ms/step (median), {t['mean_ms']:6.2f} (mean), "
                      + (f"x{fmt(r.paired_ratio, 2)} peer (paired)" if r.library == "probgen"
                         else "reference") + f"  {nparams} params", flush=True)
    elapsed = time.perf_counter() - t_start

    rows = aggregate_seeds(rows)
    table = results_table(rows)
    print()
    print(table)
    print(f"\n[flows_2d] total {elapsed:.0f} s")
    if args.profile:
        batches = draw_batches(args.datasets[0], max(220, args.profile_steps), args.batch_size,
                               args.seed)
        for arch_name in args.profile:
            print(profile_probgen(arch_name, default_archs(args)[arch_name], batches, args.lr,
                                  args.profile_top))
    if args.write:
        body = (
            "## 2-D flows: probgen vs zuko and normflows"
            + (f" over {len(args.seeds)} seeds" if len(args.seeds) > 1 else "") + "\n\n"
            f"Command: `{command_line()}`  \n"
            f"Date: {today()}  \n"
            f"Machine: {machine(args.threads)}; other jobs shared the cores during the run.  \n"
            f"Setup: {args.steps} Adam steps (lr {args.lr}), batch {args.batch_size}, the same "
            f"pre-drawn batches (seeds {', '.join(map(str, args.seeds))}; the same "
            "seed also sets every library's initial weights) for every library; NLL in nats "
            "(mean, and standard deviation over seeds) on "
            f"{args.eval_size} fresh held-out points. ms/step: median (and mean) over the "
            f"steps after the first {warmup}, data drawing excluded; the fit rows time the "
            "interval between fit's records (every 10 steps) divided by 10. 'x peer (paired)': "
            "median ratio of probgen's step time to the peer's step taken right next to it "
            "(plain loop: the two models alternate steps; fit: the peer runs the same 10 "
            "steps inside fit's callback, not charged to fit), so background load cancels. "
            "Architectures: "
            + "; ".join(f"{k} {v.transforms} transforms, hidden {list(v.hidden)}"
                        + (f", {v.bins} bins, bound {v.bound}, "
                           + ("autoregressive (zuko's NSF layout; probgen "
                              "`NSF(autoregressive=True)`)" if v.autoregressive else
                              "probgen with spline couplings (`--nsf-coupling`), zuko "
                              "autoregressive") if k == "NSF" else "")
                        for k, v in archs.items())
            + f". Total wall time {elapsed:.0f} s.\n\n"
            + table
            + "\n\n" + goals_summary(rows) + "\n"
        )
        path = write_section(args.section, body)
        print(f"[flows_2d] wrote {path}")
    return 0


def aggregate_seeds(rows: list[dict]) -> list[dict]:
    """One row per (dataset, model, library, variant): mean NLL and its std over seeds,
    median of the per-seed paired ratios and step times."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["dataset"], row["arch"], row["library"], row["variant"])
        groups.setdefault(key, []).append(row)
    out = []
    for group in groups.values():
        nlls = torch.tensor([r["nll"] for r in group], dtype=torch.float64)
        first = dict(group[0])
        first["nll"] = float(nlls.mean())
        first["nll_std"] = float(nlls.std()) if len(group) > 1 else float("nan")
        first["seeds"] = len(group)
        for key in ("ratio", "median_ms", "mean_ms"):
            values = [r[key] for r in group if r.get(key) is not None]
            first[key] = float(torch.tensor(values).median()) if values else float("nan")
        diverged = [r["diverged_at"] for r in group if r["diverged_at"] is not None]
        first["diverged_at"] = diverged[0] if diverged else None
        out.append(first)
    return out


def results_table(rows: list[dict]) -> str:
    header = ["dataset", "model", "library", "NLL (nats)", "ms/step (median)", "ms/step (mean)",
              "x peer (paired)", "params"]
    out = []
    for row in rows:
        nll = fmt(row["nll"])
        if row.get("seeds", 1) > 1:
            nll += f" ± {fmt(row['nll_std'])}"
        if row["diverged_at"] is not None:
            nll += f" (non-finite loss at step {row['diverged_at']})"
        library = row["library"] + (f" ({row['variant']})" if row["variant"] else "")
        ratio = "1 (ref.)" if row["library"] != "probgen" else fmt(row["ratio"], 2)
        out.append([row["dataset"], row["arch"], library, nll, fmt(row["median_ms"], 2),
                    fmt(row["mean_ms"], 2), ratio, str(row["params"])])
    return markdown_table(header, out)


def goals_summary(rows: list[dict]) -> str:
    """Checks the stated goals: NLL within 0.02 nats of the best peer, time <= 1.1x."""
    lines = ["Goals (probgen vs the peer on the same data and architecture): NLL gap <= 0.02 "
             "nats, step time <= 1.1x the peer's (paired ratio).", ""]
    for row in rows:
        if row["library"] != "probgen":
            continue
        peers = [r for r in rows if r["dataset"] == row["dataset"] and r["arch"] == row["arch"]
                 and r["library"] != "probgen"]
        if not peers:
            continue
        gap = row["nll"] - min(r["nll"] for r in peers)
        ok_nll = "met" if gap <= 0.02 else "MISSED"
        ok_t = "met" if row["ratio"] <= 1.1 else "MISSED"
        lines.append(f"- {row['dataset']} {row['arch']} probgen ({row['variant']}): NLL gap "
                     f"{gap:+.3f} ({ok_nll}), time x{row['ratio']:.2f} ({ok_t})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--datasets", type=lambda s: s.split(","), default=list(DATASETS),
                   help=f"comma-separated, from {','.join(DATASETS)}")
    p.add_argument("--models", type=lambda s: s.split(","), default=list(ARCHS),
                   help=f"comma-separated, from {','.join(ARCHS)}")
    add_quick(p, "moons only, 20 steps of batch 64, 500 held-out points")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-size", type=int, default=20000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="repeat the whole run for each seed; NLL reported as mean ± std")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--maf-transforms", type=int, default=5)
    p.add_argument("--nsf-transforms", type=int, default=5)
    p.add_argument("--realnvp-transforms", type=int, default=8)
    p.add_argument("--bins", type=int, default=8)
    p.add_argument("--bound", type=float, default=5.0)
    p.add_argument("--section", default="flows_2d",
                   help="RESULTS.md section to write (e.g. flows_2d_seeds for a multi-seed run)")
    p.add_argument("--nsf-coupling", action="store_true",
                   help="probgen NSF with spline couplings instead of zuko's autoregressive "
                        "layout (not like-for-like)")
    p.add_argument("--no-fit", action="store_true", help="skip the probgen.inference.fit runs")
    p.add_argument("--no-loop", action="store_true", help="skip probgen's plain-loop runs")
    p.add_argument("--profile", type=lambda s: s.split(","), default=[],
                   help="after the table, profile probgen's step for these models vs the peer")
    p.add_argument("--profile-steps", type=int, default=300)
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--no-write", dest="write", action="store_false",
                   help="do not update benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    apply_quick(p, args, steps=20, batch_size=64, eval_size=500, datasets=["moons"])
    for d in args.datasets:
        if d not in DATASETS:
            p.error(f"--datasets: {d!r} is not one of {list(DATASETS)}")
    for m in args.models + args.profile:
        if m not in ARCHS:
            p.error(f"--models/--profile: {m!r} is not one of {list(ARCHS)}")
    return args


if __name__ == "__main__":
    raise SystemExit(run(parse_args()))
