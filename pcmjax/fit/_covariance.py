"""Covariance of a stage-wise device-model fit and which parameters the data identify.

The estimates solve stacked estimating equations (one score per stage); their sandwich
covariance is ``A⁻¹ B A⁻ᵀ`` with the expected curvature ``A`` of each stage, the
cross-stage Jacobian, and the sum ``B`` of per-device score outer products. A parameter
whose direction the information matrix does not see (a clip bound few or no device
reaches, a combination only a ratio of which the levels inform) is *not identified*: its
standard error is reported as infinite, never as the vanishing number a pseudo-inverse
would give, and the others' covariance is that with it held.
"""

from __future__ import annotations

import numpy as np

from pcmjax.fit import _params

WEAK_TOL = 1e-9  # eigenvalue of the unit-diagonal information below which a direction is flat
LOADING_TOL = 0.3  # an entry with a larger component along a flat direction is not identified


def _bread(entries, st_idx, results, cross, half_dof):
    """``(A, H, scores, grad)``: expected curvature with the cross-stage blocks, the
    finite-difference Hessians per stage, per-device scores ``[D, P]`` and the smoothed
    gradient.

    The bread uses expected curvatures, which the kinks of clipped laws do not disturb
    (a finite-difference Hessian picks up the jumps of the score where a device's law
    meets a clip bound): for the noise stage's gamma quasi-likelihood
    ``Σ_i k_i ∇ln E_i ∇ln E_iᵀ``; for the drift and programming likelihoods the outer
    product of the per-device scores (their Fisher information); the cross-stage blocks
    are finite differences of the drift and programming scores in the noise parameters.
    """
    P = len(entries)
    A, H, grad = np.zeros((P, P)), np.zeros((P, P)), np.zeros(P)
    scores = None
    for s, idx in st_idx.items():
        if idx.size == 0:
            continue
        r = results[s]
        H[np.ix_(idx, idx)] = r["H"]
        if s == "noise":
            gl = r["dlogE"][: half_dof.shape[0]]
            A[np.ix_(idx, idx)] = (gl * half_dof[:, None]).T @ gl
        else:
            A[np.ix_(idx, idx)] = r["scores"].T @ r["scores"]
        grad[idx] = r["g"]
        sc = np.zeros((r["scores"].shape[0], P))
        sc[:, idx] = r["scores"]
        scores = sc if scores is None else scores + sc
        if s != "noise" and st_idx["noise"].size:
            A[np.ix_(idx, st_idx["noise"])] = cross[s]
    return A, H, scores, grad


def _covariance(A, scores, idx, stage_of, se):
    """Covariance ``[len(idx), len(idx)]`` of the entries ``idx`` (all identified)."""
    Af = A[np.ix_(idx, idx)]
    if se == "hessian":
        covf = np.zeros_like(Af)
        for s in _params.STAGES:
            blk = np.nonzero(stage_of == s)[0]
            if blk.size:
                covf[np.ix_(blk, blk)] = _safe_inv(Af[np.ix_(blk, blk)])
        return covf
    Ainv = _safe_inv(Af)
    B = scores[:, idx].T @ scores[:, idx]
    return Ainv @ B @ Ainv.T


def _newton_decrement(A, grad, idx, stage_of) -> float:
    """``sqrt(gᵀ A⁻¹ g)`` summed over stages: the distance to the optimum in standard errors."""
    dec = 0.0
    for s in _params.STAGES:
        blk = idx[stage_of == s]
        if blk.size:
            M = A[np.ix_(blk, blk)]
            dec += float(grad[blk] @ _safe_inv(0.5 * (M + M.T)) @ grad[blk])
    return float(np.sqrt(max(dec, 0.0)))


def assemble(model0, entries, theta, free, st_idx, results, cross, stage_nll, se, half_dof, flat=(), need=None):
    """The pieces of a :class:`pcmjax.fit.FitResult`: fitted model, names, values,
    standard errors (``inf``: not identified), covariance (NaN rows/columns for the
    unidentified), stages, held entries, stage NLLs, Newton decrement and notes.
    ``flat``: indices of further entries the data do not identify (found by refits: the
    law's shape is ambiguous); they keep their local covariance (quantities the data do
    pin down, such as the law's value at a measured level, use it) but an infinite
    standard error. ``need`` ``[P]``: smallest standard errors consistent with the
    plausible configurations of clipped laws (:mod:`._configs`; ``inf``: not identified)."""
    A, H, scores, grad = _bread(entries, st_idx, results, cross, half_dof)
    if se == "hessian":
        A = H
    idx = np.nonzero(free)[0]
    stages = [entries[i].stage for i in idx]
    null = _whole_pieces(model0.family, [entries[i] for i in idx], not_identified(A, idx, stages))
    weak = sorted(set(null) | {int(j) for j in np.nonzero(np.isin(idx, list(flat)))[0]})
    ok = np.setdiff1d(np.arange(idx.size), null)
    stage_arr = np.array(stages)
    covf = np.full((idx.size, idx.size), np.nan)
    if ok.size:
        covf[np.ix_(ok, ok)] = _covariance(A, scores, idx[ok], stage_arr[ok], se)
    stderr = np.sqrt(np.maximum(np.diag(covf), 0.0))
    if need is not None:
        wide = need[idx]
        weak = sorted(set(weak) | set(np.nonzero(np.isinf(wide))[0].tolist()))
        stderr = np.maximum(stderr, np.where(np.isfinite(wide), wide, 0.0))
    stderr[weak] = np.inf
    decrement = _newton_decrement(A, grad, idx[ok], stage_arr[ok])
    fitted = _params.finalize(_params.with_values(model0, entries, theta))
    names = [entries[i].name for i in idx]
    fixed = {entries[i].name: float(theta[i]) for i in np.nonzero(~free)[0]}
    notes = []
    if fixed:
        notes.append("held (no device informs them, or a clip bound the data do not reach: the law is not "
                     "clipped within the measured range): " + ", ".join(fixed))
    if weak:
        notes.append("not identified by these data (the likelihood is flat along them, or a clipped law fits as "
                     "well with other levels on its pieces; their standard errors are reported as inf; more "
                     "distinct target levels would help): " + ", ".join(names[j] for j in weak))
    if model0.family == "hermes":
        notes.append("HERMES clip bounds and thresholds (indices 2-4 of mu_nu, sigma_nu, q_s_law) held at their "
                     "starting values")
    return (fitted, names, theta[idx], stderr, covf, stages, fixed, stage_nll, decrement, notes)


def _piece(family, e):
    """The polynomial piece an entry belongs to: its coefficients are identified together."""
    if e.field == "prog_coeffs" or family == "flexible":
        return (e.field,)
    if family == "hermes" and e.index is not None:
        return (e.field, "log" if e.index < 2 else "cubic" if e.index >= 5 else e.index)
    if family == "pcm_like" and e.index in (0, 1):
        return (e.field, "line")
    return (e.field, e.index)


def _whole_pieces(family, ents, null) -> list:
    """``null`` extended to every coefficient of a piece one of whose coefficients is in it
    (with one held, the covariance of the others would be that of a different law)."""
    bad = {_piece(family, ents[j]) for j in null}
    return sorted(set(null) | {j for j, e in enumerate(ents) if _piece(family, e) in bad})


def not_identified(A, idx, stages, tol: float = WEAK_TOL) -> list:
    """Positions (in ``idx``) of parameters on flat directions of their stage's
    information matrix: a zero diagonal, or a large loading on an eigenvector whose
    eigenvalue (of the matrix scaled to unit diagonal) is below ``tol`` times the largest."""
    out = []
    for s in _params.STAGES:
        blk = [j for j, st in enumerate(stages) if st == s]
        if not blk:
            continue
        M = A[np.ix_(idx[blk], idx[blk])]
        M = 0.5 * (M + M.T)
        diag = np.diag(M)
        top = max(float(np.max(np.abs(diag))), 1e-300)
        zero = [blk[j] for j in np.nonzero(~(diag > 1e-14 * top))[0]]
        out += zero
        live = [j for j in range(len(blk)) if blk[j] not in zero]
        if len(live) < 2:
            continue
        Ml = M[np.ix_(live, live)]
        d = np.sqrt(np.diag(Ml))
        lam, vec = np.linalg.eigh(Ml / np.outer(d, d))
        for k in np.nonzero(lam < tol * max(lam.max(), 1e-300))[0]:
            out += [blk[live[j]] for j in np.nonzero(np.abs(vec[:, k]) > LOADING_TOL)[0]]
    return sorted(set(out))


def _safe_inv(M):
    try:
        return np.linalg.inv(M)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(M)
