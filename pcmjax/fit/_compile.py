"""Fast compilation for the fitting code's small, often-called functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


class FastJit:
    """``jax.jit`` with ahead-of-time compilation at XLA's lowest backend optimisation
    level: the fitting code calls these functions a few hundred times per fit, so
    compiling them quickly matters more than the last bit of run time. From ``LARGE``
    elements on, run time matters more: those compile with XLA's full optimisation and its
    default (MLIR) fusion emitters, named explicitly so that fast-compile ``XLA_FLAGS`` set
    for a whole process (as the test suite does) do not slow the fit's heavy functions
    down. Compiled code is cached per argument structure, shapes, dtypes and the values of
    the static keyword arguments."""

    OPTIONS = {"xla_backend_optimization_level": 0}
    LARGE_OPTIONS = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}
    LARGE = 50_000

    def __init__(self, fn, static_argnames=()):
        self.fn = jax.jit(fn, static_argnames=static_argnames)
        self.cache: dict = {}

    def __call__(self, *args, **static):
        leaves, tree = jax.tree_util.tree_flatten(args)
        key = (tree, tuple(sorted(static.items())),
               tuple((np.shape(x), jnp.result_type(x)) for x in leaves))
        compiled = self.cache.get(key)
        if compiled is None:
            lowered = self.fn.lower(*args, **static)
            large = max((int(np.prod(np.shape(x))) for x in leaves), default=0) >= self.LARGE
            try:
                compiled = lowered.compile(compiler_options=self.LARGE_OPTIONS if large else self.OPTIONS)
            except Exception:  # pragma: no cover - option unknown to this XLA
                compiled = lowered.compile()
            self.cache[key] = compiled
        return compiled(*args)
