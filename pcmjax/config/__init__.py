"""Every configuration of pcmjax: frozen, hashable dataclasses (static under ``jit``).

This package is a leaf: it imports nothing of the implementation, and every implementation
module imports its configuration from here. The public names are re-exported from
:mod:`pcmjax` (``pj.ChipConfig``, ``pj.FaultConfig``, ...).
"""

from pcmjax.config.chip import (
    COMPENSATION_MODES,
    GDC_REFERENCES,
    NONIDEALITIES,
    PRESETS,
    PROGRAM_METHODS,
    W_MAX_MODES,
    ChipConfig,
    CompensationMode,
    GDCReference,
    ProgramConfig,
    ProgramMethod,
    ReadMode,
    WMaxMode,
)
from pcmjax.config.faults import FaultConfig
from pcmjax.config.gdp import WRITE_METHODS, GDPConfig
from pcmjax.config.hwa import OUT_NOISE_MODES, HWAConfig, OutNoiseMode
from pcmjax.config.parasitics import ParasiticsConfig
from pcmjax.config.periphery import ACTIVATION_NAMES, Activation, ADCConfig, PWMConfig
from pcmjax.config.temperature import TemperatureConfig

__all__ = [
    "ChipConfig", "ProgramConfig", "GDPConfig", "FaultConfig", "ParasiticsConfig", "TemperatureConfig",
    "ADCConfig", "PWMConfig", "HWAConfig", "NONIDEALITIES", "PROGRAM_METHODS", "W_MAX_MODES",
    "COMPENSATION_MODES", "WRITE_METHODS", "OUT_NOISE_MODES", "ACTIVATION_NAMES", "ProgramMethod", "WMaxMode",
    "CompensationMode", "OutNoiseMode", "Activation", "PRESETS", "ReadMode", "GDC_REFERENCES", "GDCReference",
]
