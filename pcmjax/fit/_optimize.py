"""Stage-wise optimisation of a device-model likelihood and the covariance of its estimates.

Each stage (noise, drift, prog; :mod:`._likelihood`) is a compiled function of its flat
parameter vector returning the NLL, its gradient and the per-device NLLs. Around them:
step sizes a fraction of a standard error wide, finite-difference Hessians and per-device
scores, optax L-BFGS in coordinates whitened by the starting Hessian, Newton polishing,
and the sandwich covariance of the stacked estimating equations.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcmjax.fit import _likelihood as LK
from pcmjax.fit import _params
from pcmjax.fit._compile import FastJit
from pcmjax.fit._likelihood import device_arrays


def fit_entries(model0, entries, sub, se, max_iter):
    """Optimise the given entries stage by stage; returns the pieces of a FitResult."""
    with jax.enable_x64(True):
        base = _params.as_float64(model0)
        d = device_arrays(sub)
        theta = np.array(_params.values_of(model0, entries))
        st_idx = {s: np.array([i for i, e in enumerate(entries) if e.stage == s]) for s in _params.STAGES}
        ents = {s: tuple(entries[i] for i in st_idx[s]) for s in _params.STAGES}
        ev = _Evaluator(base, d, ents)
        ev.n_devices = sub.n_devices
        free = np.zeros(len(entries), bool)
        results, prev = {}, {}
        # (constant Q_s laws need no averaging over the programming distribution)
        two_passes = (model0.q_s_from == "programmed" and st_idx["prog"].size > 0
                      and model0.family != "state_independent")
        n_pass = 2 if two_passes else 1
        for pass_ in range(n_pass):
            last = pass_ == n_pass - 1
            if pass_ == 1:
                # Second pass: the programming distribution over which Q_s² is averaged now
                # comes from the fitted σ_prog instead of the per-bin pilot.
                fitted_prog = _params.with_values(base, entries, theta)
                sig = float(fitted_prog.prog_scale) * np.asarray(fitted_prog.prog_sigma(sub.g_target))
                ev.d = d = dict(d, g_nodes=LK.programming_nodes(sub.g_target, sig, d["g_nodes"].shape[1]))
            for s in _params.STAGES:
                idx = st_idx[s]
                if idx.size == 0:
                    continue
                th = theta[idx]
                if s in prev:  # second pass: start from the first pass's steps and Hessian
                    steps, ok, H0 = prev[s]
                else:
                    steps, curv = ev.step_sizes(s, th)
                    # Entries along which the NLL does not change carry no information: hold them.
                    ok = curv != 0
                    H0 = ev.finite_differences(s, th, steps)["H"]
                    prev[s] = (steps, ok, H0)
                th = _minimise(ev, s, th, ok, H0, max_iter)
                if last:
                    # Step sizes again at the optimum: the curvature there sets the standard errors.
                    steps = np.where(ok, ev.step_sizes(s, th)[0], steps)
                    fd = ev.finite_differences(s, th, steps)
                    th, g = _newton_polish(ev, s, th, ok, fd)
                    results[s] = dict(fd, g=g)
                if s in ("noise", "drift") and model0.family == "state_independent":
                    th = np.abs(th)  # only Q_s² and σ_ν² enter: report the non-negative roots
                theta[idx] = th
                free[idx] = ok
                ev.set_stage(s, th)
        # Cross-stage Jacobian: the drift and prog scores depend on the noise parameters.
        cross = ev.cross_noise(theta[st_idx["noise"]], results["noise"]["steps"]) if "noise" in results else {}
        stage_nll = [float(ev.value(s, theta[st_idx[s]])) for s in _params.STAGES]
        table = ev.device_table(theta[st_idx["noise"]])
    half_dof = 0.5 * np.asarray(d["dof"]) * (np.asarray(d["usable"]) > 0)
    return _assemble(model0, entries, theta, free, st_idx, results, cross, stage_nll, se, half_dof) + (table,)


def _assemble(model0, entries, theta, free, st_idx, results, cross, stage_nll, se, half_dof):
    """Covariance of the stacked estimating equations.

    The bread uses expected curvatures, which the kinks of clipped laws do not disturb
    (a finite-difference Hessian picks up the jumps of the score where a device's law
    meets a clip bound, and with them noise of tens of percent): for the noise stage's
    gamma quasi-likelihood ``Σ_i k_i ∇ln E_i ∇ln E_iᵀ``; for the drift and programming
    likelihoods the outer product of the per-device scores (their Fisher information);
    the cross-stage blocks are finite differences of the drift and programming scores in
    the noise parameters. ``se="hessian"`` uses the finite-difference Hessians per stage.
    """
    P = len(entries)
    A = np.zeros((P, P))
    H = np.zeros((P, P))
    scores = None
    grad = np.zeros(P)
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
    if se == "hessian":
        A = H
    idx = np.nonzero(free)[0]
    Af = A[np.ix_(idx, idx)]
    if se == "hessian":
        covf = np.zeros_like(Af)
        stage_of = np.array([e.stage for e in entries])[idx]
        for s in _params.STAGES:
            blk = np.nonzero(stage_of == s)[0]
            if blk.size:
                covf[np.ix_(blk, blk)] = _safe_inv(Af[np.ix_(blk, blk)])
    else:
        Ainv = _safe_inv(Af)
        B = scores[:, idx].T @ scores[:, idx]
        covf = Ainv @ B @ Ainv.T
    stderr = np.sqrt(np.maximum(np.diag(covf), 0.0))
    # Convergence: the Newton decrement sqrt(gᵀ A⁻¹ g) per stage, with the smoothed
    # gradient before the final Newton step (the distance to the optimum in standard errors).
    decrement = 0.0
    for s_ in _params.STAGES:
        blk = [j for j in idx if entries[j].stage == s_]
        if blk:
            g_b = grad[blk]
            decrement += float(g_b @ _safe_inv(0.5 * (A[np.ix_(blk, blk)] + A[np.ix_(blk, blk)].T)) @ g_b)
    newton_decrement = float(np.sqrt(max(decrement, 0.0)))
    fitted = _params.finalize(_params.with_values(model0, entries, theta))
    names = [entries[i].name for i in idx]
    fixed = {entries[i].name: float(theta[i]) for i in np.nonzero(~free)[0]}
    notes = []
    if fixed:
        notes.append("held at their starting values (no device informs them): " + ", ".join(fixed))
    weak = _weak_directions(A, idx, [entries[i].stage for i in idx])
    if weak:
        notes.append("not separately identified by these data (only a combination is; more distinct target "
                     "levels would help): " + ", ".join(entries[idx[j]].name for j in weak))
    if model0.family == "hermes":
        notes.append("HERMES clip bounds and thresholds (indices 2-4 of mu_nu, sigma_nu, q_s_law) held at their "
                     "starting values")
    return (fitted, names, theta[idx], stderr, covf, [entries[i].stage for i in idx], fixed, stage_nll,
            newton_decrement, notes)


def _weak_directions(A, idx, stages, tol: float = 1e-9):
    """Positions (in ``idx``) of parameters loading on near-null directions of a stage's
    information matrix (scaled to unit diagonal)."""
    out = []
    for s in _params.STAGES:
        blk = [j for j, st in enumerate(stages) if st == s]
        if len(blk) < 2:
            continue
        M = A[np.ix_(idx[blk], idx[blk])]
        M = 0.5 * (M + M.T)
        d = np.sqrt(np.maximum(np.abs(np.diag(M)), 1e-300))
        lam, vec = np.linalg.eigh(M / np.outer(d, d))
        for k in np.nonzero(lam < tol * max(lam.max(), 1e-300))[0]:
            out += [blk[j] for j in np.nonzero(np.abs(vec[:, k]) > 0.3)[0]]
    return sorted(set(out))


def _safe_inv(M):
    try:
        return np.linalg.inv(M)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(M)


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


class _Evaluator:
    """Compiled stage functions bound to one fit's data, with finite-difference Hessians."""

    def __init__(self, base, d, ents):
        self.base, self.d, self.ents = base, d, ents
        self.inputs = None  # (x, V, a_c, U) from the fitted noise stage
        self._vec = {}

    def set_stage(self, s, th):
        self.base = _params.with_values(self.base, self.ents[s], th)
        if s == "noise":
            self.inputs = _noise_vg(th, self.base, self.d, entries=self.ents["noise"])[3][:4]

    def _call(self, s, th, inputs=None, base=None):
        th = np.asarray(th, np.float64)
        base = self.base if base is None else base
        if s == "noise":
            f, g, vec, aux = _noise_vg(th, base, self.d, entries=self.ents["noise"])
            return f, g, vec, aux[5]  # expected RSS per device
        x, V, a_c, U = self.inputs if inputs is None else inputs
        if s == "drift":
            return _drift_vg(th, base, self.d, x, V, entries=self.ents["drift"]) + (None,)
        return _prog_vg(th, base, self.d, a_c, U, entries=self.ents["prog"]) + (None,)

    def device_table(self, th_n) -> dict:
        """Per-device quantities at the fitted noise parameters (NumPy, padding removed)."""
        x, V, a_c, U, q2, e_rss = (np.asarray(v) for v in _noise_vg(
            np.asarray(th_n, np.float64), self.base, self.d, entries=self.ents["noise"])[3])
        n = int(self.n_devices)
        out = dict(x=x, V=V, a_c=a_c, U=U, q2=q2, e_rss=e_rss)
        out.update({k: np.asarray(self.d[k]) for k in ("g_target", "rss", "dof", "usable", "all_zero")})
        return {k: v[:n] for k, v in out.items()}

    def value_and_grad(self, s, th):
        f, g, _, _ = self._call(s, th)
        return float(f), np.asarray(g)

    def value(self, s, th):
        return self.value_and_grad(s, th)[0]

    def step_sizes(self, s, th, frac: float = 0.2):
        """Finite-difference steps of about ``frac`` standard errors per entry, and the
        curvature along each axis (0: the NLL does not depend on that entry).

        The curvature comes from a second difference of the NLL with a moderate step;
        steps a fraction of a standard error wide average over the kinks of clipped laws
        (every device contributes one where its law meets a clip bound), which a tiny step
        would turn into spurious curvature.
        """
        th = np.asarray(th, np.float64)
        f0 = self.value(s, th)
        h = 1e-3 * np.maximum(np.abs(th), 1e-3)
        steps, curv = h.copy(), np.zeros_like(th)
        for k in range(th.shape[0]):
            tp, tm = th.copy(), th.copy()
            tp[k] += h[k]
            tm[k] -= h[k]
            c = (self.value(s, tp) - 2 * f0 + self.value(s, tm)) / h[k] ** 2
            if np.isfinite(c) and c != 0:
                curv[k] = c
                steps[k] = frac / np.sqrt(abs(c))
        return steps, curv

    def finite_differences(self, s, th, steps=None):
        """Central differences of the gradient (Hessian), of the per-device NLLs (scores)
        and, for the noise stage, of the per-device log expected RSS."""
        th = np.asarray(th, np.float64)
        steps = self.step_sizes(s, th)[0] if steps is None else steps
        f, g, vec, _ = self._call(s, th)
        P = th.shape[0]
        H = np.zeros((P, P))
        scores = np.zeros((int(vec.shape[0]), P))
        dlogE = np.zeros((int(vec.shape[0]), P)) if s == "noise" else None
        for k in range(P):
            h = steps[k]
            tp, tm = th.copy(), th.copy()
            tp[k] += h
            tm[k] -= h
            _, gp, vp, ep = self._call(s, tp)
            _, gm, vm, em = self._call(s, tm)
            H[:, k] = (np.asarray(gp) - np.asarray(gm)) / (2 * h)
            scores[:, k] = (np.asarray(vp) - np.asarray(vm)) / (2 * h)
            if dlogE is not None:
                dlogE[:, k] = (np.log(np.maximum(np.asarray(ep), 1e-300))
                               - np.log(np.maximum(np.asarray(em), 1e-300))) / (2 * h)
        return dict(f=float(f), g=np.asarray(g), H=0.5 * (H + H.T), scores=scores, steps=steps, dlogE=dlogE)

    def cross_noise(self, th_n, steps):
        """``∂(drift, prog gradients) / ∂(noise parameters)`` by central differences."""
        th_n = np.asarray(th_n, np.float64)
        P = th_n.shape[0]
        th_d = np.asarray(_params.values_of(self.base, self.ents["drift"]))
        th_p = np.asarray(_params.values_of(self.base, self.ents["prog"]))
        out = {"drift": np.zeros((th_d.shape[0], P)), "prog": np.zeros((th_p.shape[0], P))}
        for k in range(P):
            h = steps[k]
            grads = []
            for sign in (1.0, -1.0):
                t = th_n.copy()
                t[k] += sign * h
                base = _params.with_values(self.base, self.ents["noise"], t)
                inp = _noise_vg(t, base, self.d, entries=self.ents["noise"])[3][:4]
                grads.append((self._call("drift", th_d, inp, base)[1] if th_d.size else None,
                              self._call("prog", th_p, inp, base)[1] if th_p.size else None))
            if th_d.size:
                out["drift"][:, k] = (np.asarray(grads[0][0]) - np.asarray(grads[1][0])) / (2 * h)
            if th_p.size:
                out["prog"][:, k] = (np.asarray(grads[0][1]) - np.asarray(grads[1][1])) / (2 * h)
        return out


_static = partial(FastJit, static_argnames=("entries",))


@_static
def _noise_vg(theta, base, d, entries):
    def fun(th):
        vec, q2, e_rss = LK.nll_noise(_params.with_values(base, entries, th), d)
        return jnp.sum(vec), (vec, q2, e_rss)

    (f, (vec, q2, e_rss)), g = jax.value_and_grad(fun, has_aux=True)(theta)
    return f, g, vec, LK.stage_inputs(q2, d) + (q2, e_rss)


@_static
def _drift_vg(theta, base, d, x, V, entries):
    def fun(th):
        vec = LK.nll_drift(_params.with_values(base, entries, th), d, x, V)
        return jnp.sum(vec), vec

    (f, vec), g = jax.value_and_grad(fun, has_aux=True)(theta)
    return f, g, vec


@_static
def _prog_vg(theta, base, d, a_c, U, entries):
    def fun(th):
        vec = LK.nll_prog(_params.with_values(base, entries, th), d, a_c, U)
        return jnp.sum(vec), vec

    (f, vec), g = jax.value_and_grad(fun, has_aux=True)(theta)
    return f, g, vec

