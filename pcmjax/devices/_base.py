"""Shared laws of the PCM statistical device models (PHYSICS.md §2).

Every model in this package describes a device by four functions of the normalised
conductance ``g_r = clip(|g| / g_max, 1e-7, inf)``:

* ``prog_sigma(g_target)``: standard deviation of the programming error (µS);
* ``nu_moments(g_target)``: mean and standard deviation of the drift exponent;
* ``q_s(g)``: the 1/f read-noise amplitude;

and by the common laws that turn them into samples: programming
``g_prog = max(g_T + σ_prog ξ, 0)``, drift exponent ``ν = |μ_ν + σ_ν ξ|``, drift
``g_d(t) = g_prog ((t + t0) / t0)^(−ν)`` and accumulated read noise
``g(t) = max(g_d + |g_d| σ_n(t) ξ, 0)`` with ``σ_n(t) = Q_s sqrt(ln((t + t0 + t_read) / (2 t_read)))``.

Noise is reparameterised (a standard normal scaled by the model's sigma), so
gradients reach every float parameter of a model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pcmjax._validate import check_choice, check_int, is_traced

G_R_MIN = 1e-7  # PHYSICS.md §2: floor of the normalised conductance inside logs and powers

Q_S_FROM = ("programmed", "target")

_DEFAULT = object()  # sentinel: "use the family's published value"


def standard_normal(key, shape):
    """``jax.random.normal`` drawn flat and reshaped: the same values, but XLA compiles
    the flat draw several times faster than one over a 4-D shape."""
    size = math.prod(shape)
    return jax.random.normal(key, (size,), jnp.float32).reshape(shape)


def normalised(g, g_max):
    """``g_r = clip(|g| / g_max, 1e-7, inf)`` (PHYSICS.md §2)."""
    return jnp.maximum(jnp.abs(g) / g_max, G_R_MIN)


def polyval_ascending(coeffs, x):
    """``Σ_i c_i x^i`` for coefficients in ascending powers (a leaf array)."""
    coeffs = jnp.asarray(coeffs)
    out = jnp.zeros_like(x) + coeffs[-1]
    for i in range(coeffs.shape[0] - 2, -1, -1):
        out = out * x + coeffs[i]
    return out


def log_or_poly(law, g_r):
    """The HERMES piecewise law: ``clip(a ln g_r + b, lo, hi)`` below ``thr``, else a cubic.

    Args:
      law: array ``[a, b, lo, hi, thr, p0, p1, p2, p3]``.
      g_r: normalised conductance (already floored at 1e-7).
    """
    law = jnp.asarray(law)
    low = jnp.clip(law[0] * jnp.log(g_r) + law[1], law[2], law[3])
    high = polyval_ascending(law[5:9], g_r)
    return jnp.where(g_r < law[4], low, high)


def clipped_log(law, g_r):
    """``clip(a ln g_r + b, lo, hi)`` for ``law = [a, b, lo, hi]`` (PCM-like model)."""
    law = jnp.asarray(law)
    return jnp.clip(law[0] * jnp.log(g_r) + law[1], law[2], law[3])


def check_time(t, name="t"):
    """Raise a clear error for negative or non-finite concrete times (seconds)."""
    if is_traced(t):  # values unknown under jit: at_time clamps t at 0
        return
    arr = np.asarray(t)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be a real number of seconds, got {t!r}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite seconds after programming, got {t!r}.")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0 seconds after programming, got {t!r}.")


class DeviceModel:
    """Base class: the sampling laws common to every family.

    Subclasses are dataclass pytrees whose float fields are leaves (differentiable,
    fittable) and whose ``num_devices`` / ``q_s_from`` are static. They implement
    ``prog_sigma``, ``nu_moments`` and ``q_s``.

    Common parameters (leaves): ``g_max`` (µS, summed over the devices of one sign),
    ``t0`` (s), ``t_read`` (s) and three dimensionless scale factors ``prog_scale``,
    ``drift_scale`` and ``read_noise_scale`` (1 = the published model) that multiply
    σ_prog, the drift exponent and Q_s.
    """

    family: str = "base"

    # --- family laws (overridden) -------------------------------------------------
    def prog_sigma(self, g_target):  # pragma: no cover - abstract
        raise NotImplementedError

    def nu_moments(self, g_target):  # pragma: no cover - abstract
        raise NotImplementedError

    def q_s(self, g):  # pragma: no cover - abstract
        raise NotImplementedError

    # --- sampling ----------------------------------------------------------------
    def program(self, key, g_target):
        """Programmed conductance: ``max(g_T + σ_prog(g_T) ξ, 0)``.

        Args:
          key: a ``jax.random`` key.
          g_target: target conductance per device, µS, any shape.

        Returns:
          programmed conductance, µS, same shape.
        """
        g_target = jnp.asarray(g_target, jnp.float32)
        return self.program_from_normal(g_target, standard_normal(key, g_target.shape))

    def program_from_normal(self, g_target, xi):
        """:meth:`program` with the standard normals given (the reparameterised law).

        Args:
          g_target: target conductance per device, µS, any shape.
          xi: standard normals broadcastable against ``g_target`` (a multiple ``k ξ``
            programs with ``k`` times the model's noise).

        Returns:
          programmed conductance ``max(g_T + σ_prog(g_T) ξ, 0)``, µS.
        """
        g_target = jnp.asarray(g_target, jnp.float32)
        return jnp.maximum(g_target + self.prog_scale * self.prog_sigma(g_target) * xi, 0.0)

    def drift_exponent(self, key, g_target):
        """Drift exponent per device: ``ν = |μ_ν + σ_ν ξ|`` (times ``drift_scale``).

        Args:
          key: a ``jax.random`` key.
          g_target: target conductance per device, µS, any shape.

        Returns:
          drift exponent ν ≥ 0, same shape.
        """
        g_target = jnp.asarray(g_target, jnp.float32)
        return self.drift_exponent_from_normal(g_target, standard_normal(key, g_target.shape))

    def drift_exponent_from_normal(self, g_target, xi):
        """:meth:`drift_exponent` with the standard normals given.

        Args:
          g_target: target conductance per device, µS, any shape.
          xi: standard normals broadcastable against ``g_target``.

        Returns:
          drift exponent ``drift_scale · |μ_ν + σ_ν ξ|`` ≥ 0.
        """
        mu, sigma = self.nu_moments(jnp.asarray(g_target, jnp.float32))
        return self.drift_scale * jnp.abs(mu + sigma * xi)

    def drift_factor(self, nu, t):
        """``((t + t0) / t0)^(−ν)``, computed as ``exp(−ν log1p(t / t0))`` (finite for t ≥ 0)."""
        return jnp.exp(-nu * jnp.log1p(jnp.maximum(t, 0.0) / self.t0))

    def noise_sigma(self, t):
        """``sqrt(ln((t + t0 + t_read) / (2 t_read)))``: the 1/f factor accumulated up to t."""
        ratio = (jnp.maximum(t, 0.0) + self.t0 + self.t_read) / (2.0 * self.t_read)
        # ratio >= 1 whenever t0 >= t_read; the floor keeps sqrt finite for odd fits.
        return jnp.sqrt(jnp.maximum(jnp.log(jnp.maximum(ratio, 1.0)), 0.0))

    def at_time(self, key, g_prog, nu, t, g_target=None):
        """Conductance ``t`` seconds after programming: drift plus accumulated 1/f noise.

        Args:
          key: a ``jax.random`` key.
          g_prog: programmed conductance, µS.
          nu: drift exponent, same shape as ``g_prog``.
          t: seconds since programming (≥ 0), scalar or broadcastable against ``g_prog``.
            A negative concrete ``t`` raises; a traced one is treated as 0.
          g_target: target conductance, required only when ``q_s_from == "target"``.

        Returns:
          conductance at time t, µS, shape ``broadcast(g_prog, t)``.
        """
        check_time(t)
        g_prog = jnp.asarray(g_prog, jnp.float32)
        shape = jnp.broadcast_shapes(g_prog.shape, jnp.shape(nu), jnp.shape(t))
        return self.at_time_from_normal(g_prog, nu, t, standard_normal(key, shape), g_target)

    def at_time_from_normal(self, g_prog, nu, t, xi, g_target=None):
        """:meth:`at_time` with the standard normals given.

        Args:
          g_prog: programmed conductance, µS.
          nu: drift exponent, broadcastable against ``g_prog``.
          t: seconds since programming (clamped at 0).
          xi: standard normals of the accumulated 1/f noise, broadcastable.
          g_target: target conductance, required only when ``q_s_from == "target"``.

        Returns:
          ``max(g_d + |g_d| σ_n(t) ξ, 0)`` with ``g_d = g_prog ((t + t0)/t0)^(−ν)``, µS.
        """
        g_prog = jnp.asarray(g_prog, jnp.float32)
        t = jnp.asarray(t, jnp.float32)
        g_d = g_prog * self.drift_factor(nu, t)
        g_ref = self._q_s_reference(g_prog, g_target)
        sigma_n = self.read_noise_scale * self.q_s(g_ref) * self.noise_sigma(t)
        return jnp.maximum(g_d + jnp.abs(g_d) * sigma_n * xi, 0.0)

    def read_sigma(self, g, interval_s, g_target=None):
        """Standard deviation (µS) of a fresh read's 1/f fluctuation (PHYSICS.md §2.4).

        The 1/f law of §2.1 accumulated over the interval since the previous read:
        ``σ_r = Q_s |g| sqrt(ln((Δ + 2 t_read) / (2 t_read)))``.
        """
        g = jnp.asarray(g, jnp.float32)
        g_ref = self._q_s_reference(g, g_target)
        factor = jnp.sqrt(jnp.log1p(jnp.asarray(interval_s, jnp.float32) / (2.0 * self.t_read)))
        return self.read_noise_scale * self.q_s(g_ref) * jnp.abs(g) * factor

    def _q_s_reference(self, g_prog, g_target):
        if self.q_s_from == "programmed":
            return g_prog
        if g_target is None:
            raise ValueError(
                "this device model evaluates Q_s at the target conductance (q_s_from='target'); "
                "pass g_target= to at_time / read_sigma."
            )
        return jnp.asarray(g_target, jnp.float32)

    # --- conveniences ---------------------------------------------------------------
    def replace(self, **changes) -> Any:
        """A copy with some fields changed (unknown names raise ``TypeError``)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {unknown}; fields are {sorted(names)}.")
        return dataclasses.replace(self, **changes)

    def params(self) -> dict:
        """The float parameters (leaves) as a dict of arrays."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("static")}


def leaf(default=dataclasses.MISSING):
    return dataclasses.field(default=default)


def static(default=dataclasses.MISSING):
    return dataclasses.field(default=default, metadata={"static": True})


def register(cls):
    """Register a frozen dataclass as a pytree: leaves = non-static fields.

    Unflattening bypasses ``__init__`` (which validates user input), so JAX can rebuild
    a model from tracers, ``None`` or sentinel leaves.
    """
    fields = dataclasses.fields(cls)
    data = tuple(f.name for f in fields if not f.metadata.get("static"))
    meta = tuple(f.name for f in fields if f.metadata.get("static"))

    def flatten_with_keys(obj):
        children = tuple((jax.tree_util.GetAttrKey(n), getattr(obj, n)) for n in data)
        return children, tuple(getattr(obj, n) for n in meta)

    def flatten(obj):
        return tuple(getattr(obj, n) for n in data), tuple(getattr(obj, n) for n in meta)

    def unflatten(aux, children):
        obj = object.__new__(cls)
        for n, v in zip(meta, aux):
            object.__setattr__(obj, n, v)
        for n, v in zip(data, children):
            object.__setattr__(obj, n, v)
        return obj

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls


def init_fields(obj, values: dict):
    """Set the fields of a frozen dataclass from ``values`` (used by custom ``__init__``)."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def validate_common(name, num_devices, q_s_from, allowed_devices=(1, 2)):
    """The static options every family shares: ``num_devices`` and ``q_s_from``."""
    check_int(f"{name}.num_devices", num_devices)
    check_choice(f"{name}.num_devices", num_devices, allowed_devices)
    check_choice(f"{name}.q_s_from", q_s_from, Q_S_FROM)


def is_concrete(v) -> bool:
    """A user-given parameter value (not a tracer, nor a placeholder of pytree unflattening)."""
    return not is_traced(v) and v is not None and type(v) is not object


def as_param(value, name, shape=None):
    """Convert a user-given parameter to float32, checking shape and finiteness (concrete only)."""
    if not is_concrete(value):
        return value
    try:
        arr = np.asarray(value, np.float32)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a float or float array, got {value!r}.") from e
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return jnp.asarray(arr)
