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

Method: block elimination of the exact nodal equations (a direct solve: no iteration, no
tolerance, valid at any wire resistance), with the network's reciprocity.

1. Input lines. With the bit-line voltages ``b`` of row ``i`` given, each input line is a
   tridiagonal system ``(T₀/r_w + D) p = D b + V e₀/r_w`` (``T₀``: the chain Laplacian
   with the driver end grounded, ``D = diag(G_i)``). Eliminating it leaves, at the row's
   bit-line nodes, the admittance ``M = D − r_w D (T₀ + r_w D)⁻¹ D`` (``K × K``) and the
   short-circuit current ``h = D (T₀ + r_w D)⁻¹ e₀`` per volt on the driver.
2. Downward sweep (row 0 to the ADCs). The rows above row ``i``, seen from its bit-line
   nodes through one segment, are an admittance ``E``; row ``i`` adds ``S_i = E + M_i``
   and the next segment gives ``E' = F_i⁻¹ S_i`` with ``F_i = 1 + r_b S_i`` (symmetric
   positive definite, eigenvalues ≥ 1): one Cholesky factorisation ``F_i = L Lᵀ`` per row,
   then ``F_i⁻¹ = L⁻ᵀ L⁻¹`` explicitly and kept, so that every solve with ``F_i`` here and
   below is one matrix product (``solver="inverse"``, the default; ``"cholesky"`` keeps
   ``L`` and solves by two triangular solves, ``"lu"`` factorises by LU).
3. Upward sweep (reciprocity). With ADC ``k`` at 1 V and every driver at 0 V, the
   bit-line voltages of row ``i`` are ``U_i = F_i⁻¹ U_{i+1}`` (``U_R = 1``, one column
   per ADC) and the current into the driver of row ``i`` is ``hᵢᵀ U_i``; a resistive
   network is reciprocal, so that current is ``A[i, k]``. All ``K`` ADCs go through
   together: ``K`` right-hand sides instead of the ``2R`` drivers.

No step subtracts two wire-sized numbers, so float32 keeps its precision (within ~2e-5 of
a float64 nodal analysis at any λ). Cost per core and row: ``K³/6`` (Cholesky) +
``K³/2`` (``L⁻¹``: a triangular solve of the identity) + three ``K × K`` matrix products,
``≈ 11/3 R K³`` multiply-adds, against ``7/3 R K³`` by LU (a factorisation and two
solves with ``K`` right-hand sides per row); more work, but most of it in matrix
products, which run several times faster than LAPACK's triangular solves (the three are
timed side by side in ``benchmarks/bench_irdrop.py``). Memory ``R K²`` per core. Cores
(and instances) are processed a few at a time (``lax.map``), so the memory does not grow
with the chip. The transfer conductances depend on the state only: the chip computes
them once per state (:meth:`pcmjax.ChipState.at_time`) and every read is then an
ordinary MVM with them.

Why not an iterative solver: the transfer matrix needs ``K`` right-hand sides per core,
each a field of ``3 R K`` node voltages, so one iteration of any iterative method touches
``3 R K²`` numbers per core in memory-bound element-wise passes and batched tridiagonal
solves, not in matrix products. Conjugate gradients on the nodal system, preconditioned
by the lines' tridiagonal blocks, converge in 4 (λ = 0.1) to 14 (λ = 10) iterations to a
relative residual of 1e-7, but on a 256×256 core with 256 right-hand sides one
application of the preconditioner alone takes about as long as the whole direct solve
(``benchmarks/bench_irdrop.py`` times both; RESULTS.md, "IR drop").

The factorisations and triangular solves run in LAPACK (on the CPU, the OpenBLAS that
SciPy bundles, loaded at the first call): with OpenBLAS's default threads competing with
XLA's, they were 10-20× slower on a loaded CPU, and processes stalled for minutes.
Run with ``OPENBLAS_NUM_THREADS=1`` in the environment (set before Python starts, or at
least before the first LAPACK call). :func:`transfer_pair` on the CPU warns once per
process when none of ``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS``, ``OMP_NUM_THREADS``
is set; it never sets them itself (``warnings.filterwarnings`` silences the warning when
the threads are limited otherwise, e.g. with ``threadpoolctl``).

Gradients: a custom VJP by the adjoint (implicit-function) method, not by differentiating
the elimination. For a device ``e`` (or a wire segment), ``∂A[d, k]/∂g_e`` is minus the
product of the voltages across ``e`` with driver ``d`` at 1 V and with ADC ``k`` at 1 V
(Tellegen's theorem). The backward pass solves the same (symmetric) network for the
``K`` ADC-driven fields and for ``K`` adjoint fields driven by the cotangents
(``V = Ā[:, k]`` on the drivers), reusing the factorisation, and contracts them: about
three more solves with ``K`` right-hand sides per row and ``2 R K²`` memory per core. Wire segments are
differentiated through their currents (sums of device currents), again without
subtracting wire-sized voltages. Reverse mode only (``jax.grad``, ``jax.vjp``).
"""

from __future__ import annotations

import os
import warnings
from functools import partial

import jax
import jax.numpy as jnp
from jax.lax.linalg import cholesky, triangular_solve, tridiagonal_solve
from jax.scipy.linalg import cho_solve, lu_factor, lu_solve

UOHM_US = 1e-6  # Ω · µS → dimensionless
_CHUNK_ELEMENTS = 2**25  # cores per lax.map step: about this many R·K² elements at a time
SOLVERS = ("inverse", "cholesky", "lu")
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
_WARNED = []  # the BLAS-threads warning, once per process
_FULL = jax.lax.Precision.HIGHEST  # full float32 products (no reduced-precision passes on accelerators)


def warn_if_blas_threads_unset():
    """Warn (once) when the exact solve runs on the CPU with OpenBLAS's threads unlimited.

    Returns:
      whether the warning was issued by this call.
    """
    if _WARNED or jax.default_backend() != "cpu" or any(os.environ.get(v) for v in BLAS_THREAD_VARIABLES):
        return False
    _WARNED.append(True)
    warnings.warn(
        "The exact crossbar solve (ParasiticsConfig(method='exact')) calls LAPACK from XLA's threads, and "
        "OPENBLAS_NUM_THREADS is not set: OpenBLAS's own threads then compete with XLA's (10-20x slower, "
        "stalls on a loaded CPU). Start Python with OPENBLAS_NUM_THREADS=1 in the environment.",
        RuntimeWarning, stacklevel=2)
    return True


def _factorize(f, solver):
    """Factors of one row's ``F`` (symmetric positive definite) for :func:`_solve`.

    ``"inverse"``: ``F⁻¹`` itself, from its Cholesky factor ``L`` (one triangular solve
    for ``L⁻¹``, then ``L⁻ᵀ L⁻¹``), so every later solve is one matrix product;
    ``"cholesky"``: ``L`` (two triangular solves per solve); ``"lu"``: LU with pivots.
    """
    if solver == "lu":
        return lu_factor(f)
    low = cholesky(f, symmetrize_input=False)
    if solver == "cholesky":
        return (low,)
    eye = jnp.eye(f.shape[-1], dtype=f.dtype)
    l_inv = triangular_solve(low, eye, left_side=True, lower=True)
    inv = jnp.matmul(l_inv.T, l_inv, precision=_FULL)
    return (0.5 * (inv + inv.T),)


def _solve(factors, b, solver):
    """``F⁻¹ b`` from :func:`_factorize`'s factors; ``b``: ``[K, N]``."""
    if solver == "lu":
        return lu_solve(factors, b)
    if solver == "cholesky":
        return cho_solve((factors[0], True), b)
    return jnp.matmul(factors[0], b, precision=_FULL)


def _line_solve(g_row, rw, rhs):
    """Solve ``(T₀ + r_w D) x = rhs`` for the input line(s) of one row.

    Args:
      g_row: ``[K]`` device conductances of the row, µS.
      rw: wire resistance per segment, 1/µS (Ω × 1e-6).
      rhs: ``[K, N]`` right-hand sides.

    Returns:
      ``[K, N]`` solutions.
    """
    # T₀ + r_w D: every node joins its two neighbours (the driver for node 0), the last
    # node only the one before it.
    d = jnp.full(g_row.shape, 2.0, g_row.dtype).at[-1].set(1.0) + rw * g_row
    off = -jnp.ones_like(g_row)
    return tridiagonal_solve(off.at[0].set(0.0), d, off.at[-1].set(0.0), rhs)


def _input_line(g_row, rw):
    """Eliminate the input line of one row (one polarity).

    Args:
      g_row: ``[K]`` device conductances of the row, µS.
      rw: wire resistance per segment, 1/µS.

    Returns:
      ``(M, h)``: ``[K, K]`` admittance at the bit-line nodes and ``[K]`` short-circuit
      current per volt on the driver, µS.
    """
    K = g_row.shape[-1]
    eye = jnp.eye(K, dtype=g_row.dtype)
    y = _line_solve(g_row, rw, jnp.concatenate([g_row[:, None] * eye, eye[:, :1]], -1))  # [K, K + 1]
    m = g_row[:, None] * eye - rw * g_row[:, None] * y[:, :K]
    m = 0.5 * (m + m.T)  # symmetric; removes rounding asymmetry
    return m, g_row * y[:, K]


def _factor(gp, gn, rw, rb, solver):
    """Downward sweep: the factors of ``F_i`` of every row, and the ``h`` vectors.

    Args:
      gp, gn: ``[R, K]`` device conductances, µS.
      rw, rb: wire resistances per segment, 1/µS.
      solver: one of :data:`SOLVERS`.

    Returns:
      ``(fac, hp, hn, e_last)``: the factors of every row (a tuple of ``[R, ...]`` arrays,
      :func:`_factorize`), ``[R, K]`` short-circuit currents of each polarity, ``[K, K]``
      admittance seen by the ADCs.
    """
    K = gp.shape[-1]
    eye = jnp.eye(K, dtype=gp.dtype)

    def row(e, g):
        m, h = jax.vmap(_input_line, (0, None))(g, rw)  # both polarities in one LAPACK call
        s = e + m[0] + m[1]
        fac = _factorize(eye + rb * s, solver)
        e_next = _solve(fac, s, solver)
        return 0.5 * (e_next + e_next.T), (fac, h[0], h[1])

    e_last, (fac, hp, hn) = jax.lax.scan(row, jnp.zeros((K, K), gp.dtype), jnp.stack([gp, gn], 1))
    return fac, hp, hn, e_last


def _core_forward(gp, gn, rw, rb, solver):
    """Transfer conductances of one core (``[R, K]`` each, µS); see the module docstring."""
    fac, hp, hn, _ = _factor(gp, gn, rw, rb, solver)

    def row(u, xs):  # bit-line voltages of row i per ADC drive, from those of row i + 1
        fac_i, h_p, h_n = xs
        u = _solve(fac_i, u, solver)
        return u, (h_p @ u, h_n @ u)

    eye = jnp.eye(gp.shape[-1], dtype=gp.dtype)
    _, (ap, an) = jax.lax.scan(row, eye, (fac, hp, hn), reverse=True)
    return ap, an


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _core_transfer(gp, gn, rw, rb, solver):
    return _core_forward(gp, gn, rw, rb, solver)


def _core_fwd(gp, gn, rw, rb, solver):
    # Residuals are the inputs only: the backward pass factorises again, so memory stays
    # R·K² per core in flight, not per core of the chip.
    return _core_forward(gp, gn, rw, rb, solver), (gp, gn, rw, rb)


def _row_fields(g, rw, u_adc, u_adj, v_adj):
    """One polarity of one row in the backward pass: device and input-line sensitivities.

    Args:
      g: ``[K]`` device conductances, µS.
      rw: wire resistance per segment, 1/µS.
      u_adc, u_adj: ``[K, K]`` bit-line voltages of the row, per ADC drive and per adjoint
        drive (columns: the ``K`` drives).
      v_adj: ``[K]`` adjoint driver voltage of the row, per drive.

    Returns:
      ``(g_bar, rw_bar, q_adc, q_adj)``: ``[K]`` gradient of the devices, the line's share
      of the ``r_w`` gradient, and ``[K, K]`` device currents from the bit line into the
      input line in both fields.
    """
    K = g.shape[0]
    e0 = jnp.zeros((K, 1), g.dtype).at[0, 0].set(1.0)
    rhs = jnp.concatenate([rw * g[:, None] * u_adc, rw * g[:, None] * u_adj + e0 * v_adj[None, :]], -1)
    p = _line_solve(g, rw, rhs)
    y_adc = u_adc - p[:, :K]  # voltage across the device, bit line minus input line
    x_adj = p[:, K:] - u_adj  # input line minus bit line
    q_adc, q_adj = g[:, None] * y_adc, -g[:, None] * x_adj
    # Segment currents of the input line: every device current beyond the segment.
    c_adc = jnp.flip(jnp.cumsum(jnp.flip(q_adc, 0), 0), 0)
    c_adj = jnp.flip(jnp.cumsum(jnp.flip(q_adj, 0), 0), 0)
    return jnp.sum(x_adj * y_adc, -1), jnp.sum(c_adc * c_adj), q_adc, q_adj


def _core_bwd(solver, res, ct):
    """Adjoint of :func:`_core_transfer`: ADC-driven and cotangent-driven fields, contracted."""
    gp, gn, rw, rb = res
    ap_bar, an_bar = ct
    fac, hp, hn, e_last = _factor(gp, gn, rw, rb, solver)
    K = gp.shape[-1]
    zeros = jnp.zeros((K, K), gp.dtype)

    def down(j, xs):  # Norton currents of the cotangent drive (drivers at V = Ā[:, k])
        fac_i, h_p, h_n, a_p, a_n = xs
        j_tilde = j + h_p[:, None] * a_p[None, :] + h_n[:, None] * a_n[None, :]
        return _solve(fac_i, j_tilde, solver), j_tilde

    j_last, j_tilde = jax.lax.scan(down, zeros, (fac, hp, hn, ap_bar, an_bar))

    def up(carry, xs):  # bit-line voltages and downward segment currents, row by row upwards
        u_adc, u_adj, d_adc, d_adj, rb_bar = carry
        fac_i, jt, g_p, g_n, a_p, a_n = xs
        rb_bar = rb_bar + jnp.sum(d_adc * d_adj)  # the bit-line segment below this row
        u = _solve(fac_i, jnp.concatenate([u_adc, u_adj + rb * jt], -1), solver)  # one call
        u_adc, u_adj = u[:, :K], u[:, K:]
        gb, rwb, qa, qj = jax.vmap(_row_fields, (0, None, None, None, 0))(
            jnp.stack([g_p, g_n]), rw, u_adc, u_adj, jnp.stack([a_p, a_n]))
        carry = (u_adc, u_adj, d_adc + qa[0] + qa[1], d_adj + qj[0] + qj[1], rb_bar)
        return carry, (gb[0], gb[1], rwb[0] + rwb[1])

    init = (jnp.eye(K, dtype=gp.dtype), zeros, -e_last, j_last, jnp.zeros((), gp.dtype))
    xs = (fac, j_tilde, gp, gn, ap_bar, an_bar)
    (*_, rb_bar), (gp_bar, gn_bar, rw_bar) = jax.lax.scan(up, init, xs, reverse=True)
    return gp_bar, gn_bar, jnp.sum(rw_bar), rb_bar


_core_transfer.defvjp(_core_fwd, _core_bwd)


@partial(jax.jit, static_argnames=("solver",))
def transfer_pair(g_pos, g_neg, r_word_line, r_bit_line, solver: str = "inverse"):
    """Exact transfer conductances of both polarities: the effective conductances.

    Args:
      g_pos, g_neg: ``[..., R, K]`` device conductances, µS, ≥ 0 (leading axes: cores,
        instances, ...). The dtype (float32 or float64) is kept.
      r_word_line, r_bit_line: wire resistance of one cell pitch, Ω, ≥ 0 (may be traced;
        0 is an ideal line).
      solver: how every row's ``F_i`` is factorised and applied (:data:`SOLVERS`):
        ``"inverse"`` (default: Cholesky, then ``F_i⁻¹`` explicitly, so the sweeps are
        matrix products), ``"cholesky"`` (triangular solves) or ``"lu"``. All three are
        exact to rounding; they differ in speed (``benchmarks/bench_irdrop.py``).

    Returns:
      ``(a_pos, a_neg)``, each ``[..., R, K]``, µS: the current into ADC ``k`` per volt on
      the driver of row ``i`` of that polarity; ``Vᵀ (a_pos − a_neg)`` are the column
      currents for differential inputs ``V``. Differentiable in reverse mode with respect
      to every argument (custom VJP, see the module docstring).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}.")
    warn_if_blas_threads_unset()  # at trace time: once per compilation at most
    g_pos = jnp.asarray(g_pos)
    if not jnp.issubdtype(g_pos.dtype, jnp.floating):
        g_pos = g_pos.astype(jnp.float32)
    dtype = g_pos.dtype
    g_neg = jnp.asarray(g_neg, dtype)
    g_pos, g_neg = jnp.broadcast_arrays(g_pos, g_neg)
    *batch, R, K = g_pos.shape
    gp, gn = g_pos.reshape(-1, R, K), g_neg.reshape(-1, R, K)
    n = gp.shape[0]
    rw = jnp.broadcast_to(jnp.asarray(r_word_line, dtype) * UOHM_US, (n,))
    rb = jnp.broadcast_to(jnp.asarray(r_bit_line, dtype) * UOHM_US, (n,))
    chunk = max(1, min(n, _CHUNK_ELEMENTS // (R * K * K)))
    ap, an = jax.lax.map(lambda x: _core_transfer(*x, solver), (gp, gn, rw, rb), batch_size=chunk)
    return ap.reshape(*batch, R, K), an.reshape(*batch, R, K)
