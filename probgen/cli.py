"""The ``probgen`` command line: fit, sample, eval and list runs declared in TOML."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from probgen.config import ConfigError, list_presets, load_config

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser of the ``probgen`` command."""
    parser = argparse.ArgumentParser(
        prog="probgen",
        description="Train, sample and evaluate generative models declared in TOML.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a preset or a TOML run file into a run folder")
    fit.add_argument("config", help="a preset name (see `probgen list`) or a path to a .toml")
    fit.add_argument("--out", default=None, help="run folder (default: runs/<name>)")
    fit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (value read as TOML); repeatable",
    )
    fit.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")

    sample = sub.add_parser("sample", help="draw samples from a trained run")
    sample.add_argument("run", help="run folder written by `probgen fit`")
    sample.add_argument("--n", type=int, default=64, help="number of samples")
    sample.add_argument("--out", default=None, help="output file (.png figure or .pt tensor)")
    sample.add_argument("--seed", type=int, default=0)

    ev = sub.add_parser("eval", help="evaluate a trained run on its held-out data")
    ev.add_argument("run", help="run folder written by `probgen fit`")
    ev.add_argument("--metrics", default=None, metavar="fid,kid,pr",
                    help="also compare model samples with the held-out data: any of fid, kid, "
                         "pr, dc, mmd, w2, is (MNIST runs: in the bundled MNIST classifier's "
                         "feature space, e.g. 'FID (probgen MNIST classifier)')")
    ev.add_argument("--num-samples", type=int, default=None,
                    help="samples per set for --metrics (default: held-out size, <= 10000)")

    sub.add_parser("list", help="list the built-in presets")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``probgen`` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # The runner imports the model zoo and the inference layer: loaded only when needed,
    # so the core keeps its one-way dependency (core <- inference <- models).
    from probgen import experiment

    try:
        if args.command == "list":
            for name, description in list_presets().items():
                print(f"{name:28s} {description}")
            return 0
        if args.command == "fit":
            config = load_config(args.config, args.overrides)
            result = experiment.fit_run(
                config,
                out_dir=args.out,
                resume=args.resume,
                progress=not args.quiet,
                default_name=args.config,
            )
            print(json.dumps(result, indent=2, sort_keys=True))
            return 0
        if args.command == "sample":
            path = experiment.sample_run(args.run, n=args.n, out=args.out, seed=args.seed)
            print(path)
            return 0
        if args.command == "eval":
            result = experiment.eval_run(args.run, args.metrics, num_samples=args.num_samples)
            print(json.dumps(result, indent=2, sort_keys=True))
            return 0
    except (ConfigError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"probgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # probgen.inference.NonFiniteLossError: names step and term
        print(f"probgen {args.command}: training stopped: {e}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
