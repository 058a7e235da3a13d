"""Tutorial notebooks: each runs without error in quick mode and is committed with its outputs."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

# Kernel start-up DeprecationWarnings from jupyter_client and pyzmq are filtered, by module,
# in pyproject.toml; nothing else is silenced here.
TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]

def _load_build():
    spec = importlib.util.spec_from_file_location("tutorials_build", TUTORIALS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> str:
    """A kernel spec named python3 that runs this interpreter (the venv's), first on
    JUPYTER_PATH; quick mode on. Returns the kernel name."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (probgen tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PROBGEN_QUICK", "1")
    found = KernelSpecManager().get_kernel_spec("python3")
    assert found.argv[0] == sys.executable
    return "python3"


def _run(nb: nbformat.NotebookNode, cwd: Path, kernel: str) -> nbformat.NotebookNode:
    NotebookClient(nb, kernel_name=kernel, timeout=300, record_timing=False,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_the_tutorials_exist():
    assert {"00_quickstart.ipynb", "01_autoregressive.ipynb", "02_flows.ipynb",
            "09_continuous_flows.ipynb", "06_evaluation.ipynb",
            "07_score_models.ipynb", "08_diffusion.ipynb", "05_gans.ipynb",
            "03_em_and_vae.ipynb", "04_discrete_latents.ipynb",
            "10_flow_matching.ipynb"} <= set(IDS)
    assert (TUTORIALS / "README.md").is_file()


@pytest.mark.slow
def test_kernel_runs_this_python(kernel, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys; print(sys.executable)")]
    out = _run(nb, tmp_path, kernel).cells[0].outputs[0]["text"].strip()
    assert Path(out).resolve() == Path(sys.executable).resolve()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_in_quick_mode(path, kernel, tmp_path):
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    nb = _run(nbformat.read(copy, as_version=4), tmp_path, kernel)  # raises on a failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    sources = "".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'os.environ.get("PROBGEN_QUICK") == "1"' in sources  # reads the quick-mode switch


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_notebook_has_full_run_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert cells
    # Executed top to bottom in one session: counts 1, 2, ..., n.
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "quick mode" not in text, "committed outputs come from a PROBGEN_QUICK=1 run"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was rendered"


def test_committed_notebooks_match_build_script():
    build = _load_build()
    for name, cells in build.NOTEBOOKS.items():
        committed = nbformat.read(TUTORIALS / name, as_version=4)
        expected = build.build(name, cells)
        assert [(c.cell_type, c.source) for c in committed.cells] == [
            (c.cell_type, c.source) for c in expected.cells
        ], f"{name} differs from tutorials/sources: edit the source, then run build.py"
