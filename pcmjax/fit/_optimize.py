"""Stage-wise optimisation of a device-model likelihood from several starting points.

Each stage (noise, drift, prog; :mod:`._likelihood`) is minimised in turn with optax
L-BFGS in coordinates whitened by the starting Hessian and polished with a Newton step.
Every stage is started from several points and the lowest NLL wins:

1. the law fitted to per-level moment estimates (:mod:`._moments`; first unless a
   starting model is given);
2. the starting model (``init``) or the family's published values;
3. those two with every spread law (σ_ν, Q_s, σ_prog) doubled: a spread the data put
   near 0 can otherwise end clamped at 0 at every level, where the likelihood is flat;
4. further starts: the best optimum so far displaced by a few standard errors along
   deterministic quasi-random directions (Halton points mapped to normal quantiles:
   reproducible without a random key).

The clipped laws make the likelihood flat in any entry whose piece no device reaches, so
a single start from the published values can stop far from the optimum; the moment
start puts every piece where the data are, and the other starts guard against the rest.
At the end of the drift stage of a family with clipped laws every plausible configuration
of the laws is refitted as well (:mod:`._configs`): the best becomes the optimum, and the
others widen the standard errors.
"""

from __future__ import annotations

import types
from statistics import NormalDist

import jax
import numpy as np
import optax

from pcmjax.fit import _likelihood as LK
from pcmjax.fit import _params
from pcmjax.fit._configs import CLIPPED_FIELDS, configurations
from pcmjax.fit._covariance import assemble
from pcmjax.fit._diagnostics import binned_estimates
from pcmjax.fit._evaluate import Evaluator
from pcmjax.fit._likelihood import device_arrays
from pcmjax.fit._moments import noise_bins, stage_start
from pcmjax.fit._reduce import make_bins

MAX_PASSES = 4
PASS_TOL = 1e-3  # programming nodes unchanged: max |Δ node| below this fraction of the largest target


def fit_entries(model0, entries, sub, se, max_iter, starts: int = 4, init_first: bool = False):
    """Optimise the given entries stage by stage; returns the pieces of a FitResult.

    With Q_s at the programmed conductance the noise stage averages Q_s² over a
    programming distribution: the first pass takes it from a per-bin pilot, every further
    pass from the σ_prog of the pass before, until the distribution stops changing (at most
    ``MAX_PASSES`` passes). Each further pass starts every stage from the previous optimum
    and from the usual starts, so that the final optimum is that of the final objective
    (a law preferred only under the pilot distribution is not kept).

    Args:
      starts: starting points per stage (≥ 1; see the module docstring).
      init_first: the starting model (not the moment estimate) is the first start.
    """
    with jax.enable_x64(True):
        d = device_arrays(sub)
        theta = np.array(_params.values_of(model0, entries))
        st_idx = {s: np.array([i for i, e in enumerate(entries) if e.stage == s], int) for s in _params.STAGES}
        ents = {s: tuple(entries[i] for i in st_idx[s]) for s in _params.STAGES}
        ev = Evaluator(_params.as_float64(model0), d, ents)
        ev.n_devices = sub.n_devices
        free = np.zeros(len(entries), bool)
        fin = dict(results={}, flat=set(), need=np.zeros(len(entries)), alts=[])
        # (constant Q_s laws need no averaging over the programming distribution)
        passes = (model0.q_s_from == "programmed" and st_idx["prog"].size > 0
                  and model0.family != "state_independent")
        given0, free0 = theta.copy(), {}
        for pass_ in range(MAX_PASSES if passes else 1):
            last = not passes
            if pass_ > 0:
                fitted_prog = _params.with_values(ev.base, entries, theta)
                sig = float(fitted_prog.prog_scale) * np.asarray(fitted_prog.prog_sigma(sub.g_target))
                nodes = LK.programming_nodes(sub.g_target, sig, d["g_nodes"].shape[1])
                change = float(np.max(np.abs(nodes - np.asarray(d["g_nodes"]))))
                last = pass_ == MAX_PASSES - 1 or change <= PASS_TOL * float(np.max(sub.g_target))
                ev.d = d = dict(d, g_nodes=nodes)
            for s in _params.STAGES:
                idx = st_idx[s]
                if idx.size == 0:
                    continue
                start = theta.copy()
                start[idx] = given0[idx]
                cands = _candidates(ev, s, start, st_idx, sub, init_first)
                if pass_ > 0:  # the previous pass's optimum first
                    cands = [theta[idx].copy()] + cands
                # entries the first pass found the NLL flat along stay held
                th, steps, ok, H0 = _multistart(ev, s, cands, starts + (pass_ > 0), max_iter, free0.get(s))
                free0.setdefault(s, ok)
                if last:
                    th, ok = _finish_stage(ev, s, th, steps, ok, H0, model0.family, theta, given0, st_idx, max_iter,
                                           fin)
                if s in ("noise", "drift") and model0.family == "state_independent":
                    th = np.abs(th)  # only Q_s² and σ_ν² enter: report the non-negative roots
                theta[idx] = th
                free[idx] = ok
                ev.set_stage(s, th)
            if last:
                break
        results = fin["results"]
        # Cross-stage Jacobian: the drift and prog scores depend on the noise parameters.
        cross = ev.cross_noise(theta[st_idx["noise"]], results["noise"]["steps"]) if "noise" in results else {}
        stage_nll = [float(ev.value(s, theta[st_idx[s]])) for s in _params.STAGES]
        table = ev.device_table(theta[st_idx["noise"]])
    half_dof = 0.5 * np.asarray(d["dof"]) * (np.asarray(d["usable"]) > 0)
    out = assemble(model0, entries, theta, free, st_idx, results, cross, stage_nll, se, half_dof,
                   sorted(fin["flat"]), fin["need"])
    return out + (table, _alternative_models(model0, entries, theta, fin["alts"]))


def _finish_stage(ev, s, th, steps, ok, H0, family, theta, given, st_idx, max_iter, fin):
    """The final pass of stage ``s``: unneeded clip bounds held, the configurations of
    clipped laws weighed, step sizes at the optimum and a Newton polish; records the
    finite differences in ``fin``; a bound the data do not need is held at its ``given``
    value. Returns ``(theta, ok)`` of the stage."""
    idx = st_idx[s]
    th, ok, bent = _drop_unneeded_bounds(ev, s, th, ok, H0, family, given[idx], max_iter)
    if s == "drift" and family in CLIPPED_FIELDS:
        # every configuration of the clipped laws, a bent one included, is weighed
        mini = lambda e, st, t, o: _minimise(e, st, t, o, H0, max_iter)  # noqa: E731
        th, ok, fin["need"][idx], alt = configurations(ev, s, th, ok, _bins(ev, theta, st_idx), mini, family)
        fin["alts"] += [(idx, *a) for a in alt]
    else:
        fin["flat"] |= set(idx[bent].tolist())
    # Step sizes again at the optimum: the curvature there sets the standard errors.
    steps = np.where(ok, ev.step_sizes(s, th)[0], steps)
    fd = ev.finite_differences(s, th, steps)
    th, g = _newton_polish(ev, s, th, ok, fd)
    fin["results"][s] = dict(fd, g=g)
    return th, ok


def _bins(ev, theta, st_idx) -> dict:
    """Per-level moment estimates at the fitted noise parameters."""
    table = ev.device_table(theta[st_idx["noise"]])
    return binned_estimates(types.SimpleNamespace(devices=table, bins=make_bins(table["g_target"])))


def _alternative_models(model0, entries, theta, alts) -> list:
    """``[(model, delta_nll, names not identified)]`` of the plausible alternative configurations."""
    out = []
    for idx, tc, _, dnll, unid in alts:
        full = theta.copy()
        full[idx] = tc
        model = _params.finalize(_params.with_values(model0, entries, full))
        out.append((model, float(dnll), [entries[idx[k]].name for k in sorted(unid)]))
    return out


def _drop_unneeded_bounds(ev, s, th, ok, H, family, given, max_iter):
    """Take out of play the free clip bounds the data do not need.

    A bound is needed if taking it out of play and refitting the other entries (the
    profile likelihood) raises the stage NLL by at least ``BOUND_DNLL``; otherwise the
    refitted point is kept (the law is not clipped within the data) and the bound is held
    at its given starting value, or further out if that would still clip the data: the
    data give only a one-sided limit on it. If the law bending within the data (the bound
    clipping all but the outermost level on its side) fits as well, the data cannot tell
    a straight law from a bent one: the law's slope and intercept are not identified.

    Returns:
      ``(theta, ok, bent)``: the held bounds are no longer free; ``bent`` are the stage
      positions of the slopes and intercepts not identified.
    """
    bounds = _params.CLIP_BOUNDS.get(family, {})
    th, ok, bent = th.copy(), ok.copy(), []
    for k, e in enumerate(ev.ents[s]):
        far = bounds.get((e.field, e.index))
        if far is None or not ok[k]:
            continue
        f0 = ev.value(s, th)
        cand, rest = th.copy(), ok.copy()
        cand[k], rest[k] = far, False
        cand = _minimise(ev, s, cand, rest, H, max_iter)
        f_far = ev.value(s, cand)
        if f_far - f0 >= _params.BOUND_DNLL:
            continue
        near = cand.copy()
        near[k] = given[k]
        if abs(ev.value(s, near) - f_far) <= 1e-9 * max(1.0, abs(f_far)):
            cand = near
        th, ok = cand, rest
        alt = cand.copy()
        alt[k] = _bend_value(ev, s, cand, e, far)
        alt = _minimise(ev, s, alt, rest, H, max_iter)
        if ev.value(s, alt) - f_far < _params.BOUND_DNLL:
            bent += [j for j, o in enumerate(ev.ents[s]) if o.field == e.field and o.index in (0, 1) and ok[j]]
    return th, ok, np.asarray(sorted(set(bent)), int)


def _bend_value(ev, s, th, entry, far):
    """The bound value that clips all but the outermost level on its side."""
    m = _params.with_values(ev.base, ev.ents[s], th)
    use = (np.asarray(ev.d["usable"]) > 0)
    levels = make_bins(np.asarray(ev.d["g_target"])[use])[1]
    if entry.field == "q_s_law":
        law = np.asarray(m.q_s(levels)) * np.sqrt(m.num_devices)
    else:
        law = np.asarray(m.nu_moments(levels)[0 if entry.field == "mu_nu" else 1])
    law = np.sort(law)
    if law.size < 2:
        return far
    return law[-2] if far > 0 else law[1]


def _candidates(ev, s, theta, st_idx, sub, init_first):
    """The given start and the moment start of stage ``s`` (in the order of the starts),
    then each with its spread laws doubled."""
    given = theta[st_idx[s]].copy()
    if s == "noise":
        bins = noise_bins(sub)
    else:
        table = ev.device_table(theta[st_idx["noise"]])
        bins = binned_estimates(types.SimpleNamespace(devices=table, bins=make_bins(table["g_target"])))
    moment = stage_start(ev.base, ev.ents[s], bins)
    if moment is None or not np.isfinite(ev.value(s, moment)):
        cands = [given]
    else:
        cands = [given, moment] if init_first else [moment, given]
    # The same with every spread law (σ_ν, Q_s, σ_prog) doubled: a spread the data put near
    # 0 can end clamped at 0 at every level (where its likelihood is flat) when
    # approached from below; from above the search stops at the positive optimum.
    spread = np.array([e.field in SPREAD_FIELDS and e.name != "q_s_law[1]" for e in ev.ents[s]])
    if spread.any():
        cands += [np.where(spread, 2.0 * c, c) for c in cands]
    return cands


def _multistart(ev, s, cands, starts, max_iter, allowed=None):
    """Minimise stage ``s`` from ``starts`` points; the lowest NLL wins (only the
    ``allowed`` entries, default all, may move).

    Returns:
      ``(theta, steps, ok, H0)`` of the winner: the optimum, the step sizes and the
      entries that were free at its start (the NLL changed along them) and its starting
      Hessian.
    """
    best = None
    for k in range(max(int(starts), 1)):
        if k < len(cands):
            th0 = cands[k]
        else:  # displace the best optimum so far by a few standard errors
            th_b, steps_b, ok_b = best[1], best[2], best[3]
            scale = np.where(ok_b, 15.0 * steps_b, 0.0)  # steps are 0.2 standard errors
            scale = np.maximum(scale, 0.1 * np.abs(th_b) * ok_b)
            th0 = th_b + scale * _halton_normal(k - len(cands), th_b.shape[0])
        steps, curv = ev.step_sizes(s, th0)
        ok = curv != 0  # entries along which the NLL does not change carry no information: hold them
        ok = ok if allowed is None else ok & allowed
        H0 = ev.finite_differences(s, th0, steps)["H"]
        th = _minimise(ev, s, th0, ok, H0, max_iter)
        f = ev.value(s, th)
        if np.isfinite(f) and (best is None or f < best[0]):
            best = (f, th, steps, ok, H0)
    return best[1], best[2], best[3], best[4]


SPREAD_FIELDS = ("sigma_nu", "q_s_law", "q_s_const", "prog_coeffs", "sigma_prog")
_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97)


def _halton_normal(i: int, dim: int) -> np.ndarray:
    """Point ``i + 1`` of the Halton sequence in ``dim`` dimensions, mapped to standard
    normal quantiles (deterministic quasi-random directions)."""
    out = np.zeros(dim)
    for j in range(dim):
        base, f, r, n = _PRIMES[j % len(_PRIMES)], 1.0, 0.0, i + 1 + j // len(_PRIMES)
        while n > 0:
            f /= base
            r += f * (n % base)
            n //= base
        out[j] = NormalDist().inv_cdf(min(max(r, 1e-6), 1 - 1e-6))
    return out


_LBFGS = optax.scale_by_lbfgs(memory_size=10)
_lbfgs_update = jax.jit(_LBFGS.update)
_lbfgs_init = jax.jit(_LBFGS.init)


def _minimise(ev, s, th, ok, H0, max_iter):
    """L-BFGS (optax's two-loop direction) with a backtracking line search, in coordinates
    whitened by the starting Hessian ``H0``; only the ``ok`` entries move."""
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        return th
    lam, vec = np.linalg.eigh(H0[np.ix_(idx, idx)])
    lam = np.maximum(np.abs(lam), 1e-8 * np.abs(lam).max())
    # Whitened coordinates z (θ = θ0 + W z), padded to a multiple of 16 with inert zeros so
    # that optax's L-BFGS update compiles once for most fits.
    n = -(-idx.size // 16) * 16
    W = np.zeros((th.shape[0], n))
    W[idx, : idx.size] = vec / np.sqrt(lam)
    z = np.zeros(n)
    state = _lbfgs_init(z)
    f, g = ev.value_and_grad(s, th)
    for _ in range(max_iter):
        gz = W.T @ g
        if np.max(np.abs(gz)) < 1e-5:
            break
        direction, new_state = _lbfgs_update(gz, state, z)
        direction = np.asarray(direction)
        if not np.all(np.isfinite(direction)) or float(direction @ gz) <= 0:
            direction, new_state = gz, _lbfgs_init(z)  # reset to steepest descent
        step, accepted = 1.0, False
        while step > 1e-8:
            cand = th - step * (W @ direction)
            fc, gc = ev.value_and_grad(s, cand)
            if np.isfinite(fc) and fc <= f - 1e-4 * step * float(direction @ gz):
                accepted = True
                break
            step *= 0.5
        if not accepted:
            break
        z = z - step * direction
        state = new_state
        converged = f - fc < 1e-13 * max(1.0, abs(f))
        th, f, g = cand, fc, gc
        if converged:
            break
    return th


def _newton_polish(ev, s, th, ok, fd):
    """One Newton step on the free entries with the finite-difference Hessian and the
    smoothed gradient (the sum of the per-device finite-difference scores, which averages
    over the kinks of clipped laws), accepted if it does not raise the NLL.

    Returns the point and the smoothed gradient at the point the differences were taken.
    """
    idx = np.nonzero(ok)[0]
    g_smooth = fd["scores"].sum(axis=0)
    H = fd["H"][np.ix_(idx, idx)]
    try:
        step = np.linalg.solve(H, g_smooth[idx])
    except np.linalg.LinAlgError:
        return th, g_smooth
    if np.all(np.isfinite(step)) and float(g_smooth[idx] @ step) > 0:
        cand = th.copy()
        cand[idx] -= step
        fc = ev.value(s, cand)
        if np.isfinite(fc) and fc <= fd["f"] + 1e-9 * max(1.0, abs(fd["f"])):
            th = cand
    return th, g_smooth
