"""MkDocs hooks: the site's pages that come from elsewhere in the repository.

- ``index.md`` is the README (links to ``benchmarks/RESULTS.md`` point at ``results.md``);
- ``results.md`` is ``benchmarks/RESULTS.md``;
- ``notebooks/*.ipynb`` are the tutorial notebooks, rendered with their outputs by mkdocs-jupyter.

The notebooks are stored without outputs. An executed copy is taken from ``build/notebooks/``
when its recorded source digest matches the notebook (``tests/test_notebooks.py`` writes these
copies while it runs the notebooks, and this hook writes them too). Otherwise the notebook is
executed here and its copy saved, unless ``PCMJAX_DOCS_EXECUTE=0``, in which case the page shows
the notebook without outputs (fast builds, e.g. ``tests/test_docs.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import sys
import tempfile

import nbclient
import nbformat
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.pcmjax")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "build" / "notebooks"
DIGEST_KEY = "pcmjax_source_sha256"  # metadata entry of an executed copy: digest of its source notebook
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # keeps each figure as a PNG output


def source_digest(path: pathlib.Path) -> str:
    """SHA-256 of a notebook file's bytes: identifies the source an executed copy was made from."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def executed_copy(path: pathlib.Path) -> pathlib.Path | None:
    """The executed copy of ``path`` in ``build/notebooks/`` if it was made from this exact source."""
    copy = EXECUTED / path.name
    if not copy.exists():
        return None
    try:
        meta = json.loads(copy.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError):
        return None
    return copy if meta.get(DIGEST_KEY) == source_digest(path) else None


def _execute(path: pathlib.Path) -> pathlib.Path:
    """Run ``path`` in a kernel of this interpreter and save the executed copy to ``build/notebooks/``."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as root:
        # A kernelspec for this interpreter, first on JUPYTER_PATH (as in tests/test_notebooks.py).
        spec_dir = pathlib.Path(root, "kernels", "pcmjax-docs")
        spec_dir.mkdir(parents=True)
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (pcmjax docs)", "language": "python",
                "env": {"MPLBACKEND": INLINE_BACKEND}}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (root, old) if p)
        try:
            nbclient.NotebookClient(nb, kernel_name="pcmjax-docs", timeout=1200, allow_errors=False,
                                    resources={"metadata": {"path": str(path.parent)}}).execute()
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH")
            else:
                os.environ["JUPYTER_PATH"] = old
    nb.metadata[DIGEST_KEY] = source_digest(path)
    EXECUTED.mkdir(parents=True, exist_ok=True)
    out, tmp = EXECUTED / path.name, EXECUTED / f".{path.name}.{os.getpid()}.tmp"
    nbformat.write(nb, tmp)
    os.replace(tmp, out)  # atomic: a concurrent build never reads half a notebook
    return out


def _notebook_source(path: pathlib.Path) -> pathlib.Path:
    copy = executed_copy(path)
    if copy is not None:
        return copy
    if os.environ.get("PCMJAX_DOCS_EXECUTE", "1") == "0":
        log.info("%s: no executed copy in build/notebooks/, shown without outputs", path.name)
        return path
    log.info("%s: executing (the executed copy is kept in build/notebooks/)", path.name)
    return _execute(path)


def _readme() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.sub(r"\]\(benchmarks/RESULTS\.md\)", "](results.md)", text)


# Before mkdocs-jupyter's on_files (default priority 0), so that it wraps the notebooks added here.
@event_priority(100)
def on_files(files, config):
    files.append(File.generated(config, "index.md", content=_readme()))
    files.append(File.generated(config, "results.md",
                                content=(ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")))
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        # A File with a real src_dir (not File.generated): mkdocs-jupyter's wrapper reads abs_src_path.
        source = _notebook_source(path)
        files.append(File(f"notebooks/{path.name}", src_dir=str(source.parents[1]), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    return files
