"""The chip: configuration, mapping, programming, state, the MVM pipeline, compensation."""

from pcmjax.config import NONIDEALITIES, ChipConfig, ProgramConfig
from pcmjax.chip.mvm import mvm
from pcmjax.chip.state import ChipState, program_chip

__all__ = ["ChipConfig", "ProgramConfig", "ChipState", "program_chip", "mvm", "NONIDEALITIES"]
