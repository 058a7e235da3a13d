"""Shared fixtures: a fixed seed around every test, a clean Pyro parameter store, and one
torch thread per test unless the test asks for more with ``@pytest.mark.threads(n)``."""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_DIR = Path(os.environ.get("PROBGEN_DATA", SHARED_DATA))


@pytest.fixture(autouse=True)
def _seed_and_clean():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pyro.clear_param_store()
        yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def _threads(request):
    """Runs each test with one intra-op thread (faster than two on a shared 2-core CPU, and
    the same for every test whatever ran before it), or ``n`` under ``threads(n)``; the
    process's previous setting is restored afterwards."""
    marker = request.node.get_closest_marker("threads")
    n = marker.args[0] if marker is not None else 1
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"threads marker: expected a positive int, got {n!r}.")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def mnist_root() -> Path:
    """Folder holding MNIST IDX files; skips the test when they are not here."""
    root = MNIST_DIR / "mnist"
    if not (root / "train-images-idx3-ubyte.gz").exists() and not (
        root / "train-images-idx3-ubyte"
    ).exists():
        pytest.skip(f"MNIST IDX files not found under {root} (set PROBGEN_DATA)")
    return root
