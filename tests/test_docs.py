"""The documentation site builds without warnings (``mkdocs build --strict``) and has its pages.

The build runs with ``PCMJAX_DOCS_EXECUTE=0``: notebooks already executed by
``tests/test_notebooks.py`` (``build/notebooks/``) are shown with their outputs, the others
without, and none is executed here, so the build takes seconds. The figures of executed
notebooks are checked at the end of ``tests/test_notebooks.py``, once they exist.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")
pytest.importorskip("mkdocs_jupyter")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def build_site(site_dir: pathlib.Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` into ``site_dir`` without executing notebooks; fails on any warning."""
    env = dict(os.environ, PCMJAX_DOCS_EXECUTE="0", NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site_dir = tmp_path_factory.mktemp("site")
    build_site(site_dir)
    return site_dir


def _page(site, name) -> str:
    path = site / name
    assert path.exists(), f"missing page {path.relative_to(site)}"
    return path.read_text(encoding="utf-8")


def test_guide_is_the_readme(site):
    html = _page(site, "index.html")
    assert "Quick start" in html and "make demo" in html and "make test" in html
    # The README's links to benchmarks/RESULTS.md point at the site's results page.
    assert 'href="results.html"' in html and 'href="benchmarks/RESULTS.md"' not in html
    assert "Measured figures" in _page(site, "results.html")


def test_api_reference_documents_the_configuration(site):
    html = _page(site, "api/config.html")
    assert 'id="pcmjax.config.ChipConfig"' in html
    # Methods and fields come from the docstrings, not just the class name.
    for member in ("pcmjax.config.ChipConfig.from_dict", "pcmjax.config.ChipConfig.replace"):
        assert f'id="{member}"' in html, member
    # Sphinx roles in the docstrings (:class:`X`) are links, not raw text (docs/griffe_roles.py).
    assert ":class:`" not in html and ":meth:`" not in html
    assert 'class="autorefs autorefs-internal"' in html


@pytest.mark.parametrize("package", ["pcmjax", "devices", "chip", "periphery", "nn", "montecarlo", "fit", "data",
                                     "cost", "plots"])
def test_api_page_per_package(site, package):
    html = _page(site, f"api/{package}.html")
    name = "pcmjax" if package == "pcmjax" else f"pcmjax.{package}"
    assert f'id="{name}.' in html, f"no documented member on the {name} page"
    if package in ("pcmjax", "chip"):
        # Re-exported configurations are documented once, on the pcmjax.config page, not here.
        assert f'id="{name}.ChipConfig"' not in html and f'id="{name}.program_chip"' in html


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_page(site, path):
    html = _page(site, f"notebooks/{path.stem}.html")
    nb = json.loads(path.read_text(encoding="utf-8"))
    title = "".join(nb["cells"][0]["source"]).splitlines()[0].lstrip("# ").strip()
    assert title in html
    missing = [c["id"] for c in nb["cells"] if f'id="cell-id={c["id"]}"' not in html]
    assert not missing, f"cells not rendered: {missing}"


def _hooks():
    spec = importlib.util.spec_from_file_location("pcmjax_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_executed_copy_is_used_only_for_its_own_source(tmp_path, monkeypatch):
    hooks = _hooks()
    monkeypatch.setattr(hooks, "EXECUTED", tmp_path / "executed")
    monkeypatch.setenv("PCMJAX_DOCS_EXECUTE", "0")
    source = tmp_path / "nb.ipynb"
    source.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert hooks._notebook_source(source) == source  # no copy, execution off: the source as it is

    copy = tmp_path / "executed" / "nb.ipynb"
    copy.parent.mkdir()
    copy.write_text(json.dumps({"cells": [], "metadata": {hooks.DIGEST_KEY: hooks.source_digest(source)},
                                "nbformat": 4, "nbformat_minor": 5}))
    assert hooks._notebook_source(source) == copy

    source.write_text(source.read_text() + "\n")  # the notebook changed since it was executed
    assert hooks.executed_copy(source) is None
    assert hooks._notebook_source(source) == source
