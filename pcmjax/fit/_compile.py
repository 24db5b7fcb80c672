"""Fast compilation for the fitting code's small, often-called functions."""

from __future__ import annotations

import functools

import jax
import numpy as np


@functools.cache
def _accepted(options: tuple) -> bool:
    """Whether this JAX and XLA compile with these ``(name, value)`` options: ``jax.jit``
    of older JAX versions (0.4.30) takes no ``compiler_options``, and older XLAs lack some of
    the options."""
    try:
        jax.jit(lambda x: x, compiler_options=dict(options)).lower(np.float32(0)).compile()
    except Exception:  # noqa: BLE001 - TypeError (no such argument) or XLA's "No such compile option"
        return False
    return True


def _jit(fn, static_argnames, options: dict):
    """``jax.jit`` with ``options``, or without them where this JAX or XLA does not take them."""
    if _accepted(tuple(sorted(options.items()))):
        return jax.jit(fn, static_argnames=static_argnames, compiler_options=options)
    return jax.jit(fn, static_argnames=static_argnames)


class FastJit:
    """``jax.jit`` compiled at XLA's lowest backend optimisation level: the fitting code calls
    these functions a few hundred times per fit, so compiling them quickly matters more than
    the last bit of run time. From ``LARGE`` elements in one argument on, run time matters
    more: those compile with XLA's full optimisation and its default (MLIR) fusion emitters,
    named explicitly so that fast-compile ``XLA_FLAGS`` set for a whole process (as the test
    suite does) do not slow the fit's heavy functions down.

    Each call goes through ``jax.jit``'s own dispatch (compiled code cached per argument
    structure, shapes, dtypes and static values): a cache keyed in Python cost about 0.5 ms
    per call, a third of a PCM-like fit's time. The two jitted functions are made at their
    first use, so importing the fitting code compiles nothing."""

    OPTIONS = {"xla_backend_optimization_level": 0}
    LARGE_OPTIONS = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}
    LARGE = 50_000

    def __init__(self, fn, static_argnames=()):
        self.fn, self.static_argnames = fn, static_argnames

    @functools.cached_property
    def small(self):
        return _jit(self.fn, self.static_argnames, self.OPTIONS)

    @functools.cached_property
    def large(self):
        return _jit(self.fn, self.static_argnames, self.LARGE_OPTIONS)

    def __call__(self, *args, **static):
        large = any(np.size(x) >= self.LARGE for x in jax.tree_util.tree_leaves(args))
        return (self.large if large else self.small)(*args, **static)
