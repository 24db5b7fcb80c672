"""Per-device reduction of conductance reads (the first stage of the device-model fit).

For device ``i`` with positive reads ``g_j`` at times ``t_j`` the device laws give

    ln g_j = a − ν L_j + e_j,   L_j = ln(1 + t_j / t0),   e_j = ln(1 + σ_j ξ_j),
    σ_j = Q_s · n_j,             n_j² = ln((t_j + t0 + t_read) / (2 t_read)),

with ``a = ln g_prog``. The noise factors ``n_j`` are known, so weighted least squares
with weights ``1 / n_j²`` gives estimates ``(â, ν̂)`` and a weighted residual sum of
squares that do not depend on Q_s; the likelihood stages (:mod:`._likelihood`) then use
the exact mean and variance of ``e_j`` (below) for the given Q_s.

Reads clipped at 0 by the model (``g = max(g_d (1 + σ ξ), 0)``) carry no log; a device
whose reads are all 0 was programmed to 0 (a point mass the programming stage models);
a device with some, not all, reads at 0 is left out of the fit (reported; with the
relative read noise limited to ``max_rel_noise`` they are rare), and the moments of
``e_j`` are those conditional on a positive read, which accounts for that selection.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

# Moments of e = ln(1 + σ ξ) conditional on 1 + σ ξ > 0, as functions of s = σ²:
# m(s) = s · A(s), v(s) = s · B(s), A(0) = −1/2, B(0) = 1 (tabulated once, then fitted).
_S_MAX = 0.16  # σ ≤ 0.4
_S_GRID = 321


@functools.lru_cache(maxsize=1)
def _moment_table():
    s = np.linspace(0.0, _S_MAX, _S_GRID)
    a, b = np.empty_like(s), np.empty_like(s)
    a[0], b[0] = -0.5, 1.0
    for i in range(1, s.shape[0]):
        sig = np.sqrt(s[i])
        # Substitute z = ln(1 + σξ): a smooth integrand on the whole real line.
        z = np.concatenate([np.linspace(-60.0, -12 * sig, 4001)[:-1], np.linspace(-12 * sig, min(12 * sig, 4.0), 8001)])
        xi = np.expm1(z) / sig
        dens = np.exp(-0.5 * xi * xi + z)
        norm = np.trapezoid(dens, z)
        m = np.trapezoid(z * dens, z) / norm
        v = np.trapezoid((z - m) ** 2 * dens, z) / norm
        a[i], b[i] = m / s[i], v / s[i]
    return s, a, b


_POLY_S_MAX = 0.16  # σ ≤ 0.4
_POLY_DEGREE = 10


@functools.lru_cache(maxsize=1)
def _moment_poly():
    """Polynomial fits of A(s), B(s) on [0, 0.16] (max error 2e-5 and 6e-5, relative ~4e-5)."""
    s, a, b = _moment_table()
    sel = s <= _POLY_S_MAX + 1e-12
    x = s[sel] / _POLY_S_MAX
    pa = np.polynomial.polynomial.polyfit(x, a[sel], _POLY_DEGREE)
    pb = np.polynomial.polynomial.polyfit(x, b[sel], _POLY_DEGREE)
    return tuple(float(c) for c in pa), tuple(float(c) for c in pb)


def _horner(coeffs, x):
    out = coeffs[-1] + 0.0 * x
    for c in coeffs[-2::-1]:
        out = out * x + c
    return out


def log_noise_moments(s):
    """Mean and variance of ``ln(1 + σ ξ)`` given ``1 + σ ξ > 0``, for ``s = σ²``.

    ``m = s A(s)``, ``v = s B(s)`` with A, B polynomials (degree 10 in ``s``) fitted to an
    exact table (trapezoid rule on a smooth integrand); relative error below 1e-4 for
    σ ≤ 0.4. Beyond σ = 0.4, A and B are held at their end values (the fit keeps devices
    with ``σ ≤ max_rel_noise`` anyway).

    Returns:
      ``(m, v)`` arrays shaped like ``s``; ``m ≈ −s/2 − 3s²/4``, ``v ≈ s + 5s²/2``.
    """
    pa, pb = _moment_poly()
    s = jnp.maximum(s, 0.0)
    x = jnp.minimum(s / _POLY_S_MAX, 1.0)
    return s * _horner(pa, x), s * _horner(pb, x)


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceStats:
    """Per-device least-squares summaries (NumPy float64; ``D`` devices, ``J`` reads).

    Attributes:
      ids, g_target: ``[D]`` labels and targets (µS).
      all_zero: ``[D]`` every read is 0 (programmed to 0).
      usable: ``[D]`` positive reads at ≥ 2 distinct times and no read at 0.
      L, n2, w: ``[D, J]`` regressor, squared noise factor, weight ``mask / n²``.
      C: ``[D, 2, J]`` rows of ``(XᵀWX)⁻¹XᵀW`` for (a, ν): ``(â, ν̂) = C y``.
      lev: ``[D, J]`` ``d_j = w_j (1 − w_j h_j)``: ``E[RSS] = Σ d_j Var e_j + ‖R E e‖²_W``.
      a_hat, nu_hat, rss: ``[D]`` estimates and weighted residual sum of squares.
      dof: ``[D]`` residual degrees of freedom (reads − 2).
      t0, t_read: the model times used (s).
    """

    ids: np.ndarray
    g_target: np.ndarray
    all_zero: np.ndarray
    usable: np.ndarray
    L: np.ndarray
    n2: np.ndarray
    w: np.ndarray
    C: np.ndarray
    lev: np.ndarray
    a_hat: np.ndarray
    nu_hat: np.ndarray
    rss: np.ndarray
    dof: np.ndarray
    t0: float
    t_read: float
    t: np.ndarray
    g: np.ndarray
    mask: np.ndarray

    @property
    def n_devices(self) -> int:
        return int(self.g_target.shape[0])

    def subset(self, keep) -> DeviceStats:
        keep = np.asarray(keep)
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[keep] if isinstance(v, np.ndarray) else v
        return DeviceStats(**out)

    def pilot_q2(self):
        """Per-device Q_s² estimate ``RSS / Σ d_j n_j²`` (NaN without residual dof)."""
        denom = np.sum(self.lev * self.n2, axis=1)
        ok = self.usable & (self.dof > 0) & (denom > 0)
        return np.where(ok, self.rss / np.where(ok, denom, 1.0), np.nan)


def reduce_devices(data, t0: float, t_read: float) -> DeviceStats:
    """Weighted least squares of ``ln g`` on ``−L`` per device (vectorised).

    Args:
      data: :class:`pcmjax.fit.Measurements`.
      t0, t_read: the device model's times (s).
    """
    dev = data.by_device()
    g, t, mask = dev["g"], dev["t"], dev["mask"]
    pos = mask & (g > 0)
    n_pos = pos.sum(axis=1)
    all_zero = n_pos == 0
    some_zero = (n_pos > 0) & (n_pos < mask.sum(axis=1))
    L = np.log1p(t / t0)
    n2 = np.log((t + t0 + t_read) / (2.0 * t_read))
    w = np.where(pos, 1.0 / np.maximum(n2, 1e-12), 0.0)
    y = np.where(pos, np.log(np.where(pos, g, 1.0)), 0.0)
    # A = Σ w X Xᵀ with X_j = (1, −L_j).
    s0, s1, s2 = w.sum(1), -(w * L).sum(1), (w * L * L).sum(1)
    det = s0 * s2 - s1 * s1
    distinct = (np.nanmax(np.where(pos, L, -np.inf), axis=1) - np.nanmin(np.where(pos, L, np.inf), axis=1)) > 1e-9
    usable = (~some_zero) & (n_pos >= 2) & distinct & (det > 0)
    det = np.where(usable, det, 1.0)
    inv = np.stack([np.stack([s2, -s1], -1), np.stack([-s1, s0], -1)], -2) / det[:, None, None]  # [D,2,2]
    X = np.stack([np.ones_like(L), -L], axis=1)  # [D,2,J]
    C = np.einsum("dab,dbj->daj", inv, X) * w[:, None, :]
    beta = np.einsum("daj,dj->da", C, y)
    resid = np.where(pos, y - np.einsum("dbj,db->dj", X, beta), 0.0)
    rss = np.sum(w * resid * resid, axis=1)
    h = np.einsum("daj,dab,dbj->dj", X, inv, X)
    lev = w * (1.0 - w * h)
    z = lambda a: np.where(usable[:, None] if a.ndim == 2 else usable[:, None, None], a, 0.0)  # noqa: E731
    return DeviceStats(
        ids=dev["ids"], g_target=dev["g_target"], all_zero=all_zero, usable=usable, L=z(L),
        n2=z(np.where(mask, n2, 1.0)),
        w=z(w), C=z(C), lev=z(lev), a_hat=np.where(usable, beta[:, 0], 0.0), nu_hat=np.where(usable, beta[:, 1], 0.0),
        rss=np.where(usable, rss, 0.0), dof=np.where(usable, n_pos - 2, 0), t0=float(t0), t_read=float(t_read),
        t=t, g=g, mask=mask,
    )


def make_bins(g_target, max_levels: int = 64, n_quantile_bins: int | None = None):
    """Bins of target conductance: the distinct levels if few, else quantile bins.

    Returns:
      ``(index [D], centers [B], edges [B+1])``.
    """
    levels = np.unique(g_target)
    if levels.shape[0] <= max_levels:
        edges = np.concatenate([[-np.inf], 0.5 * (levels[1:] + levels[:-1]), [np.inf]])
        return np.searchsorted(edges, g_target, side="right") - 1, levels, edges
    nb = n_quantile_bins or int(np.clip(g_target.shape[0] // 600, 4, 16))
    edges = np.quantile(g_target, np.linspace(0, 1, nb + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    edges = np.unique(edges)
    idx = np.clip(np.searchsorted(edges, g_target, side="right") - 1, 0, edges.shape[0] - 2)
    centers = np.array([g_target[idx == b].mean() if np.any(idx == b) else np.nan for b in range(edges.shape[0] - 1)])
    return idx, centers, edges


def select_devices(stats: DeviceStats, max_rel_noise: float, bins):
    """Devices of the target bins whose relative read noise stays below ``max_rel_noise``.

    The decision is per bin of target conductance (a covariate, so it biases nothing):
    the bin's mean pilot Q_s² times the largest noise factor gives the largest relative
    read noise ``σ`` of a typical device of the bin.

    Returns:
      ``(keep [D] bool, sigma_max per bin [B])``.
    """
    idx = bins[0]
    q2 = stats.pilot_q2()
    nb = bins[1].shape[0]
    n2max = np.max(np.where(stats.mask, stats.n2, 0.0))
    sig = np.full(nb, np.nan)
    for b in range(nb):
        v = q2[(idx == b) & np.isfinite(q2)]
        if v.size:
            sig[b] = np.sqrt(np.mean(v) * n2max)
    ok_bin = ~(sig > max_rel_noise)  # NaN (no estimate) keeps the bin
    keep = ok_bin[idx] & (stats.usable | stats.all_zero)
    return keep, sig
