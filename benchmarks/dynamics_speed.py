"""Training step time of the unified dynamics layer against the code before it (issue 22).

Issue 22's "Must show": the denoising objectives now all run through
``probgen.inference.denoising`` (one noising / target / loss routine), and

(a) the training step of each family must stay within 5% of the code before the redesign
    (commit 8d7c6ad, a checkout with its own virtual environment: ``--baseline-python``);
(b) DDPM's simple-loss step must be no slower than a plain hand-written loop of the same
    loss on the same network.

One step is ``zero_grad`` + the objective's forward + ``backward`` + an Adam step, on fixed
pools of data batches (batch 256 of moons for the 2-D families, 64 of the 8x8 digits, on
[-1, 1], for the image DDPM). Families:

- ``ddpm_2d``: ``VectorDDPM(2)`` (T = 100, cosine, MLP 3 x 128), ``DiffusionLoss(model,
  "simple")`` (the new code's default ``log_bound=False``: the bound's estimate is
  computed in evaluation passes only); the new code also with ``log_bound=True`` (the old
  code's behaviour: it always computes the bound's estimate for logging);
- ``ddpm_digits``: ``DDPM((1, 8, 8), T = 1000, base_channels=16, channel_mults=(1, 2))``,
  ``DiffusionLoss(model, "simple")``;
- ``sde_2d``: ``VectorScoreSDE(2)`` (VP), ``ContinuousScoreMatching(model, model.sde)``
  (objective ``sde_dsm``, sigma^2 weighting);
- ``fm_2d``: ``VectorFlowMatching(2)`` (MLP 3 x 256, OT path),
  ``ConditionalFlowMatching(model, model.path)`` (independent coupling);
- ``dsm_2d``: ``ScoreMLP(2, [128, 128])``, ``DenoisingScoreMatching(net, 0.1)``;
- ``ncsn_2d``: noise-conditional ``ScoreMLP``, ``NoiseConditionalScoreMatching(net,
  sigma_max=3, 10 levels)``.

Two probgen versions cannot live in one process, so each version runs in its own worker
process (the baseline's python started in a temporary folder, so it imports its own
probgen; the new code is this checkout's). Each worker builds the same models from the
same seed (the initial weights' checksums are compared) and answers requests to time a
block of steps; the parent asks one worker at a time (the other waits on its pipe), the
order alternating each round. The ratio of a round is the median step of the new code's
block over the old code's; the report gives the median over rounds and the quartiles.
(b) runs in the new code's worker, for the two DDPM families: the same network (copies of
one initialization, each with its own Adam), blocks of probgen's step, of the plain step and
of a second copy of the plain step (the control) in turn.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BASELINE = "/work/wt-baseline/.venv/bin/python"
FAMILIES = ("ddpm_2d", "ddpm_digits", "sde_2d", "fm_2d", "dsm_2d", "ncsn_2d")
POOL = 16  # data batches per pool, cycled


# --------------------------------------------------------------------------- worker side
# Runs under either version's python: imports only torch and the probgen of that process
# (never _common, whose helpers the old version may lack).

def _batches(family: str, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    if family == "ddpm_digits":
        from probgen.data import load_digits

        images = load_digits("train")[0] / 16 * 2 - 1
        return [images[torch.randint(0, images.shape[0], (64,), generator=g)]
                for _ in range(POOL)]
    from probgen.data import toy_sample

    return list(toy_sample("moons", 256 * POOL, generator=g).split(256))


def _build(setup: str, seed: int):
    """The objective (an nn.Module returning a dict with ``loss``) of ``setup``."""
    import torch

    from probgen.inference import (
        ConditionalFlowMatching,
        ContinuousScoreMatching,
        DenoisingScoreMatching,
        DiffusionLoss,
        NoiseConditionalScoreMatching,
    )
    from probgen.models import DDPM, ScoreMLP, VectorDDPM, VectorFlowMatching, VectorScoreSDE

    family, _, variant = setup.partition(":")
    torch.manual_seed(seed)
    if family == "ddpm_2d":
        model = VectorDDPM(2)
        if variant in ("plain", "plain_copy"):
            return _PlainDDPM(model)
        kwargs = {"log_bound": True} if variant.endswith("bound") else {}
        return DiffusionLoss(model, "simple", **kwargs)
    if family == "ddpm_digits":
        model = DDPM((1, 8, 8), base_channels=16, channel_mults=(1, 2))
        if variant in ("plain", "plain_copy"):
            return _PlainDDPM(model)
        kwargs = {"log_bound": True} if variant.endswith("bound") else {}
        return DiffusionLoss(model, "simple", **kwargs)
    if family == "sde_2d":
        model = VectorScoreSDE(2)
        return ContinuousScoreMatching(model, model.sde)
    if family == "fm_2d":
        model = VectorFlowMatching(2)
        return ConditionalFlowMatching(model, model.path)
    if family == "dsm_2d":
        return DenoisingScoreMatching(ScoreMLP(2, [128, 128]), 0.1)
    if family == "ncsn_2d":
        return NoiseConditionalScoreMatching(ScoreMLP(2, [128, 128], noise_conditional=True),
                                             sigma_max=3.0, sigma_min=0.01, num_sigmas=10)
    raise ValueError(f"unknown setup {setup!r}")


#: The A/A row of part (b): a second, identical copy of the plain step.
CONTROL = "control: the plain loop again"


def _plain_module():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class PlainDDPM(nn.Module):
        """DDPM's simple loss written out: draw steps and noise, noise the data, MSE of the
        network's noise prediction (network time ``1 - s/(T-1)``, the new code's)."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.network = model.network
            ab = model.schedule.alphas_cumprod.float()
            self.register_buffer("a", ab.sqrt())
            self.register_buffer("b", (1 - ab).sqrt())
            self.num_steps = model.schedule.num_steps

        def forward(self, x0):
            step = torch.randint(0, self.num_steps, (x0.shape[0],))
            noise = torch.randn_like(x0)
            shape = (-1,) + (1,) * (x0.dim() - 1)
            x_t = self.a[step].view(shape) * x0 + self.b[step].view(shape) * noise
            t = 1 - step.to(x0.dtype) / (self.num_steps - 1)
            loss = F.mse_loss(self.network(x_t, t), noise)
            return {"loss": loss}

    return PlainDDPM


def _PlainDDPM(model):  # noqa: N802 (a class built lazily: torch is imported in the worker)
    return _plain_module()(model)


def worker() -> None:
    """Reads JSON requests on stdin, answers one JSON line each on stdout."""
    import torch

    torch.set_num_threads(int(os.environ.get("DYNSPEED_THREADS", "1")))
    torch.set_num_interop_threads(1)
    import probgen

    setups: dict[str, dict] = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        if req["cmd"] == "setup":
            objective = _build(req["setup"], req["seed"])
            objective.train()
            params = [p for p in objective.parameters() if p.requires_grad]
            with torch.no_grad():
                checksum = float(sum((p.double() * (i + 1)).sum() for i, p in
                                     enumerate(params)))
            setups[req["setup"]] = {
                "objective": objective,
                "opt": torch.optim.Adam(params, lr=req.get("lr", 1e-3)),
                "batches": _batches(req["setup"].partition(":")[0], req["seed"] + 1),
                "i": 0,
            }
            torch.manual_seed(req["seed"] + 2)
            reply = {"params": sum(p.numel() for p in params), "checksum": checksum,
                     "probgen": str(Path(probgen.__file__).parent.parent),
                     "torch": torch.__version__}
        elif req["cmd"] == "block":
            s = setups[req["setup"]]
            times = []
            for _ in range(req["steps"]):
                batch = s["batches"][s["i"] % POOL]
                s["i"] += 1
                t0 = time.perf_counter()
                s["opt"].zero_grad(set_to_none=True)
                out = s["objective"](batch)
                out["loss"].backward()
                s["opt"].step()
                times.append(time.perf_counter() - t0)
            reply = {"times": times}
        elif req["cmd"] == "profile":
            s = setups[req["setup"]]
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(req["steps"]):
                    batch = s["batches"][s["i"] % POOL]
                    s["i"] += 1
                    s["opt"].zero_grad(set_to_none=True)
                    s["objective"](batch)["loss"].backward()
                    s["opt"].step()
            reply = {"table": prof.key_averages().table(sort_by="self_cpu_time_total",
                                                        row_limit=req.get("rows", 25))}
        else:
            raise ValueError(req)
        print(json.dumps(reply), flush=True)


# --------------------------------------------------------------------------- parent side

class Worker:
    def __init__(self, python: str, threads: int) -> None:
        env = {**os.environ, "DYNSPEED_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}
        env.pop("PYTHONPATH", None)
        self.cwd = tempfile.mkdtemp(prefix="dynspeed-")  # outside both trees
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=self.cwd, env=env)

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.ask(cmd="quit")
        except (RuntimeError, BrokenPipeError, json.JSONDecodeError):
            pass
        self.proc.wait(timeout=30)
        os.rmdir(self.cwd)


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def median_ci(xs: list[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median (order statistics
    n/2 -+ 1.96 sqrt(n)/2)."""
    xs = sorted(xs)
    n = len(xs)
    half = 1.96 * n ** 0.5 / 2
    lo, hi = max(0, int(n / 2 - half)), min(n - 1, int(round(n / 2 + half)))
    return xs[lo], xs[hi]


def low_percentile(xs: list[float], p: float = 0.1) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def compare(members: list[tuple[str, Worker, str]], args: argparse.Namespace,
            seed: int) -> dict:
    """Times blocks of each member (label, worker, setup) in turn over ``args.rounds``
    rounds (order rotated and reversed on alternate rounds, the first ``args.warmup``
    rounds dropped); returns each member's median ms and, for each member after the
    first, the per-round ratio of its block median to the first member's."""
    info = {}
    for label, w, setup in members:
        info[label] = w.ask(cmd="setup", setup=setup, seed=seed)
    meds: dict[str, list[float]] = {label: [] for label, _, _ in members}
    n = len(members)
    for r in range(args.warmup + args.rounds):
        order = members[r % n:] + members[:r % n]
        if (r // n) % 2:
            order = order[::-1]
        for label, w, setup in order:
            times = w.ask(cmd="block", setup=setup, steps=args.block)["times"]
            if r >= args.warmup:
                meds[label].append(statistics.median(times))
    ref = members[0][0]
    out = {"info": info, "ms": {k: 1e3 * statistics.median(v) for k, v in meds.items()},
           "ratios": {}}
    for label, _, _ in members[1:]:
        ratios = [a / b for a, b in zip(meds[label], meds[ref], strict=True)]
        lo, hi = quartiles(ratios)
        ci = median_ci(ratios)
        out["ratios"][label] = {"median": statistics.median(ratios), "q1": lo, "q3": hi,
                                "ci": ci, "fast": low_percentile(meds[label])
                                / low_percentile(meds[ref])}
    return out


def _verdict(r: dict, goal: float) -> str:
    if r["ci"][1] <= goal:
        return "yes"
    if r["ci"][0] > goal:
        return "**no**"
    return f"undecided (median {'<=' if r['median'] <= goal else '>'} {goal:g})"


def main() -> None:
    sys.path.insert(0, str(HERE))
    from _common import (
        add_quick,
        apply_quick,
        command_line,
    load_note,
        machine,
        markdown_table,
        today,
        write_section,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds per family")
    parser.add_argument("--block", type=int, default=10, help="steps per block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-python", default=os.environ.get(
        "PROBGEN_BASELINE_PYTHON", DEFAULT_BASELINE),
        help="python of the checkout before the redesign (part (a) is skipped without it)")
    parser.add_argument("--profile", nargs="*", default=[], metavar="SETUP",
                        help="also print torch profiler tables of these setups in both "
                             "versions (e.g. ddpm_2d sde_2d)")
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    add_quick(parser, "2 rounds of 2-step blocks, the 2-D DDPM and flow matching only")
    args = parser.parse_args()
    apply_quick(parser, args, rounds=2, block=2, warmup=1, families=["ddpm_2d", "fm_2d"])
    start = time.perf_counter()
    new = Worker(sys.executable, args.threads)
    old = Worker(args.baseline_python, args.threads) if Path(
        args.baseline_python).exists() else None
    results: dict[str, dict] = {}
    try:
        if old is None:
            print(f"[dynamics_speed] no baseline python at {args.baseline_python}: part (a) "
                  "skipped", flush=True)
        else:
            for fam in args.families:
                members = [("old", old, fam), ("new", new, fam)]
                if fam.startswith("ddpm"):
                    members.append(("new log_bound=True", new, fam + ":bound"))
                res = compare(members, args, args.seed)
                results[fam] = res
                print(f"[dynamics_speed] {fam}: ms {res['ms']}, ratios "
                      + ", ".join(f"{k} {v['median']:.3f} [{v['q1']:.3f}, {v['q3']:.3f}]"
                                  for k, v in res["ratios"].items()), flush=True)
                i_old, i_new = res["info"]["old"], res["info"]["new"]
                res["same_init"] = i_old["params"] == i_new["params"] and abs(
                    i_old["checksum"] - i_new["checksum"]) <= 1e-6 * abs(i_old["checksum"])
                if not res["same_init"]:
                    print(f"[dynamics_speed] {fam}: initial weights differ {i_old} {i_new}",
                          flush=True)
        plain = {}
        for fam in [f for f in ("ddpm_2d", "ddpm_digits") if f in args.families]:
            members = [("plain", new, f"{fam}:plain"), ("probgen", new, f"{fam}:plainref"),
                       ("probgen log_bound=True", new, f"{fam}:plainref_bound"),
                       (CONTROL, new, f"{fam}:plain_copy")]
            plain[fam] = compare(members, args, args.seed)
            print(f"[dynamics_speed] {fam} plain: ms {plain[fam]['ms']}, ratios "
                  f"{plain[fam]['ratios']}", flush=True)
        for setup in args.profile:
            for label, w in (("old", old), ("new", new)):
                if w is None:
                    continue
                w.ask(cmd="setup", setup=setup + ":prof", seed=args.seed)
                w.ask(cmd="block", setup=setup + ":prof", steps=20)
                print(f"--- profile {label} {setup}\n"
                      + w.ask(cmd="profile", setup=setup + ":prof", steps=100)["table"],
                      flush=True)
    finally:
        new.close()
        if old is not None:
            old.close()
    elapsed = time.perf_counter() - start

    lines = [
        "## Training step time: the unified dynamics layer vs the code before it "
        "(dynamics_speed)", "",
        f"Command: `{command_line()}`  ",
        f"Date: {today()}; {machine(args.threads)} (one per worker process); total "
        f"{elapsed / 60:.1f} min; {load_note()}: read the paired ratios, not the absolute "
        "ms.", "",
        "One step: `zero_grad`, the objective's forward, `backward`, an Adam step, on "
        "fixed pools of batches (256 moons points; 64 digits 8x8 on [-1, 1]). Old: the "
        "checkout before the redesign (8d7c6ad) in its own process; new: this checkout; "
        "same constructors, seed and initial weights. Each round times a block of "
        f"{args.block} steps of each in turn (order alternating); ratio of a round: the "
        "new block's median step over the old one's; reported: the median over "
        f"{args.rounds} rounds (after {args.warmup} untimed), its distribution-free 95% "
        "confidence interval, the quartiles [q1, q3] of the round ratios, and the "
        "fast-block ratio (10th percentile of the new blocks' medians over that of the old "
        "ones: the least disturbed blocks). Verdict: met when the CI's upper end is within "
        "the goal, not met when its lower end is beyond it, else undecided (noise).", "",
    ]
    if results:
        rows = []
        for fam, res in results.items():
            for label, r in res["ratios"].items():
                rows.append([fam, label, f"{res['ms']['old']:.2f}",
                             f"{res['ms'][label]:.2f}", f"{r['median']:.3f}",
                             f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
                             f"[{r['q1']:.3f}, {r['q3']:.3f}]", f"{r['fast']:.3f}",
                             _verdict(r, 1.05)])
        same = [f for f, r in results.items() if r["same_init"]]
        differ = [f for f, r in results.items() if not r["same_init"]]
        lines += [f"Same parameter count and initial weights (checksums) in both versions: "
                  f"{', '.join(same) or 'none'}" + (f"; **differ**: {', '.join(differ)}"
                                                    if differ else "") + ".", ""]
        lines += ["**(a) New vs old** (goal: within 5%):", "",
                  markdown_table(["family", "new setting", "old ms/step", "new ms/step",
                                  "median ratio new/old", "95% CI", "quartiles",
                                  "fast-block ratio", "within 5%"], rows),
                  ""]
    else:
        lines += ["(a) skipped: no baseline checkout.", ""]
    rows = [[fam, label, f"{res['ms']['plain']:.2f}", f"{res['ms'][label]:.2f}",
             f"{r['median']:.3f}", f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
             f"[{r['q1']:.3f}, {r['q3']:.3f}]", f"{r['fast']:.3f}", _verdict(r, 1.0)]
            for fam, res in plain.items() for label, r in res["ratios"].items()]
    lines += ["**(b) DDPM simple loss vs a plain loop** on the same network (`VectorDDPM(2)`, "
              "batch 256; the digits `DDPM`, batch 64; copies of one initialization, one "
              "Adam each); the plain step "
              "draws steps and noise, noises with precomputed sqrt(ᾱ) tables, MSE of the "
              "network's noise prediction. Ratio: probgen's block median over the plain "
              "block's (goal: probgen no slower, ratio <= 1). The control row times a second "
              "copy of the plain step (same code, weights and data): its spread is what two "
              "identical steps in this harness differ by.", "",
              markdown_table(["family", "probgen setting", "plain ms/step", "probgen ms/step",
                              "median ratio probgen/plain", "95% CI", "quartiles",
                              "fast-block ratio", "no slower"], rows),
              ""]
    body = "\n".join(lines)
    print(body)
    if args.write or args.quick:
        write_section("dynamics_speed", body)


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        worker()
    else:
        main()
