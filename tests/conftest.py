"""Test-session settings.

Most test time is XLA compiling one pipeline per configuration; the tests check values,
not speed, so XLA's backend optimisation is turned down (about 2× faster compiles, same
results up to float reassociation). Set ``XLA_FLAGS`` yourself to override.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("MPLBACKEND", "Agg")
