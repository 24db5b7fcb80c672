"""Per-bin estimates of the device laws straight from the data (figures of data vs fit).

For every bin of target conductance the four quantities are estimated by moments of the
per-device summaries, with the estimation noise of each device removed using the fitted
read noise (so they are model-assisted, but do not use the fitted laws themselves):

* ``mu_nu``: mean of the bias-corrected ``ν̂`` (the fold of ν at 0 is ignored);
* ``sigma_nu``: ``sqrt(var ν̂ − mean V)``;
* ``sigma_prog``: ``ĝ = exp(â_c)`` has ``Var ĝ = e^U σ² + E[g²] e^U (e^U − 1)`` for
  log-normal noise of variance U, so ``σ² = e^{−U} Var ĝ − E[ĝ²] e^{−2U} (e^U − 1)`` with
  bin averages of U; in bins with devices programmed to 0 (the clip of ``g_prog`` at 0)
  σ instead solves ``E[max(g_T + σ ξ, 0)] = mean ĝ``;
* ``q_s``: the fitted per-device Q_s² times the bin's ratio of observed to expected
  residual sum of squares, ``sqrt(mean q2 · Σ RSS / Σ E[RSS])``.

Standard errors are the usual large-sample ones (mean: sd/√n; variance: √(2/(n−1)) var).
"""

from __future__ import annotations

import numpy as np


def binned_estimates(result) -> dict:
    """Per-bin data estimates for a :class:`pcmjax.fit.FitResult`.

    Returns:
      dict with ``g`` (bin mean target, µS), ``n`` (devices) and, for each of
      ``sigma_prog``, ``mu_nu``, ``sigma_nu``, ``q_s``, a pair ``(value [B], stderr [B])``.
    """
    t = result.devices
    idx, _, edges = result.bins
    nb = edges.shape[0] - 1
    out = {k: (np.full(nb, np.nan), np.full(nb, np.nan)) for k in ("sigma_prog", "mu_nu", "sigma_nu", "q_s")}
    g = np.full(nb, np.nan)
    n = np.zeros(nb, int)
    use, zero = t["usable"] > 0, t["all_zero"] > 0
    for b in range(nb):
        sel = idx == b
        n[b] = int(sel.sum())
        if n[b] == 0:
            continue
        g[b] = float(np.mean(t["g_target"][sel]))
        u = sel & use
        if u.sum() >= 3:
            x, V = t["x"][u], t["V"][u]
            var = np.var(x, ddof=1)
            out["mu_nu"][0][b], out["mu_nu"][1][b] = np.mean(x), np.sqrt(var / u.sum())
            s2 = var - np.mean(V)
            se_s2 = var * np.sqrt(2.0 / (u.sum() - 1))
            out["sigma_nu"][0][b] = np.sqrt(max(s2, 0.0))
            out["sigma_nu"][1][b] = se_s2 / (2 * max(np.sqrt(max(s2, 0.0)), np.sqrt(se_s2)))
            # Programming: include devices programmed to 0 as ĝ = 0.
            gh = np.concatenate([np.exp(t["a_c"][u]), np.zeros(int((sel & zero).sum()))])
            U = np.mean(t["U"][u])
            vg = np.var(gh, ddof=1)
            sp2 = np.exp(-U) * vg - np.mean(gh**2) * np.exp(-2 * U) * np.expm1(U)
            se_sp2 = np.exp(-U) * vg * np.sqrt(2.0 / (gh.size - 1))
            out["sigma_prog"][0][b] = np.sqrt(max(sp2, 0.0))
            out["sigma_prog"][1][b] = se_sp2 / (2 * max(np.sqrt(max(sp2, 0.0)), np.sqrt(se_sp2)))
            if np.any(sel & zero):  # clipped at 0: match the rectified normal's mean instead
                s = _rectified_sigma(g[b], float(np.mean(gh)) * np.exp(-U / 2))
                if np.isfinite(s):
                    rel = out["sigma_prog"][1][b] / max(out["sigma_prog"][0][b], 1e-12)
                    out["sigma_prog"][0][b], out["sigma_prog"][1][b] = s, s * rel
        r = sel & use & (t["dof"] > 0)
        if r.sum() >= 3:
            ratio = np.sum(t["rss"][r]) / np.sum(t["e_rss"][r])
            se_ratio = np.sqrt(np.sum(2 * t["e_rss"][r] ** 2 / t["dof"][r])) / np.sum(t["e_rss"][r])
            q2 = np.mean(t["q2"][r])
            out["q_s"][0][b] = np.sqrt(q2 * ratio)
            out["q_s"][1][b] = 0.5 * np.sqrt(q2 / ratio) * se_ratio
    out["g"], out["n"] = g, n
    return out


def _rectified_sigma(g_t: float, mean: float) -> float:
    """σ with ``E[max(g_T + σ ξ, 0)] = mean`` (bisection; NaN if no solution)."""
    import math

    def m(s):
        z = g_t / s
        return g_t * 0.5 * (1 + math.erf(z / math.sqrt(2))) + s * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    lo, hi = 1e-9, 10 * max(mean, g_t, 1e-9)
    if not (m(lo) <= mean <= m(hi)):
        return float("nan")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if m(mid) < mean else (lo, mid)
    return 0.5 * (lo + hi)
