"""Every benchmark script's ``--quick`` smoke run exits 0 and leaves the repository alone.

Each script in ``benchmarks/`` (files starting with ``_`` are helpers) runs as
``python benchmarks/<script>.py --quick`` from the repository root. The test fails when the
run fails, when a peer library it imports is missing (``make test-all`` installs
``requirements-bench.txt``), or when a file tracked under ``benchmarks/`` (or the bundled
MNIST classifier, which ``train_mnist_features.py`` writes in a full run) changed or a new
file appeared there. It skips when the script reports missing MNIST files (exit status
``_common.MNIST_MISSING``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))
# Files the benchmarks write outside benchmarks/ in a full run.
WRITTEN_ELSEWHERE = ("probgen/metrics/mnist_classifier.pt",)
TIMEOUT_S = 240  # --quick aims at ~20 s per script on 2 busy cores
HINT = "run `make test-all` (it installs the peer libraries of requirements-bench.txt)"


def _mnist_missing_status() -> int:
    spec = importlib.util.spec_from_file_location("_bench_common", BENCH / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MNIST_MISSING


MNIST_MISSING = _mnist_missing_status()


def _missing_imports(script: Path) -> list[str]:
    """Top-level modules ``script`` imports that cannot be found (the standard library,
    probgen and the benchmarks' own modules aside)."""
    names = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    names -= {p.stem for p in BENCH.glob("*.py")} | set(sys.stdlib_module_names) | {"probgen"}
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


def _git(*args: str) -> list[str] | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return [name for name in out.stdout.decode().split("\0") if name]


def _snapshot() -> dict[str, str]:
    """sha256 of the tracked files of benchmarks/ (and WRITTEN_ELSEWHERE), plus the names
    of untracked, unignored files there; without git, every file of benchmarks/."""
    tracked = _git("ls-files", "-z", "--", "benchmarks", *WRITTEN_ELSEWHERE)
    untracked = _git("ls-files", "-z", "--others", "--exclude-standard", "--", "benchmarks")
    if tracked is None or untracked is None:
        tracked = [str(p.relative_to(ROOT)) for p in BENCH.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts]
        untracked = []
    state = {name: "untracked" for name in untracked}
    for name in tracked:
        path = ROOT / name
        state[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "-"
    return state


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_quick_run(script: Path) -> None:
    missing = _missing_imports(script)
    if missing:
        pytest.fail(f"{script.name} imports {missing}, which are not installed: {HINT}")
    before = _snapshot()
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script.relative_to(ROOT)), "--quick"],
                              cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{script.name} --quick ran over {TIMEOUT_S} s")
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    after = _snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{script.name} --quick wrote {changed}"
    if proc.returncode == MNIST_MISSING:
        pytest.skip(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                    f"{script.name}: MNIST files not found")
    hint = f"; {HINT}" if "ModuleNotFoundError" in output else ""
    assert proc.returncode == 0, (
        f"{script.name} --quick exited {proc.returncode} after {seconds:.0f} s{hint}:\n"
        + output[-4000:])
    print(f"{script.name} --quick: {seconds:.1f} s")
