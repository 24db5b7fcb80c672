"""Peak-memory estimate of a traced function, for sizing chunks before compiling.

XLA's own figure (``compiled.memory_analysis()``) needs a compilation per candidate chunk
size, which costs more than the estimate is worth. Instead the function is traced once
(``jax.make_jaxpr``, no compilation) and the jaxpr is walked in program order, keeping
the bytes of every value that is still needed later; the largest total is the estimate.
Sub-computations (``jit``, ``while``, ``cond``, custom derivatives) add their own peak
on top of what is live around them. XLA fuses elementwise chains and reuses buffers, so
the real peak is usually lower: the estimate errs on the safe side.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.extend import core as jcore


def _bytes(var) -> int:
    aval = getattr(var, "aval", None)
    shape = getattr(aval, "shape", None)
    if shape is None:
        return 0
    try:
        itemsize = np.dtype(aval.dtype).itemsize
    except TypeError:  # extended dtypes (PRNG keys)
        itemsize = getattr(aval.dtype, "itemsize", 8) or 8
    return int(np.prod(shape, dtype=np.int64)) * int(itemsize)


def _sub_jaxprs(eqn):
    for j in jcore.jaxprs_in_params(eqn.params):
        yield j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j


def jaxpr_peak_bytes(jaxpr) -> int:
    """Largest total size of simultaneously live values while running ``jaxpr``."""
    if isinstance(jaxpr, jcore.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    last_use: dict = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if isinstance(v, jcore.Var):
                last_use[v] = i
    end = len(jaxpr.eqns)
    for v in jaxpr.outvars:
        if isinstance(v, jcore.Var):
            last_use[v] = end
    live = sum(_bytes(v) for v in (*jaxpr.constvars, *jaxpr.invars))
    peak = live
    for i, eqn in enumerate(jaxpr.eqns):
        inner = max((jaxpr_peak_bytes(s) for s in _sub_jaxprs(eqn)), default=0)
        out = sum(_bytes(v) for v in eqn.outvars if not isinstance(v, jcore.DropVar))
        peak = max(peak, live + max(inner, out))
        live += out
        freed = {v for v in eqn.invars if isinstance(v, jcore.Var) and last_use.get(v) == i}
        freed |= {v for v in eqn.outvars if isinstance(v, jcore.Var) and v not in last_use}
        live -= sum(_bytes(v) for v in freed)
    return int(peak)


def estimate_peak_bytes(fn, *args) -> int:
    """Estimated peak memory (bytes) of ``fn(*args)``; traces, does not compile."""
    return jaxpr_peak_bytes(jax.make_jaxpr(fn)(*args))


def default_memory_budget() -> int:
    """Bytes for one chunk's computation: on accelerators three quarters of the local
    devices' memory (as they report it); on a CPU a quarter of physical memory, at most
    2 GiB."""
    devices = jax.local_devices()
    if devices and devices[0].platform != "cpu":
        try:
            return int(0.75 * sum(int(d.memory_stats()["bytes_limit"]) for d in devices))
        except (TypeError, KeyError, AttributeError, RuntimeError):  # a device that reports no memory
            pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 8 << 30
    return int(min(2 << 30, max(256 << 20, total // 4)))


_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2, "mib": 1 << 20,
           "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}


def parse_bytes(value) -> int:
    """``"512MiB"``, ``"2 GB"``, ``"1.5G"`` or a number of bytes → bytes (positive int)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    elif isinstance(value, str):
        s = value.strip().lower().replace(" ", "")
        num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = s[len(num):]
        if unit not in _SUFFIX or not num:
            raise ValueError(f"memory budget must be a number of bytes or a size like '512MiB' or '2GB', "
                             f"got {value!r}; units: {sorted(u for u in _SUFFIX if u)}.")
        n = float(num) * _SUFFIX[unit]
    else:
        raise TypeError(f"memory budget must be a number or a string like '2GiB', got {value!r}.")
    if not n > 0 or n != n or n == float("inf"):
        raise ValueError(f"memory budget must be positive, got {value!r}.")
    return int(n)


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"
