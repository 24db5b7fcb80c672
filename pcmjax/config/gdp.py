"""Configuration of gradient-based programming (GDP); the algorithm is in
:mod:`pcmjax.chip.gdp`."""

from __future__ import annotations

import dataclasses

from pcmjax._validate import check_choice, check_float, check_int

WRITE_METHODS = ("one_shot", "verify")


@dataclasses.dataclass(frozen=True)
class GDPConfig:
    """Gradient-based programming (``ProgramConfig(method="gdp", gdp=GDPConfig(...))``).

    Attributes:
      steps: optimiser steps (a few hundred).
      learning_rate: initial Adam step size, in units of ``g_max`` (cosine decay to 0).
      samples: programming/drift noise samples per step.
      times_s: times after programming (s) at which the MVM error is measured; the loss is
        their mean (e.g. ``(1.0, 3600.0, 86400.0)``).
      input_batch: random inputs per step; 0 uses the exact expectation over independent
        uniform inputs in [−1, 1].
      write: how the chosen targets are written: ``"one_shot"`` or ``"verify"``
        (program-and-verify with the chip's :class:`ProgramConfig`); the loss models the
        same method.
    """

    steps: int = 300
    learning_rate: float = 0.005
    samples: int = 2
    times_s: tuple = (3600.0,)
    input_batch: int = 0
    write: str = "one_shot"

    def __post_init__(self):
        for name, lo, hi in (("steps", 0, 100_000), ("samples", 1, 1024), ("input_batch", 0, 1 << 16)):
            check_int(f"program.gdp.{name}", getattr(self, name), lo, hi)
        check_float("program.gdp.learning_rate", self.learning_rate, 0.0, lo_open=True)
        times = self.times_s
        if isinstance(times, (int, float)) and not isinstance(times, bool):
            times = (float(times),)
        if isinstance(times, list):
            times = tuple(times)
        if (not isinstance(times, tuple) or not times
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < float("inf")
                           for t in times)):
            raise ValueError(f"program.gdp.times_s must be a non-empty tuple of seconds >= 0, got {self.times_s!r}.")
        object.__setattr__(self, "times_s", tuple(float(t) for t in times))
        check_choice("program.gdp.write", self.write, WRITE_METHODS)
