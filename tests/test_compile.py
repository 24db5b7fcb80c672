"""No compile-time traps: a jitted pipeline that closes over its weights compiles like one
that takes them as arguments.

XLA folds expressions of constants at compile time, with an interpreter far slower than
the compiled code: a full chip's programming and ageing folded that way took minutes. The
chip guards its entry points with optimisation barriers; here the compiled program of a
closed-over pipeline must hold no constant larger than the weights themselves (nothing
was folded), and compile within a bound of the argument version.
"""

import re
import time

import jax
import numpy as np

import pcmjax as pj

CFG = pj.ChipConfig(n_cores=2, rows=64, cols=64)
X = np.full((2, 4, 64), 0.3, np.float32)


def _pipeline(key, weights):
    state = pj.program_chip(key, weights, CFG).at_time(jax.random.fold_in(key, 1), 100.0)
    return pj.mvm(jax.random.fold_in(key, 2), state, X)


def _constant_sizes(hlo: str) -> list[int]:
    """Element counts of the array constants of a compiled HLO module."""
    sizes = []
    for m in re.finditer(r"= \w+\[([\d,]*)\](?:\{[^}]*\})? constant\(", hlo):
        sizes.append(int(np.prod([int(d) for d in m.group(1).split(",") if d])))
    return sizes


def _compile_s(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - t0, compiled


def test_closed_over_weights_are_not_constant_folded():
    key = jax.random.key(0)
    weights = jax.random.normal(jax.random.key(1), (2, 64, 64)) * 0.05
    t_arg, by_arg = _compile_s(_pipeline, key, weights)
    t_closed, closed = _compile_s(lambda k: _pipeline(k, weights), key)
    # Folded programming leaves constants of the devices' shape [2, 2, 64, 64] (four times the
    # weights) in the program; unfolded, the largest constant is the weights themselves.
    assert max(_constant_sizes(closed.as_text())) <= weights.size
    # The trap was about 30× (minutes against seconds at full-chip size); the bound leaves
    # room for the noise of a shared machine, the constant check above is the exact one.
    assert t_closed <= 3.0 * t_arg + 5.0, (t_closed, t_arg)
    np.testing.assert_array_equal(np.asarray(closed(key)), np.asarray(by_arg(key, weights)))


def test_closed_over_state_is_not_constant_folded():
    key = jax.random.key(0)
    weights = jax.random.normal(jax.random.key(1), (2, 64, 64)) * 0.05
    state = pj.program_chip(key, weights, CFG)
    _, closed = _compile_s(lambda k: state.at_time(k, 10.0).w, key)
    # The state's own arrays are constants ([2, 2, 64, 64] each: targets, programmed
    # conductances, drift exponents) next to the normal table (2 × 4096) and per-column
    # parameters; folding the ageing would add the drift factors of every device.
    sizes = _constant_sizes(closed.as_text())
    assert sum(sizes) <= 3 * state.g_prog.size + 2 * 4096 + 64 * 2 * 64
