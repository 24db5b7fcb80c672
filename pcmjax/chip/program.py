"""Programming (PHYSICS.md §3): one-shot statistical writes and program-and-verify.

The second stage of the data path (map → **program** → age → read → digital unit): target
conductances in, programmed conductances out. Gradient-based programming
(:mod:`pcmjax.chip.gdp`) chooses other targets and then writes them with these.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from pcmjax import _random
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


def program_verify(key, g_target, device, cfg: ChipConfig):
    """Iterative program-and-verify, vectorised over every device with masked updates.

    Each unit-cell polarity with a non-zero target starts from a one-shot SET (the device
    model's programming noise). Then, for ``iterations`` rounds: read the polarity's
    conductance with verify-read noise; devices within ``tolerance · g_max`` stop for good;
    the others get a partial pulse that removes a stochastic fraction
    ``step · (1 + step_noise ξ)`` of the read error, bounded by the device's SET
    conductance. Zero targets stay RESET (the device model's conductance at target 0);
    the RESET partner of an iterated device is not added (it is below the tolerance).

    With two devices per sign (HERMES strategy): each device has a SET conductance
    ``g_max/2 · (1 + set_spread ξ)``; if the target exceeds both, the device with the
    higher SET conductance is SET and the other is iterated on the remainder; otherwise
    the higher one is iterated and the other RESET.

    References:
      Khaddam-Aljameh et al., JSSC 57, 1027 (2022); Le Gallo et al., Nat. Electron. 2023.
    """
    p = cfg.program
    n = int(device.num_devices)
    g_max = device.g_max
    k_set, k_init, k_reset, k_loop = jax.random.split(key, 4)
    shape = g_target.shape
    active = g_target > 0
    if n == 1:
        g_set = jnp.maximum(g_max * (1.0 + p.set_spread * _random.normal(k_set, shape)), 1e-3)
        g_fixed = jnp.zeros(shape)
        target_iter = g_target
    else:
        ks = jax.random.split(k_set, 2)
        dev_max = g_max / n
        set_a = jnp.maximum(dev_max * (1.0 + p.set_spread * _random.normal(ks[0], shape)), 1e-3)
        set_b = jnp.maximum(dev_max * (1.0 + p.set_spread * _random.normal(ks[1], shape)), 1e-3)
        hi, lo = jnp.maximum(set_a, set_b), jnp.minimum(set_a, set_b)
        both = g_target > hi
        # SET the higher device and iterate the lower one on the remainder, or iterate the
        # higher one alone (the other is RESET, adding only its RESET conductance below).
        g_fixed = jnp.where(both, hi, 0.0)
        g_set = jnp.where(both, lo, hi)
        target_iter = g_target - g_fixed
    reset = device.program(k_reset, jnp.zeros(shape))  # RESET devices keep a small conductance
    g0 = jnp.clip(device.program(k_init, target_iter), 0.0, g_set)
    tol = p.tolerance * g_max

    def body(i, carry):
        g, done = carry
        kr, kp = jax.random.split(jax.random.fold_in(k_loop, i))
        read = g_fixed + g + p.verify_read_noise * g_max * _random.normal(kr, shape)
        err = g_target - read
        done = done | (jnp.abs(err) < tol)
        pulse = p.step * err * (1.0 + p.step_noise * _random.normal(kp, shape))
        g = jnp.where(done, g, jnp.clip(g + pulse, 0.0, g_set))
        return g, done

    g, _ = jax.lax.fori_loop(0, p.iterations, body, (g0, ~active))
    return jnp.where(active, g_fixed + g, reset)
