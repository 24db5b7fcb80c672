"""Configuration of the periphery: PWM input encoding and the CCO ADC (PHYSICS.md §4)."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from pcmjax._validate import check_bool, check_float, check_int

# Activations the digital unit applies (implemented in pcmjax.periphery.ldpu).
Activation = Literal["gelu", "identity", "relu", "sigmoid", "tanh"]
ACTIVATION_NAMES = get_args(Activation)


@dataclasses.dataclass(frozen=True)
class PWMConfig:
    """Input encoding.

    Attributes:
      enabled: quantise inputs to the PWM grid (off: inputs only saturate at ±1).
      bits: input bits including sign (HERMES: 8, i.e. 7-bit magnitude), 2..16.
    """

    enabled: bool = True
    bits: int = 8

    def __post_init__(self):
        check_bool("pwm.enabled", self.enabled)
        check_int("pwm.bits", self.bits, 2, 16)

    @property
    def levels(self) -> int:
        """Largest pulse length in time units: ``2^(bits−1) − 1``."""
        return 2 ** (self.bits - 1) - 1


@dataclasses.dataclass(frozen=True)
class ADCConfig:
    """CCO ADC and its one-time calibration.

    Attributes:
      enabled: round to integer counts and saturate at ±N_max (off: a converter with
        gain ``a`` and no rounding or saturation; its residual nonlinearity, if any, stays).
      bits: magnitude bits; ``N_max = 2^bits − 1`` counts per sign unless ``max_count``
        is set (default 9 bits = 511).
      max_count: the largest count per sign when the conversion window, not the counter,
        limits it (``None``: ``2^bits − 1``). HERMES's oscillator peaks near 3.3 GHz, so its
        128 ns window holds about 422 toggles (PHYSICS.md §4.2: "more than 420 levels").
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
      calibrated: ``False`` leaves the one-time calibration undone: the digital unit assumes
        the nominal gain and zero offset, so every column keeps its raw gain spread
        (``gain_std``) and offset (``offset_std``) uncorrected.
    """

    enabled: bool = True
    bits: int = 9
    max_count: int | None = None
    full_scale: float = 0.1
    gain_std: float = 0.07
    offset_std: float = 1.0
    nonlinearity: float = 0.01
    nonlinearity_std: float = 0.005
    noise_std: float = 0.5
    cal_gain_error: float = 0.005
    cal_offset_error: float = 0.25
    calibrated: bool = True

    def __post_init__(self):
        check_bool("adc.enabled", self.enabled)
        check_bool("adc.calibrated", self.calibrated)
        check_int("adc.bits", self.bits, 2, 16)
        if self.max_count is not None:
            check_int("adc.max_count", self.max_count, 1, 2**self.bits - 1)
        check_float("adc.full_scale", self.full_scale, 0.0, 1.0, lo_open=True)
        for name in ("offset_std", "nonlinearity", "nonlinearity_std", "noise_std", "cal_gain_error",
                     "cal_offset_error"):
            check_float(f"adc.{name}", getattr(self, name), 0.0)
        check_float("adc.gain_std", self.gain_std, 0.0, 0.5, hi_open=True)

    @property
    def n_max(self) -> int:
        """Largest count per sign: ``max_count`` if set, else ``2^bits − 1``."""
        return 2**self.bits - 1 if self.max_count is None else self.max_count

    def counts_per_unit(self, rows: int) -> float:
        """``a``: counts per unit of normalised column charge."""
        return self.n_max / (self.full_scale * rows)
