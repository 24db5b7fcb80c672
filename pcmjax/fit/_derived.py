"""Quantities derived from a fitted device model, with delta-method standard errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from pcmjax.fit import _params
from pcmjax.fit._compile import FastJit


def folded_mean(mu, sigma):
    """``E|μ + σ ξ|`` for ``ξ ~ N(0, 1)`` (σ = 0 gives ``|μ|``)."""
    s = jnp.maximum(sigma, 1e-12)
    return s * jnp.sqrt(2.0 / jnp.pi) * jnp.exp(-0.5 * (mu / s) ** 2) + mu * (1.0 - 2.0 * ndtr(-mu / s))


def mean_drift(result, g_target):
    """Mean drift exponent ``E[ν] = E|μ_ν + σ_ν ξ|`` (times the drift scale) at the given
    target conductances, with its standard error from the fit's covariance.

    Args:
      result: a :class:`pcmjax.fit.FitResult`.
      g_target: ``[L]`` target conductances, µS.

    Returns:
      ``(value [L], stderr [L])``; the error is ``inf`` where a direction the likelihood
      is flat along moves the value. Parameters whose law shape is ambiguous (a clipped
      law that may or may not bend within the data) enter with their local covariance:
      the value at a measured level is pinned down by that level's devices either way.
    """
    g = np.asarray(g_target, np.float64).reshape(-1)
    entries = [_params.Entry(*_split(n), st) for n, st in zip(result.names, result.stages)]
    with jax.enable_x64(True):
        base = _params.as_float64(result.model)
        value, J = (np.asarray(a) for a in _mean_and_jacobian(base, np.asarray(result.values, np.float64), g,
                                                              entries=tuple(entries)))
    known = np.isfinite(np.diag(result.cov))
    cov = np.where(np.outer(known, known), result.cov, 0.0)
    var = np.einsum("lp,pq,lq->l", J, cov, J)
    se = np.sqrt(np.maximum(var, 0.0))
    moved_by_unknown = np.any(np.abs(J[:, ~known]) > 1e-12, axis=1) if (~known).any() else np.zeros(g.size, bool)
    se = np.where(moved_by_unknown, np.inf, se)
    for model, dnll, unknown in getattr(result, "alternatives", None) or []:
        # another configuration of the clipped laws within ΔNLL < 2: the interval covers its
        # own (with the best configuration's local error), as a profile-likelihood interval would
        v_c = _model_mean(model, g)
        width = np.sqrt(max(4.0 - 2.0 * dnll, 0.0))
        se = np.maximum(se, 0.5 * (np.abs(v_c - value) + width * se))
        se = np.where(_moved(model, unknown, g, v_c), np.inf, se)
    return value, se


def _mean_of(model, g):
    """``E[ν]`` of ``model`` at ``g`` ``[L]`` (µS), drift scale included: ``[L]``."""
    mu, sig = model.nu_moments(g)
    return folded_mean(mu * model.drift_scale, sig * jnp.abs(model.drift_scale))


def _value_and_jacobian(base, theta, g, entries):
    """``E[ν]`` at ``g`` with the ``entries`` of ``base`` set to ``theta`` ``[P]``, and
    its Jacobian: ``([L], [L, P])``."""
    f = lambda th: _mean_of(_params.with_values(base, entries, th), g)  # noqa: E731
    return f(theta), jax.jacfwd(f)(theta)


# Compiled once per model structure and set of entries (called per fit, per alternative
# configuration and per probed entry: op-by-op dispatch would dominate a small fit).
_mean_and_jacobian = FastJit(_value_and_jacobian, static_argnames=("entries",))
_mean_compiled = FastJit(_mean_of)


def _model_mean(model, g):
    return np.asarray(_mean_compiled(model, np.asarray(g)), np.float64)


def _moved(model, names, g, v) -> np.ndarray:
    """``[L]`` whether a small change of any of the entries ``names`` of ``model`` moves
    the mean drift exponent at ``g`` (entries a configuration leaves undetermined: a
    line through fewer than two levels, a bound no level reaches)."""
    out = np.zeros(g.shape[0], bool)
    for name in names:
        e = _params.Entry(*_split(name), "")
        x = float(_params.values_of(model, [e])[0])
        dx = 1e-3 * max(abs(x), 1e-2)
        for sign in (1.0, -1.0):
            m = _params.with_values(model, [e], [x + sign * dx])
            out |= np.abs(_model_mean(m, g) - v) > 1e-7
    return out


def _split(name: str):
    """``"mu_nu[2]"`` -> ``("mu_nu", 2)``; ``"sigma_prog"`` -> ``("sigma_prog", None)``."""
    if name.endswith("]"):
        field, idx = name[:-1].split("[")
        return field, int(idx)
    return name, None
