"""The documentation cannot rot: the site builds without a warning, the API reference documents
every public name, the docstring examples run, and so does the code in README.md and
docs/getting-started.md."""

import doctest
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hessinv

ROOT = Path(__file__).resolve().parents[1]

#: modules whose docstring examples must run
DOCTEST_MODULES = (
    "hessinv",
    "hessinv._api",
    "hessinv.cost",
    "hessinv._factorization",
    "hessinv._optax",
    "hessinv._spectrum",
    "hessinv.laplace",
    "hessinv.adapters._equinox",
    "hessinv.adapters._flax",
)

#: public names whose modules are still being written; each goes into docs/api.md (at the spot
#: marked there) when it lands, and out of this set.
PENDING: set[str] = set()


def _env():
    env = dict(os.environ)
    env["NO_MKDOCS_2_WARNING"] = "1"  # mkdocs-material's banner about MkDocs 2.0, not a build warning
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def test_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: any warning (a broken link, a docstring mkdocstrings cannot
    parse, a cross-reference to nothing) fails the build."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs tools are in the dev extra")
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        check=False,
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert "WARNING" not in log, log
    api = (site / "api" / "index.html").read_text()
    assert 'id="hessinv.ihvp"' in api and 'id="hessinv.optax.newton"' in api
    assert ":func:" not in api and "Example::" not in api  # docs/hooks/rest_markup.py rewrote them
    assert (site / "benchmarks" / "results" / "shapes_cpu.png").is_file()  # docs/hooks/results.py


def _documented():
    return set(re.findall(r"^::: *([\w.]+) *$", (ROOT / "docs" / "api.md").read_text(), re.MULTILINE))


@pytest.mark.parametrize("module", ["hessinv", "hessinv.optax", "hessinv.laplace"])
def test_api_page_documents_every_public_name(module):
    mod = importlib.import_module(module)
    public = set(getattr(mod, "__all__", None) or (name for name in vars(mod) if not name.startswith("_")))
    if module == "hessinv":
        public -= PENDING
    missing = sorted(f"{module}.{name}" for name in public if f"{module}.{name}" not in _documented())
    assert not missing, f"add to docs/api.md: {', '.join('::: ' + m for m in missing)}"


def test_docstring_examples_run():
    """The ``>>>`` examples of the public modules run and print what they say."""
    attempted = 0
    for name in DOCTEST_MODULES:
        result = doctest.testmod(
            importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        )
        assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (output above)"
        attempted += result.attempted
    assert attempted > 0


def _python_blocks(path: Path) -> str:
    return "\n\n".join(re.findall(r"^```python\n(.*?)^```", path.read_text(), re.DOTALL | re.MULTILINE))


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_page_code_runs(page, tmp_path):
    """Every ``python`` block of the page, top to bottom, as one script in a fresh process."""
    code = _python_blocks(ROOT / page)
    assert "jax_enable_x64" in code
    run = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_version_matches_changelog():
    assert f"## {hessinv.__version__}" in (ROOT / "CHANGELOG.md").read_text()
