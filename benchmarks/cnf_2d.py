"""2-D continuous normalizing flows: probgen's CNF against zuko's CNF at the same budget.

For each data set, both libraries train the same network (zuko's CNF: an MLP [64, 64] with
ELU on [x, cos(k pi t), sin(k pi t)], k = 1..3, exact trace, dopri5 at rtol 1e-5 /
atol 1e-6) from the same initial weights (zuko's, mapped onto probgen's time convention: the
same function), on the same pre-drawn batches, one Adam step of each in turn. Reported:
held-out NLL, seconds per training step, the time of ``log_prob`` on 5000 points with the
exact trace (both libraries on the same trained field), and, for probgen, peak memory of a
training step with and without the adjoint at growing numbers of function evaluations.
An optional third row trains probgen's CNF with RNODE's penalties (same budget).

``--same-work`` (issue 25): zuko's CNF setting at atol = rtol = 1e-5 with a field MLP
[64, 64, 64], 1000 steps of 256 on moons for each of ``--seeds``, zuko against probgen at its
defaults and probgen with zuko's tolerance on the log-density (``log_density_atol = 100 *
atol``): held-out NLL, paired step-time ratios with bootstrap intervals, network calls per
step, and log_prob on the same trained field. ``--sw-profile``: on one field (zuko trained
a few hundred steps), where one training step's time goes: calls in the solve and in
backward, dopri5 attempts, the solve/backward split and the share of probgen's solve spent
in its right-hand side.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
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
    draw_batches,
    held_out,
    machine,
    markdown_table,
    publish,
    set_threads,
    today,
)

DATASETS = ("8gaussians", "moons", "checkerboard")
HIDDEN = (64, 64)
FREQS = 3
RTOL, ATOL = 1e-5, 1e-6  # zuko's CNF defaults


# --------------------------------------------------------------------------- models


def build_zuko(hidden: tuple[int, ...] = HIDDEN, atol: float = ATOL,
               rtol: float = RTOL) -> nn.Module:
    import zuko

    return zuko.flows.CNF(2, freqs=FREQS, atol=atol, rtol=rtol, hidden_features=list(hidden))


def build_probgen(adjoint: bool = False, method: str = "dopri5",
                  step_size: float | None = None, hidden: tuple[int, ...] = HIDDEN,
                  atol: float = ATOL, rtol: float = RTOL,
                  log_density_atol: float | None = None) -> nn.Module:
    from probgen.models import CNF

    return CNF(2, hidden_features=list(hidden), activation="elu", freqs=FREQS, rtol=rtol,
               atol=atol, adjoint=adjoint, method=method, step_size=step_size,
               log_density_atol=log_density_atol)


@torch.no_grad()
def copy_zuko_into_probgen(zf: nn.Module, pf: nn.Module) -> None:
    """Loads zuko's field into probgen's CNF as the same flow in probgen's time convention.

    zuko integrates data (t = 0) -> base (t = 1) along f(t, x) on inputs
    [cos(k pi t), sin(k pi t), x]; probgen integrates base (s = 0) -> data (s = 1) along
    v(x, s) = -f(1 - s, x) on inputs [x, cos(k pi s), sin(k pi s)]. With
    cos(k pi (1 - s)) = (-1)^k cos(k pi s) and sin(k pi (1 - s)) = -(-1)^k sin(k pi s),
    the first layer's time columns change sign by k's parity and the last layer is negated.
    """
    src = [m for m in zf.transform.ode if hasattr(m, "weight")]  # zuko.nn.Linear layers
    dst = [m for m in pf.field.net if isinstance(m, nn.Linear)]
    sign = torch.tensor([(-1.0) ** k for k in range(1, FREQS + 1)])
    w = src[0].weight
    dst[0].weight.copy_(torch.cat([w[:, 2 * FREQS:], w[:, :FREQS] * sign,
                                   -w[:, FREQS:2 * FREQS] * sign], dim=1))
    dst[0].bias.copy_(src[0].bias)
    for a, b in zip(src[1:-1], dst[1:-1], strict=True):
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)
    dst[-1].weight.copy_(-src[-1].weight)
    dst[-1].bias.copy_(-src[-1].bias)


class Counter:
    """Counts calls of zuko's field network (its function evaluations)."""

    def __init__(self, module: nn.Module) -> None:
        self.n = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.n += 1


# --------------------------------------------------------------------------- training


def train(runners: dict[str, dict], batches: Tensor, lr: float) -> None:
    """One Adam step of each runner in turn on the same batch (order alternating), timed."""
    for r in runners.values():
        r["opt"] = torch.optim.Adam(r["module"].parameters(), lr=lr)
        r["module"].train()
        r["times"], r["nfe"] = [], []
    names = list(runners)
    for i, x in enumerate(batches):
        for name in (names if i % 2 == 0 else names[::-1]):
            r = runners[name]
            t0 = time.perf_counter()
            loss = r["loss"](x)
            r["opt"].zero_grad()
            loss.backward()
            r["opt"].step()
            r["times"].append(time.perf_counter() - t0)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"{name}: non-finite loss at step {i + 1}")
            if hasattr(r["module"], "nfe"):
                r["nfe"].append(r["module"].nfe)


@torch.no_grad()
def nll(log_prob: object, x: Tensor, chunk: int = 5000) -> float:
    return -sum(float(log_prob(x[i:i + chunk]).sum()) for i in range(0, len(x), chunk)) / len(x)


def time_log_prob(zf: nn.Module, pf: nn.Module, x: Tensor, repeats: int) -> dict:
    """Both libraries' log_prob on the same points and the same field, interleaved."""
    counter = Counter(zf.transform.ode)
    zf.eval()
    pf.eval()
    tz, tp, nfe_z, nfe_p = [], [], [], []
    with torch.no_grad():
        lz = zf().log_prob(x)
        lp = pf.log_prob(x)
        for i in range(repeats):
            for who in (("z", "p") if i % 2 == 0 else ("p", "z")):
                t0 = time.perf_counter()
                if who == "z":
                    counter.n = 0
                    zf().log_prob(x)
                    tz.append(time.perf_counter() - t0)
                    nfe_z.append(counter.n)
                else:
                    pf.log_prob(x)
                    tp.append(time.perf_counter() - t0)
                    nfe_p.append(pf.nfe)
    return {"zuko_s": statistics.median(tz), "probgen_s": statistics.median(tp),
            "zuko_nfe": statistics.median(nfe_z), "probgen_nfe": statistics.median(nfe_p),
            "max_abs_diff": float((lz - lp).abs().max())}


# --------------------------------------------------------------------------- memory


def _peak_rss_kb() -> int:
    """This process's peak resident set (VmHWM), in kB. (Not ``ru_maxrss``: on Linux a
    child process inherits its parent's high-water mark through fork and exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("VmHWM not found in /proc/self/status")


def _reset_peak_rss() -> None:
    """Resets VmHWM to the current resident set (Linux >= 4.0); a no-op where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def memory_probe(nfe: int, adjoint: bool, batch: int) -> dict:
    """Peak resident memory added by one training step (forward + backward) of probgen's CNF
    with a fixed-step RK4 solver making ``nfe`` evaluations; run in a fresh process."""
    set_threads(1)
    torch.manual_seed(0)
    steps = nfe // 4
    pf = build_probgen(adjoint=adjoint, method="rk4", step_size=1.0 / steps)
    x = torch.randn(batch, 2)
    small = build_probgen(adjoint=adjoint, method="rk4", step_size=0.5)
    (-small.log_prob(x[:8]).mean()).backward()  # warm-up: lazy initialisations
    _reset_peak_rss()
    before = _peak_rss_kb()
    t0 = time.perf_counter()
    loss = -pf.log_prob(x).mean()
    loss.backward()
    seconds = time.perf_counter() - t0
    after = _peak_rss_kb()
    return {"nfe": pf.last_solve.nfe, "nfe_backward": pf.last_solve.nfe_backward,
            "adjoint": adjoint, "peak_mb": (after - before) / 1024, "seconds": seconds}


def memory_table(nfes: list[int], batch: int) -> list[dict]:
    rows = []
    for nfe in nfes:
        for adjoint in (False, True):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-probe", str(nfe), str(int(adjoint)),
                 str(batch)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"[cnf_2d] memory: NFE {row['nfe']:4d} adjoint={adjoint!s:5s} "
                  f"peak +{row['peak_mb']:.1f} MB ({row['seconds']:.2f} s)", flush=True)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- main


def fmt(v: float, digits: int = 3) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.{digits}f}"


def run_dataset(dataset: str, args: argparse.Namespace) -> dict:
    from probgen.inference import RegularizedMaximumLikelihood

    torch.manual_seed(args.seed)
    zf = build_zuko()
    runners: dict[str, dict] = {"zuko": {"module": zf, "loss": lambda x: -zf().log_prob(x).mean()}}
    pf = build_probgen()
    copy_zuko_into_probgen(zf, pf)
    runners["probgen"] = {"module": pf, "loss": lambda x: -pf.log_prob(x).mean()}
    if args.rnode > 0:
        rf = build_probgen()
        copy_zuko_into_probgen(zf, rf)
        objective = RegularizedMaximumLikelihood(rf, kinetic=args.rnode, jacobian=args.rnode)
        runners["probgen + RNODE"] = {"module": rf, "loss": lambda x: objective(x)["loss"]}
    x_test = held_out(dataset, args.eval_size, args.seed)
    with torch.no_grad():  # the mapped weights give the same density before training
        gap0 = float((zf().log_prob(x_test[:500]) - pf.log_prob(x_test[:500])).abs().max())
    batches = draw_batches(dataset, args.steps, args.batch_size, args.seed)
    t0 = time.perf_counter()
    train(runners, batches, args.lr)
    train_s = time.perf_counter() - t0
    warm = min(20, args.steps // 10)
    result: dict = {"dataset": dataset, "initial_gap": gap0, "train_s": train_s, "rows": []}
    for name, r in runners.items():
        r["module"].eval()
        counter = Counter(zf.transform.ode) if name == "zuko" else None
        log_prob = (lambda x: zf().log_prob(x)) if name == "zuko" else r["module"].log_prob
        value = nll(log_prob, x_test)
        eval_nfe = (counter.n / math.ceil(len(x_test) / 5000)) if counter else r["module"].nfe
        row = {"library": name, "nll": value,
               "ms_step": 1e3 * statistics.median(r["times"][warm:]),
               "train_nfe": statistics.median(r["nfe"][-50:]) if r["nfe"] else float("nan"),
               "eval_nfe": eval_nfe}
        result["rows"].append(row)
        print(f"[cnf_2d] {dataset:12s} {name:16s} NLL {value:.4f} nats, "
              f"{row['ms_step']:.1f} ms/step (median), eval NFE {eval_nfe:.0f}", flush=True)
    # log_prob speed on the same field: zuko's trained weights in probgen's CNF.
    same = build_probgen()
    copy_zuko_into_probgen(zf, same)
    timing = time_log_prob(zf, same, x_test[: args.timing_points], args.timing_repeats)
    result["timing"] = timing
    print(f"[cnf_2d] {dataset:12s} log_prob({args.timing_points}) on zuko's trained field: "
          f"zuko {timing['zuko_s']:.3f} s (NFE {timing['zuko_nfe']:.0f}), probgen "
          f"{timing['probgen_s']:.3f} s (NFE {timing['probgen_nfe']:.0f}), max |diff| "
          f"{timing['max_abs_diff']:.1e}", flush=True)
    return result


def report(results: list[dict], args: argparse.Namespace, elapsed: float) -> str:
    rows = []
    goals = []
    for res in results:
        zuko = next(r for r in res["rows"] if r["library"] == "zuko")
        for r in res["rows"]:
            gap = r["nll"] - zuko["nll"]
            rows.append([res["dataset"], r["library"], fmt(r["nll"]),
                         "ref." if r["library"] == "zuko" else f"{gap:+.3f}",
                         fmt(r["ms_step"], 1),
                         "-" if r["library"] == "zuko" else fmt(r["train_nfe"], 0),
                         fmt(r["eval_nfe"], 0)])
        ours = next(r for r in res["rows"] if r["library"] == "probgen")
        gap = ours["nll"] - zuko["nll"]
        t = res["timing"]
        goals.append(f"- {res['dataset']}: NLL gap {gap:+.3f} nats "
                     f"({'met' if gap <= 0.02 else 'MISSED'}); log_prob x"
                     f"{t['probgen_s'] / t['zuko_s']:.2f} zuko's time "
                     f"({'met' if t['probgen_s'] <= t['zuko_s'] else 'MISSED'})")
    table = markdown_table(["data", "library", "NLL (nats)", "vs zuko", "ms/step (median)",
                            "forward NFE/step (last 50)", "NFE of eval log_prob"], rows)
    timing = markdown_table(
        ["data", "zuko s", "probgen s", "probgen / zuko", "zuko NFE", "probgen NFE",
         "max |log p diff|"],
        [[res["dataset"], fmt(res["timing"]["zuko_s"]), fmt(res["timing"]["probgen_s"]),
          fmt(res["timing"]["probgen_s"] / res["timing"]["zuko_s"], 2),
          fmt(res["timing"]["zuko_nfe"], 0), fmt(res["timing"]["probgen_nfe"], 0),
          f"{res['timing']['max_abs_diff']:.1e}"] for res in results])
    rnode = (f" The 'probgen + RNODE' row adds kinetic and Jacobian penalties with weight "
             f"{args.rnode} each (`RegularizedMaximumLikelihood`)." if args.rnode > 0 else "")
    return (
        "## 2-D continuous flows: probgen CNF vs zuko CNF\n\n"
        f"Command: `{command_line()}`  \n"
        f"Date: {today()}  \n"
        f"Machine: {machine(args.threads)}; other jobs shared the cores during the run.  \n"
        f"Setup: the same network in both libraries (zuko's `CNF(2)`: MLP {list(HIDDEN)}, ELU, "
        f"{FREQS} time frequencies, exact trace, dopri5 with rtol {RTOL:g}, atol {ATOL:g}); "
        "probgen starts from zuko's initial weights mapped to its time convention (t = 0 "
        "base), so both start from the same density. Budget: "
        f"{args.steps} Adam steps (lr {args.lr}), batch {args.batch_size}, the same pre-drawn "
        f"batches (seed {args.seed}); the libraries take turns step by step (plain loops), so "
        "background load hits both alike. This budget was chosen so that the whole run fits "
        f"about 10-15 minutes on 2 shared cores (this run: {elapsed:.0f} s); the flows are "
        "not trained to convergence. NLL: nats on "
        f"{args.eval_size} held-out points, each library's own exact-trace log_prob."
        f"{rnode}\n\n"
        + table
        + f"\n\n`log_prob` of {args.timing_points} held-out points, exact trace, both libraries "
        "on the same (zuko's trained) field, median of "
        f"{args.timing_repeats} interleaved calls:\n\n"
        + timing
        + "\n\nGoals: NLL no worse than zuko's by more than 0.02 nats; log_prob at least as "
        "fast as zuko's. Peak memory with and without the adjoint: the section "
        "'2-D continuous flows: adjoint memory' below.\n\n"
        + "\n".join(goals) + "\n"
    )


def memory_report(memory: list[dict], args: argparse.Namespace) -> str:
    """The memory section: peak memory per training step, with and without the adjoint."""
    goals = []
    mem_rows = []
    for nfe in sorted({m["nfe"] for m in memory}):
        bp = next(m for m in memory if m["nfe"] == nfe and not m["adjoint"])
        adj = next(m for m in memory if m["nfe"] == nfe and m["adjoint"])
        mem_rows.append([str(nfe), fmt(bp["peak_mb"], 1), fmt(adj["peak_mb"], 1),
                         str(adj["nfe_backward"]), fmt(bp["seconds"], 2),
                         fmt(adj["seconds"], 2)])
    mem = markdown_table(["NFE (forward)", "backprop: peak MB", "adjoint: peak MB",
                          "adjoint backward NFE", "backprop s", "adjoint s"], mem_rows)
    if memory:
        flat = [m["peak_mb"] for m in memory if m["adjoint"]]
        grows = [m["peak_mb"] for m in memory if not m["adjoint"]]
        goals.append(f"- adjoint peak memory {min(flat):.0f}-{max(flat):.0f} MB over NFE "
                     f"{min(args.memory_nfe)}-{max(args.memory_nfe)} (backprop "
                     f"{min(grows):.0f}-{max(grows):.0f} MB)")
    return (
        "## 2-D continuous flows: adjoint memory\n\n"
        f"Command: `{command_line()}`  \n"
        f"Date: {today()}  \n"
        f"Machine: {machine(1)}.  \n"
        "Peak memory of one training step of probgen's CNF (the cnf_2d network; log_prob + "
        f"backward, batch {args.memory_batch}, fixed-step RK4 so that the number of function "
        "evaluations is set), measured as the growth of the peak resident set (VmHWM, reset "
        "before the step) in a fresh process per row:\n\n"
        + mem + "\n\nGoal: adjoint memory flat in the number of evaluations.\n\n"
        + "\n".join(goals) + "\n"
    )


# --------------------------------------------------------------------------- same work

#: The issue's same-work check: zuko's CNF setting, the same in both libraries.
SW_DATASET, SW_HIDDEN, SW_TOL = "moons", (64, 64, 64), 1e-5
#: zuko's CNF scales the log-determinant by 1e-2 inside its error norm: the log-density's
#: absolute tolerance is 100 times atol. probgen's default controls it at atol.
ZUKO_LOG_DENSITY_SCALE = 100.0


def _sw_runners(zf: nn.Module, args: argparse.Namespace) -> dict[str, dict]:
    """zuko, probgen at its defaults, probgen with zuko's log-density tolerance: the same
    initial field (zuko's weights mapped into probgen's time convention)."""
    runners: dict[str, dict] = {"zuko": {"module": zf, "counter": Counter(zf.transform.ode),
                                         "log_prob": lambda x: zf().log_prob(x)}}
    for name, ld in (("probgen", None), ("probgen, log-density atol x100",
                                         ZUKO_LOG_DENSITY_SCALE * args.sw_atol)):
        pf = build_probgen(hidden=tuple(args.sw_hidden), atol=args.sw_atol, rtol=args.sw_atol,
                           log_density_atol=ld)
        copy_zuko_into_probgen(zf, pf)
        runners[name] = {"module": pf, "log_prob": pf.log_prob}
    return runners


def _calls(r: dict) -> int:
    return r["counter"].n if "counter" in r else r["module"].nfe


def train_same_work(runners: dict[str, dict], batches: Tensor, lr: float) -> None:
    """One Adam step of each runner in turn on the same batch, the order reversed every
    step; records each step's seconds and its network calls in the loss (forward solve)
    and in ``backward``."""
    for r in runners.values():
        r["opt"] = torch.optim.Adam(r["module"].parameters(), lr=lr)
        r["module"].train()
        r["times"], r["fwd"], r["bwd"] = [], [], []
    names = list(runners)
    for i, x in enumerate(batches):
        for name in (names if i % 2 == 0 else names[::-1]):
            r = runners[name]
            if "counter" in r:
                r["counter"].n = 0
            t0 = time.perf_counter()
            loss = -r["log_prob"](x).mean()
            fwd = _calls(r)
            r["opt"].zero_grad()
            loss.backward()
            r["opt"].step()
            r["times"].append(time.perf_counter() - t0)
            r["fwd"].append(fwd)
            r["bwd"].append(r["counter"].n - fwd if "counter" in r else 0)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"{name}: non-finite loss at step {i + 1}")
        if (i + 1) % 100 == 0:
            print(f"[cnf_2d] same-work step {i + 1}: " + ", ".join(
                f"{n} {1e3 * statistics.median(r['times'][-100:]):.0f} ms"
                for n, r in runners.items()), flush=True)


def median_ci(groups: list[list[float]], draws: int = 2000, seed: int = 0
              ) -> tuple[float, float, float]:
    """Median of the pooled values and a 95% bootstrap interval, resampling within each
    group (seed) so that every seed keeps its weight."""
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.tensor(v, dtype=torch.float64) for v in groups]
    pooled = torch.cat(tensors)
    meds = []
    for _ in range(draws):
        meds.append(torch.cat([t[torch.randint(len(t), (len(t),), generator=g)]
                               for t in tensors]).median())
    lo, hi = torch.quantile(torch.stack(meds), torch.tensor([0.025, 0.975],
                                                             dtype=torch.float64)).tolist()
    return float(pooled.median()), lo, hi


def time_log_prob_same_field(zf: nn.Module, args: argparse.Namespace, x: Tensor) -> dict:
    """log_prob of ``x`` by zuko and by both probgen settings on zuko's trained field,
    interleaved (order reversed every round); paired ratios per round."""
    counter = Counter(zf.transform.ode)
    flows: dict[str, object] = {"zuko": lambda v: zf().log_prob(v)}
    mods = {}
    for name, ld in (("probgen", None), ("probgen, log-density atol x100",
                                         ZUKO_LOG_DENSITY_SCALE * args.sw_atol)):
        pf = build_probgen(hidden=tuple(args.sw_hidden), atol=args.sw_atol, rtol=args.sw_atol,
                           log_density_atol=ld)
        copy_zuko_into_probgen(zf, pf)
        pf.eval()
        mods[name] = pf
        flows[name] = pf.log_prob
    zf.eval()
    out = {n: {"s": [], "nfe": 0} for n in flows}
    names = list(flows)
    with torch.no_grad():
        values = {n: f(x) for n, f in flows.items()}  # warm-up
        for i in range(args.timing_repeats):
            for n in (names if i % 2 == 0 else names[::-1]):
                counter.n = 0
                t0 = time.perf_counter()
                flows[n](x)
                out[n]["s"].append(time.perf_counter() - t0)
                out[n]["nfe"] = counter.n if n == "zuko" else mods[n].nfe
    for n in names:
        out[n]["ratios"] = [a / b for a, b in zip(out[n]["s"], out["zuko"]["s"], strict=True)]
        out[n]["max_abs_diff"] = float((values[n] - values["zuko"]).abs().max())
    return out


def run_same_work(seed: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    zf = build_zuko(hidden=tuple(args.sw_hidden), atol=args.sw_atol, rtol=args.sw_atol)
    runners = _sw_runners(zf, args)
    x_test = held_out(SW_DATASET, args.eval_size, seed)
    batches = draw_batches(SW_DATASET, args.sw_steps, args.batch_size, seed)
    t0 = time.perf_counter()
    train_same_work(runners, batches, args.lr)
    train_s = time.perf_counter() - t0
    warm = min(20, args.sw_steps // 10)
    zuko = runners["zuko"]
    rows = []
    for name, r in runners.items():
        r["module"].eval()
        value = nll(r["log_prob"], x_test)
        ratios = [a / b for a, b in zip(r["times"][warm:], zuko["times"][warm:], strict=True)]
        rows.append({"library": name, "nll": value, "ratios": ratios,
                     "ms_step": 1e3 * statistics.median(r["times"][warm:]),
                     "total_s": sum(r["times"][warm:]),
                     "fwd": statistics.fmean(r["fwd"]), "bwd": statistics.fmean(r["bwd"])})
        print(f"[cnf_2d] same-work seed {seed} {name:32s} NLL {value:.4f}, "
              f"{rows[-1]['ms_step']:.1f} ms/step, calls/step {rows[-1]['fwd']:.0f} + "
              f"{rows[-1]['bwd']:.0f}, x zuko {statistics.median(ratios):.3f}", flush=True)
    timing = time_log_prob_same_field(zf, args, x_test[: args.timing_points])
    for n, t in timing.items():
        print(f"[cnf_2d] same-work seed {seed} log_prob({args.timing_points}) {n:32s} "
              f"{statistics.median(t['s']):.3f} s, NFE {t['nfe']}, x zuko "
              f"{statistics.median(t['ratios']):.3f}", flush=True)
    return {"seed": seed, "rows": rows, "timing": timing, "train_s": train_s}


def same_work_report(results: list[dict], args: argparse.Namespace, elapsed: float,
                     command: str | None = None) -> str:
    names = [r["library"] for r in results[0]["rows"]]
    rows, summary, goals = [], [], []
    for res in results:
        zuko = next(r for r in res["rows"] if r["library"] == "zuko")
        for r in res["rows"]:
            ref = r["library"] == "zuko"
            rows.append([str(res["seed"]), r["library"], fmt(r["nll"], 4),
                         "ref." if ref else f"{r['nll'] - zuko['nll']:+.4f}",
                         f"{r['fwd']:.0f} + {r['bwd']:.0f}", fmt(r["ms_step"], 1),
                         "ref." if ref else fmt(statistics.median(r["ratios"]), 3),
                         "ref." if ref else fmt(r["total_s"] / zuko["total_s"], 3)])
    for name in names:
        per = [next(r for r in res["rows"] if r["library"] == name) for res in results]
        zukos = [next(r for r in res["rows"] if r["library"] == "zuko") for res in results]
        gaps = [p["nll"] - z["nll"] for p, z in zip(per, zukos, strict=True)]
        lp = [res["timing"][name] for res in results]
        if name == "zuko":
            summary.append([name, fmt(statistics.fmean(p["nll"] for p in per), 4), "ref.",
                            f"{statistics.fmean(p['fwd'] + p['bwd'] for p in per):.0f}",
                            "ref.", "ref.",
                            f"{statistics.fmean(t['nfe'] for t in lp):.0f}", "ref."])
            continue
        step = median_ci([p["ratios"] for p in per])
        total = sum(p["total_s"] for p in per) / sum(z["total_s"] for z in zukos)
        lpr = median_ci([t["ratios"] for t in lp])
        summary.append([name, fmt(statistics.fmean(p["nll"] for p in per), 4),
                        f"{statistics.fmean(gaps):+.4f} (max {max(gaps):+.4f})",
                        f"{statistics.fmean(p['fwd'] + p['bwd'] for p in per):.0f}",
                        f"{step[0]:.3f} [{step[1]:.3f}, {step[2]:.3f}]", f"{total:.3f}",
                        f"{statistics.fmean(t['nfe'] for t in lp):.0f}",
                        f"{lpr[0]:.3f} [{lpr[1]:.3f}, {lpr[2]:.3f}]"])
        ok = lambda c: "met" if c else "NOT met"  # noqa: E731
        goals.append(f"- {name}: NLL gap {max(gaps):+.4f} at worst over seeds "
                     f"({ok(max(gaps) <= 0.02)}); step x{step[0]:.3f} zuko's "
                     f"[{step[1]:.3f}, {step[2]:.3f}] ({ok(step[2] <= 1.0)}); log_prob "
                     f"x{lpr[0]:.3f} [{lpr[1]:.3f}, {lpr[2]:.3f}] ({ok(lpr[2] <= 1.0)})")
    per_seed = markdown_table(["seed", "library", "NLL (nats)", "vs zuko",
                               "network calls/step (solve + backward)", "ms/step (median)",
                               "x zuko (paired median)", "x zuko (total time)"], rows)
    table = markdown_table(["library", "NLL (mean)", "vs zuko: mean (worst)",
                            "calls/step", "step x zuko: paired median [95% CI]",
                            "step x zuko: total time", "log_prob NFE",
                            "log_prob x zuko [95% CI]"], summary)
    seeds = ", ".join(str(r["seed"]) for r in results)
    ld = ZUKO_LOG_DENSITY_SCALE * args.sw_atol
    return (
        f"## 2-D continuous flows: same-work check against zuko ({SW_DATASET}, "
        f"{len(results)} seeds)\n\n"
        f"Command: `{command or command_line()}`  \n"
        f"Date: {today()}  \n"
        f"Machine: {machine(args.threads)}; other jobs shared the cores during the run.  \n"
        f"Setup: zuko's CNF setting in both libraries: field MLP {list(args.sw_hidden)} with "
        f"ELU on [x, cos(k pi t), sin(k pi t)], k = 1..{FREQS}, exact trace, dopri5 at atol = "
        f"rtol = {args.sw_atol:g}; {args.sw_steps} Adam steps (lr {args.lr}) of batch "
        f"{args.batch_size} on {SW_DATASET}, seeds {seeds} (the seed sets zuko's initial "
        "weights, which every probgen model starts from, mapped to its time convention, and "
        "the pre-drawn batches all libraries share). The libraries take turns step by step, "
        "the order reversed every step; 'x zuko (paired)' is the median over steps (after "
        "the first 20) of each step's time over zuko's step on the same batch, with a 95% "
        "bootstrap interval resampling steps within each seed. Network calls: zuko's "
        "forward solve (7 a dopri5 attempt) plus its adjoint's backward solve (6 an accepted "
        "step); probgen backpropagates through the solver (2 + 6 an attempt, none in "
        "backward). 'probgen, log-density atol x100' sets `log_density_atol = "
        f"{ld:g}`, the tolerance zuko's solver applies to the log-density (it scales the "
        "log-determinant by 1e-2 in its error norm); plain 'probgen' controls the "
        f"log-density at atol. NLL: nats on {args.eval_size} held-out points, each model's "
        f"own exact-trace log_prob. log_prob: {args.timing_points} held-out points, all on "
        f"zuko's trained field, {args.timing_repeats} interleaved rounds per seed. Total run "
        f"{elapsed:.0f} s.\n\n"
        + table + "\n\nPer seed:\n\n" + per_seed
        + "\n\nGoals: NLL within 0.02 nats of zuko's; the training step and log_prob no "
        "slower than zuko's (the upper end of the interval <= 1).\n\n"
        + "\n".join(goals) + "\n"
    )


def profile_same_work(args: argparse.Namespace) -> dict:
    """Where a training step's time goes, on one field in both libraries: zuko's CNF trained
    for ``--sw-profile-steps`` steps (seed ``--seeds[0]``), its weights copied into both
    probgen settings; ``--timing-repeats`` x 2 interleaved rounds of one training step each
    on one batch, then of log_prob on the held-out points."""
    import probgen.cnf as pcnf

    seed = args.seeds[0]
    torch.manual_seed(seed)
    zf = build_zuko(hidden=tuple(args.sw_hidden), atol=args.sw_atol, rtol=args.sw_atol)
    opt = torch.optim.Adam(zf.parameters(), lr=args.lr)
    batches = draw_batches(SW_DATASET, args.sw_profile_steps + 1, args.batch_size, seed)
    for x in batches[:-1]:
        opt.zero_grad()
        (-zf().log_prob(x).mean()).backward()
        opt.step()
    runners = _sw_runners(zf, args)
    x = batches[-1]
    inside = [0.0]  # seconds inside probgen's dynamics (field + divergence)
    forward = pcnf._Dynamics.forward

    def timed_forward(self: nn.Module, t: Tensor, state: object) -> object:
        t0 = time.perf_counter()
        out = forward(self, t, state)
        inside[0] += time.perf_counter() - t0
        return out

    rows: dict[str, dict[str, list[float]]] = {n: {} for n in runners}
    names = list(runners)
    pcnf._Dynamics.forward = timed_forward
    try:
        for i in range(2 * args.timing_repeats + 1):  # round 0: warm-up
            for name in (names if i % 2 == 0 else names[::-1]):
                r = runners[name]
                if "counter" in r:
                    r["counter"].n = 0
                inside[0] = 0.0
                t0 = time.perf_counter()
                loss = -r["log_prob"](x).mean()
                t1 = time.perf_counter()
                fwd = _calls(r)
                loss.backward()
                t2 = time.perf_counter()
                r["module"].zero_grad()
                bwd = r["counter"].n - fwd if "counter" in r else 0
                if i == 0:
                    continue
                for key, value in (("step", t2 - t0), ("solve", t1 - t0),
                                   ("backward", t2 - t1), ("dynamics", inside[0]),
                                   ("fwd", fwd), ("bwd", bwd)):
                    rows[name].setdefault(key, []).append(value)
    finally:
        pcnf._Dynamics.forward = forward
    out = {"seed": seed, "steps": args.sw_profile_steps, "train": rows,
           "timing": time_log_prob_same_field(zf, args, held_out(SW_DATASET,
                                                                 args.timing_points, seed))}
    return out


def profile_report(prof: dict, args: argparse.Namespace) -> str:
    rows = []
    z = prof["train"]["zuko"]
    med = statistics.median
    for name, r in prof["train"].items():
        fwd, bwd = med(r["fwd"]), med(r["bwd"])
        # dopri5 attempts: zuko 7 calls each (no reuse of the last stage), torchdiffeq's
        # 6 (first-same-as-last) after 2 for its first step size
        attempts = fwd / 7 if name == "zuko" else (fwd - 2) / 6
        ratio = med(a / b for a, b in zip(r["step"], z["step"], strict=True))
        shares = [d / s for d, s in zip(r["dynamics"], r["solve"], strict=True)]
        share = "-" if name == "zuko" else f"{100 * med(shares):.0f}%"
        rows.append([name, f"{fwd:.0f} + {bwd:.0f}", f"{attempts:.1f}",
                     fmt(1e3 * med(r["step"]), 1), "ref." if name == "zuko" else f"{ratio:.3f}",
                     fmt(1e3 * med(r["solve"]), 1), fmt(1e3 * med(r["backward"]), 1), share,
                     fmt(1e3 * med(r["step"]) / (fwd + bwd), 2),
                     fmt(1e3 * med(r["step"]) / attempts, 1)])
    lp = prof["timing"]
    lp_rows = [[n, str(t["nfe"]), fmt(statistics.median(t["s"]), 3),
                "ref." if n == "zuko" else f"{statistics.median(t['ratios']):.3f}",
                f"{t['max_abs_diff']:.1e}"] for n, t in lp.items()]
    return (
        "## 2-D continuous flows: where a same-work training step's time goes\n\n"
        f"Command: `{command_line()}`  \n"
        f"Date: {today()}  \n"
        f"Machine: {machine(args.threads)}; other jobs shared the cores during the run.  \n"
        f"One field in all three: zuko's CNF (the same-work setting above) trained for "
        f"{prof['steps']} steps on {SW_DATASET} (seed {prof['seed']}), its weights copied into "
        f"probgen; {2 * args.timing_repeats} interleaved rounds of one training step each on "
        f"one batch of {args.batch_size} (medians). Calls: network evaluations in the solve "
        "+ in backward; attempts: dopri5 steps tried (zuko 7 calls each, torchdiffeq 6 after "
        "2 for the initial step size); 'in dynamics': share of probgen's solve spent in its "
        "right-hand side (field, exact divergence by D vector-Jacobian products with "
        "create_graph), the rest is torchdiffeq's stepping.\n\n"
        + markdown_table(["library", "calls (solve + backward)", "dopri5 attempts",
                          "ms/step", "x zuko (paired)", "solve ms", "backward ms",
                          "solve in dynamics", "ms per call", "ms per attempt"], rows)
        + f"\n\nlog_prob of {args.timing_points} held-out points on the same field, no "
        f"gradient, {args.timing_repeats} interleaved rounds:\n\n"
        + markdown_table(["library", "NFE", "s (median)", "x zuko (paired)",
                          "max |log p - zuko's|"], lp_rows) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-size", type=int, default=20000)
    parser.add_argument("--timing-points", type=int, default=5000)
    parser.add_argument("--timing-repeats", type=int, default=5)
    parser.add_argument("--rnode", type=float, default=0.01,
                        help="weight of both RNODE penalties for an extra probgen row (0: skip)")
    parser.add_argument("--memory-nfe", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--memory-batch", type=int, default=1024)
    parser.add_argument("--memory-only", action="store_true",
                        help="only the memory section (about a minute)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--same-work", action="store_true",
                        help="only the same-work check against zuko (moons, --seeds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sw-steps", type=int, default=1000)
    parser.add_argument("--sw-hidden", type=int, nargs="+", default=list(SW_HIDDEN))
    parser.add_argument("--sw-atol", type=float, default=SW_TOL, help="atol = rtol")
    parser.add_argument("--sw-profile", action="store_true",
                        help="only the same-work profile of one training step on one field")
    parser.add_argument("--sw-profile-steps", type=int, default=300,
                        help="zuko's training steps before the profile")
    parser.add_argument("--sw-json", help="same-work: save each finished seed's results here")
    parser.add_argument("--sw-from-json", help="same-work: only write the report of the "
                                                "results saved by --sw-json")
    parser.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    add_quick(parser, "8gaussians only, 5 steps of batch 64, 200 held-out points, memory at "
                      "NFE 8 only")
    parser.add_argument("--memory-probe", nargs=3, type=int, metavar=("NFE", "ADJOINT", "BATCH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_quick(parser, args, datasets=["8gaussians"], steps=5, batch_size=64, eval_size=200,
                timing_points=100, timing_repeats=1, memory_nfe=[8], memory_batch=64,
                sw_steps=5, seeds=[0, 1], sw_profile_steps=3)
    if args.memory_probe:
        nfe, adjoint, batch = args.memory_probe
        print(json.dumps(memory_probe(nfe, bool(adjoint), batch)))
        return 0
    set_threads(args.threads)
    if args.sw_profile:
        body = profile_report(profile_same_work(args), args)
        publish("cnf_2d_same_work_profile", body, args.write, echo=True, tag="[cnf_2d] ")
        return 0
    if args.same_work:
        start = time.perf_counter()
        if args.sw_from_json:
            saved = json.loads(Path(args.sw_from_json).read_text())
            results, elapsed, command = saved["results"], saved["elapsed"], saved["command"]
        else:
            results, command = [], command_line()
            for seed in args.seeds:
                results.append(run_same_work(seed, args))
                elapsed = time.perf_counter() - start
                if args.sw_json:
                    Path(args.sw_json).write_text(json.dumps(
                        {"results": results, "elapsed": elapsed, "command": command}))
        body = same_work_report(results, args, elapsed, command)
        publish("cnf_2d_same_work", body, args.write, echo=True, tag="[cnf_2d] ")
        return 0
    if not args.memory_only:
        start = time.perf_counter()
        results = [run_dataset(d, args) for d in args.datasets]
        body = report(results, args, time.perf_counter() - start)
        publish("cnf_2d", body, args.write, echo=True, tag="[cnf_2d] ")
    if args.memory_nfe:
        body = memory_report(memory_table(args.memory_nfe, args.memory_batch), args)
        publish("cnf_2d_memory", body, args.write, echo=True, tag="[cnf_2d] ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
