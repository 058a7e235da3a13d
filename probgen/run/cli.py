"""The ``probgen`` command line: fit, sample, eval, posterior, compare and list runs
declared in TOML."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import probgen
from probgen.run import experiment
from probgen.run.compare import list_compare_presets, load_spec, run_compare
from probgen.run.config import ConfigError, load_config

__all__ = ["main", "build_parser"]


def _threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="torch CPU threads (default: the run's [train] threads, else measured: fit "
             "times its first steps with one thread and with one per core and keeps the "
             "faster; sample/eval use the count the run trained with; OMP_NUM_THREADS in "
             "the environment is respected)")


def _device(parser: argparse.ArgumentParser, default: str | None) -> None:
    where = "the run's [train] device, else cpu" if default is None else default
    parser.add_argument(
        "--device", default=default, metavar="DEVICE",
        help=f"where the model runs: cpu, cuda or cuda:N (default: {where}); an error when "
             "the device is not available")


def _quiet(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--quiet", action="store_true",
        help=f"no progress ({what}; on a terminal a bar, in a pipe one line per stage)")


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser of the ``probgen`` command."""
    parser = argparse.ArgumentParser(
        prog="probgen",
        description="Train, sample and evaluate generative models declared in TOML.",
    )
    parser.add_argument("--version", action="version", version=f"probgen {probgen.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a preset or a TOML run file into a run folder")
    fit.add_argument("config", help="a preset name (see `probgen list`) or a path to a .toml")
    fit.add_argument("--out", default=None,
                     help="run folder (default: runs/<name>; with --resume and a run's "
                          "config.toml, that run's folder)")
    fit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (value read as TOML); repeatable",
    )
    fit.add_argument("--resume", action="store_true",
                     help="continue from the run folder's checkpoint (an error if it has none)")
    _quiet(fit, "training, evaluation, sampling, figures")
    _threads(fit)
    _device(fit, None)

    sample = sub.add_parser(
        "sample", help="draw samples from a trained run, in pixel space",
        description="Draws samples and writes them in the data's own space (the data "
                    "preprocessing undone): png, an image grid (images) or a scatter (2-D "
                    "points); pt (torch.save of one tensor) or npz (numpy.savez, array "
                    "'samples'): images as uint8 (N, C, H, W) with the data set's pixel "
                    "values (0..255 for MNIST, 0..16 for the 8x8 digits), points as float32 "
                    "(N, D).")
    sample.add_argument("run", help="run folder written by `probgen fit`")
    sample.add_argument("--n", type=int, default=64, help="number of samples")
    sample.add_argument("--format", default=None, choices=("png", "pt", "npz"),
                        help="what to write (default: the suffix of --out, else png)")
    sample.add_argument("--out", default=None,
                        help="output file (default: RUN/samples_<n>.<format>)")
    sample.add_argument("--seed", type=int, default=0)
    _quiet(sample, "sampling, writing")
    _threads(sample)
    _device(sample, "cpu")

    ev = sub.add_parser("eval", help="evaluate a trained run on its held-out data")
    ev.add_argument("run", help="run folder written by `probgen fit`")
    ev.add_argument("--metrics", default=None, metavar="fid,kid,pr",
                    help="also compare model samples with the held-out data: any of fid, kid, "
                         "pr, dc, mmd, w2, is (MNIST runs: in the bundled MNIST classifier's "
                         "feature space, e.g. 'FID (probgen MNIST classifier)')")
    ev.add_argument("--num-samples", type=int, default=None,
                    help="samples per set for --metrics (default: held-out size, <= 10000)")
    _quiet(ev, "evaluation, sample metrics")
    _threads(ev)
    _device(ev, "cpu")

    post = sub.add_parser(
        "posterior", help="inverse problems on held-out data with a trained run as the prior",
        description="Measures held-out examples (inpainting the top half, denoising, 2x "
                    "super-resolution; linear-Gaussian) and samples their posteriors under "
                    "the trained model (DDPM, score SDE or flow matching) by PiGDM or DPS; "
                    "writes a figure and a JSON of the numbers. Settings: these flags, else "
                    "the run's [posterior] table, else the defaults shown.")
    post.add_argument("run", help="run folder written by `probgen fit`")
    post.add_argument("--task", default=None, help="inpaint, denoise or superres (inpaint)")
    post.add_argument("--noise", dest="noise_std", type=float, default=None,
                      help="measurement noise std in model space (0.05)")
    post.add_argument("--method", default=None, help="pigdm or dps (pigdm)")
    post.add_argument("--sampler", default=None, help="the path sampler (ddim)")
    post.add_argument("--steps", type=int, default=None, help="sampler steps (50)")
    post.add_argument("--scale", type=float, default=None, help="guidance scale (1)")
    post.add_argument("--images", type=int, default=None, help="held-out examples (8)")
    post.add_argument("--samples", type=int, default=None, help="samples per example (4)")
    post.add_argument("--out", default=None,
                      help="figure to write (default: RUN/posterior_<task>.png; the JSON "
                           "beside it)")
    post.add_argument("--seed", type=int, default=0)
    _threads(post)
    _device(post, "cpu")

    cmp = sub.add_parser(
        "compare", help="train several runs on the same data and budget, one table",
        description="Trains every run of a compare spec into OUT/<name>/ (a run folder "
                    "each), evaluates them with the same metrics (probgen eval) and writes "
                    "OUT/compare.md, OUT/compare.csv and OUT/compare.png.")
    cmp.add_argument("spec", help="a built-in compare spec (see `probgen list`) or a path "
                                  "to a .toml")
    cmp.add_argument("--out", default=None, help="output folder (default: runs/<spec name>)")
    cmp.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="TABLE.KEY=VALUE",
                     help="set a spec key (value read as TOML), e.g. data.root=DIR, "
                          "budget.minutes=2 or runs.gan.train.lr=1e-4; repeatable")
    _quiet(cmp, "training, evaluation and sampling of each run")
    _threads(cmp)

    sub.add_parser("list", help="list the built-in presets, grouped by model family")
    return parser


def _print_presets() -> None:
    for family, presets in experiment.presets_by_family().items():
        print(f"{family}:")
        for name, description in presets.items():
            print(f"  {name:28s} {description}")
    print("comparisons (probgen compare):")
    for name, description in list_compare_presets().items():
        print(f"  {name:28s} {description}")


def _resume_folder(source: str) -> str | None:
    """With ``--resume`` and no ``--out``: the run folder of a run's own ``config.toml``."""
    path = Path(source)
    return str(path.parent) if path.name == "config.toml" and path.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``probgen`` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            _print_presets()
            return 0
        if args.command == "fit":
            overrides = list(args.overrides)
            if args.threads is not None:
                overrides.append(f"train.threads={args.threads}")
            config = load_config(args.config, overrides)
            out = args.out
            if out is None and args.resume:
                out = _resume_folder(args.config)
            result = experiment.fit_run(
                config,
                out_dir=out,
                resume=args.resume,
                progress=not args.quiet,
                default_name=args.config,
                interruptible=True,
                device=args.device,
            )
            print(json.dumps(result, indent=2, sort_keys=True))
            return 0
        if args.command == "compare":
            spec = load_spec(args.spec, args.overrides, threads=args.threads)
            out = args.out if args.out is not None else str(Path("runs") / spec.name)
            start = time.perf_counter()
            rows = run_compare(spec, out, progress=not args.quiet)
            print(Path(out, "compare.md").read_text(encoding="utf-8"))
            print(f"{len(rows)} runs compared in {time.perf_counter() - start:.0f} s: "
                  f"{Path(out, 'compare.md')}, {Path(out, 'compare.csv')}, "
                  f"{Path(out, 'compare.png')}")
            return 0
        if args.command == "sample":
            path = experiment.sample_run(args.run, n=args.n, out=args.out, seed=args.seed,
                                         threads=args.threads, format=args.format,
                                         device=args.device, progress=not args.quiet)
            print(path)
            return 0
        if args.command == "posterior":
            from probgen.run.posterior import posterior_run

            given = {k: getattr(args, k) for k in ("task", "noise_std", "method", "sampler",
                                                  "steps", "scale", "images", "samples")}
            result = posterior_run(args.run, out=args.out, seed=args.seed, device=args.device,
                                   threads=args.threads, **given)
            print(json.dumps(result, indent=2, sort_keys=True))
            return 0
        if args.command == "eval":
            result = experiment.eval_run(args.run, args.metrics, num_samples=args.num_samples,
                                         threads=args.threads, device=args.device,
                                         progress=not args.quiet)
            print(json.dumps(result, indent=2, sort_keys=True))
            return 0
    except (ConfigError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"probgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # probgen.inference.NonFiniteLossError: names step and term
        print(f"probgen {args.command}: training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # TrainingInterrupted (fit, with a checkpoint), or Ctrl-C
        return _interrupted(args, e)
    raise AssertionError(f"unhandled command {args.command!r}")


def _interrupted(args: argparse.Namespace, error: KeyboardInterrupt) -> int:
    """Reports an interruption; returns the shell's code for the signal (128 + number)."""
    signum = getattr(error, "signal", signal.SIGINT)
    checkpoint = getattr(error, "checkpoint", None)
    if checkpoint is None:
        print(f"probgen {args.command}: interrupted.", file=sys.stderr)
    else:
        run = Path(checkpoint).parent
        print(f"probgen {args.command}: {error} Continue with: probgen fit "
              f"{run / 'config.toml'} --resume", file=sys.stderr)
    return 128 + int(signum)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
