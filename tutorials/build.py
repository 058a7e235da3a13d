"""Writes the tutorial notebooks from sources/*.py and executes them, storing their outputs."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

SOURCES = HERE / "sources"


def load_sources() -> dict[str, list[tuple[str, str]]]:
    """``{notebook name: cells}`` from ``sources/NAME.py``, each defining ``CELLS``, a list of
    ``("md" | "code", source)`` pairs (sources are dedented and stripped when built)."""
    notebooks = {}
    for path in sorted(SOURCES.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"tutorial_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        notebooks[f"{path.stem}.ipynb"] = module.CELLS
    return notebooks


NOTEBOOKS = load_sources()


def build(name: str, cells: Sequence[tuple[str, str]]) -> nbformat.NotebookNode:
    """The notebook of ``cells``, with stable cell ids (so rebuilding gives small diffs)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    stem = name.split("_")[0]
    for i, (kind, source) in enumerate(cells):
        if kind not in ("md", "code"):
            raise ValueError(f"{name}: cell {i} has kind {kind!r}; expected 'md' or 'code'.")
        make = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        nb.cells.append(make(textwrap.dedent(source).strip(), id=f"c{stem}-{i:02d}"))
    nbformat.validate(nb)
    return nb


def execute(nb: nbformat.NotebookNode, *, quick: bool, timeout: int = 1200) -> float:
    """Runs ``nb`` in place in a fresh temporary folder (its run folders land there);
    returns the seconds taken. ``quick`` sets ``PROBGEN_QUICK=1`` for the kernel."""
    old = os.environ.get("PROBGEN_QUICK")
    os.environ["PROBGEN_QUICK"] = "1" if quick else "0"
    try:
        with tempfile.TemporaryDirectory() as cwd:
            start = time.perf_counter()
            NotebookClient(nb, kernel_name="python3", timeout=timeout, record_timing=False,
                           resources={"metadata": {"path": cwd}}).execute()
            return time.perf_counter() - start
    finally:
        if old is None:
            os.environ.pop("PROBGEN_QUICK", None)
        else:
            os.environ["PROBGEN_QUICK"] = old


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python tutorials/build.py [NAMES] [--quick] [--no-execute] [--out D]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"notebooks (default: all of {list(NOTEBOOKS)})")
    parser.add_argument("--quick", action="store_true",
                        help="execute with PROBGEN_QUICK=1 (writes to --out, default a tmp dir)")
    parser.add_argument("--no-execute", action="store_true", help="write the cells only")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder to write to (default: this folder; a tmp dir with --quick)")
    args = parser.parse_args(argv)
    names = args.names or list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        parser.error(f"unknown notebooks {unknown}; expected some of {list(NOTEBOOKS)}")
    out = args.out or (Path(tempfile.mkdtemp(prefix="tutorials-")) if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        nb = build(name, NOTEBOOKS[name])
        if not args.no_execute:
            seconds = execute(nb, quick=args.quick)
            print(f"{name}: executed in {seconds:.0f} s ({'quick' if args.quick else 'full'})",
                  flush=True)
        nbformat.write(nb, out / name)
        print(f"wrote {out / name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
