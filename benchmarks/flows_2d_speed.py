"""2-D flows: probgen's sampling and log_prob against zuko's, warm and first call, eager and
compiled, as paired ratios (issue 25).

The architectures of benchmarks/flows_2d.py that zuko implements (MAF: 5 affine
autoregressive transforms; NSF: 5 autoregressive rational-quadratic splines, 8 bins; hidden
[64, 64]), built from the same seed. Operations: ``log_prob`` of a batch of points and
``sample`` of as many (no gradients). Variants:

- ``warm``: eager calls after a few untimed ones; each round times a block of calls of each
  library in turn (order alternating), the ratio of a round is probgen's block median over
  zuko's; reported: the median over rounds, its distribution-free 95% CI and quartiles.
- ``first``: the first call of a freshly built model (probgen's caches and lazily built
  state included), the two libraries alternating, one pair per round.
- ``compiled``: ``torch.compile`` (default backend and mode) of the same call, warm, paired
  as above; the first compiled call (compilation) of each is reported in seconds.

ratio < 1: probgen is faster. Goal: ratio <= 1 (at least as fast as zuko).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    command_line,
    load_note,
    machine,
    markdown_table,
    publish,
    set_threads,
    today,
)
from dynamics_speed import median_ci, quartiles  # noqa: E402

ARCHS = ("MAF", "NSF")
OPS = ("log_prob", "sample")


def build(arch: str, library: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if library == "probgen":
        from probgen.models import MAF, NSF

        if arch == "MAF":
            return MAF(2, transforms=5, hidden_features=[64, 64])
        return NSF(2, transforms=5, hidden_features=[64, 64], bins=8, bound=5.0,
                   autoregressive=True)
    import zuko

    if arch == "MAF":
        return zuko.flows.MAF(features=2, transforms=5, hidden_features=[64, 64])
    return zuko.flows.NSF(features=2, transforms=5, hidden_features=[64, 64], bins=8)


def call(flow: torch.nn.Module, library: str, op: str, x: torch.Tensor) -> Callable[[], object]:
    """The no-argument call timed: ``log_prob(x)`` or ``sample((len(x),))``."""
    n = x.shape[0]
    if library == "probgen":
        if op == "log_prob":
            return lambda: flow.log_prob(x)
        return lambda: flow.sample((n,))
    if op == "log_prob":
        return lambda: flow().log_prob(x)
    return lambda: flow().sample((n,))


def compiled(flow: torch.nn.Module, library: str, op: str,
             x: torch.Tensor) -> Callable[[], object]:
    n = x.shape[0]
    if library == "probgen":
        fn = (lambda v: flow.log_prob(v)) if op == "log_prob" else (lambda v: flow.sample((n,)))
    else:
        fn = (lambda v: flow().log_prob(v)) if op == "log_prob" else (
            lambda v: flow().sample((n,)))
    c = torch.compile(fn)
    return lambda: c(x)


def paired(fns: dict[str, Callable[[], object]], rounds: int, block: int,
           warmup: int) -> list[float]:
    """Per-round ratios probgen / zuko of the block medians, order alternating."""
    ratios = []
    names = ["probgen", "zuko"]
    for r in range(warmup + rounds):
        meds = {}
        for name in (names if r % 2 == 0 else names[::-1]):
            ts = []
            for _ in range(block):
                t0 = time.perf_counter()
                fns[name]()
                ts.append(time.perf_counter() - t0)
            meds[name] = statistics.median(ts)
        if r >= warmup:
            ratios.append(meds["probgen"] / meds["zuko"])
    return ratios


def first_calls(arch: str, op: str, x: torch.Tensor, rounds: int, seed: int) -> list[float]:
    ratios = []
    names = ["probgen", "zuko"]
    for r in range(rounds):
        t = {}
        for name in (names if r % 2 == 0 else names[::-1]):
            flow = build(arch, name, seed)
            fn = call(flow, name, op, x)
            with torch.no_grad():
                t0 = time.perf_counter()
                fn()
                t[name] = time.perf_counter() - t0
        ratios.append(t["probgen"] / t["zuko"])
    return ratios


def summary(ratios: list[float]) -> dict:
    q1, q3 = quartiles(ratios)
    return {"ratio": statistics.median(ratios), "ci": median_ci(ratios), "q": (q1, q3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--n", type=int, default=512, help="points per call")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--first-rounds", type=int, default=20)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    add_quick(parser, "MAF only, 2 rounds of 2-call blocks, 2 first calls, no compile")
    args = parser.parse_args()
    apply_quick(parser, args, rounds=2, block=2, warmup=1, first_rounds=2, archs=["MAF"],
                compile=False)
    set_threads(args.threads)
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # compile times from an empty cache
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="flows-speed-cache-")
    warnings.filterwarnings("ignore", module=r"torch\..*")
    x = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed + 1))
    start = time.perf_counter()
    rows = []
    for arch in args.archs:
        flows = {lib: build(arch, lib, args.seed).eval() for lib in ("probgen", "zuko")}
        for op in OPS:
            fns = {lib: call(f, lib, op, x) for lib, f in flows.items()}
            with torch.no_grad():
                for fn in fns.values():
                    fn()
                ms = {lib: 1e3 * statistics.median(
                    [(lambda t0: (fn(), time.perf_counter() - t0)[1])(time.perf_counter())
                     for _ in range(5)]) for lib, fn in fns.items()}
                res = {"warm": summary(paired(fns, args.rounds, args.block, args.warmup))}
            res["first"] = summary(first_calls(arch, op, x, args.first_rounds, args.seed))
            compile_s = {}
            if args.compile:
                torch._dynamo.reset()
                cfns = {lib: compiled(f, lib, op, x) for lib, f in flows.items()}
                with torch.no_grad():
                    for lib, fn in cfns.items():
                        t0 = time.perf_counter()
                        fn()
                        compile_s[lib] = time.perf_counter() - t0
                    res["compiled"] = summary(paired(cfns, args.rounds, args.block,
                                                     args.warmup))
            for variant, s in res.items():
                goal = "yes" if s["ci"][1] <= 1.0 else ("**no**" if s["ci"][0] > 1.0
                                                        else "undecided")
                extra = ""
                if variant == "warm":
                    extra = f"{ms['probgen']:.3f} / {ms['zuko']:.3f}"
                elif variant == "compiled":
                    extra = (f"compile {compile_s['probgen']:.1f} s / "
                             f"{compile_s['zuko']:.1f} s")
                rows.append([arch, op, variant, f"{s['ratio']:.3f}",
                             f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]",
                             f"[{s['q'][0]:.3f}, {s['q'][1]:.3f}]", extra, goal])
                print(f"[flows_2d_speed] {arch} {op} {variant}: probgen/zuko "
                      f"{s['ratio']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] {extra}",
                      flush=True)
    elapsed = time.perf_counter() - start
    body = "\n".join([
        "## 2-D flows: sampling and log_prob, probgen vs zuko (flows_2d_speed)", "",
        f"Command: `{command_line()}`  ",
        f"Date: {today()}; {machine(args.threads)}; total {elapsed / 60:.1f} min; "
        f"{load_note()}: read the paired ratios, not absolute times.", "",
        f"MAF (5 affine autoregressive transforms) and NSF (5 autoregressive RQ splines, 8 "
        f"bins, bound 5), hidden [64, 64], features 2, same seed for both libraries; "
        f"`log_prob` of {args.n} points and `sample(({args.n},))`, no gradients. warm: "
        f"{args.rounds} rounds (after {args.warmup}) of {args.block}-call blocks of each "
        "library in turn, order alternating, ratio = probgen's block median / zuko's; "
        f"first: the first call of a freshly built model, {args.first_rounds} alternating "
        "pairs; compiled: `torch.compile` (inductor, default mode) of the same call, warm, "
        "paired as warm (its first call, the compilation, in seconds). Reported: median "
        "ratio, its distribution-free 95% CI, quartiles; < 1: probgen faster. Goal: ratio "
        "<= 1 ('yes': the CI's upper end <= 1).", "",
        markdown_table(["flow", "op", "variant", "probgen / zuko", "95% CI", "[q1, q3]",
                        "ms (probgen / zuko) or compile", "goal <= 1"], rows),
    ])
    publish("flows_2d_speed", body, args.write, echo=True, tag="[flows_2d_speed] ")


if __name__ == "__main__":
    main()
