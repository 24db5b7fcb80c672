"""Configuration of the crossbar's wire resistance; the circuit models are in
:mod:`pcmjax.chip.parasitics`."""

from __future__ import annotations

import dataclasses

from pcmjax._validate import check_choice, check_float, check_int

METHODS = ("fixed_point", "exact")


@dataclasses.dataclass(frozen=True)
class ParasiticsConfig:
    """Wire resistance of the crossbar (default: none).

    Attributes:
      r_word_line: resistance of one cell pitch of an input line, Ω.
      r_bit_line: resistance of one cell pitch of a bit line, Ω.
      iterations: with ``method="fixed_point"``: 1 = first-order model; more = fixed-point
        refinement steps (ignored by ``"exact"``).
      method: ``"fixed_point"`` (default): the first-order expansion, cheap (a few
        cumulative sums per core), good while the IR drop is below ~10 % (λ ≲ 0.2) and
        divergent beyond λ ≈ 3.5. ``"exact"``: the exact nodal solution of the whole
        crossbar (:mod:`pcmjax.chip.nodal`), valid at any wire resistance, about
        ``11/3 R K³`` multiply-adds per core (mostly matrix products), once per state
        (every read of the state is then an ordinary MVM). On the CPU it needs
        ``OPENBLAS_NUM_THREADS=1`` in the environment (a warning says so otherwise).
    """

    r_word_line: float = 0.0
    r_bit_line: float = 0.0
    iterations: int = 1
    method: str = "fixed_point"

    def __post_init__(self):
        for name in ("r_word_line", "r_bit_line"):  # ohms
            check_float(f"parasitics.{name}", getattr(self, name), 0.0)
        check_int("parasitics.iterations", self.iterations, 1, 100)
        check_choice("parasitics.method", self.method, METHODS)

    @property
    def enabled(self) -> bool:
        return self.r_word_line > 0 or self.r_bit_line > 0
