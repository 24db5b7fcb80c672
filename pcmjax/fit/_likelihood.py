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

When Q_s is evaluated at the programmed conductance (the default), each device's Q_s² is
its expectation over the programming distribution at its target (:func:`q2_device`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, log_ndtr, logsumexp

from pcmjax.fit._reduce import _POLY_S_MAX, _moment_poly, make_bins

N_QUAD = 20
_GH_X, _GH_W = np.polynomial.hermite.hermgauss(N_QUAD)
_LOG_GH = np.log(_GH_W) + _GH_X**2
_LOG_2PI = float(np.log(2 * np.pi))
_TINY = 1e-30
_GH5_X, _GH5_W = np.polynomial.hermite_e.hermegauss(5)
_GH5_W = _GH5_W / _GH5_W.sum()  # expectation over a standard normal
PAD = 256  # devices are padded to a power of two ≥ this, so compiled code is reused across fits


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


def _poly(c, q, axis=1):
    """Per-device polynomial ``Σ_k c[..., k] q^k`` (Horner; coefficients on ``axis``)."""
    c = jnp.moveaxis(c, axis, -1) if axis != c.ndim - 1 else c
    out = c[..., -1]
    for k in range(c.shape[-1] - 2, -1, -1):
        out = out * q + c[..., k]
    return out


def q2_device(model, d):
    """Per-device Q_s² (times the read-noise scale).

    With ``q_s_from="programmed"`` Q_s belongs to the programmed conductance, which a
    device's own reads estimate only through its intercept ``â``, whose noise is
    correlated with that of its ``ν̂``: plugging ``Q_s(exp â)`` into the stages would bias
    them (a device's weight would depend on its own noise). Instead the expectation of
    Q_s² over the programming distribution at the device's target is used, with 5-point
    Gauss–Hermite nodes ``max(g_T + σ̃ x_k, 0)``: σ̃ is a pilot per target bin (data only,
    :func:`device_arrays`) in a first pass of the fit and the σ_prog fitted in the pass
    before in every further pass, until it stops changing.
    Every stage needs Q_s² only linearly (to first order in the read noise), so that
    expectation gives them the right means and variances.
    """
    rns = model.read_noise_scale
    cap = d["q_cap"]

    def f(g):
        q = rns * model.q_s(g)
        return jnp.minimum(q * q, cap)

    if model.q_s_from == "target":
        return f(d["g_target"])
    return jnp.einsum("k,kd->d", _GH5_W, f(d["g_nodes"]))


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
    """Programming-stage NLL ``[D]``.

    ``a_c`` and ``U`` (bias-corrected intercept and its variance at the device's average
    Q_s²) place the quadrature; with ``q_s_from="programmed"`` the read noise of the
    intercept belongs to the programmed conductance itself, so at every node ``g`` the
    intercept's bias and variance are those of ``Q_s(g)`` (a device programmed low is
    noisier: averaging that out would bias σ_prog).
    """
    g_t = d["g_target"]
    S = jnp.maximum(model.prog_scale * model.prog_sigma(g_t), 1e-6)
    zero_nll = -log_ndtr(-g_t / S)
    programmed = model.q_s_from == "programmed"
    rns = model.read_noise_scale

    def noise_at(u):  # [D, K] nodes -> (bias-corrected observation, variance)
        if not programmed:
            return a_c[:, None], U[:, None]
        q = rns * model.q_s(jnp.exp(u))
        q2 = jnp.clip(q * q, 1e-14, d["q_cap"][:, None])
        bias = _poly(d["cma"][:, None, :], q2, axis=2)
        var = jnp.maximum(_poly(d["U"][:, None, :], q2, axis=2), 1e-12)
        return d["a_hat"][:, None] - bias, var

    def log_f(u):
        obs, var = noise_at(u)
        e = jnp.exp(u)
        return (-0.5 * (obs - u) ** 2 / var - 0.5 * jnp.log(2 * jnp.pi * var)
                - 0.5 * ((e - g_t[:, None]) / S[:, None]) ** 2 - jnp.log(S)[:, None] - 0.5 * _LOG_2PI + u)

    # Posterior mode and curvature at the average noise (stop_gradient: any centre and
    # scale give a valid quadrature; these make it accurate).
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
    log_int = jnp.log(np.sqrt(2.0) * scale) + logsumexp(_LOG_GH + log_f(nodes), axis=1)
    nll = jnp.where(d["all_zero"] > 0, zero_nll, -log_int)
    return jnp.where((d["usable"] > 0) | (d["all_zero"] > 0), nll, 0.0)


def _programming_nodes(stats, cols) -> dict:
    """Gauss–Hermite nodes ``max(g_T + σ̃ x_k, 0)`` ``[5, D]`` of the programmed conductance,
    with σ̃ a pilot programming noise per target bin: the spread of ``exp(â) − g_T`` minus
    the read-noise part ``exp(2â) U`` (at a pilot Q_s² per bin)."""
    q2 = stats.pilot_q2()
    idx = make_bins(stats.g_target)[0]
    horner = lambda c, q: np.sum(c * q[:, None] ** np.arange(c.shape[1]), axis=1)  # noqa: E731
    sig = np.zeros(stats.n_devices)
    for b in np.unique(idx):
        sel = (idx == b) & stats.usable
        if sel.sum() < 3:
            continue
        qb = q2[sel & np.isfinite(q2)]
        qb = np.full(sel.sum(), qb.mean() if qb.size else 0.0)
        qb = np.minimum(qb, cols["q_cap"][sel])
        U = np.maximum(horner(cols["U"][sel], qb), 0.0)
        a_c = stats.a_hat[sel] - horner(cols["cma"][sel], qb)
        g_hat = np.exp(a_c)
        s2 = np.var(g_hat - stats.g_target[sel]) - np.mean(g_hat**2 * np.expm1(U))
        sig[idx == b] = np.sqrt(max(s2, 0.0))
    return {"g_nodes": programming_nodes(stats.g_target, sig)}


def programming_nodes(g_target, sigma, width=None):
    """``[5, width]`` nodes ``max(g_T + σ x_k, 0)`` (zero-padded to ``width`` devices)."""
    g_target = np.asarray(g_target, np.float64)
    nodes = np.maximum(g_target[None, :] + np.asarray(sigma, np.float64)[None, :] * _GH5_X[:, None], 0.0)
    if width is not None and width > nodes.shape[1]:
        nodes = np.concatenate([nodes, np.zeros((nodes.shape[0], width - nodes.shape[1]))], axis=1)
    return nodes


def device_arrays(stats) -> dict:
    """Per-device summaries and noise polynomials as float64 arrays, padded to the next
    power of two of at least ``PAD`` devices (padding devices are neither usable nor zero:
    they add 0; fits of similar size share compiled code)."""
    D = stats.n_devices
    Dp = max(PAD, 1 << max(D - 1, 0).bit_length())
    cols = {k: np.asarray(getattr(stats, k), np.float64) for k in
            ("g_target", "all_zero", "usable", "a_hat", "nu_hat", "rss", "dof")}
    cols.update(noise_design(stats))
    cols.update(_programming_nodes(stats, cols))
    out = {}
    for k, v in cols.items():
        axis = 1 if k == "g_nodes" else 0
        shape = list(v.shape)
        shape[axis] = Dp - D
        pad = np.ones(shape) if k == "q_cap" else np.zeros(shape)
        out[k] = np.concatenate([v, pad], axis=axis)
    return out
