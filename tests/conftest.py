"""Test-session settings.

Most test time is XLA compiling one pipeline per configuration; the tests check values,
not speed, so XLA:CPU is told to compile fast: backend optimisation level 0 (about 2×
faster compiles) and its older loop-fusion emitters instead of the MLIR fusion emitters
(compiles another 1.5-2.5× faster; a suite of 846 s took 634 s; the compiled code runs up
to 2× slower, which is why the package's own runs keep XLA's defaults). Results are the
same up to float reassociation; set ``XLA_FLAGS`` yourself to override. Every process of
the session shares one persistent compilation cache (below).
"""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
# The exact crossbar solve calls LAPACK from XLA's thread pool; OpenBLAS's own threads then
# compete with XLA's (10-20x slower on 2 cores). One OpenBLAS thread, as the benchmarks use.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# One cache folder per test session (fresh, as on a clean machine; the user's own cache is
# neither read nor written), shared by the pytest-xdist workers, the notebook kernels and the
# subprocesses: the default network is trained once, and a program compiled by one process
# is read back by the others from JAX's persistent compilation cache.
# (Set PCMJAX_CACHE yourself to keep it.)
_SESSION_CACHE = None
if "PCMJAX_CACHE" not in os.environ:
    _SESSION_CACHE = os.environ["PCMJAX_CACHE"] = tempfile.mkdtemp(prefix="pcmjax-tests-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ["PCMJAX_CACHE"], "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def pytest_unconfigure(config):
    """The session's cache folder is removed by the process that made it."""
    if _SESSION_CACHE is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


# -- how `make test` shares the tests between pytest-xdist workers -----------------------
# `--dist loadscope --no-loadscope-reorder`: a unit of work (a "scope") goes whole to the
# next free worker, in collection order. A unit is a test file, so that its module fixtures
# and the programs its tests compile are built once, except in the files below, whose tests
# are independent long runs (notebook kernels, subprocesses, smoke runs): there each test
# is a unit of its own. The units holding a test marked ``slow`` are collected first, so the
# longest start first and the workers finish together.
SPLIT_FILES = ("test_notebooks.py", "test_demos.py", "test_benchmarks.py")


def _unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return nodeid if path.rsplit("/", 1)[-1] in SPLIT_FILES else path


def pytest_xdist_make_scheduler(config, log):
    """Units of :func:`_unit` under ``--dist loadscope`` (xdist's own scheduler otherwise)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling  # only with xdist, only on its controller

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return _unit(nodeid)

    return UnitScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """On xdist's workers, the units holding a ``slow`` test first (stable: a unit's tests
    stay together and in order)."""
    if not hasattr(config, "workerinput"):
        return
    slow = {_unit(item.nodeid) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: _unit(item.nodeid) not in slow)
