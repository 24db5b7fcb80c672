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

import dataclasses

import jax
import jax.numpy as jnp

from pcmjax._ste import round_ste


@dataclasses.dataclass(frozen=True)
class ADCConfig:
    """CCO ADC and its one-time calibration.

    Attributes:
      enabled: round to integer counts and saturate at ±N_max (off: a converter with
        gain ``a`` and no rounding or saturation; its residual nonlinearity, if any, stays).
      bits: magnitude bits; ``N_max = 2^bits − 1`` counts per sign (HERMES: >420 levels
        in the 128 ns window; default 9 bits = 511).
      full_scale: fraction of the largest possible column charge (every row at full
        input on a fully-SET device) that maps to ``N_max`` (HERMES keeps bit-line
        currents under ~100 µA, about a tenth of the worst case).
      gain_std: relative per-column gain spread after the analog trim (HERMES: 7 %).
      offset_std: per-column offset, counts (standard deviation).
      nonlinearity: mean residual compression ``b`` at full scale after calibration.
      nonlinearity_std: per-column spread of ``b`` (``b`` is floored at 0).
      noise_std: input-referred noise per conversion, counts rms.
      cal_gain_error: relative error of the one-time per-column gain calibration that
        the digital unit applies (0: the digital unit removes the gain spread exactly).
      cal_offset_error: error of the one-time offset calibration, counts.
    """

    enabled: bool = True
    bits: int = 9
    full_scale: float = 0.1
    gain_std: float = 0.07
    offset_std: float = 1.0
    nonlinearity: float = 0.01
    nonlinearity_std: float = 0.005
    noise_std: float = 0.5
    cal_gain_error: float = 0.005
    cal_offset_error: float = 0.25

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise TypeError(f"adc.enabled must be a bool, got {self.enabled!r}.")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise ValueError(f"adc.bits must be an integer in 2..16, got {self.bits!r}.")
        if not (isinstance(self.full_scale, (int, float)) and 0 < self.full_scale <= 1):
            raise ValueError(f"adc.full_scale must be in (0, 1], got {self.full_scale!r}.")
        for name in ("gain_std", "offset_std", "nonlinearity", "nonlinearity_std", "noise_std",
                     "cal_gain_error", "cal_offset_error"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and v < float("inf")):
                raise ValueError(f"adc.{name} must be a finite number >= 0, got {v!r}.")
        if self.gain_std >= 0.5:
            raise ValueError(f"adc.gain_std must be < 0.5 (a relative spread), got {self.gain_std!r}.")

    @property
    def n_max(self) -> int:
        """Largest count per sign."""
        return 2**self.bits - 1

    def counts_per_unit(self, rows: int) -> float:
        """``a``: counts per unit of normalised column charge."""
        return self.n_max / (self.full_scale * rows)


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
    k = jax.random.split(key, 5)
    n = lambda i: jax.random.normal(k[i], shape, jnp.float32)  # noqa: E731
    gain = 1.0 + cfg.gain_std * n(0)
    offset = cfg.offset_std * n(1)
    nonlin = jnp.maximum(cfg.nonlinearity + cfg.nonlinearity_std * n(2), 0.0)
    gain_est = gain * (1.0 + cfg.cal_gain_error * n(3))
    offset_est = offset + cfg.cal_offset_error * n(4)
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
