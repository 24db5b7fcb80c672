"""Global drift compensation (PHYSICS.md §5; Joshi et al., Nat. Commun. 11, 2473 (2020)).

The reference (``ChipConfig.gdc_reference``) and its bias are described at the end of
this docstring.

Right after programming, each core reads a fixed reference input: the same amplitude on
every row that holds weights, applied to the positive and the negative device polarity in
separate conversions, so the reference is the column's total conductance (robust even
where a column's signed weights sum to nearly zero). At time ``t`` the same read is
repeated and the outputs are scaled by the ratio: one ratio per core (``"global"``) or per
column (``"column"``). It costs a few extra MVMs per core and nothing else.

Only the part of a core that holds a layer's tile takes part: rows and columns whose
weights are all zero (the unused part of a core whose tile is smaller than the crossbar)
are neither driven nor counted. Their RESET devices still conduct a little (the
programming noise of a zero target), and they neither carry the layer's signal nor drift
like it: a 256×10 output layer on a 256×256 core would otherwise see 246 columns of
leakage, offset residuals and ADC noise in its reference, and be over-compensated by
about 20 % a year after programming.

**Why the total-conductance reference over-compensates.** The reference sums the
conductance of *every* device of the mapped lines, each in proportion to its conductance:
the devices of small weights and the RESET partners on the other polarity count as much
per µS as the devices that carry the large weights. Low conductances drift faster (the
HERMES-fitted mean drift exponent is ≈ 0.11 near RESET against ≈ 0.06 at full SET,
PHYSICS.md §2.1), so the reference decays faster than the signal and the ratio
``ref₀ / ref_t`` overshoots the signal's own decay. The signal's decay weights each device
by its weight, ``⟨W₀, W_t⟩ / ⟨W₀, W₀⟩``, so large weights, which drift least, count more.
On the default chip (Gaussian weights, HERMES model, two devices per sign;
``benchmarks/bench_compensation.py``) the total reference overshoots by about 3 % a day
after programming and 6 % a year after; leaving the RESET partners out
(``"set_devices"``) removes only a sixth of that, so most of the bias is the weighting of
the small weights' devices, not the RESET partners.

The references a chip designer can compare (``ChipConfig.gdc_reference``):

* ``"total"`` (default, HERMES-style): the all-equal input against each polarity; one
  conversion per polarity, robust where a column's signed weights nearly cancel.
* ``"one_hot"``: the mean |output| of one-hot inputs (Joshi et al.), one per mapped row,
  so ``a Σ_i |w_ik|``: RESET partners now only subtract, and large weights dominate; it
  costs ``R`` reads per core (one MVM of batch ``R``) and is noisier per read.
* ``"set_devices"``: the total conductance of only the devices that hold weight (the
  weight's own polarity), leaving the RESET partners out: what a read that could skip
  them would measure (a bound, not a HERMES read).
* ``"signal"``: the oracle ``⟨Ŵ₀, W_t⟩`` against the stored weights, with no read noise:
  the exact per-core (or per-column) ratio of the signal, for comparisons.
"""

from __future__ import annotations

import jax.numpy as jnp

from pcmjax.chip.read import make_read, uniform_reference
from pcmjax.config import ChipConfig, CompensationMode

# A column whose reference reading is below this many counts gets the core's global ratio.
MIN_REFERENCE_COUNTS = 4.0


def mapped_lines(g_target):
    """``([C, R], [C, K])`` masks of the rows and columns holding at least one non-zero weight.

    Args:
      g_target: ``[C, 2, R, K]`` target conductances (0 where a weight is 0).
    """
    nonzero = jnp.any(g_target > 0, axis=1)  # [C, R, K]
    return jnp.any(nonzero, axis=2), jnp.any(nonzero, axis=1)


def reference_read(key, w, var, adc: dict, cfg: ChipConfig, g_target=None):
    """Reference per column, as ``cfg.gdc_reference`` measures it (see the module docstring).

    Args:
      key: a ``jax.random`` key (read and ADC noise).
      w: ``[C, 2, R, K]`` conductances at the time of the read, normalised by ``g_max``.
      var: ``[C, 2, R, K]`` per-read variances, normalised by ``g_max²``.
      adc: per-column ADC parameters (``gain``, ``offset``, ``nonlin``, ``offset_est``).
      cfg: chip config (``gdc_reference``; ``gdc_input``: the all-equal reference amplitude
        as a fraction of full scale).
      g_target: ``[C, 2, R, K]`` target conductances: if given, only the rows and columns
        that hold non-zero weights take part (:func:`mapped_lines`); the others read 0.
        Required by ``"set_devices"`` and ``"signal"``.

    Returns:
      ``[C, K]`` references in ADC counts (offset-corrected magnitudes).
    """
    kind = cfg.gdc_reference
    if kind in ("set_devices", "signal") and g_target is None:
        raise ValueError(f"gdc_reference={kind!r} needs the target conductances (g_target).")
    c, _, r, _ = w.shape
    rows, cols = mapped_lines(g_target) if g_target is not None else (jnp.ones((c, r), bool), None)
    if kind == "one_hot":
        ref = _one_hot_read(key, w, var, adc, cfg, rows)
    elif kind == "signal":
        ref = _signal(w, g_target, cfg)
    else:
        if kind == "set_devices":  # the devices that hold weight only: RESET partners read nothing
            w, var = jnp.where(g_target > 0, w, 0.0), jnp.where(g_target > 0, var, 0.0)
        # the same amplitude on every mapped row; undriven rows carry no charge
        ref = uniform_reference(key, cfg, cfg.gdc_input * cfg.adc.full_scale, rows, w, var, adc)
    return ref if cols is None else jnp.where(cols, ref, 0.0)


def _one_hot_read(key, w, var, adc, cfg: ChipConfig, rows):
    """``Σ_i |counts(e_i)|`` per column: one full-amplitude one-hot input per mapped row.

    The MVM read of the chip (one- or four-phase) with the offset estimate removed, so the
    sum is ``a Σ_i |w_ik|`` up to noise: the signed weights' magnitudes, without the
    RESET partners' conductance that the total-conductance read includes.
    """
    r = w.shape[2]
    x = jnp.where(rows[:, :, None], jnp.eye(r, dtype=jnp.float32)[None], 0.0)  # [C, R (batch), R]
    if cfg.read_phases == 1:
        counts = make_read(cfg, "one_phase")(key, x, (w[:, :1] - w[:, 1:]), (var[:, :1] + var[:, 1:]), adc)
        counts = counts - adc["offset_est"][:, None, :]
    else:
        counts = make_read(cfg, "four_phase")(key, x, w, var, adc)
    return jnp.sum(jnp.where(rows[:, :, None], jnp.abs(counts), 0.0), axis=1)


def _signal(w, g_target, cfg: ChipConfig):
    """The oracle ``a · Σ_i ŵ₀_ik w_ik``: the stored weights' own drift, no read noise.

    ``ŵ₀`` are the mapped weights (target difference of the polarities) scaled to a largest
    magnitude of 1 per core, ``w`` the signed conductances at the time of the read. The
    ratio of this reference at programming and at ``t`` is ``⟨W₀, W₀'⟩ / ⟨W₀, W_t⟩``: the
    factor that undoes the mean drift of the signal, weighted as the MVM weights it.
    """
    w0 = g_target[:, 0] - g_target[:, 1]
    scale = jnp.max(jnp.abs(w0), axis=(1, 2), keepdims=True)
    w0 = w0 / jnp.where(scale > 0, scale, 1.0)  # an all-zero core keeps a zero reference
    a = cfg.adc.counts_per_unit(cfg.rows)
    return a * jnp.sum(w0 * (w[:, 0] - w[:, 1]), axis=1)


def compensation_factor(ref0, ref_t, mode: CompensationMode, floor: float = MIN_REFERENCE_COUNTS):
    """Output scale per column from reference readings at programming and at ``t``.

    The one drift-compensation ratio of pcmjax: the chip's reference read, gradient-based
    programming's model of it and hardware-aware training all use it.

    Args:
      ref0, ref_t: ``[..., cols]`` references (counts, or total conductances).
      mode: ``"none"``, ``"global"`` (one ratio of the sums over the last axis) or
        ``"column"`` (one per column; a column whose references are at most ``floor``
        gets the global ratio).
      floor: a reference at most this large measured nothing usable (the ratio is then 1,
        never a division by ~0).

    Returns:
      ``[..., cols]`` factors (1 where nothing could be measured).
    """
    if mode == "none":
        return jnp.ones_like(ref0)
    tot0 = jnp.sum(ref0, axis=-1, keepdims=True)
    tot_t = jnp.sum(ref_t, axis=-1, keepdims=True)
    usable = tot_t > floor
    glob = jnp.where(usable, tot0 / jnp.where(usable, tot_t, 1.0), 1.0)
    glob = jnp.broadcast_to(glob, jnp.broadcast_shapes(ref0.shape, ref_t.shape))
    if mode == "global":
        return glob
    col_ok = (ref_t > floor) & (ref0 > floor)
    return jnp.where(col_ok, ref0 / jnp.where(col_ok, ref_t, 1.0), glob)
