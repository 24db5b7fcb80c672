"""The built-in PCM device families (PHYSICS.md §2.1–2.3).

A model describes the conductance of one polarity of a unit cell: the sum of its
``num_devices`` devices of that sign, which is what the HERMES statistics were measured
on (``g_max`` is summed over those devices).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from pcmjax.devices._base import (
    _DEFAULT,
    DeviceModel,
    as_param,
    clipped_log,
    init_fields,
    is_concrete,
    leaf,
    log_or_poly,
    normalised,
    polyval_ascending,
    register,
    static,
    validate_common,
)

# ---------------------------------------------------------------------------------------
# HERMES-fitted figures (Le Gallo et al., Nat. Electron. 6, 680 (2023); Khaddam-Aljameh et
# al., JSSC 57, 1027 (2022); the same figures are published in IBM aihwkit's HermesNoiseModel).
# Piecewise laws are stored as [a, b, lo, hi, thr, p0, p1, p2, p3]:
#   clip(a ln g_r + b, lo, hi) for g_r < thr, else p0 + p1 g_r + p2 g_r² + p3 g_r³.
_HERMES = {
    1: dict(
        g_max=10.35,
        t0=200.0,
        prog_coeffs=(0.15781817, 2.32443916, -2.16310839, 0.68841818),
        sigma_nu=(-0.0120, -0.0023, 0.0124, 0.04, 0.3039, 0.0104, 0.0116, -0.0165, 0.0),
        q_s=(-0.0078, 0.0038, 0.0179, 0.04, 0.1591, 0.0088, 0.0768, -0.1352, 0.0664),
    ),
    2: dict(
        g_max=20.7,
        t0=300.0,
        prog_coeffs=(0.16603222, 4.71806468, -8.48101252, 4.68961419),
        sigma_nu=(-0.0117, -0.0057, 0.0091, 0.04, 0.3055, 0.0073, 0.0093, -0.0118, 0.0),
        q_s=(-0.0117, -0.0069, 0.015, 0.04, 0.16, 0.0123, 0.0211, -0.0280, 0.0069),
    ),
}
_HERMES_MU_NU = (-0.0387, -0.0182, 0.072, 0.13, 0.0945, 0.0736, -0.0126, -0.0436, 0.0)
_HERMES_T_READ = 512e-9


def _fill(obj, name, given: dict, defaults: dict, shapes: dict):
    values = {}
    for key, default in defaults.items():
        value = given.get(key, _DEFAULT)
        if value is _DEFAULT:
            value = default
        values[key] = as_param(value, f"{name}.{key}", shapes.get(key))
    init_fields(obj, values)


@register
@dataclasses.dataclass(frozen=True, init=False, eq=False)
class HermesPCM(DeviceModel):
    """Statistical model of the HERMES chip's PCM unit cells (PHYSICS.md §2.1).

    Args:
      num_devices: devices per sign of the unit cell, 1 or 2 (selects the published
        statistics and ``g_max``).
      q_s_from: evaluate Q_s at the ``"programmed"`` conductance (aihwkit's code, the
        default) or at the ``"target"`` conductance (aihwkit's documentation).
      **params: override any float parameter (``g_max``, ``g_max_char``, ``t0``,
        ``t_read``, ``prog_coeffs``, ``mu_nu``, ``sigma_nu``, ``q_s_law``,
        ``prog_scale``, ``drift_scale``, ``read_noise_scale``).

    References:
      Le Gallo et al., Nature Electronics 6, 680 (2023); Nandakumar et al., ICECS 2019.
    """

    family = "hermes"
    num_devices: int = static()
    q_s_from: str = static()
    g_max: jnp.ndarray = leaf()
    g_max_char: jnp.ndarray = leaf()
    t0: jnp.ndarray = leaf()
    t_read: jnp.ndarray = leaf()
    prog_coeffs: jnp.ndarray = leaf()
    mu_nu: jnp.ndarray = leaf()
    sigma_nu: jnp.ndarray = leaf()
    q_s_law: jnp.ndarray = leaf()
    prog_scale: jnp.ndarray = leaf()
    drift_scale: jnp.ndarray = leaf()
    read_noise_scale: jnp.ndarray = leaf()

    def __init__(self, num_devices: int = 2, *, q_s_from: str = "programmed", **params):
        validate_common("HermesPCM", num_devices, q_s_from)
        _check_names("HermesPCM", params, self)
        table = _HERMES[num_devices]
        object.__setattr__(self, "num_devices", num_devices)
        object.__setattr__(self, "q_s_from", q_s_from)
        defaults = dict(
            g_max=table["g_max"], g_max_char=table["g_max"], t0=table["t0"], t_read=_HERMES_T_READ,
            prog_coeffs=table["prog_coeffs"], mu_nu=_HERMES_MU_NU, sigma_nu=table["sigma_nu"],
            q_s_law=table["q_s"], prog_scale=1.0, drift_scale=1.0, read_noise_scale=1.0,
        )
        shapes = dict(prog_coeffs=(4,), mu_nu=(9,), sigma_nu=(9,), q_s_law=(9,))
        _fill(self, "HermesPCM", params, defaults, shapes)
        _check_positive("HermesPCM", self, ("g_max", "g_max_char", "t0", "t_read"))

    def prog_sigma(self, g_target):
        x = jnp.abs(g_target) / self.g_max
        # σ_prog scales down with g_max when g_max is set below the characterised value.
        scale = jnp.minimum(self.g_max / self.g_max_char, 1.0)
        return jnp.maximum(polyval_ascending(self.prog_coeffs, x), 0.0) * scale

    def nu_moments(self, g_target):
        g_r = normalised(g_target, self.g_max)
        return log_or_poly(self.mu_nu, g_r), jnp.maximum(log_or_poly(self.sigma_nu, g_r), 0.0)

    def q_s(self, g):
        return jnp.maximum(log_or_poly(self.q_s_law, normalised(g, self.g_max)), 0.0)


@register
@dataclasses.dataclass(frozen=True, init=False, eq=False)
class PCMLike(DeviceModel):
    """Statistical model of a 1-million-device doped-GST PCM array (PHYSICS.md §2.2).

    With ``num_devices = n > 1`` the model describes the sum of ``n`` independent devices
    each at ``g_T / n``: ``g_max`` is ``25 n`` µS, σ_prog grows by ``sqrt(n)`` and the
    relative 1/f noise Q_s shrinks by ``sqrt(n)``; the drift exponent keeps the
    single-device statistics (an effective exponent of the sum).

    References:
      Nandakumar et al., ICECS 2019; Joshi et al., Nature Communications 11, 2473 (2020).
    """

    family = "pcm_like"
    num_devices: int = static()
    q_s_from: str = static()
    g_max: jnp.ndarray = leaf()
    t0: jnp.ndarray = leaf()
    t_read: jnp.ndarray = leaf()
    prog_coeffs: jnp.ndarray = leaf()
    mu_nu: jnp.ndarray = leaf()
    sigma_nu: jnp.ndarray = leaf()
    q_s_law: jnp.ndarray = leaf()
    prog_scale: jnp.ndarray = leaf()
    drift_scale: jnp.ndarray = leaf()
    read_noise_scale: jnp.ndarray = leaf()

    def __init__(self, num_devices: int = 1, *, q_s_from: str = "programmed", **params):
        validate_common("PCMLike", num_devices, q_s_from)
        _check_names("PCMLike", params, self)
        object.__setattr__(self, "num_devices", num_devices)
        object.__setattr__(self, "q_s_from", q_s_from)
        defaults = dict(
            g_max=25.0 * num_devices, t0=20.0, t_read=250e-9, prog_coeffs=(0.26348, 1.9650, -1.1731),
            mu_nu=(-0.0155, 0.0244, 0.049, 0.1), sigma_nu=(-0.0125, -0.0059, 0.008, 0.045),
            q_s_law=(0.0088, 0.65, 0.2), prog_scale=1.0, drift_scale=1.0, read_noise_scale=1.0,
        )
        shapes = dict(prog_coeffs=(3,), mu_nu=(4,), sigma_nu=(4,), q_s_law=(3,))
        _fill(self, "PCMLike", params, defaults, shapes)
        _check_positive("PCMLike", self, ("g_max", "t0", "t_read"))

    def prog_sigma(self, g_target):
        x = jnp.abs(g_target) / self.g_max
        return jnp.maximum(polyval_ascending(self.prog_coeffs, x), 0.0) * np.sqrt(self.num_devices)

    def nu_moments(self, g_target):
        g_r = normalised(g_target, self.g_max)
        return clipped_log(self.mu_nu, g_r), jnp.maximum(clipped_log(self.sigma_nu, g_r), 0.0)

    def q_s(self, g):
        g_r = normalised(g, self.g_max)
        c, expo, cap = self.q_s_law[0], self.q_s_law[1], self.q_s_law[2]
        q = jnp.minimum(c / jnp.maximum(g_r**expo, 1e-3), cap)
        return jnp.maximum(q, 0.0) / np.sqrt(self.num_devices)


@register
@dataclasses.dataclass(frozen=True, init=False, eq=False)
class StateIndependent(DeviceModel):
    """Constant σ_prog, (μ_ν, σ_ν) and Q_s: the baseline for ablations and fits (§2.3).

    Args:
      sigma_prog: programming-noise standard deviation, µS.
      mu_nu, sigma_nu: mean and standard deviation of the drift exponent.
      q_s: 1/f read-noise amplitude.
      g_max, t0, t_read: as in the other families (defaults: the PCM-like figures).
    """

    family = "state_independent"
    num_devices: int = static()
    q_s_from: str = static()
    g_max: jnp.ndarray = leaf()
    t0: jnp.ndarray = leaf()
    t_read: jnp.ndarray = leaf()
    sigma_prog: jnp.ndarray = leaf()
    mu_nu: jnp.ndarray = leaf()
    sigma_nu: jnp.ndarray = leaf()
    q_s_const: jnp.ndarray = leaf()
    prog_scale: jnp.ndarray = leaf()
    drift_scale: jnp.ndarray = leaf()
    read_noise_scale: jnp.ndarray = leaf()

    def __init__(self, sigma_prog=1.0, mu_nu=0.06, sigma_nu=0.02, q_s=0.02, *, num_devices: int = 1,
                 q_s_from: str = "programmed", **params):
        validate_common("StateIndependent", num_devices, q_s_from)
        if "q_s_const" in params:
            q_s = params.pop("q_s_const")
        _check_names("StateIndependent", params, self)
        object.__setattr__(self, "num_devices", num_devices)
        object.__setattr__(self, "q_s_from", q_s_from)
        defaults = dict(
            g_max=25.0 * num_devices, t0=20.0, t_read=250e-9, sigma_prog=sigma_prog, mu_nu=mu_nu,
            sigma_nu=sigma_nu, q_s_const=q_s, prog_scale=1.0, drift_scale=1.0, read_noise_scale=1.0,
        )
        _fill(self, "StateIndependent", params, defaults, {})
        _check_positive("StateIndependent", self, ("g_max", "t0", "t_read"))
        _check_nonnegative("StateIndependent", self, ("sigma_prog", "sigma_nu", "q_s_const"))

    def prog_sigma(self, g_target):
        return jnp.zeros_like(g_target) + self.sigma_prog

    def nu_moments(self, g_target):
        zeros = jnp.zeros_like(g_target)
        return zeros + self.mu_nu, zeros + self.sigma_nu

    def q_s(self, g):
        return jnp.zeros_like(g) + self.q_s_const


def _check_names(name, params, obj):
    allowed = {f.name for f in dataclasses.fields(type(obj)) if not f.metadata.get("static")}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise TypeError(f"{name} got unknown parameter(s) {unknown}; allowed: {sorted(allowed)}.")


def _check_positive(name, obj, fields):
    for f in fields:
        v = getattr(obj, f)
        if is_concrete(v) and not np.all(np.asarray(v) > 0):
            raise ValueError(f"{name}: {f} must be > 0, got {np.asarray(v)!r}.")


def _check_nonnegative(name, obj, fields):
    for f in fields:
        v = getattr(obj, f)
        if is_concrete(v) and not np.all(np.asarray(v) >= 0):
            raise ValueError(f"{name}: {f} must be >= 0, got {np.asarray(v)!r}.")

