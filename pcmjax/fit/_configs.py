"""Alternative configurations of clipped laws: which levels sit on which piece.

A clipped law ``clip(a ln g_r + b, lo, hi)`` seen at a few distinct target levels is a
choice of *configuration* (how many levels are clipped at each end, how many lie on the
line) plus the values within it. Near a kink the data often cannot tell the
configurations apart: the line through two levels with the third clipped fits about as
well as the line through three, or a bound reached by one level as well as a line that
never reaches it. The local curvature at the optimum knows nothing of this, so standard
errors from it are far too small for the slope, the intercept and the bounds.

:func:`configurations` refits the stage from every configuration whose per-level moment
fit is not far off, keeps those within ``BOUND_DNLL`` of the best NLL (the plausible
ones; a better one becomes the optimum) and turns them into a likelihood-based interval
per entry: the union over plausible configurations ``c`` of the local intervals
``θ_c ± se_c sqrt(4 − 2 ΔNLL_c)``, i.e. the profile-likelihood interval of
``−2ΔlogL ≤ 4`` with the profile taken over the configurations. An entry that some
plausible configuration leaves undetermined (a bound no level reaches, a line through
fewer than two levels) is not identified.
"""

from __future__ import annotations

import numpy as np

from pcmjax.fit import _params
from pcmjax.fit._moments import QUANTITY

PREFILTER = 9.0  # moment-fit χ² above the best split beyond which a configuration is not refitted
CLIPPED_FIELDS = {"pcm_like": ("mu_nu", "sigma_nu")}


def line_splits(u, y, w):
    """Weighted least-squares clipped lines for every configuration of the points.

    Args:
      u, y, w: ``[B]`` abscissae (any order), values and weights.

    Returns:
      list of ``(chi2, (a, b, lo, hi))`` with ``±inf`` for a bound no point reaches;
      configurations with fewer than two points on the line get a steep line through
      their middle point(s) (their slope and intercept are not identified).
    """
    order = np.argsort(u)
    u, y, w = u[order], y[order], w[order]
    B = u.shape[0]
    out = []
    for i in range(B + 1):
        for j in range(B + 1 - i):
            m = B - i - j
            left = np.sum(w[:i] * y[:i]) / np.sum(w[:i]) if i else None
            right = np.sum(w[B - j:] * y[B - j:]) / np.sum(w[B - j:]) if j else None
            for sign in (1.0, -1.0):
                law = _split_line(u, y, w, i, m, left, right, sign)
                if law is None:
                    continue
                chi2 = float(np.sum(w * (np.clip(law[0] * u + law[1], law[2], law[3]) - y) ** 2))
                out.append((chi2, law))
    return out


def _split_line(u, y, w, i, m, left, right, sign):
    """The clipped law of one configuration (None if inconsistent)."""
    mid = slice(i, i + m)
    if m >= 2:
        A = np.stack([u[mid], np.ones(m)], 1) * np.sqrt(w[mid])[:, None]
        (a, b), *_ = np.linalg.lstsq(A, y[mid] * np.sqrt(w[mid]), rcond=None)
        if a * sign < 0:
            return None
    else:
        if left is None and right is None:
            return None
        # a steep line through the middle point (or between the two clipped runs)
        uc = u[i] if m == 1 else 0.5 * (u[i - 1] + u[i]) if i and i < u.shape[0] else u[min(i, u.shape[0] - 1)]
        yc = y[i] if m == 1 else 0.5 * ((left if left is not None else right) + (right if right is not None else left))
        span = max(np.ptp(y), 1e-6) + abs(yc)
        gap = max(np.min(np.diff(u)) if u.shape[0] > 1 else 1.0, 1e-6)
        a = sign * 8.0 * span / gap
        b = yc - a * uc
    lo_v, hi_v = (left, right) if sign > 0 else (right, left)
    lo = -np.inf if lo_v is None else lo_v
    hi = np.inf if hi_v is None else hi_v
    line = a * u[i:i + m] + b
    if lo > hi or (m and (np.any(line < lo - 1e-12) or np.any(line > hi + 1e-12))):
        return None
    return float(a), float(b), float(lo), float(hi)


def _same(a, b, ok_a, ok_b) -> bool:
    """The same optimum: the same free entries, with values equal to 1e-4 relative."""
    return bool(np.array_equal(ok_a, ok_b) and np.all(np.abs(a - b) <= 1e-4 * np.maximum(np.abs(a), 1e-3)))


def _counts(law, u):
    """``(n_lo, n_line, n_hi)``: levels clipped at lo, on the line and clipped at hi."""
    line = law[0] * u + law[1]
    n_lo, n_hi = int(np.sum(line <= law[2])), int(np.sum(line >= law[3]))
    return n_lo, u.shape[0] - n_lo - n_hi, n_hi


def configurations(ev, s, th, ok, bins, minimise, family):
    """Refit stage ``s`` from the plausible configurations of its clipped laws.

    Args:
      ev: the :class:`pcmjax.fit._evaluate.Evaluator`.
      s: stage name; th, ok: the stage optimum and its free entries.
      bins: per-level estimates (``g`` and ``{quantity: (value, stderr)}``).
      minimise: ``minimise(ev, s, th, ok) -> th`` (local optimiser).
      family: family name (only those in ``CLIPPED_FIELDS`` have clipped laws).

    Returns:
      ``(th, ok, need, alternatives)``: the best optimum and its free entries; ``need``
      ``[P_s]`` the smallest standard error per entry consistent with the plausible
      configurations (``inf``: not identified, 0: no constraint); ``alternatives``: list of
      ``(theta, ok, delta_nll, unidentified positions)`` of the other plausible ones.
    """
    ents = ev.ents[s]
    fields = [f for f in CLIPPED_FIELDS.get(family, ()) if sum(e.field == f for e in ents) == 4]
    need = np.zeros(th.shape[0])
    if not fields:
        return th, ok, need, []
    g_max = float(ev.base.g_max)
    found = [(ev.value(s, th), th, ok)]
    for f in fields:
        pos = [next(k for k, e in enumerate(ents) if e.field == f and e.index == i) for i in range(4)]
        val, se = bins[QUANTITY[f]]
        g = np.asarray(bins["g"], np.float64)
        sel = np.isfinite(g) & np.isfinite(val) & np.isfinite(se) & (g > 0)
        if sel.sum() < 2:
            continue
        u = np.log(g[sel] / g_max)
        w = 1.0 / np.maximum(se[sel], 1e-6) ** 2
        splits = line_splits(u, val[sel], w)
        best = min(c for c, _ in splits)
        far = _params.CLIP_BOUNDS[family]
        for chi2, law in splits:
            if chi2 > best + PREFILTER:
                continue
            start, free = found[0][1].copy(), found[0][2].copy()
            for k, v in zip(pos, law):
                free[k] = np.isfinite(v)
                start[k] = v if np.isfinite(v) else far[(f, ents[k].index)]
            cand = minimise(ev, s, start, free)
            fc = ev.value(s, cand)
            if np.isfinite(fc) and not any(_same(cand, r[1], free, r[2]) for r in found):
                found.append((fc, cand, free))
    found.sort(key=lambda r: r[0])
    f0 = found[0][0]
    plaus = [r for r in found if r[0] - f0 < _params.BOUND_DNLL]
    th, ok = plaus[0][1], plaus[0][2]
    alternatives = []
    for fc, tc, okc in plaus:
        unid = _unidentified(ev, s, tc, okc, fields, g_max)
        se_c = _local_se(ev, s, tc, okc & ~np.isin(np.arange(tc.shape[0]), sorted(unid)))
        width = np.sqrt(max(4.0 - 2.0 * (fc - f0), 0.0))
        for k in range(th.shape[0]):
            if ents[k].field not in fields or not ok[k]:
                continue
            if k in unid or not okc[k] or not np.isfinite(se_c[k]):
                need[k] = np.inf
            else:
                need[k] = max(need[k], 0.5 * (abs(tc[k] - th[k]) + width * se_c[k]))
        if tc is not th:
            alternatives.append((tc, okc, fc - f0, unid))
    return th, ok, need, alternatives


def _unidentified(ev, s, th, ok, fields, g_max) -> set:
    """Stage positions of clipped-law entries this configuration leaves undetermined."""
    ents = ev.ents[s]
    g = np.asarray(ev.d["g_target"])[np.asarray(ev.d["usable"]) > 0]
    u = np.log(np.unique(g) / g_max)
    out = set()
    for f in fields:
        pos = [next(k for k, e in enumerate(ents) if e.field == f and e.index == i) for i in range(4)]
        law = th[pos]
        n_lo, n_line, n_hi = _counts(law, u)
        if n_line <= 1:
            out |= {pos[0], pos[1]}
        if n_lo == 0 or not ok[pos[2]]:
            out.add(pos[2])
        if n_hi == 0 or not ok[pos[3]]:
            out.add(pos[3])
    return out


def _local_se(ev, s, th, ok):
    """Inverse-Hessian standard errors ``[P_s]`` of the entries ``ok`` (the others held;
    inf for them and for any the Hessian leaves undetermined)."""
    out = np.full(th.shape[0], np.inf)
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        return out
    steps, curv = ev.step_sizes(s, th)
    live = idx[curv[idx] != 0]
    if live.size == 0:
        return out
    H = ev.finite_differences(s, th, steps)["H"][np.ix_(live, live)]
    # |eigenvalues|: a configuration refitted to a kink can leave a slightly indefinite
    # difference Hessian; its curvature magnitudes still set the local widths
    lam, vec = np.linalg.eigh(0.5 * (H + H.T))
    lam = np.abs(lam)
    if not np.all(np.isfinite(lam)) or lam.max() <= 0:
        return out
    var = (vec**2) @ (1.0 / np.maximum(lam, 1e-12 * lam.max()))
    out[live] = np.sqrt(var)
    return out
