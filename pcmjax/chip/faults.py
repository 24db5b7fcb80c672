"""Device faults: stuck-at-SET and stuck-at-RESET devices, dead columns.

Drawn per chip instance from a key and three rates:

* each PCM device of a unit cell (``num_devices`` per polarity) is independently stuck at
  SET with probability ``stuck_set`` (it conducts its full SET conductance,
  ``g_max / num_devices``, whatever it was programmed to) or stuck at RESET with
  probability ``stuck_reset`` (it conducts nothing);
* each bit line (one column of one core) is dead with probability ``dead_columns``: an
  open line or a failed ADC, so the column reads zero.

A polarity whose ``n`` devices hold ``h`` healthy, ``s`` stuck-SET and ``n − h − s``
stuck-RESET devices conducts ``g_prog · h / n + s · g_max / n``: the healthy devices are
taken to share the programmed conductance equally (first order; the HERMES two-device
strategy programs them unequally). Its drift exponent becomes the conductance-weighted
mean of the programmed exponent and that of a fully SET device (the device model's mean
ν at ``g_max``), so stuck-SET devices drift as little as SET devices do.

Faults are applied to the programmed conductances, before the drift-compensation
reference is read, and are not seen by program-and-verify (a pessimistic choice: a real
verify loop would partly compensate a stuck device with its healthy partner).

Two ways in:

* ``ChipConfig(faults=FaultConfig(stuck_set=0.01, ...))``: every ``program_chip`` draws
  faults (a static config: one compilation per rate);
* :func:`pcmjax.chip.apply_faults` on an already programmed :class:`~pcmjax.ChipState`, with rates
  that may be traced, so a Monte Carlo sweep over fault rates is one ``jax.vmap``.

References:
  Stuck-at faults of resistive crossbars as used for fault-tolerance studies, e.g.
  C.-Y. Chen et al., "RRAM defect modeling and failure analysis based on march test and a
  novel squeeze-search scheme", IEEE Trans. Comput. 64, 180 (2015); S. Kim et al.,
  "Optimization of programming current on endurance of phase change memory", VLSI-TSA
  2012 (stuck-SET endurance failures of PCM).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pcmjax.config.faults import FaultConfig

__all__ = ["FaultConfig", "fault_masks", "faulty_conductances", "set_drift_exponent", "program_faults",
           "fault_rates"]


def fault_masks(key, shape, num_devices: int, stuck_set, stuck_reset, dead_columns):
    """Counts of stuck devices per polarity and the dead-column mask.

    Args:
      key: a ``jax.random`` key.
      shape: ``(cores, 2, rows, cols)`` of the conductance array.
      num_devices: devices per polarity.
      stuck_set, stuck_reset, dead_columns: rates (floats or scalar arrays).

    Returns:
      ``(n_set, n_reset, alive)``: float arrays of ``shape`` with the number of stuck-SET
      and stuck-RESET devices of each polarity, and ``[cores, 1, 1, cols]`` with 1 for a
      working column and 0 for a dead one.
    """
    k_dev, k_col = jax.random.split(key)
    u = jax.random.uniform(k_dev, (num_devices, *shape), jnp.float32)
    is_set = u < stuck_set
    is_reset = (u >= stuck_set) & (u < stuck_set + stuck_reset)
    n_set = jnp.sum(is_set, axis=0).astype(jnp.float32)
    n_reset = jnp.sum(is_reset, axis=0).astype(jnp.float32)
    c, _, _, k = shape
    alive = (jax.random.uniform(k_col, (c, 1, 1, k), jnp.float32) >= dead_columns).astype(jnp.float32)
    return n_set, n_reset, alive


def faulty_conductances(key, g_prog, nu, g_max, num_devices: int, nu_set, stuck_set, stuck_reset, dead_columns):
    """Programmed conductances and drift exponents with faults applied.

    Args:
      key: a ``jax.random`` key.
      g_prog: ``[cores, 2, rows, cols]`` programmed conductances, µS.
      nu: drift exponents, same shape.
      g_max: the device model's ``g_max`` (summed over the devices of a polarity), µS.
      num_devices: devices per polarity.
      nu_set: drift exponent of a fully SET device.
      stuck_set, stuck_reset, dead_columns: rates.

    Returns:
      ``(g_prog, nu)`` of the faulty array. Gradients flow to ``g_prog`` and ``nu``
      through the healthy devices.
    """
    n = float(num_devices)
    n_set, n_reset, alive = fault_masks(key, g_prog.shape, num_devices, stuck_set, stuck_reset, dead_columns)
    healthy = n - n_set - n_reset
    g_h = g_prog * (healthy / n)
    g_s = n_set * (g_max / n)
    g = (g_h + g_s) * alive
    tot = g_h + g_s
    # Conductance-weighted exponent; where nothing conducts keep ν (its value is unused).
    safe = jnp.where(tot > 0, tot, 1.0)
    nu_f = jnp.where(tot > 0, (g_h * nu + g_s * nu_set) / safe, nu)
    return g, nu_f


def set_drift_exponent(device, drift: bool = True):
    """Mean drift exponent of a fully SET device (0 when drift is off)."""
    if not drift:
        return jnp.zeros((), jnp.float32)
    mu, _ = device.nu_moments(jnp.asarray(device.g_max, jnp.float32))
    return device.drift_scale * jnp.abs(mu)


def fault_rates(faults: FaultConfig):
    """``(stuck_set, stuck_reset, dead_columns)`` of a :class:`FaultConfig` as float32 arrays."""
    return tuple(jnp.asarray(getattr(faults, n), jnp.float32) for n in ("stuck_set", "stuck_reset", "dead_columns"))


def program_faults(key, g_prog, nu, device, cfg):
    """Faults of ``cfg.faults`` on freshly programmed devices (``program_chip``'s programming stage).

    Args:
      key: a ``jax.random`` key.
      g_prog, nu: ``[cores, 2, rows, cols]`` programmed conductances (µS) and drift exponents.
      device: device model.
      cfg: chip config (``faults``, ``drift``).

    Returns:
      ``(g_prog, nu)`` of the faulty array.
    """
    return faulty_conductances(key, g_prog, nu, device.g_max, int(device.num_devices),
                               set_drift_exponent(device, cfg.drift), *fault_rates(cfg.faults))
