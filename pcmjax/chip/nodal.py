"""Exact nodal solution of a crossbar with wire resistance: the effective conductances.

Geometry as in :mod:`pcmjax.chip.parasitics`: row ``i`` has two input lines (one per
polarity), each a chain of ``K`` nodes joined by wire segments of ``r_word_line`` and fed
through one more segment by its driver at the column-0 end; column ``k`` has a bit line, a
chain of ``R`` nodes joined by segments of ``r_bit_line`` and held at the ADC's common
mode through one more segment after row ``R − 1``. Device ``(i, k)`` of each polarity
joins its input-line node to bit-line node ``(i, k)``.

The network is linear, so the ADC currents are ``I = V⁺ᵀ A⁺ + V⁻ᵀ A⁻`` for any driver
voltages ``V⁺, V⁻``: ``A⁺[i, k]`` is the current into ADC ``k`` per volt on the
positive-polarity driver of row ``i`` with every other driver at the common mode (a
transfer conductance). With differential drive ``V⁻ = −V⁺`` the MVM sees
``W_eff = A⁺ − A⁻``; without wire resistance ``A^± = G^±``. ``A`` depends on the state
only, so it is computed once per state and every MVM reuses it.

Method: block elimination of the exact nodal equations, row by row from row 0 towards the
ADCs (a direct solve; no iteration, no tolerance, valid at any wire resistance).

1. Input lines. With the bit-line voltages ``b`` of row ``i`` given, each input line is a
   tridiagonal system ``(T₀/r_w + D) p = D b + V e₀/r_w`` (``T₀``: the chain Laplacian
   with the driver end grounded, ``D = diag(G_i)``). Eliminating it leaves, at the row's
   bit-line nodes, the admittance ``M = D − r_w D (T₀ + r_w D)⁻¹ D`` (``K × K``) and the
   short-circuit current ``h = D (T₀ + r_w D)⁻¹ e₀`` per volt on the driver.
2. Bit lines. The rows above row ``i``, seen from its bit-line nodes through one segment,
   are an admittance ``E`` and a short-circuit current ``J`` per driver (``K × 2R``).
   Row ``i`` adds ``S = E + M_i`` and ``J + h_i``; the next segment gives
   ``E' = (1 + r_b S)⁻¹ S`` and ``J' = (1 + r_b S)⁻¹ J`` (one dense solve; the
   forms never subtract two wire-sized numbers, so float32 keeps its precision). After
   row ``R − 1`` that segment is the ADC's: ``J'`` are the ADC currents, ``Aᵀ``.

Cost per core ``≈ R K² (4K/3 + 2R)`` multiply-adds in dense LU solves (one per row),
memory ``O(K (K + R))`` per core (reverse mode stores one step per row,
``O(R K (K + R))``); measured in ``benchmarks/bench_irdrop.py``. The transfer matrix has
``2 R K`` entries, each depending on every device, so a few solves per core (a few
right-hand sides) cannot give it; an iterative solver would need ``K`` of them.

Gradients: every step is a differentiable dense operation (LU and tridiagonal
solves), so reverse mode runs the transposed elimination, exactly; there are
no iterations to unroll.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.lax.linalg import tridiagonal_solve

UOHM_US = 1e-6  # Ω · µS → dimensionless


def _input_line(g_row, rw):
    """Eliminate the input lines of one row (one polarity).

    Args:
      g_row: ``[..., K]`` device conductances of the row, µS.
      rw: wire resistance per segment, 1/µS (Ω × 1e-6).

    Returns:
      ``(M, h)``: ``[..., K, K]`` admittance at the bit-line nodes and ``[..., K]``
      short-circuit current per volt on the driver, µS.
    """
    K = g_row.shape[-1]
    dtype = g_row.dtype
    # T₀ + r_w D: every node joins its two neighbours (the driver for node 0), the last
    # node only the one before it.
    d = jnp.full(g_row.shape, 2.0, dtype).at[..., -1].set(1.0) + rw * g_row
    off = -jnp.ones(g_row.shape, dtype)
    dl = off.at[..., 0].set(0.0)
    du = off.at[..., -1].set(0.0)
    eye = jnp.eye(K, dtype=dtype)
    rhs = jnp.concatenate([g_row[..., :, None] * eye, eye[:, :1] * jnp.ones_like(g_row)[..., :, None]], -1)
    y = tridiagonal_solve(dl, d, du, rhs)  # [..., K, K + 1]
    m = g_row[..., :, None] * eye - rw * g_row[..., :, None] * y[..., :K]
    m = 0.5 * (m + jnp.swapaxes(m, -1, -2))  # symmetric; removes rounding asymmetry
    return m, g_row * y[..., K]


def _row_step(rw, rb, carry, xs):
    """One row of the elimination: add the row, then pass one bit-line segment."""
    e, j = carry  # [..., K, K], [..., K, 2, R]
    g_pos, g_neg, onehot = xs
    m_pos, h_pos = _input_line(g_pos, rw)
    m_neg, h_neg = _input_line(g_neg, rw)
    s = e + m_pos + m_neg
    j = j + jnp.stack([h_pos, h_neg], -1)[..., None] * onehot
    K = s.shape[-1]
    f = jnp.eye(K, dtype=s.dtype) + rb * s
    # f is symmetric positive definite with eigenvalues ≥ 1: LU without trouble, and on
    # the CPU several times faster than batched Cholesky with triangular solves.
    x = jnp.linalg.solve(f, jnp.concatenate([s, j.reshape(*j.shape[:-2], -1)], -1))
    e_next = x[..., :K]
    e_next = 0.5 * (e_next + jnp.swapaxes(e_next, -1, -2))
    return (e_next, x[..., K:].reshape(j.shape)), None


@jax.jit
def transfer_pair(g_pos, g_neg, r_word_line, r_bit_line):
    """Exact transfer conductances of both polarities: the effective conductances.

    Args:
      g_pos, g_neg: ``[..., R, K]`` device conductances, µS, ≥ 0 (leading axes: cores,
        instances, ...). The dtype (float32 or float64) is kept.
      r_word_line, r_bit_line: wire resistance of one cell pitch, Ω, ≥ 0 (may be traced;
        0 is an ideal line).

    Returns:
      ``(a_pos, a_neg)``, each ``[..., R, K]``, µS: the current into ADC ``k`` per volt on
      the driver of row ``i`` of that polarity; ``Vᵀ (a_pos − a_neg)`` are the column
      currents for differential inputs ``V``.
    """
    g_pos = jnp.asarray(g_pos)
    if not jnp.issubdtype(g_pos.dtype, jnp.floating):
        g_pos = g_pos.astype(jnp.float32)
    dtype = g_pos.dtype
    g_neg = jnp.asarray(g_neg, dtype)
    g_pos, g_neg = jnp.broadcast_arrays(g_pos, g_neg)
    *batch, R, K = g_pos.shape
    rw = jnp.asarray(r_word_line, dtype) * UOHM_US
    rb = jnp.asarray(r_bit_line, dtype) * UOHM_US
    init = (jnp.zeros((*batch, K, K), dtype), jnp.zeros((*batch, K, 2, R), dtype))
    xs = (jnp.moveaxis(g_pos, -2, 0), jnp.moveaxis(g_neg, -2, 0), jnp.eye(R, dtype=dtype))
    (_, j), _ = jax.lax.scan(lambda c, x: _row_step(rw, rb, c, x), init, xs)
    a = jnp.swapaxes(j, -1, -3)  # [..., R, 2, K]
    return a[..., 0, :], a[..., 1, :]
