"""Wire resistance of the crossbar (IR drop): a first-order model and the exact solution.

Two models, chosen with ``ParasiticsConfig.method``:

* ``"fixed_point"`` (default, cheap): the first-order expansion below, a few cumulative
  sums per core; good while the IR drop is below ~10 % (λ ≲ 0.2), divergent beyond
  λ ≈ 3.5.
* ``"exact"``: the exact nodal solution of every core's whole network (both input lines
  of every row, the bit lines, the driver and ADC segments) by block elimination,
  :func:`pcmjax.chip.nodal.transfer_pair`; valid at any wire resistance, float32 within
  ~2e-5 of a float64 nodal analysis (and of ngspice), about ``11/3 R K³`` multiply-adds
  per core (a Cholesky factorisation, an inverse and matrix products per row), once per
  state (:meth:`pcmjax.ChipState.at_time`; every read then costs one ordinary MVM);
  differentiable in reverse mode by an adjoint solve. On the CPU, run it with
  ``OPENBLAS_NUM_THREADS=1`` in the environment (:mod:`pcmjax.chip.nodal`).

Both give input-independent effective conductances (below), used by every MVM, and the
per-read noise variance of every device is attenuated like its signal
(:func:`through_wires`).

Geometry (per core): every row has one input line per device polarity, driven from the
column-0 end (the driver); every column has one bit line, held at the ADC's common-mode
voltage at the row-(R−1) end (the ADC). ``r_word_line`` and ``r_bit_line`` are the wire
resistances of one cell pitch (Ω per segment); one segment also joins the first cell to
the driver and the last cell to the ADC. Voltages are relative to the common mode; the
positive-polarity line of row ``i`` is driven at ``+V_i`` and the negative one at
``−V_i`` (PHYSICS.md §4.1), so a bit line carries the *net* current of its column.

The network is linear, so for every input the column currents are ``I = Vᵀ W_eff`` with
an input-independent effective conductance per device: the IR drop is a change of the
programmed matrix, computed once per state and then used by every MVM (PWM pulses of
different lengths superpose, so this holds for the integrated charge too). With
``G⁺, G⁻`` the conductances (µS → S with the 1e-6 factor) and ``Gᵗ = G⁺ + G⁻``:

* input line (driver at column 0): the node of cell ``(i, k)`` sits at ``V_i s_ik`` with
  ``s = 1 − r_w Kw(G ⊙ s)``, ``Kw(v)_k = Σ_k' (min(k, k') + 1) v_k'`` (the current of
  every cell beyond ``j`` crosses segment ``j``): a cumulative sum of a reversed
  cumulative sum along the row;
* bit line (ADC at row R−1): the net current of the cells above crosses every segment
  below them, and every cell on the line loads it; the column's effective weights are
  ``W ⊙ (1 − r_b Kb z)`` with ``z = Gᵗ − r_b Gᵗ ⊙ Kb z`` and
  ``Kb(v)_i = Σ_i' (R − max(i, i')) v_i'`` (cumulative sums down the column).

First order (``iterations = 1``) takes ``s = 1 − r_w Kw(G)`` and ``z = Gᵗ``:
``W_eff = G ⊙ (1 − r_w Kw(G)) ⊙ (1 − r_b Kb(Gᵗ))``. Each further iteration is one more
fixed-point step of both recursions (exact for either line alone when converged; the
coupling between the two lines stays first order). The relative error of a device grows
with the current its line carries and with its distance from the driver / ADC: the
largest correction is ``λ_w = r_w max_i Kw(G)_{i,K−1} ≈ r_w Ḡ K²/2`` for the input lines
and ``λ_b ≈ r_b Ḡᵗ R²/2`` for the bit lines.

Accuracy (``tests/test_parasitics.py`` checks it against an independent float64 nodal
solve of a 16×16 array): the first-order model's error is second order, about ``λ²/5``
of the largest column output with ``λ = λ_w + λ_b`` (measured: 3e-4 at λ = 0.04, 0.7 % at
λ = 0.18, 2.5 % at λ = 0.35, 14 % at λ = 1.05, where the IR drop itself is 2 %, 10 %,
19 % and 42 % of the output). So the first-order model is the right tool while the IR drop
is below ~10 % (λ ≲ 0.2). More iterations help while the series converges: at
λ = 0.35 two iterations give 0.1 %, at λ = 1.05 five give 1.4 % (what remains is the
coupling of the two lines, which stays first order); with λ ≈ 1.7 on each line (λ ≈ 3.5)
the fixed-point series diverges and only a nodal solve is meaningful. For scale: a
256×256 core at a mean conductance of 5 µS per device reaches λ_w ≈ 0.16 at 1 Ω per
segment. All functions are vectorised over leading (core, instance) axes and
differentiable.

References:
  S. Jain, A. Sengupta, K. Roy, A. Raghunathan, "RxNN: a framework for evaluating deep
  neural networks on resistive crossbars", IEEE TCAD 40, 326 (2021); S. Jain,
  A. Raghunathan, "CxDNN: hardware-software compensation methods for deep neural networks
  on resistive crossbar systems", ACM TECS 18 (2019).
"""

from __future__ import annotations

import jax.numpy as jnp

from pcmjax.chip.nodal import transfer_pair
from pcmjax.config.parasitics import ParasiticsConfig  # noqa: F401  (re-exported)

UOHM_US = 1e-6  # Ω · µS → dimensionless


def enabled(cfg) -> bool:
    """Whether a :class:`~pcmjax.ChipConfig` has wire resistance."""
    par = getattr(cfg, "parasitics", None)
    return par is not None and par.enabled


def kw(v):
    """``Kw(v)_k = Σ_k' (min(k, k') + 1) v_k'`` along the last axis (input-line kernel)."""
    suffix = jnp.flip(jnp.cumsum(jnp.flip(v, -1), -1), -1)
    return jnp.cumsum(suffix, -1)


def kb(v):
    """``Kb(v)_i = Σ_i' (R − max(i, i')) v_i'`` along axis −2 (bit-line kernel)."""
    prefix = jnp.cumsum(v, -2)
    return jnp.flip(jnp.cumsum(jnp.flip(prefix, -2), -2), -2)


def effective_pair(g_pos, g_neg, r_word_line, r_bit_line, iterations: int = 1):
    """Effective conductances of both polarities under wire resistance.

    Args:
      g_pos, g_neg: ``[..., R, K]`` conductances, µS.
      r_word_line, r_bit_line: Ω per cell pitch (may be traced).
      iterations: 1 = first order; more = fixed-point refinement.

    Returns:
      ``(g_pos_eff, g_neg_eff)``, µS: ``Vᵀ (G⁺_eff − G⁻_eff)`` are the column currents.
    """
    rw = jnp.asarray(r_word_line, jnp.float32) * UOHM_US
    rb = jnp.asarray(r_bit_line, jnp.float32) * UOHM_US
    g_tot = g_pos + g_neg
    s_pos = 1.0 - rw * kw(g_pos)
    s_neg = 1.0 - rw * kw(g_neg)
    z = g_tot
    for _ in range(iterations - 1):
        s_pos = 1.0 - rw * kw(g_pos * s_pos)
        s_neg = 1.0 - rw * kw(g_neg * s_neg)
        z = g_tot - rb * g_tot * kb(z)
    bit = 1.0 - rb * kb(z)
    return g_pos * s_pos * bit, g_neg * s_neg * bit


def effective_conductances(g, cfg):
    """Effective conductances for a ChipConfig's parasitics (``cfg.parasitics.method``).

    Args:
      g: ``[..., C, 2, R, K]`` device conductances, µS (0 = positive polarity).
      cfg: a :class:`~pcmjax.ChipConfig`.

    Returns:
      ``[..., C, 2, R, K]`` effective conductances, µS: the first-order model
      (``"fixed_point"``) or the exact transfer conductances (``"exact"``).
    """
    par = cfg.parasitics
    if par.method == "exact":
        gp, gn = transfer_pair(g[..., 0, :, :], g[..., 1, :, :], par.r_word_line, par.r_bit_line)
    else:
        gp, gn = effective_pair(g[..., 0, :, :], g[..., 1, :, :], par.r_word_line, par.r_bit_line,
                                par.iterations)
    return jnp.stack([gp, gn], axis=-3)


def through_wires(g, var, cfg):
    """Effective conductances and per-read variances of a ChipConfig's wire resistance.

    The per-read noise of a device is a fluctuation ``δg`` of its conductance. It reaches
    the ADC of its column through the same wires as the signal: to first order in ``δg``
    the transfer conductance of its row and column moves by ``(∂a/∂g) δg``, with
    ``∂a/∂g = x y``, the voltages across the device per volt on its driver (``x``) and
    per volt on its ADC (``y``) (Tellegen's theorem; the fluctuation's effect on the other
    columns is of second order in the wire resistance and is left out). Without the
    neighbours' cross paths ``a = g x y``, so ``∂a/∂g = a / g``: exact for the first-order
    model (whose ``a / g`` is the product of the two lines' attenuations) and within
    ``O(λ²)`` of ``x y`` for the exact solve (tests/test_parasitics.py checks it against a
    float64 dense analysis). The variance therefore scales by ``(a / g)²``, clipped to
    ``[0, 1]`` (``|x|, |y| ≤ 1`` in a passive network; a device at 0 µS has no read noise).
    The drift-compensation reference read goes through the same conductances and
    variances as every MVM.

    Args:
      g: ``[..., C, 2, R, K]`` device conductances, µS.
      var: per-read variances of the same shape (any unit: the scale is dimensionless).
      cfg: a :class:`~pcmjax.ChipConfig` with wire resistance.

    Returns:
      ``(g_eff, var_eff)`` of the shape of ``g``: :func:`effective_conductances` and the
      attenuated variances.
    """
    g_eff = effective_conductances(g, cfg)
    ratio = jnp.clip(g_eff / jnp.where(g > 0, g, 1.0), 0.0, 1.0)
    return g_eff, var * jnp.where(g > 0, ratio, 1.0) ** 2


def nodal_solve(g_pos, g_neg, v, r_word_line, r_bit_line):
    """Exact column currents of one crossbar by a direct nodal solve (small arrays).

    Unknowns are the node voltages of both input lines of every row and of every bit
    line (``3 R K`` of them); the system ``Y u = b`` is assembled densely and solved with
    ``jnp.linalg.solve``. Wire and device conductances differ by many orders of
    magnitude: call it with float64 inputs under ``with jax.enable_x64(True):``.

    Args:
      g_pos, g_neg: ``[R, K]`` device conductances, µS.
      v: ``[R]`` input voltages (any unit; currents come out in that unit × µS).
      r_word_line, r_bit_line: Ω per cell pitch, > 0.

    Returns:
      ``[K]`` currents into the ADCs (same unit as ``Vᵀ G``).
    """
    g_pos = jnp.asarray(g_pos)
    dtype = g_pos.dtype
    g_neg = jnp.asarray(g_neg, dtype)
    v = jnp.asarray(v, dtype)
    R, K = g_pos.shape
    gw = 1.0 / (jnp.asarray(r_word_line, dtype) * UOHM_US)  # µS
    gb = 1.0 / (jnp.asarray(r_bit_line, dtype) * UOHM_US)
    n = R * K
    idx = jnp.arange(n).reshape(R, K)
    wp, wn, bl = idx, idx + n, idx + 2 * n
    Y = jnp.zeros((3 * n, 3 * n), dtype)
    b = jnp.zeros((3 * n,), dtype)

    def stamp(Y, a, c, g):  # conductance g between nodes a and c (arrays of indices)
        a, c, g = a.ravel(), c.ravel(), jnp.broadcast_to(g, a.shape).ravel()
        Y = Y.at[a, a].add(g).at[c, c].add(g)
        return Y.at[a, c].add(-g).at[c, a].add(-g)

    # Cells: input-line node to bit-line node.
    Y = stamp(Y, wp, bl, g_pos)
    Y = stamp(Y, wn, bl, g_neg)
    # Input lines: segments between columns, and the driver segment at column 0.
    Y = stamp(Y, wp[:, :-1], wp[:, 1:], gw)
    Y = stamp(Y, wn[:, :-1], wn[:, 1:], gw)
    Y = Y.at[wp[:, 0], wp[:, 0]].add(gw).at[wn[:, 0], wn[:, 0]].add(gw)
    b = b.at[wp[:, 0]].add(gw * v).at[wn[:, 0]].add(-gw * v)
    # Bit lines: segments between rows, and the ADC segment after the last row (at 0 V).
    Y = stamp(Y, bl[:-1, :], bl[1:, :], gb)
    Y = Y.at[bl[-1, :], bl[-1, :]].add(gb)
    u = jnp.linalg.solve(Y, b)
    return u[bl[-1, :]] * gb
