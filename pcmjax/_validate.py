"""Checks at the public boundary: clear errors before tracing.

Values (NaN/inf) can only be checked on concrete arrays; under ``jit``/``vmap``/``grad``
the arguments are tracers and only their shapes are checked.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
    """Whether ``x`` is a tracer (inside ``jit``/``vmap``/``grad``): its values are unknown."""
    return isinstance(x, jax.core.Tracer)


def check_key(key, name: str = "key"):
    """A ``jax.random`` key: typed (``jax.random.key``) or raw uint32 ``[2]``/``[4]``."""
    if isinstance(key, (int, np.integer)):
        raise TypeError(f"{name} must be a jax.random key (e.g. jax.random.key({key})), got the integer {key}.")
    dtype = getattr(key, "dtype", None)
    if dtype is None:
        raise TypeError(f"{name} must be a jax.random key, got {type(key).__name__}.")
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single key (shape ()), got shape {key.shape}; vmap over keys.")
        return
    if dtype != jnp.uint32 or key.shape not in ((2,), (4,)):
        raise TypeError(f"{name} must be a jax.random key, got an array of dtype {dtype} and shape {key.shape}.")


def check_finite_array(x, name: str):
    """Convert to a float32 array; raise for non-numeric or non-finite concrete input."""
    if is_traced(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be a float array, got dtype {x.dtype}.")
        return x
    try:
        arr = np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic input
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}.") from e
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be an array of real numbers, got dtype {arr.dtype}.")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name} must be finite, got {arr[tuple(bad)]} at index {tuple(int(i) for i in bad)}.")
    arr32 = arr.astype(np.float32)
    if not np.all(np.isfinite(arr32)):  # finite in float64 but beyond float32's range
        bad = np.argwhere(~np.isfinite(arr32))[0]
        raise ValueError(f"{name} must fit in float32 (|x| < 3.4e38), got {arr[tuple(bad)]} at index "
                         f"{tuple(int(i) for i in bad)}.")
    return jnp.asarray(arr32)


def check_weights(weights, cfg):
    """Weights ``[cores, rows, cols]`` that fit the chip (cores, rows, cols ≤ config)."""
    weights = check_finite_array(weights, "weights")
    shape = tuple(weights.shape)
    if len(shape) != 3:
        raise ValueError(f"weights must have shape [cores, rows, cols], got shape {shape}.")
    c, r, k = shape
    if min(shape) < 1 or c > cfg.n_cores or r > cfg.rows or k > cfg.cols:
        raise ValueError(
            f"weights has shape {shape} but the chip has {cfg.n_cores} cores of {cfg.rows}×{cfg.cols}; "
            f"each dimension must be between 1 and that (tile larger layers with pcmjax.nn.deploy)."
        )
    return weights


def check_inputs(x, n_cores: int, rows: int):
    """Inputs ``[cores, batch, rows]`` matching a programmed state."""
    x = check_finite_array(x, "x")
    shape = tuple(x.shape)
    if len(shape) != 3 or shape[0] != n_cores or shape[2] != rows:
        raise ValueError(
            f"x must have shape [cores={n_cores}, batch, rows={rows}] to match the programmed state, "
            f"got shape {shape}."
        )
    if shape[1] < 1:
        raise ValueError(f"x must have a batch size of at least 1, got shape {shape}.")
    return x


# -- scalar options (configs, keyword arguments) --------------------------------------------
def _range_text(lo, hi, lo_open=False, hi_open=False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return " and ".join(parts)


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool) in ``lo..hi`` (either bound may be ``None``); returns it.

    Raises:
      ValueError: naming ``name``, the value and the allowed range.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
    if not ok:
        if lo is not None and hi is not None:
            rng = f" in {lo}..{hi}"
        else:
            rng = f" {_range_text(lo, hi)}" if (lo is not None or hi is not None) else ""
        raise ValueError(f"{name} must be an integer{rng}, got {value!r}.")
    return int(value)


def check_float(name: str, value, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite real number (not a bool) within the bounds; returns it as ``float``.

    ``lo_open``/``hi_open`` exclude the bound itself.

    Raises:
      ValueError: naming ``name``, the value and the allowed range.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = ok and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        rng = _range_text(lo, hi, lo_open, hi_open)
        raise ValueError(f"{name} must be a finite number{' ' + rng if rng else ''}, got {value!r}.")
    return float(value)


def check_choice(name: str, value, choices):
    """One of ``choices``; returns it.

    Raises:
      ValueError: naming ``name``, the value and the allowed choices.
    """
    try:
        ok = value in choices
    except TypeError:  # an unhashable value asked of a set
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
    return value


def check_bool(name: str, value) -> bool:
    """``True`` or ``False`` (not 0/1 or a string); returns it.

    Raises:
      TypeError: naming ``name`` and the value.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_instance(name: str, value, cls):
    """An instance of ``cls`` (a class or tuple of classes); returns it.

    Raises:
      TypeError: naming ``name``, the expected class and the type given.
    """
    if not isinstance(value, cls):
        names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise TypeError(f"{name} must be a {names}, got {type(value).__name__}.")
    return value
