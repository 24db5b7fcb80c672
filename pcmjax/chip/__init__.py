"""The chip: the data path map → program → age → read → digital unit, and the public MVM.

``mapping`` (weights → target conductances), ``program`` / ``gdp`` / ``faults`` (writing
them), ``age`` (drift, noise, temperature, wire resistance at ``t``), ``read`` (one
conversion for every read), ``compensation`` (drift compensation), ``state`` (the
``ChipState`` pytree and ``program_chip``), ``mvm`` (the checked public product).
"""

from pcmjax.chip.mvm import mvm
from pcmjax.chip.read import make_read
from pcmjax.chip.state import ChipState, apply_faults, program_chip
from pcmjax.config import NONIDEALITIES, ChipConfig, FaultConfig, ProgramConfig

__all__ = ["ChipConfig", "ProgramConfig", "FaultConfig", "ChipState", "program_chip", "mvm", "apply_faults",
           "make_read", "NONIDEALITIES"]
