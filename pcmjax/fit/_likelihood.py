"""Negative log-likelihoods of the three stages of a device-model fit, per device.

Every function takes a device model (any family; its laws are evaluated through
``prog_sigma``, ``nu_moments`` and ``q_s`` times the scale factors) and the per-device
summaries of :mod:`._reduce` as a dict of float64 arrays, and returns ``[D]`` negative
log-likelihoods (0 for devices a stage does not use).

* **noise** (Q_s): the weighted residual sum of squares of a device is modelled as a
  gamma variable with ``dof / 2`` shape and the exact expectation
  ``E[RSS] = Σ_j d_j Var e_j + ‖R E e‖²_W`` (a quasi-likelihood: consistent whenever that
  expectation is right, which it is for any noise shape; the sandwich errors of the fit
  account for the variance of RSS not being exactly gamma).
* **drift** (μ_ν, σ_ν): the bias-corrected slope ``x = ν̂ − E[bias]`` is ``ν + ε`` with
  ``ε ~ N(0, V)`` and ``ν = |μ_ν + σ_ν ξ|``; the folded normal convolved with the Gaussian
  estimation noise has the closed form
  ``Σ_{m=±μ} N(x; m, σ² + V) Φ((m V + x σ²) / sqrt(σ² V (σ² + V)))``.
* **prog** (σ_prog): the bias-corrected intercept ``â = ln g_prog + ε``,
  ``ε ~ N(0, U)``, with ``g_prog ~ N(g_T, σ_prog²)`` on ``g > 0`` (adaptive Gauss–Hermite
  quadrature in ``ln g`` around the posterior mode), and ``P(g_prog = 0) = Φ(−g_T / σ_prog)``
  for devices whose reads are all 0.

When Q_s is evaluated at the programmed conductance its argument is known only through
``exp(â)``; the correction ``2 f(â) − E[f(â + √U z)]`` (a 3-point Gauss–Hermite average,
i.e. ``f − f'' U / 2`` in ``ln g``) removes the errors-in-variables bias of ``Q_s²`` to ``O(U²)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, log_ndtr, logsumexp

from pcmjax.fit._reduce import _POLY_S_MAX, _moment_poly

N_QUAD = 20
_GH_X, _GH_W = np.polynomial.hermite.hermgauss(N_QUAD)
_LOG_GH = np.log(_GH_W) + _GH_X**2
_LOG_2PI = float(np.log(2 * np.pi))
_TINY = 1e-30
PAD = 2048  # devices are padded to a multiple of this, so compiled code is reused across fits


def _s_coeffs():
    """Coefficients of m(s) and v(s) in powers of s (index = power, 0..11)."""
    pa, pb = _moment_poly()
    scale = _POLY_S_MAX ** -np.arange(len(pa), dtype=np.float64)
    return np.concatenate([[0.0], np.asarray(pa) * scale]), np.concatenate([[0.0], np.asarray(pb) * scale])


def noise_design(stats) -> dict:
    """Per-device polynomials in ``q = Q_s²`` of every read-noise expectation the stages need.

    With ``s_j = q n_j²`` the moments of the log-noise are polynomials in ``s``
    (:func:`pcmjax.fit._reduce.log_noise_moments`), so every per-device sum over reads is a
    polynomial in ``q`` with per-device coefficients, computed once here (NumPy):

    * ``cma``, ``cmn``: ``Σ_j C_aj m_j``, ``Σ_j C_νj m_j`` (the biases of â and ν̂);
    * ``U``, ``V``: ``Σ_j C_aj² v_j``, ``Σ_j C_νj² v_j`` (their variances);
    * ``E``: ``Σ_j d_j v_j + Σ_j w_j (R m)_j²`` (the expected residual sum of squares).

    Returns:
      dict of ``[D, K]`` coefficient arrays (index = power of q) and ``q_cap`` ``[D]``,
      the largest ``q`` with every ``s_j`` inside the moments' fitted range.
    """
    a, b = _s_coeffs()
    K = a.shape[0]
    pw = np.arange(K)
    n2 = np.where(stats.w > 0, stats.n2, 0.0)
    npow = n2[:, :, None] ** pw  # [D, J, K]
    Ca, Cn = stats.C[:, 0], stats.C[:, 1]
    out = {
        "cma": a * np.einsum("dj,djk->dk", Ca, npow),
        "cmn": a * np.einsum("dj,djk->dk", Cn, npow),
        "U": b * np.einsum("dj,djk->dk", Ca * Ca, npow),
        "V": b * np.einsum("dj,djk->dk", Cn * Cn, npow),
    }
    # (R m)_j = m_j − Σ_l C_al m_l + L_j Σ_l C_νl m_l, a polynomial per read.
    r = a * npow - out["cma"][:, None, :] + stats.L[:, :, None] * out["cmn"][:, None, :]
    r = np.where((stats.w > 0)[:, :, None], r, 0.0)
    E = np.zeros((n2.shape[0], 2 * K - 1))
    E[:, :K] += b * np.einsum("dj,djk->dk", stats.lev, npow)
    for k in range(K):
        E[:, k:k + K] += np.einsum("dj,dj,djl->dl", stats.w, r[:, :, k], r)
    out["E"] = E
    out["q_cap"] = _POLY_S_MAX / np.maximum(n2.max(axis=1), 1e-12)
    return out


def _poly(c, q):
    """Per-device polynomial ``Σ_k c[:, k] q^k`` (Horner)."""
    out = c[:, -1]
    for k in range(c.shape[1] - 2, -1, -1):
        out = out * q + c[:, k]
    return out


def q2_device(model, d):
    """Per-device Q_s² (times the read-noise scale), EIV-corrected if evaluated at g_prog."""
    rns = model.read_noise_scale
    cap = d["q_cap"]
    if model.q_s_from == "target":
        q = rns * model.q_s(d["g_target"])
        return jnp.minimum(q * q, cap)

    def f(u):
        q = rns * model.q_s(jnp.exp(u))
        return jnp.minimum(q * q, cap)

    a_hat = d["a_hat"]
    f0 = f(a_hat)
    u1 = a_hat - _poly(d["cma"], f0)  # intercept corrected for E[e]
    h = jnp.sqrt(3.0 * jnp.maximum(_poly(d["U"], f0), 1e-30))  # sqrt(3 U); floored: finite gradient
    # 3-point Gauss-Hermite: E[f(u1 + sqrt(U) z)] = f + f'' U / 2 + O(U²); so 2 f − E[f]
    # removes the errors-in-variables bias (and smooths over kinks of clipped laws).
    lo, mid, hi = f(jnp.stack([u1 - h, u1, u1 + h]))
    return jnp.clip(2.0 * mid - (lo + 4.0 * mid + hi) / 6.0, 0.25 * mid, cap)


def stage_inputs(q2, d):
    """``(x, V, a_c, U)``: bias-corrected ν̂ and ln g_prog estimates and their noise variances."""
    q2 = jnp.maximum(q2, 1e-14)
    x = d["nu_hat"] - _poly(d["cmn"], q2)
    V = jnp.maximum(_poly(d["V"], q2), _TINY)
    a_c = d["a_hat"] - _poly(d["cma"], q2)
    U = jnp.maximum(_poly(d["U"], q2), 1e-12)
    return x, V, a_c, U


def nll_noise(model, d):
    """Noise-stage NLL ``[D]``, the per-device Q_s² it used and the expected RSS."""
    q2 = jnp.maximum(q2_device(model, d), 1e-14)
    e_rss = _poly(d["E"], q2)
    k = 0.5 * d["dof"]
    use = (d["usable"] > 0) & (k > 0)
    k_ = jnp.where(use, k, 1.0)
    e_ = jnp.where(use, jnp.maximum(e_rss, _TINY), 1.0)
    rss = jnp.where(use, jnp.maximum(d["rss"], _TINY), 1.0)
    nll = k_ * jnp.log(e_ / k_) + k_ * rss / e_ - (k_ - 1.0) * jnp.log(rss) + gammaln(k_)
    return jnp.where(use, nll, 0.0), q2, e_rss


def nll_drift(model, d, x, V):
    mu, sig = model.nu_moments(d["g_target"])
    mu, sig = mu * model.drift_scale, sig * jnp.abs(model.drift_scale)
    s2 = sig * sig
    tot = s2 + V
    den = jnp.sqrt(jnp.maximum(s2 * V * tot, _TINY))

    def branch(mean):
        return -0.5 * (x - mean) ** 2 / tot - 0.5 * jnp.log(2 * jnp.pi * tot) + log_ndtr((mean * V + x * s2) / den)

    logp = jnp.logaddexp(branch(mu), branch(-mu))
    return jnp.where(d["usable"] > 0, -logp, 0.0)


def nll_prog(model, d, a_c, U):
    g_t = d["g_target"]
    S = jnp.maximum(model.prog_scale * model.prog_sigma(g_t), 1e-6)
    zero_nll = -log_ndtr(-g_t / S)

    def log_f(u):
        e = jnp.exp(u)
        return (-0.5 * (a_c - u) ** 2 / U - 0.5 * jnp.log(2 * jnp.pi * U)
                - 0.5 * ((e - g_t) / S) ** 2 - jnp.log(S) - 0.5 * _LOG_2PI + u)

    # Posterior mode and curvature (stop_gradient: any centre gives a valid quadrature).
    a_s, U_s, S_s = jax.lax.stop_gradient((a_c, U, S))

    def curvature(u):
        e = jnp.exp(u)
        return 1.0 / U_s + jnp.maximum(2 * e * e - g_t * e, 0.0) / S_s**2

    u = a_s
    for _ in range(8):
        e = jnp.exp(u)
        grad = -(u - a_s) / U_s - (e - g_t) * e / S_s**2 + 1.0
        u = u + jnp.clip(grad / curvature(u), -1.0, 1.0)
    scale = jax.lax.stop_gradient(1.0 / jnp.sqrt(curvature(u)))
    u = jax.lax.stop_gradient(u)
    nodes = u[:, None] + np.sqrt(2.0) * scale[:, None] * _GH_X
    log_int = jnp.log(np.sqrt(2.0) * scale) + logsumexp(_LOG_GH + log_f(nodes.T).T, axis=1)
    nll = jnp.where(d["all_zero"] > 0, zero_nll, -log_int)
    return jnp.where((d["usable"] > 0) | (d["all_zero"] > 0), nll, 0.0)


def device_arrays(stats) -> dict:
    """Per-device summaries and noise polynomials as float64 arrays, padded to a multiple
    of ``PAD`` devices (padding devices are neither usable nor zero: they add 0)."""
    D = stats.n_devices
    Dp = -(-D // PAD) * PAD
    cols = {k: np.asarray(getattr(stats, k), np.float64) for k in
            ("g_target", "all_zero", "usable", "a_hat", "nu_hat", "rss", "dof")}
    cols.update(noise_design(stats))
    out = {}
    for k, v in cols.items():
        pad = np.zeros((Dp - D,) + v.shape[1:])
        if k in ("q_cap",):
            pad += 1.0
        out[k] = np.concatenate([v, pad])
    return out
