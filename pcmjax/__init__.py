"""pcmjax: a differentiable, jit-compiled simulator of PCM analog in-memory-compute chips.

The public surface::

    import pcmjax as pj
    dev = pj.devices.HermesPCM(num_devices=2)
    cfg = pj.ChipConfig()                      # HERMES defaults; pj.ChipConfig.ideal()
    state = pj.program_chip(key, weights, cfg, dev)
    y = pj.mvm(key, state.at_time(key, 3600.0), x)
"""

from pcmjax import devices
from pcmjax.chip import NONIDEALITIES, ChipConfig, ChipState, ProgramConfig, mvm, program_chip
from pcmjax.periphery import ADCConfig, PWMConfig

__version__ = "0.1.0"

__all__ = ["devices", "ChipConfig", "ProgramConfig", "ADCConfig", "PWMConfig", "ChipState", "program_chip",
           "mvm", "NONIDEALITIES"]
