"""Fast, counter-based standard normals for the per-MVM noise.

Each MVM needs one fresh Gaussian per output (batch × columns × cores); with JAX's
default threefry generator and ``ndtri`` those draws cost about 2.6 times the crossbar
``einsum`` itself. This module draws them for about a tenth of that:

* uniform bits from a counter-based hash: the element index and two 32-bit words
  derived from the caller's ``jax.random`` key pass through two rounds of the
  MurmurHash3 ``fmix32`` finaliser (a bijection of 32-bit words with full avalanche), so
  the stream depends on the key alone and any shape/chunking of the same key is
  reproducible;
* the normal by a tabulated inverse CDF: the top 16 bits pick one of 2^16 equiprobable
  cells of N(0, 1), the low 16 bits place the sample linearly inside the cell. The
  two outermost cells (|z| > 4.17, probability 3e-5 together) are mapped linearly onto
  a segment whose mean equals the exact conditional tail mean.

The result is a piecewise-linear approximation of the normal quantile function with
65,536 knots: its moments agree with N(0, 1) to better than 1e-4 and no test on
10^7 samples tells them apart (``tests/test_random.py``). Samples are bounded by
|z| ≤ 4.71, so the probability mass beyond 4.7 sigma (2.6e-6) is redistributed inside.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np

_CELL_BITS = 16
_CELLS = 1 << _CELL_BITS


def _build_table() -> np.ndarray:
    nd = NormalDist()
    knots = np.empty(_CELLS + 1, np.float64)
    knots[1:_CELLS] = [nd.inv_cdf(j / _CELLS) for j in range(1, _CELLS)]
    z1 = knots[1]
    tail_mean = -nd.pdf(z1) / nd.cdf(z1)  # E[Z | Z < z1]
    knots[0] = 2.0 * tail_mean - z1  # linear cell [knots[0], z1] has that mean
    knots[_CELLS] = -knots[0]
    base = knots[:-1]
    slope = np.diff(knots)
    return np.stack([base, slope], axis=1).astype(np.float32)


_TABLE_NP = _build_table()
TAIL_BOUND = float(-_TABLE_NP[0, 0])


def _fmix32(h):
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_bits(key, shape) -> jax.Array:
    """uint32 words of ``shape`` from a counter-based hash seeded by ``key``."""
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    n = math.prod(shape)
    idx = jax.lax.iota(jnp.uint32, n)
    h = _fmix32(idx * jnp.uint32(0x9E3779B1) + seeds[0])
    h = _fmix32(h ^ seeds[1])
    return h.reshape(shape)


def normal(key, shape, dtype=jnp.float32) -> jax.Array:
    """Standard normals of ``shape`` (see the module docstring for the method).

    Args:
      key: a ``jax.random`` key (typed or raw).
      shape: output shape.
      dtype: a float dtype.

    Returns:
      array of ``shape`` with N(0, 1) marginals, independent across elements.
    """
    shape = tuple(int(s) for s in shape)
    if not shape or math.prod(shape) == 0:
        return jnp.zeros(shape, dtype)
    bits = hash_bits(key, shape)
    cell = (bits >> (32 - _CELL_BITS)).astype(jnp.int32)
    frac = ((bits & jnp.uint32(_CELLS - 1)).astype(jnp.float32) + 0.5) * (1.0 / _CELLS)
    entry = jnp.asarray(_TABLE_NP)[cell]
    return (entry[..., 0] + entry[..., 1] * frac).astype(dtype)
