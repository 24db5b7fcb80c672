"""Checks at the public boundary: clear errors before tracing.

Values (NaN/inf) can only be checked on concrete arrays; under ``jit``/``vmap``/``grad``
the arguments are tracers and only their shapes are checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
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
    return jnp.asarray(x, jnp.float32)


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
