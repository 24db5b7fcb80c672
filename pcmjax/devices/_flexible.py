"""A flexible device family: σ_prog, μ_ν, σ_ν and Q_s as polynomials or splines of g.

The fitting code (:mod:`pcmjax.fit`) uses this family when none of the published forms
describes a user's devices. Each of the four quantities is a linear combination of basis
functions of the normalised conductance ``x = clip(|g| / g_max, 0, 1)``:

* ``basis="poly"``: ascending powers ``1, x, x², …`` (degree = number of coefficients − 1);
* ``basis="spline"``: clamped cubic B-splines on uniform knots over [0, 1] (at least four
  coefficients; the coefficients are the spline's control values, so a constant vector
  gives a constant law).

σ_prog, σ_ν and Q_s are floored at 0; μ_ν is not (the drift exponent is ``|μ_ν + σ_ν ξ|``).
As in the other families σ_prog and (μ_ν, σ_ν) are functions of the target conductance
and Q_s of the programmed one (``q_s_from="programmed"``) or of the target.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from pcmjax._validate import check_choice
from pcmjax.devices._base import (
    DeviceModel,
    init_fields,
    is_concrete,
    leaf,
    polyval_ascending,
    register,
    static,
    validate_common,
)
from pcmjax.devices._models import _check_names, _check_positive, _fill

BASES = ("poly", "spline")
_LAWS = ("prog_coeffs", "mu_nu", "sigma_nu", "q_s_law")


def bspline_basis(x, n_coeffs: int):
    """Clamped cubic B-spline basis on uniform knots over [0, 1].

    Args:
      x: points, any shape (clipped to [0, 1]).
      n_coeffs: number of basis functions (≥ 4).

    Returns:
      array of shape ``x.shape + (n_coeffs,)``; rows sum to 1.
    """
    degree = 3
    interior = np.linspace(0.0, 1.0, n_coeffs - degree + 1)
    knots = np.concatenate([np.zeros(degree), interior, np.ones(degree)])
    x = jnp.clip(jnp.asarray(x), 0.0, 1.0)[..., None]
    lo, hi = knots[:-1], knots[1:]
    # Degree 0: half-open intervals, with x = 1 assigned to the last non-empty one.
    last = int(np.nonzero(hi > lo)[0][-1])
    b = ((x >= lo) & (x < hi)).astype(x.dtype)
    b = b.at[..., last].set(jnp.where(x[..., 0] >= 1.0, 1.0, b[..., last]))
    for k in range(1, degree + 1):
        left_den = knots[k:-1] - knots[: -k - 1]
        right_den = knots[k + 1 :] - knots[1:-k]
        left = np.where(left_den > 0, 1.0 / np.where(left_den > 0, left_den, 1.0), 0.0)
        right = np.where(right_den > 0, 1.0 / np.where(right_den > 0, right_den, 1.0), 0.0)
        b = (x - knots[: -k - 1]) * left * b[..., :-1] + (knots[k + 1 :] - x) * right * b[..., 1:]
    return b


@register
@dataclasses.dataclass(frozen=True, init=False, eq=False)
class Flexible(DeviceModel):
    """Polynomial or spline laws for σ_prog, μ_ν, σ_ν and Q_s (any PCM-like device).

    Args:
      num_devices: devices per sign of the unit cell, 1 or 2 (used by program-and-verify).
      basis: ``"poly"`` (ascending powers of ``g/g_max``) or ``"spline"`` (clamped cubic
        B-splines on uniform knots, ≥ 4 coefficients per law).
      q_s_from: evaluate Q_s at the ``"programmed"`` conductance (default) or the ``"target"``.
      **params: ``g_max`` (µS), ``t0`` (s), ``t_read`` (s); the coefficient vectors
        ``prog_coeffs`` (µS), ``mu_nu``, ``sigma_nu``, ``q_s_law`` (any length ≥ 1, or ≥ 4
        for splines); and the scale factors ``prog_scale``, ``drift_scale``,
        ``read_noise_scale``.
    """

    family = "flexible"
    num_devices: int = static()
    q_s_from: str = static()
    basis: str = static()
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

    def __init__(self, num_devices: int = 1, *, basis: str = "poly", q_s_from: str = "programmed", **params):
        validate_common("Flexible", num_devices, q_s_from)
        check_choice("Flexible.basis", basis, BASES)
        _check_names("Flexible", params, self)
        object.__setattr__(self, "num_devices", num_devices)
        object.__setattr__(self, "q_s_from", q_s_from)
        object.__setattr__(self, "basis", basis)
        n = 1 if basis == "poly" else 4
        defaults = dict(
            g_max=25.0 * num_devices, t0=20.0, t_read=250e-9, prog_coeffs=(1.0,) * n, mu_nu=(0.06,) * n,
            sigma_nu=(0.02,) * n, q_s_law=(0.02,) * n, prog_scale=1.0, drift_scale=1.0, read_noise_scale=1.0,
        )
        _fill(self, "Flexible", params, defaults, {})
        _check_positive("Flexible", self, ("g_max", "t0", "t_read"))
        values = {}
        for name in _LAWS:
            v = getattr(self, name)
            if not is_concrete(v):
                continue
            v = jnp.atleast_1d(v)
            if v.ndim != 1 or v.shape[0] < (1 if basis == "poly" else 4):
                need = "a 1-D vector of at least " + ("1" if basis == "poly" else "4 (cubic spline)")
                raise ValueError(f"Flexible: {name} must be {need} coefficients, got shape {tuple(v.shape)}.")
            values[name] = v
        init_fields(self, values)

    def static_options(self) -> dict:
        """Static options beyond ``num_devices`` / ``q_s_from`` (written to JSON)."""
        return {"basis": self.basis}

    def _law(self, coeffs, g):
        x = jnp.clip(jnp.abs(g) / self.g_max, 0.0, 1.0)
        if self.basis == "poly":
            return polyval_ascending(coeffs, x)
        return bspline_basis(x, coeffs.shape[0]) @ coeffs

    def prog_sigma(self, g_target):
        return jnp.maximum(self._law(self.prog_coeffs, g_target), 0.0)

    def nu_moments(self, g_target):
        return self._law(self.mu_nu, g_target), jnp.maximum(self._law(self.sigma_nu, g_target), 0.0)

    def q_s(self, g):
        return jnp.maximum(self._law(self.q_s_law, g), 0.0)

