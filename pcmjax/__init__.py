"""pcmjax: a differentiable, jit-compiled simulator of PCM analog in-memory-compute chips.

The public surface::

    import pcmjax as pj
    dev = pj.devices.HermesPCM(num_devices=2)
    cfg = pj.ChipConfig()                      # HERMES defaults; pj.ChipConfig.ideal()
    state = pj.program_chip(key, weights, cfg, dev)
    y = pj.mvm(key, state.at_time(key, 3600.0), x)

Every configuration (``ChipConfig`` and its parts, ``HWAConfig``) lives in the leaf package
:mod:`pcmjax.config` and is re-exported here.
"""

from pcmjax import devices
from pcmjax.chip import ChipState, mvm, program_chip
from pcmjax.config import (
    NONIDEALITIES,
    ADCConfig,
    ChipConfig,
    FaultConfig,
    GDPConfig,
    HWAConfig,
    ParasiticsConfig,
    ProgramConfig,
    PWMConfig,
    TemperatureConfig,
)

__version__ = "0.1.0"

__all__ = ["devices", "ChipConfig", "ProgramConfig", "GDPConfig", "FaultConfig", "ParasiticsConfig",
           "TemperatureConfig", "ADCConfig", "PWMConfig", "HWAConfig", "ChipState", "program_chip", "mvm",
           "NONIDEALITIES"]
