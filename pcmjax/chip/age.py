"""Ageing: the conductance of every device ``t`` seconds after programming (PHYSICS.md §2).

The third stage of the data path (map → program → **age** → read → digital unit). One
function serves the chip (:meth:`~pcmjax.ChipState.at_time`, the compensation reference
read at programming) and gradient-based programming's model of the chip
(:mod:`pcmjax.chip.gdp`), so the two always age devices the same way:

1. drift and accumulated 1/f noise of the device model (``drift``, ``drift_noise``), the
   noise's standard normals from the counter-based generator of :mod:`pcmjax._random`
   (ageing draws one per device at every time evaluated);
2. the per-read noise variance of the aged state (``read_noise``), normalised by ``g_max²``;
3. the operating temperature (:mod:`pcmjax.chip.temperature`), when configured;
4. the wire resistance of the array (:mod:`pcmjax.chip.parasitics`), when configured:
   what the MVM sees are the array's effective conductances, and the per-read variance
   is attenuated like the signal (:func:`pcmjax.chip.parasitics.through_wires`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pcmjax import _random
from pcmjax.chip import parasitics, temperature
from pcmjax.config import ChipConfig


def drift_exponents(key, g_target, device, cfg: ChipConfig):
    """Drift exponent ν of every device, drawn once when it is programmed.

    Args:
      key: a ``jax.random`` key.
      g_target: ``[..., 2, R, K]`` target conductances, µS.
      device: device model.
      cfg: chip config (``drift``).

    Returns:
      exponents of the shape of ``g_target`` (zeros when drift is off).
    """
    if not cfg.drift:
        return jnp.zeros_like(g_target)
    return device.drift_exponent_from_normal(g_target, _random.normal(key, jnp.shape(g_target)))


def age(key, g_prog, nu, g_target, device, cfg: ChipConfig, t, *, effective: bool = True,
        variance: bool = True):
    """Conductances at ``t`` and their normalised per-read variance.

    Args:
      key: a ``jax.random`` key (accumulated 1/f noise).
      g_prog: ``[C, 2, R, K]`` programmed conductances, µS.
      nu: drift exponents, same shape.
      g_target: target conductances, same shape, µS (state-dependent noise and
        temperature coefficients).
      device: device model.
      cfg: chip config.
      t: seconds since programming, scalar ≥ 0.
      effective: include the wire resistance (the conductances the MVM sees); ``False``
        gives the devices' own conductances.
      variance: compute the per-read variance (``False``: zeros).

    Returns:
      ``(g, var)``: ``[C, 2, R, K]`` conductances (µS) and per-read variances
      (normalised by ``g_max²``).
    """
    gt_noise = g_target if device.q_s_from == "target" else None
    if cfg.drift_noise:  # one normal per device and time: the counter-based generator (4× threefry's speed)
        g = device.at_time_from_normal(g_prog, nu, t, _random.normal(key, g_prog.shape), g_target=gt_noise)
    else:
        g = g_prog * device.drift_factor(nu, t)
    if cfg.read_noise and variance:
        var = (device.read_sigma(g, cfg.read_interval_s, g_target=gt_noise) / device.g_max) ** 2
    else:
        var = jnp.zeros_like(g)
    if cfg.temperature.enabled:  # away from the reference temperature
        g, var = temperature.apply(g, var, g_target, nu, t, device.t0, device.g_max, cfg.temperature)
    if effective and parasitics.enabled(cfg):  # wire resistance: signal and read noise through the wires
        g, var = parasitics.through_wires(g, var, cfg)
    return g, var


def computed_once(tree, g_max):
    """``tree``'s arrays as values computed once, not again inside each consumer.

    XLA fuses a chain of cheap elementwise operations into each of its consumers, so a
    per-column parameter drawn from normals (the ADC mismatch: an inverse error function
    polynomial per draw) or derived from them (the calibration, the compensation ratio)
    would be recomputed for every output element of every MVM that reads it (batch ×
    times over). XLA does not duplicate a division into such a broadcasting consumer:
    dividing by a run-time 1 (``g_max / g_max``, exactly 1.0) ends the chain and leaves
    every value bitwise unchanged. (An optimisation barrier does not reach XLA:CPU's
    fusion pass. Into a consumer that is merely vmapped over times, as the ageing's
    per-device normals are, XLA duplicates the division too: there it does not help.)

    Args:
      tree: a pytree of float arrays.
      g_max: the device model's ``g_max`` (a positive run-time value).

    Returns:
      ``tree`` with the same values.
    """
    one = g_max / g_max
    return jax.tree.map(lambda a: a / one, tree)


def _raise_if_negative(t):
    t = np.asarray(t)
    bad = ~(t >= 0)  # NaN is bad too
    if np.any(bad):
        raise ValueError(f"t must be >= 0 seconds after programming, got {t[bad].ravel()[0]!r}.")


def error_if_negative_time(t):
    """Check a traced time when the computation runs (the error-if pattern).

    A concrete ``t`` is checked before tracing (``devices._base.check_time``); a traced
    one (``at_time`` inside a user's ``jit`` or ``vmap``) only has values when the
    compiled code runs, so a host callback checks it then and raises: the call fails with
    a ``JaxRuntimeError`` whose message holds ``t must be >= 0 seconds after programming``.

    Args:
      t: seconds since programming (any shape, traced).
    """
    jax.debug.callback(_raise_if_negative, t)
