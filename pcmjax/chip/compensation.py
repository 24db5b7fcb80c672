"""Global drift compensation (PHYSICS.md §5; Joshi et al., Nat. Commun. 11, 2473 (2020)).

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
"""

from __future__ import annotations

import jax.numpy as jnp

from pcmjax.chip.read import make_read
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
    """Reference counts per column: the chip's ``"reference"`` read (:mod:`pcmjax.chip.read`).

    Args:
      key: a ``jax.random`` key (read and ADC noise).
      w: ``[C, 2, R, K]`` conductances at the time of the read, normalised by ``g_max``.
      var: ``[C, 2, R, K]`` per-read variances, normalised by ``g_max²``.
      adc: per-column ADC parameters (``gain``, ``offset``, ``nonlin``, ``offset_est``).
      cfg: chip config (``gdc_input``: the reference amplitude as a fraction of full scale).
      g_target: ``[C, 2, R, K]`` target conductances: if given, only the rows and columns
        that hold non-zero weights take part (:func:`mapped_lines`); the others read 0.

    Returns:
      ``[C, K]`` reference counts (offset-corrected magnitudes).
    """
    c, _, r, _ = w.shape
    amplitude = jnp.float32(cfg.gdc_input * cfg.adc.full_scale)
    if g_target is None:
        x = jnp.full((c, 1, r), amplitude)
    else:
        rows, cols = mapped_lines(g_target)
        x = jnp.where(rows, amplitude, 0.0)[:, None, :]  # undriven rows carry no charge
    ref = make_read(cfg, "reference")(key, x, w, var, adc)[:, 0]
    return ref if g_target is None else jnp.where(cols, ref, 0.0)


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
