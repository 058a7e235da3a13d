"""Shared fixtures: a fixed seed around every test and a clean Pyro parameter store."""

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


@pytest.fixture
def mnist_root() -> Path:
    """Folder holding MNIST IDX files; skips the test when they are not here."""
    root = MNIST_DIR / "mnist"
    if not (root / "train-images-idx3-ubyte.gz").exists() and not (
        root / "train-images-idx3-ubyte"
    ).exists():
        pytest.skip(f"MNIST IDX files not found under {root} (set PROBGEN_DATA)")
    return root
