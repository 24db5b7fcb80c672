"""Test-session settings.

Most test time is XLA compiling one pipeline per configuration; the tests check values,
not speed, so XLA's backend optimisation is turned down (about 2× faster compiles, same
results up to float reassociation). Set ``XLA_FLAGS`` yourself to override.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# The exact crossbar solve calls LAPACK from XLA's thread pool; OpenBLAS's own threads then
# compete with XLA's (10-20x slower on 2 cores). One OpenBLAS thread, as the benchmarks use.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
