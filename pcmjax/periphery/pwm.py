"""Pulse-width-modulated input encoding (PHYSICS.md §4.1).

An input ``x ∈ [−1, 1]`` becomes a read pulse of ``|q|`` time units with
``q = round(x (2^(b−1) − 1))``; the sign selects the source-line polarity. Inputs beyond
±1 saturate (the longest pulse).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pcmjax._ste import quantize_symmetric


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
        if not isinstance(self.enabled, bool):
            raise TypeError(f"pwm.enabled must be a bool, got {self.enabled!r}.")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise ValueError(f"pwm.bits must be an integer in 2..16, got {self.bits!r}.")

    @property
    def levels(self) -> int:
        """Largest pulse length in time units: ``2^(bits−1) − 1``."""
        return 2 ** (self.bits - 1) - 1


def pwm_encode(x, cfg: PWMConfig):
    """Effective input after PWM encoding, in [−1, 1].

    Args:
      x: inputs (any shape), nominally in [−1, 1].
      cfg: :class:`PWMConfig`.

    Returns:
      ``q / (2^(b−1) − 1)`` with straight-through rounding (or ``clip(x, −1, 1)`` when
      disabled); gradient 1 inside [−1, 1], 0 outside.
    """
    if not cfg.enabled:
        return jnp.clip(x, -1.0, 1.0)
    return quantize_symmetric(x, cfg.levels)
