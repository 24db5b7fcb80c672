"""Starting points of a device-model fit from per-level moment estimates.

The likelihood of a family with clipped laws (``clip(a ln g_r + b, lo, hi)``) is flat in
every entry whose piece no device reaches: started from the published values, a fit of
data whose levels all sit on one clipped piece never moves the slope. Instead each stage
starts from the family's law fitted by weighted least squares to per-bin estimates of the
quantity it describes (Q_s from the pilot residual scatter, μ_ν, σ_ν and σ_prog from the
moments of :mod:`._diagnostics`): a problem small enough to solve globally — for a
clipped line every split of the sorted bins into a low clip, a line and a high clip is
tried.
"""

from __future__ import annotations

import numpy as np

from pcmjax.devices._flexible import bspline_basis
from pcmjax.fit import _params
from pcmjax.fit._reduce import make_bins

# field -> the per-bin quantity its law describes
QUANTITY = {"q_s_law": "q_s", "q_s_const": "q_s", "mu_nu": "mu_nu", "sigma_nu": "sigma_nu",
            "prog_coeffs": "sigma_prog", "sigma_prog": "sigma_prog"}


def noise_bins(stats) -> dict:
    """Per-bin ``q_s`` estimates ``sqrt(mean pilot Q_s²)`` with standard errors."""
    idx, _, edges = make_bins(stats.g_target)
    q2 = stats.pilot_q2()
    nb = edges.shape[0] - 1
    g, val, se = np.full(nb, np.nan), np.full(nb, np.nan), np.full(nb, np.nan)
    for b in range(nb):
        v = q2[(idx == b) & np.isfinite(q2)]
        if v.size >= 3:
            g[b], m = float(np.mean(stats.g_target[idx == b])), max(float(np.mean(v)), 1e-30)
            val[b] = np.sqrt(m)
            se[b] = 0.5 * np.std(v, ddof=1) / np.sqrt(v.size) / val[b]
    return {"g": g, "q_s": (val, se)}


def stage_start(model, entries, bins: dict) -> np.ndarray | None:
    """Stage parameter vector fitted to the per-bin estimates ``bins`` (``g`` and
    ``{quantity: (value, stderr)}``); None when the bins cannot inform any entry."""
    out = _params.values_of(model, entries)
    changed = False
    for field in dict.fromkeys(e.field for e in entries):
        val, se = bins[QUANTITY[field]]
        g = np.asarray(bins["g"], np.float64)
        ok = np.isfinite(g) & np.isfinite(val) & np.isfinite(se)
        if ok.sum() < 1:
            continue
        w = 1.0 / np.maximum(se[ok], 1e-3 * np.nanmax(np.abs(val[ok])) + 1e-12) ** 2
        cur = np.array(np.asarray(getattr(model, field), np.float64), ndmin=1)
        law = _fit_law(model, field, cur, g[ok], val[ok], w)
        if law is None or not np.all(np.isfinite(law)):
            continue
        for k, e in enumerate(entries):
            if e.field == field:
                out[k] = law[0 if e.index is None else e.index]
        changed = True
    return out if changed else None


def _fit_law(model, field, cur, g, y, w):
    """The law vector of ``field`` (same length as ``cur``) fitted to ``y(g)``."""
    fam, n = model.family, model.num_devices
    g_max = float(model.g_max)
    if fam == "state_independent":
        return np.array([np.sum(w * y) / np.sum(w)])
    if fam == "flexible":
        x = np.clip(g / g_max, 0.0, 1.0)
        X = x[:, None] ** np.arange(cur.size) if model.basis == "poly" else np.asarray(bspline_basis(x, cur.size))
        return _ridge(X, y, w, cur)
    if field == "prog_coeffs":
        scale = np.sqrt(n) if fam == "pcm_like" else min(g_max / float(model.g_max_char), 1.0)
        return _ridge((g / g_max)[:, None] ** np.arange(cur.size), y / scale, w * scale**2, cur)
    u = np.log(np.maximum(g / g_max, 1e-7))
    if fam == "pcm_like" and field == "q_s_law":
        yq = np.log(np.maximum(y * np.sqrt(n), 1e-12))
        line = fit_clipped_line(u, yq, w * y**2, lower=False)
        if line is None:
            return None
        a, b, _, hi = line
        cap = np.exp(hi) if np.isfinite(hi) else max(cur[2], 1.5 * float(np.max(y * np.sqrt(n))))
        return np.array([np.exp(b), -a, cap])
    if fam == "pcm_like":
        line = fit_clipped_line(u, y, w)
        if line is None:
            return None
        return _unclipped_bounds(np.array(line), cur, u, margin=0.5 * (np.max(y) - np.min(y)) + 0.01)
    return _hermes_law(cur, g / g_max, u, y, w)


def _hermes_law(cur, g_r, u, y, w):
    """HERMES piecewise law: the log segment below the threshold (clip bounds held) and
    the cubic above it, each fitted where it applies."""
    law = cur.copy()
    lo, hi, thr = cur[2], cur[3], cur[4]
    low = (g_r < thr) & (y > lo) & (y < hi)
    if low.sum() >= 2:
        law[:2] = _ridge(np.stack([u[low], np.ones(low.sum())], 1), y[low], w[low], cur[[0, 1]])[[0, 1]]
    high = g_r >= thr
    if high.sum() >= 1:
        law[5:9] = _ridge(g_r[high][:, None] ** np.arange(4), y[high], w[high], cur[5:9])
    return law


def _ridge(X, y, w, prior, lam: float = 1e-6):
    """Weighted least squares with a small ridge towards ``prior`` (solvable with fewer
    points than coefficients)."""
    XtW = X.T * w
    M = XtW @ X
    reg = lam * max(float(np.trace(M)) / M.shape[0], 1e-30)
    return np.linalg.solve(M + reg * np.eye(M.shape[0]), XtW @ y + reg * prior)


def _unclipped_bounds(line, cur, u, margin):
    """Clip bounds that no bin reached (±inf from the fit) go beyond the line's range over
    the data (the starting value if that is already beyond it)."""
    a, b, lo, hi = line
    ends = a * np.array([u.min(), u.max()]) + b
    if not np.isfinite(lo):
        lo = cur[2] if cur[2] < ends.min() else ends.min() - margin
    if not np.isfinite(hi):
        hi = cur[3] if cur[3] > ends.max() else ends.max() + margin
    return np.array([a, b, lo, hi])


def fit_clipped_line(u, y, w, lower: bool = True, upper: bool = True):
    """Weighted least squares of ``clip(a u + b, lo, hi)`` to points ``(u, y)``.

    Every split of the points sorted by ``u`` into a clipped run at each end (their
    weighted mean is the bound) and a line through the middle (at least two points) is
    tried; the split with the smallest residual sum of squares of the clipped law wins.

    Returns:
      ``(a, b, lo, hi)`` with ``±inf`` for a bound no point reached, or None for fewer
      than two points.
    """
    order = np.argsort(u)
    u, y, w = u[order], y[order], w[order]
    B = u.shape[0]
    if B < 2:
        return None
    best, best_sse = None, np.inf
    for i in range(B - 1):
        for j in range(B - 1 - i):
            mid = slice(i, B - j)
            A = np.stack([u[mid], np.ones(B - i - j)], 1)
            sw = np.sqrt(w[mid])
            (a, b), *_ = np.linalg.lstsq(A * sw[:, None], y[mid] * sw, rcond=None)
            left = np.sum(w[:i] * y[:i]) / np.sum(w[:i]) if i else None
            right = np.sum(w[B - j:] * y[B - j:]) / np.sum(w[B - j:]) if j else None
            lo_v, hi_v = (left, right) if a >= 0 else (right, left)
            if (lo_v is not None and not lower) or (hi_v is not None and not upper):
                continue
            lo = -np.inf if lo_v is None else lo_v
            hi = np.inf if hi_v is None else hi_v
            if lo > hi:
                continue
            sse = float(np.sum(w * (np.clip(a * u + b, lo, hi) - y) ** 2))
            if best is None or sse < best_sse:
                best, best_sse = (float(a), float(b), float(lo), float(hi)), sse
    return best
