"""Time-based current-controlled-oscillator ADC (PHYSICS.md §4.2).

Each bit line has its own CCO ADC. The line current, plus the ADC's input-referred
offset and noise, drives an oscillator whose toggles count a fixed charge; a Schmitt
trigger steers them into a positive or a negative counter, so conversion is
sign-magnitude. Per column ``k``, with the integrated signed charge ``s_k`` expressed in
units of ``V_read · t_unit · (2^(b_in−1)−1) · g_max`` (one fully-on device pair at full
input):

    u_k     = a (1 + δ_k) s_k + o_k + n_k                      (counts, signed)
    count_k = sign(u_k) · clip(round(|u_k| / (1 + b_k |u_k| / N_max)), 0, N_max)

``a = N_max / (full_scale · rows)`` maps a chosen fraction of the largest possible column
charge to full scale; ``δ_k`` (gain), ``o_k`` (offset) and ``b_k`` (residual
nonlinearity) are drawn once per chip instance; ``n_k`` is fresh Gaussian noise per
conversion. Rounding passes gradients straight through; saturation passes zero.

The offset is added before the polarity decision: it is an offset *current* of the
regulator, so in the linear range it is a constant that the digital unit's β removes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pcmjax._ste import round_ste
from pcmjax.config.periphery import ADCConfig


def sample_adc_mismatch(key, cfg: ADCConfig, shape):
    """Per-column ADC parameters of one chip instance and their calibration estimates.

    Args:
      key: a ``jax.random`` key.
      cfg: :class:`ADCConfig`.
      shape: ``(cores, cols)``.

    Returns:
      dict with ``gain`` (1 + δ), ``offset`` (counts), ``nonlin`` (b ≥ 0) and the
      calibration estimates ``gain_est``, ``offset_est``.
    """
    # One normal draw per split key, as five separate draws give, but vmapped: one
    # generator in the compiled program instead of five.
    size = math.prod(shape)
    z = jax.vmap(lambda k: jax.random.normal(k, (size,), jnp.float32))(jax.random.split(key, 5))
    n = lambda i: z[i].reshape(shape)  # noqa: E731
    gain = 1.0 + cfg.gain_std * n(0)
    offset = cfg.offset_std * n(1)
    nonlin = jnp.maximum(cfg.nonlinearity + cfg.nonlinearity_std * n(2), 0.0)
    if cfg.calibrated:
        gain_est = gain * (1.0 + cfg.cal_gain_error * n(3))
        offset_est = offset + cfg.cal_offset_error * n(4)
    else:  # no one-time calibration: the digital unit assumes the nominal converter
        gain_est, offset_est = jnp.ones_like(gain), jnp.zeros_like(offset)
    return dict(gain=gain, offset=offset, nonlin=nonlin, gain_est=gain_est, offset_est=offset_est)


def adc_transfer(u, nonlin, cfg: ADCConfig):
    """Counts from the signed, noisy oscillator input ``u`` (counts).

    Args:
      u: ``a (1+δ) s + o + n`` in counts, any shape.
      nonlin: residual nonlinearity ``b`` broadcastable to ``u``.
      cfg: :class:`ADCConfig`.

    Returns:
      signed counts (float array; integers when ``cfg.enabled``).
    """
    # sign(u)·f(|u|) written as u / (1 + b|u|/N): the same values, but the gradient at
    # u = 0 is 1 (inside the range) rather than the 0 of d(sign·abs)/du there. With b = 0
    # it is exactly u.
    v = u / (1.0 + nonlin * jnp.abs(u) / cfg.n_max)
    if not cfg.enabled:
        # No rounding or saturation; the residual nonlinearity is its own non-ideality
        # (``adc_nonlinearity``) and stays.
        return v
    # round() is odd-symmetric (half to even), so this is sign(u)·clip(round(|v|), 0, N).
    return jnp.clip(round_ste(v), -float(cfg.n_max), float(cfg.n_max))
