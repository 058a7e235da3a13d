"""The documentation site: it builds with warnings as errors, and every public name of
probgen.models and probgen.inference appears in its API reference."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_docs_build_without_warnings_and_cover_the_public_api(tmp_path):
    if importlib.util.find_spec("sphinx") is None:
        pytest.skip("Sphinx is not installed (make docs installs it)")
    out = tmp_path / "html"
    run = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
                          "-q", str(ROOT / "docs"), str(out)], capture_output=True, text=True,
                         cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not run.stderr.strip(), run.stderr[-3000:]
    for package, page in (("probgen.models", "models"), ("probgen.inference", "inference")):
        html = (out / "api" / f"{page}.html").read_text()
        ids = set(re.findall(r'id="([^"]+)"', html))
        missing = [name for name in importlib.import_module(package).__all__
                   if f"{package}.{name}" not in ids]
        assert not missing, (package, missing)
    index = (out / "index.html").read_text()
    for family in ("autoregressive", "flows", "continuous_flows", "latent_variables", "gans",
                   "score_models", "dynamics", "metrics"):
        assert f"families/{family}.html" in index
