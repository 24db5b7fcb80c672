"""Configuration of the operating temperature; the physics is in :mod:`pcmjax.chip.temperature`."""

from __future__ import annotations

import dataclasses

from pcmjax._validate import check_float


def _check_temp(name, v, allow_none=True):
    if v is None and allow_none:
        return
    check_float(f"temperature.{name}", v, 0.0, 2000.0, lo_open=True, hi_open=True)  # kelvin


@dataclasses.dataclass(frozen=True)
class TemperatureConfig:
    """Operating temperature of the chip (default: the reference, no change).

    Attributes:
      temperature_k: ambient temperature the devices are kept and read at, K (``None``:
        the reference temperature).
      read_temperature_k: temperature of the reads if different from the ambient one.
      reference_k: temperature of the device statistics (HERMES figures: room
        temperature, 300 K).
      ea_reset_ev, ea_set_ev: activation energy of conduction near RESET and at full SET.
      noise_exponent: ``β`` of the relative read noise ``∝ (G(T)/G(T_ref))^(−β)``.
    """

    temperature_k: float | None = None
    read_temperature_k: float | None = None
    reference_k: float = 300.0
    ea_reset_ev: float = 0.3
    ea_set_ev: float = 0.03
    noise_exponent: float = 0.5

    def __post_init__(self):
        _check_temp("temperature_k", self.temperature_k)
        _check_temp("read_temperature_k", self.read_temperature_k)
        _check_temp("reference_k", self.reference_k, allow_none=False)
        for name in ("ea_reset_ev", "ea_set_ev", "noise_exponent"):
            check_float(f"temperature.{name}", getattr(self, name), 0.0, 5.0)

    @property
    def ambient_k(self) -> float:
        return self.reference_k if self.temperature_k is None else float(self.temperature_k)

    @property
    def read_k(self) -> float:
        return self.ambient_k if self.read_temperature_k is None else float(self.read_temperature_k)

    @property
    def enabled(self) -> bool:
        """True when reads or storage differ from the reference temperature."""
        return self.ambient_k != self.reference_k or self.read_k != self.reference_k
