"""Configuration of the crossbar's wire resistance; the circuit models are in
:mod:`pcmjax.chip.parasitics`."""

from __future__ import annotations

import dataclasses

from pcmjax._validate import check_float, check_int


@dataclasses.dataclass(frozen=True)
class ParasiticsConfig:
    """Wire resistance of the crossbar (default: none).

    Attributes:
      r_word_line: resistance of one cell pitch of an input line, Ω.
      r_bit_line: resistance of one cell pitch of a bit line, Ω.
      iterations: 1 = first-order model; more = fixed-point refinement steps.
    """

    r_word_line: float = 0.0
    r_bit_line: float = 0.0
    iterations: int = 1

    def __post_init__(self):
        for name in ("r_word_line", "r_bit_line"):  # ohms
            check_float(f"parasitics.{name}", getattr(self, name), 0.0)
        check_int("parasitics.iterations", self.iterations, 1, 100)

    @property
    def enabled(self) -> bool:
        return self.r_word_line > 0 or self.r_bit_line > 0
