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

from pcmjax import _random
from pcmjax.config import ChipConfig
from pcmjax.periphery.adc import adc_transfer
from pcmjax.periphery.pwm import pwm_encode

# A column whose reference reading is below this many counts gets the core's global ratio.
MIN_REFERENCE_COUNTS = 4.0


def mapped_lines(g_target):
    """``([C, R], [C, K])`` masks of the rows and columns holding at least one non-zero weight.

    Args:
      g_target: ``[C, 2, R, K]`` target conductances (0 where a weight is 0).
    """
    nonzero = jnp.any(g_target > 0, axis=1)  # [C, R, K]
    return jnp.any(nonzero, axis=2), jnp.any(nonzero, axis=1)


def reference_read(key, g_sign, var_sign, g_max, adc: dict, cfg: ChipConfig, g_target=None):
    """Reference counts per column: the sum of both polarities' conversions.

    Args:
      key: a ``jax.random`` key (read and ADC noise).
      g_sign: ``[cores, 2, rows, cols]`` conductances at the time of the read, µS.
      var_sign: ``[cores, 2, rows, cols]`` per-read variance, normalised by ``g_max²``.
      g_max: the device model's ``g_max``.
      adc: per-column ADC parameters (``gain``, ``offset``, ``nonlin``).
      cfg: chip config.
      g_target: ``[cores, 2, rows, cols]`` target conductances: if given, only the rows and
        columns that hold non-zero weights take part (:func:`mapped_lines`); the others
        read 0.

    Returns:
      ``[cores, cols]`` reference counts (offset-corrected magnitudes).
    """
    x_ref = pwm_encode(jnp.asarray(cfg.gdc_input * cfg.adc.full_scale, jnp.float32), cfg.pwm)
    a = cfg.adc.counts_per_unit(cfg.rows)
    if g_target is not None:
        rows, cols = mapped_lines(g_target)
        # A select, not a product with a 0/1 mask: XLA (jaxlib 0.10.2, CPU) compiled the
        # row sum of g · mask wrongly under nested vmap (instances × times) when rows ==
        # cols, summing the mask along the column axis.
        driven = rows[:, None, :, None]
        g_sign, var_sign = jnp.where(driven, g_sign, 0.0), jnp.where(driven, var_sign, 0.0)
    s = x_ref * jnp.sum(g_sign, axis=2) / g_max  # [C, 2, K]
    var_counts = jnp.zeros_like(s) + cfg.adc.noise_std**2
    if cfg.read_noise:
        var_counts = var_counts + (a * adc["gain"][:, None, :]) ** 2 * x_ref**2 * jnp.sum(var_sign, axis=2)
    u = a * adc["gain"][:, None, :] * s + adc["offset"][:, None, :]
    u = u + jnp.sqrt(var_counts) * _random.normal(key, s.shape)
    counts = adc_transfer(u, adc["nonlin"][:, None, :], cfg.adc)
    ref = jnp.sum(counts - adc["offset_est"][:, None, :], axis=1)
    return ref if g_target is None else jnp.where(cols, ref, 0.0)


def compensation_factor(ref0, ref_t, mode: str, floor: float = MIN_REFERENCE_COUNTS):
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
