"""PCM statistical device models (PHYSICS.md §2), plus a flexible polynomial/spline family.

Models are pytrees: their float parameters are leaves, so ``jax.grad`` and the fitting
code reach them; ``num_devices`` and ``q_s_from`` are static.
"""

from pcmjax.devices._base import DeviceModel
from pcmjax.devices._flexible import Flexible
from pcmjax.devices._io import from_dict, load, save, to_dict
from pcmjax.devices._models import HermesPCM, PCMLike, StateIndependent

__all__ = ["DeviceModel", "HermesPCM", "PCMLike", "StateIndependent", "Flexible", "save", "load", "to_dict",
           "from_dict"]
