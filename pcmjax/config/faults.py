"""Configuration of device faults (stuck devices, dead columns); the physics is in
:mod:`pcmjax.chip.faults`."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from pcmjax._validate import is_traced as _is_traced


@dataclasses.dataclass(frozen=True)
class FaultConfig:
    """Fault rates of a chip instance (all 0: no faults, the default).

    Attributes:
      stuck_set: probability that a device is stuck at SET.
      stuck_reset: probability that a device is stuck at RESET.
      dead_columns: probability that a column (bit line) of a core is dead.

    The rates are Python floats when the config sits in a :class:`~pcmjax.ChipConfig`
    (static, hashable); :func:`apply_faults` also accepts JAX arrays (traced rates).
    """

    stuck_set: float = 0.0
    stuck_reset: float = 0.0
    dead_columns: float = 0.0

    def __post_init__(self):
        vals = {}
        for name in ("stuck_set", "stuck_reset", "dead_columns"):
            v = getattr(self, name)
            if _is_traced(v) or isinstance(v, jax.Array) and v.ndim:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, jax.Array)):
                raise TypeError(f"faults.{name} must be a probability (float), got {v!r}.")
            f = float(v)
            if not (0.0 <= f <= 1.0):
                raise ValueError(f"faults.{name} must be a probability in [0, 1], got {v!r}.")
            vals[name] = f
        if "stuck_set" in vals and "stuck_reset" in vals and vals["stuck_set"] + vals["stuck_reset"] > 1.0:
            raise ValueError(f"faults.stuck_set + faults.stuck_reset must be <= 1, got "
                             f"{vals['stuck_set']} + {vals['stuck_reset']}.")

    @property
    def enabled(self) -> bool:
        """True when any rate may be non-zero (traced rates count as enabled)."""
        return any(_is_traced(getattr(self, n)) or isinstance(getattr(self, n), jax.Array) or getattr(self, n) > 0
                   for n in ("stuck_set", "stuck_reset", "dead_columns"))

    def replace(self, **changes) -> FaultConfig:
        return dataclasses.replace(self, **changes)
