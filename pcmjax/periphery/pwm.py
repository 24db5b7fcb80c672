"""Pulse-width-modulated input encoding (PHYSICS.md §4.1).

An input ``x ∈ [−1, 1]`` becomes a read pulse of ``|q|`` time units with
``q = round(x (2^(b−1) − 1))``; the sign selects the source-line polarity. Inputs beyond
±1 saturate (the longest pulse).
"""

from __future__ import annotations

import jax.numpy as jnp

from pcmjax._ste import quantize_symmetric
from pcmjax.config.periphery import PWMConfig


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
