"""Programming (PHYSICS.md §3): one-shot statistical writes and program-and-verify.

The second stage of the data path (map → **program** → age → read → digital unit): target
conductances in, programmed conductances out. Program-and-verify as HERMES does it is
:mod:`pcmjax.chip.verify`; gradient-based programming (:mod:`pcmjax.chip.gdp`) chooses
other targets and then writes them with these.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

from pcmjax import _random
from pcmjax.chip.verify import program_verify
from pcmjax.config import ChipConfig

WriteMethod = Literal["one_shot", "verify"]


def program_conductances(key, g_target, device, cfg: ChipConfig):
    """Programmed per-sign conductances for every device of every core at once.

    Args:
      key: a ``jax.random`` key.
      g_target: ``[cores, 2, rows, cols]`` target conductances, µS.
      device: device model.
      cfg: chip config (``programming_noise``, ``program``; gradient-based programming
        writes its targets with ``program.gdp.write``).

    Returns:
      programmed conductances, same shape, µS.
    """
    method = cfg.program.gdp.write if cfg.program.method == "gdp" else cfg.program.method
    return write(key, g_target, device, cfg, method)


def write(key, g_target, device, cfg: ChipConfig, method: WriteMethod):
    """Write targets with one method: ``"one_shot"`` or ``"verify"`` (program-and-verify).

    Args:
      key: a ``jax.random`` key.
      g_target: ``[cores, 2, rows, cols]`` target conductances, µS.
      device: device model.
      cfg: chip config (``programming_noise``; ``program`` for program-and-verify).
      method: the write method.

    Returns:
      programmed conductances, same shape, µS (the targets when programming is exact).
    """
    if not cfg.programming_noise:
        return g_target
    if method == "one_shot":  # the counter-based normals of pcmjax._random (4× threefry's speed)
        return device.program_from_normal(g_target, _random.normal(key, jnp.shape(g_target)))
    return program_verify(key, g_target, device, cfg)
