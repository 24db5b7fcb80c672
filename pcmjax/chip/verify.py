"""Program-and-verify as HERMES does it (PHYSICS.md §3, §6 "Mapping for programming").

The loop, per polarity of a unit cell, vectorised over every device of every core:

1. **Start.** Every device is RESET; the devices of the weight's polarity are SET. A device's
   SET conductance is ``set_level · g_dev · (1 + set_spread ξ)``, with ``g_dev = g_max / n``
   one device's share of ``g_max`` (``n`` devices per sign). Two-device strategy: if the
   target exceeds both SET conductances, the device with the higher one stays SET and the
   other is iterated on the remainder; otherwise the higher one is iterated and the other
   stays RESET.
2. **Verify read** (HERMES: 0.2 V, a 512 ns read pulse, counted by the core's ADC). The read
   sees the polarity's conductance plus the device model's own 1/f read fluctuation over the
   read pulse at its present conductance, ``device.read_sigma(g, verify_read_s)`` (about
   1 % of ``g``; it matters most for the read of the SET state that aims the first pulse),
   and the conversion's noise (``verify_adc_noise`` counts rms), then is rounded to an
   integer count. The count scale is HERMES's: one device's share of ``g_max`` is
   ``counts_per_device`` = 80 counts (``G_max`` = 80 counts with one device per sign, 160
   with two; 0.129 µS per count).
3. **Stop** for good when the integer read is within ``tolerance_counts`` (HERMES: 5) of
   the target, itself in whole counts: ``|read − round(g_T · counts/µS)| < 5``, a band of
   ±4 counts (a real-valued target would make the band's centre depend on the target's
   fractional count).
4. **Pulse.** Otherwise the next SET pulse's current is updated in proportion to the read
   error (HERMES), i.e. the conductance the pulse aims at moves by ``step`` times the read
   error: ``u ← clip(u + step · e, 0, g_set)``. A pulse re-melts and re-crystallises the
   programmed volume, so its outcome is not cumulative: the device lands at
   ``u + σ_p(u) ξ`` with a fresh ``ξ``. At most ``iterations`` (HERMES: 30) reads; a
   device that never passes keeps its last pulse's outcome.
5. **Relaxation.** A share ``relax_fraction`` of a pulse's response variance develops
   after its verify read (structural relaxation of the freshly crystallised volume, on
   time scales from the µs of the verify read to the first read at ``t0``). For every pulse
   but the accepted one the next verify read sees it and the loop corrects it; the accepted
   pulse's relaxation is what the loop cannot see, and the reason the programmed spread
   exceeds the tolerance band. A device left SET by the two-device strategy relaxes while
   its partner is iterated, so the loop sees part of it: only ``set_relax_fraction`` of its
   variance is left after the last verify read.

Pulse-response spread law (the free physics, calibrated; ``x = g / g_dev``):
``σ_p(g) = pulse_spread · g_dev · (1 − exp(−x / pulse_spread_scale))``. The spread of a
partial SET grows in proportion to the crystallised volume while that is small (a fixed
relative variability, ``pulse_spread / pulse_spread_scale``) and saturates as the device
approaches full SET, where more current changes the conductance little. The share
``1 − relax_fraction`` of its variance is seen by the verify read right after the pulse.

Modelling choices:

* **What is calibrated.** The HERMES-fitted σ_prog(g_T) (PHYSICS.md §2.1) was measured at
  the first read ``t0`` after HERMES's program-and-verify. The device model adds, at every
  time ``t ≥ 0`` (including ``t = 0``, i.e. ``t0``), the accumulated 1/f term
  ``Q_s sqrt(ln((t + t0 + t_read) / (2 t_read)))`` on top of σ_prog (``DeviceModel.at_time``,
  as aihwkit does). That term cannot be part of σ_prog: with two devices at ``g_max`` it is
  5.4 % of ``g_max`` on its own, against σ_prog = 5.3 %. So σ_prog is taken as the spread of
  the programmed state that the model's drift and 1/f laws then act on, and this loop is
  calibrated so that its output ``g_prog`` has ``std(g_prog − g_T) = σ_prog(g_T)``: the
  drop-in replacement of ``device.program``, and ``at_time`` treats both the same.
* **Mean relaxation** (the mean drift between the verify read and ``t0``) is taken as
  compensated by the targets, as in the fitted model whose programmed conductances are
  centred on ``g_T``; only its spread is modelled.
* **Per device, not per polarity.** Counts, SET conductance and the pulse spread are laws of
  one device (``g_dev``); the verify read sees the sum of the polarity. The fitted σ_prog of
  the two HERMES configurations agree in µS once expressed per iterated device (1 device at
  0.4 ``g_max``: 0.79 µS; 2 devices at 0.2: 0.81 µS), so one set of defaults serves both.
* **SET level.** A device's mean SET conductance is ``set_level = 1.3`` times ``g_dev``: with
  a 10 % device-to-device spread, the mapping's ``G_max`` (80 counts) is then reachable by
  99 % of devices (HERMES: more than 99 % of unit cells programmable), not a fitted value.
* **Pulse aim.** ``step = 1``: the pulse current is updated by the full read error (with a
  smaller gain the loop approaches from the SET side and stops at the upper edge of the
  band, a bias of ~1.5 % of ``g_max`` at 0.1 ``g_max`` that the fitted model does not have).
* Drift during the loop is neglected; the RESET partner of an iterated device adds its small
  RESET conductance to the read, which the loop absorbs (it is not modelled); zero targets
  stay RESET (the device model's conductance at target 0).

Calibration: ``benchmarks/calibrate_verify.py`` fits ``pulse_spread``,
``pulse_spread_scale``, ``relax_fraction`` and ``set_relax_fraction`` to σ_prog of
``HermesPCM(num_devices=1)`` and ``HermesPCM(num_devices=2)`` jointly, at 10 levels from 0.1
to 1.0 ``g_max``; the simulated σ is within 7 % of the fitted law at every level of both
(table in ``benchmarks/RESULTS.md``). Below about 0.65 ``g_max`` (the higher of two SET
conductances, ~1.37 ``g_dev``) a two-device cell iterates one device, so there the
two-device curve follows from the same per-device law as the one-device curve
(``set_relax_fraction`` acts only above).

References:
  Khaddam-Aljameh et al., JSSC 57, 1027 (2022); Le Gallo et al., Nat. Electron. 6, 680 (2023).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pcmjax import _random


def _round_st(x):
    """Round to an integer count; the gradient passes straight through (ADC rounding)."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def pulse_sigma(g, g_dev, p):
    """Standard deviation of a pulse's conductance response, µS (see the module docstring).

    Args:
      g: conductance the pulse aims at, µS (≥ 0).
      g_dev: one device's share of ``g_max``, µS.
      p: :class:`pcmjax.config.ProgramConfig`.

    Returns:
      σ_p(g), µS, same shape as ``g``.
    """
    x = jnp.maximum(g, 0.0) / g_dev
    return p.pulse_spread * g_dev * -jnp.expm1(-x / p.pulse_spread_scale)


def _split(key, g_target, g_dev, p, n):
    """SET conductances and the two-device strategy.

    Returns:
      ``(g_fixed, g_set)``: the conductance of a device left SET (0 if none) and the SET
      conductance of the iterated device (its largest reachable conductance), µS.
    """
    shape = g_target.shape
    ks = jax.random.split(key, n)
    sets = [jnp.maximum(p.set_level * g_dev * (1.0 + p.set_spread * _random.normal(k, shape)), 1e-3 * g_dev)
            for k in ks]
    if n == 1:
        return jnp.zeros(shape), sets[0]
    hi, lo = jnp.maximum(sets[0], sets[1]), jnp.minimum(sets[0], sets[1])
    both = g_target > hi
    return jnp.where(both, hi, 0.0), jnp.where(both, lo, hi)


def program_verify(key, g_target, device, cfg):
    """Iterative program-and-verify of every polarity of every unit cell at once.

    HERMES's closed loop (module docstring): SET, then up to ``cfg.program.iterations``
    verify reads in ADC counts; a device whose integer read is within
    ``tolerance_counts`` of its target stops; the others get a SET pulse aimed by the read
    error, whose outcome spreads by ``pulse_sigma``; the accepted pulse's relaxation is
    added at the end. Differentiable in ``g_target`` (rounding passes gradients straight
    through, the stop decisions are piecewise constant).

    Args:
      key: a ``jax.random`` key.
      g_target: target conductance of each polarity (sum over its devices), µS, any shape
        (``[cores, 2, rows, cols]`` on a chip); 0 means RESET.
      device: device model (``num_devices``, ``g_max``, ``read_sigma``, ``program``).
      cfg: chip config; only ``cfg.program`` is used.

    Returns:
      programmed conductance of each polarity, µS, same shape as ``g_target``.
    """
    p = cfg.program
    n = int(device.num_devices)
    g_target = jnp.asarray(g_target, jnp.float32)
    shape = g_target.shape
    g_dev = device.g_max / n
    per_us = p.counts_per_device / g_dev  # verify-read counts per µS
    k_set, k_reset, k_loop, k_relax = jax.random.split(key, 4)
    active = g_target > 0
    g_fixed, g_set = _split(k_set, g_target, g_dev, p, n)
    target_counts = _round_st(g_target * per_us)  # the target in whole counts, like the read
    adc_var = jnp.square(p.verify_adc_noise)

    def body(i, carry):
        u, g, done = carry
        k_read, k_pulse = jax.random.split(jax.random.fold_in(k_loop, i))
        total = g_fixed + g
        var = jnp.square(device.read_sigma(total, p.verify_read_s, g_target=g_target) * per_us) + adc_var
        sd = jnp.sqrt(jnp.maximum(var, 1e-12))  # floored: a finite gradient when both noises vanish
        read = _round_st(total * per_us + sd * _random.normal(k_read, shape))
        err = target_counts - read
        done = done | (jnp.abs(err) < p.tolerance_counts)
        u_new = jnp.clip(u + p.step * err / per_us, 0.0, g_set)
        spread = jnp.sqrt(1.0 - p.relax_fraction) * pulse_sigma(u_new, g_dev, p)
        g_new = jnp.clip(u_new + spread * _random.normal(k_pulse, shape), 0.0, g_set)
        return jnp.where(done, u, u_new), jnp.where(done, g, g_new), done

    g, done = g_set, ~active  # the SET pulse lands at the device's SET conductance
    _, g, done = jax.lax.fori_loop(0, p.iterations, body, (g, g, done))
    relax = jnp.sqrt(p.relax_fraction) * pulse_sigma(g, g_dev, p) * _random.normal(k_relax, shape)
    g = jnp.maximum(g + relax, 0.0)
    if n > 1:  # the SET partner's relaxation left after the loop's last read
        r_fix = jnp.sqrt(p.set_relax_fraction) * pulse_sigma(g_fixed, g_dev, p)
        g_fixed = jnp.maximum(g_fixed + r_fix * _random.normal(jax.random.fold_in(k_relax, 1), shape), 0.0)
    reset = device.program(k_reset, jnp.zeros(shape))  # RESET devices keep a small conductance
    return jnp.where(active, g_fixed + g, reset)
