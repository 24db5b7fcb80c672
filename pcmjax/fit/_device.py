"""Maximum-likelihood fit of a device model to conductance measurements.

The estimator (details in :mod:`._reduce` and :mod:`._likelihood`):

1. per device, weighted least squares of ``ln g`` on ``ln(1 + t/t0)`` gives the
   intercept ``â ≈ ln g_prog``, the drift exponent ``ν̂`` and the residual scatter;
2. three likelihoods of those summaries, one per stage, each a function of the family's
   law parameters: Q_s from the residual scatter, then (μ_ν, σ_ν) from the slopes with
   their estimation noise deconvolved and the ``|·|`` fold of ν exact, then σ_prog from
   the intercepts (``g_prog`` clipped at 0 included exactly);
3. each stage is minimised with optax L-BFGS in whitened coordinates and polished with
   Newton steps; the later stages use the fitted Q_s for the noise of ``â`` and ``ν̂``;
4. standard errors from the inverse Hessian: by default the sandwich form
   ``A⁻¹ B A⁻ᵀ`` of the stacked estimating equations (A: Jacobian of the three stages'
   scores, B: sum of per-device score outer products), which propagates the uncertainty
   of Q_s into the later stages and is robust to the quasi-likelihood of stage 1;
   ``se="hessian"`` gives the plain inverse Hessian of each stage.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcmjax.devices import DeviceModel
from pcmjax.fit import _params
from pcmjax.fit._compile import FastJit
from pcmjax.fit._data import Measurements, load_measurements
from pcmjax.fit import _likelihood as LK
from pcmjax.fit._likelihood import device_arrays
from pcmjax.fit._reduce import make_bins, reduce_devices, select_devices

DEFAULT_DEVICES = {"hermes": 2, "pcm_like": 1, "state_independent": 1, "flexible": 1}
SE_METHODS = ("sandwich", "hessian")


@dataclasses.dataclass(eq=False)
class FitResult:
    """A fitted device model with its uncertainties and goodness of fit.

    Attributes:
      model: the fitted :class:`pcmjax.devices.DeviceModel` (``program_chip`` accepts it).
      family: family name.
      names: names of the estimated parameters (``"prog_coeffs[1]"``, ...).
      values, stderr: ``[P]`` estimates and standard errors.
      cov: ``[P, P]`` covariance.
      stages: ``[P]`` stage of each parameter (``"noise"``, ``"drift"``, ``"prog"``).
      fixed: ``{name: value}`` law entries held fixed (not informed by the data, or the
        HERMES thresholds), with the reason in ``notes``.
      stats: goodness of fit: ``nll`` (total and per stage), ``n_params``, ``aic``,
        ``bic``, ``n_devices``, ``n_reads``, ``max_score_se`` (convergence: largest
        gradient times standard error).
      notes: list of human-readable remarks (excluded devices, fixed entries, ...).
      devices: per-device summaries of the fitted devices at the fitted read noise
        (``g_target``, ``x`` and ``V``: corrected ν̂ and its noise variance, ``a_c`` and
        ``U``: corrected ln g_prog and its variance, ``q2``: Q_s², ``rss``, ``e_rss``, ...).
      bins: target-conductance bins of the fitted devices ``(index, centers, edges)``.
      data: the measurements.
    """

    model: DeviceModel
    family: str
    names: list
    values: np.ndarray
    stderr: np.ndarray
    cov: np.ndarray
    stages: list
    fixed: dict
    stats: dict
    notes: list
    devices: dict = dataclasses.field(repr=False, default=None)
    bins: tuple = dataclasses.field(repr=False, default=None)
    data: Measurements = dataclasses.field(repr=False, default=None)

    def params(self) -> dict:
        """``{name: (value, stderr)}`` of the estimated parameters."""
        return {n: (float(v), float(s)) for n, v, s in zip(self.names, self.values, self.stderr)}

    def summary(self) -> str:
        """A printable table of the parameters with their standard errors and the fit statistics."""
        lines = [f"{self.family} device model fitted to {self.stats['n_devices']} devices "
                 f"({self.stats['n_reads']} reads)", f"{'parameter':<22}{'stage':<8}{'value':>14}{'std. error':>14}"]
        for n, st, v, s in zip(self.names, self.stages, self.values, self.stderr):
            lines.append(f"{n:<22}{st:<8}{v:>14.6g}{s:>14.3g}")
        for n, v in self.fixed.items():
            lines.append(f"{n:<22}{'fixed':<8}{v:>14.6g}{'-':>14}")
        s = self.stats
        lines.append(f"-2 log L = {2 * s['nll']:.2f}  (noise {2 * s['nll_noise']:.2f}, drift {2 * s['nll_drift']:.2f}, "
                     f"prog {2 * s['nll_prog']:.2f});  AIC = {s['aic']:.2f};  BIC = {s['bic']:.2f};  "
                     f"parameters = {s['n_params']}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def binned(self) -> dict:
        """Per-bin estimates of σ_prog, μ_ν, σ_ν and Q_s from the data (for figures);
        see :func:`pcmjax.fit._diagnostics.binned_estimates`."""
        from pcmjax.fit._diagnostics import binned_estimates

        return binned_estimates(self)


def fit_device_model(data, family: str = "hermes", *, num_devices: int | None = None, q_s_from: str = "programmed",
                     g_max: float | None = None, t0: float | None = None, t_read: float | None = None,
                     basis: str = "poly", degree: int = 3, init: DeviceModel | None = None,
                     max_rel_noise: float = 0.3, se: str = "sandwich", max_iter: int = 300) -> FitResult:
    """Fit a device model to conductance measurements by maximum likelihood.

    Args:
      data: :class:`Measurements`, or a path / mapping for :func:`load_measurements`.
      family: ``"hermes"``, ``"pcm_like"``, ``"state_independent"`` or ``"flexible"``.
      num_devices: devices per sign of the unit cell (default: 2 for hermes, else 1).
      q_s_from: Q_s at the ``"programmed"`` (default) or ``"target"`` conductance.
      g_max: µS; default: the family's published value (hermes, pcm_like,
        state_independent) or the largest target (flexible; also used when targets
        exceed the published value).
      t0, t_read: seconds; held fixed (default: the family's values).
      basis, degree: the flexible family's laws (``"poly"`` or ``"spline"``; the spline
        has ``degree + 1`` coefficients and needs ``degree >= 3``).
      init: a model of the family to start from (and to take g_max, t0, t_read and held
        entries from).
      max_rel_noise: target bins whose typical device has a larger relative read noise
        ``Q_s n(t)`` at the last read are left out (the log-domain summaries assume it
        small; the moments used are exact, the Gaussian shapes of ``â`` and ``ν̂``
        approximate).
      se: ``"sandwich"`` (default) or ``"hessian"``.
      max_iter: L-BFGS iterations per stage.

    Returns:
      :class:`FitResult`.
    """
    if family not in _params.FAMILIES:
        raise ValueError(f"family must be one of {_params.FAMILIES}, got {family!r}.")
    if se not in SE_METHODS:
        raise ValueError(f"se must be one of {SE_METHODS}, got {se!r}.")
    if not (isinstance(max_rel_noise, (int, float)) and 0 < max_rel_noise <= 0.5):
        raise ValueError(f"max_rel_noise must be in (0, 0.5], got {max_rel_noise!r}.")
    if not isinstance(data, Measurements):
        data = load_measurements(data)
    num_devices = DEFAULT_DEVICES[family] if num_devices is None else num_devices
    notes = []
    if g_max is None and init is None:
        published = None if family == "flexible" else _params.template(family, num_devices, q_s_from).g_max
        top = float(np.max(data.g_target_uS))
        if published is None or top > 1.01 * float(published):
            g_max = top
            if published is not None:
                notes.append(f"targets reach {top:.4g} µS, above the published g_max {float(published):.4g} µS: "
                             f"g_max set to {top:.4g} µS")
    model0 = _params.template(family, num_devices, q_s_from, basis, degree, g_max, t0, t_read, init)

    stats = reduce_devices(data, float(model0.t0), float(model0.t_read))
    bins = make_bins(stats.g_target)
    keep, bin_sigma = select_devices(stats, max_rel_noise, bins)
    n_partial = int(np.sum(~(stats.usable | stats.all_zero)))
    if n_partial:
        notes.append(f"{n_partial} device(s) with some (not all) reads at 0 or a singular design left out")
    n_noisy = int(np.sum((stats.usable | stats.all_zero) & ~keep))
    if n_noisy:
        out = bins[1][bin_sigma > max_rel_noise]
        notes.append(f"{n_noisy} device(s) left out: relative read noise above {max_rel_noise} at targets "
                     f"{np.array2string(out, precision=3, threshold=8)} µS")
    sub = stats.subset(keep)
    if sub.n_devices < 10:
        raise ValueError(f"only {sub.n_devices} device(s) are usable for the fit; need at least 10.")
    if not np.any(sub.dof > 0):
        raise ValueError("no device has three or more reads: the read noise (Q_s) cannot be fitted.")
    entries = _params.entries_for(model0)
    res = _fit_entries(model0, entries, sub, se, max_iter)
    fitted, names, values, stderr, cov, stage_list, fixed, stage_nll, max_score_se, fixed_notes, table = res
    notes += fixed_notes
    p = len(names)
    n_reads = int(sub.mask.sum())
    nll = float(sum(stage_nll))
    st = dict(nll=nll, nll_noise=stage_nll[0], nll_drift=stage_nll[1], nll_prog=stage_nll[2], n_params=p,
              aic=2 * nll + 2 * p, bic=2 * nll + p * math.log(max(sub.n_devices, 1)), n_devices=sub.n_devices,
              n_reads=n_reads, n_devices_total=stats.n_devices, max_score_se=max_score_se)
    return FitResult(model=fitted, family=family, names=names, values=values, stderr=stderr, cov=cov,
                     stages=stage_list, fixed=fixed, stats=st, notes=notes, devices=table,
                     bins=make_bins(table["g_target"]), data=data)


def _fit_entries(model0, entries, sub, se, max_iter):
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
        results = {}
        for s in _params.STAGES:
            idx = st_idx[s]
            if idx.size == 0:
                continue
            th = theta[idx]
            steps, curv = ev.step_sizes(s, th)
            # Entries along which the NLL does not change carry no information: hold them.
            ok = curv != 0
            fd0 = ev.finite_differences(s, th, steps)
            th = _minimise(ev, s, th, ok, fd0["H"], max_iter)
            fd = ev.finite_differences(s, th, steps)
            th, g = _newton_polish(ev, s, th, ok, fd)
            if s in ("noise", "drift") and model0.family == "state_independent":
                th = np.abs(th)  # only Q_s² and σ_ν² enter: report the non-negative roots
            theta[idx] = th
            free[idx] = ok
            ev.set_stage(s, th)
            results[s] = dict(fd, g=g)
        # Cross-stage Jacobian: the drift and prog scores depend on the noise parameters.
        cross = ev.cross_noise(theta[st_idx["noise"]], results["noise"]["steps"]) if "noise" in results else {}
        stage_nll = [float(ev.value(s, theta[st_idx[s]])) for s in _params.STAGES]
        table = ev.device_table(theta[st_idx["noise"]])
    return _assemble(model0, entries, theta, free, st_idx, results, cross, stage_nll, se) + (table,)


def _assemble(model0, entries, theta, free, st_idx, results, cross, stage_nll, se):
    P = len(entries)
    A = np.zeros((P, P))
    scores = None
    grad = np.zeros(P)
    for s, idx in st_idx.items():
        if idx.size == 0:
            continue
        r = results[s]
        A[np.ix_(idx, idx)] = r["H"]
        grad[idx] = r["g"]
        sc = np.zeros((r["scores"].shape[0], P))
        sc[:, idx] = r["scores"]
        scores = sc if scores is None else scores + sc
        if s != "noise" and st_idx["noise"].size:
            A[np.ix_(idx, st_idx["noise"])] = cross[s]
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
    max_score_se = float(np.max(np.abs(grad[idx]) * stderr)) if idx.size else 0.0
    fitted = _params.finalize(_params.with_values(model0, entries, theta))
    names = [entries[i].name for i in idx]
    fixed = {entries[i].name: float(theta[i]) for i in np.nonzero(~free)[0]}
    notes = []
    if fixed:
        notes.append("held at their starting values (no device informs them): " + ", ".join(fixed))
    if model0.family == "hermes":
        notes.append("HERMES clip bounds and thresholds (indices 2-4 of mu_nu, sigma_nu, q_s_law) held at their "
                     "starting values")
    return (fitted, names, theta[idx], stderr, covf, [entries[i].stage for i in idx], fixed, stage_nll,
            max_score_se, notes)


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


def _newton_polish(ev, s, th, ok, fd, steps: int = 3):
    """Newton steps on the free entries with the finite-difference Hessian, each accepted
    only if it lowers the NLL. Returns the point and its gradient."""
    idx = np.nonzero(ok)[0]
    f, g_all = fd["f"], fd["g"]
    H = fd["H"][np.ix_(idx, idx)]
    for _ in range(steps):
        g = g_all[idx]
        try:
            step = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(step)) or float(g @ step) <= 0:
            break
        cand = th.copy()
        cand[idx] -= step
        fc, gc = ev.value_and_grad(s, cand)
        if not (np.isfinite(fc) and fc <= f):
            break
        th, f, g_all = cand, fc, gc
    return th, g_all


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

    def _call(self, s, th, inputs=None):
        th = np.asarray(th, np.float64)
        if s == "noise":
            f, g, vec, _ = _noise_vg(th, self.base, self.d, entries=self.ents["noise"])
            return f, g, vec
        x, V, a_c, U = self.inputs if inputs is None else inputs
        if s == "drift":
            return _drift_vg(th, self.base, self.d, x, V, entries=self.ents["drift"])
        return _prog_vg(th, self.base, self.d, a_c, U, entries=self.ents["prog"])

    def device_table(self, th_n) -> dict:
        """Per-device quantities at the fitted noise parameters (NumPy, padding removed)."""
        x, V, a_c, U, q2, e_rss = (np.asarray(v) for v in _noise_vg(
            np.asarray(th_n, np.float64), self.base, self.d, entries=self.ents["noise"])[3])
        n = int(self.n_devices)
        out = dict(x=x, V=V, a_c=a_c, U=U, q2=q2, e_rss=e_rss)
        out.update({k: np.asarray(self.d[k]) for k in ("g_target", "rss", "dof", "usable", "all_zero")})
        return {k: v[:n] for k, v in out.items()}

    def value_and_grad(self, s, th):
        f, g, _ = self._call(s, th)
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
        """Central differences of the gradient (Hessian) and of the per-device NLLs (scores)."""
        th = np.asarray(th, np.float64)
        steps = self.step_sizes(s, th)[0] if steps is None else steps
        f, g, vec = self._call(s, th)
        P = th.shape[0]
        H = np.zeros((P, P))
        scores = np.zeros((int(vec.shape[0]), P))
        for k in range(P):
            h = steps[k]
            tp, tm = th.copy(), th.copy()
            tp[k] += h
            tm[k] -= h
            _, gp, vp = self._call(s, tp)
            _, gm, vm = self._call(s, tm)
            H[:, k] = (np.asarray(gp) - np.asarray(gm)) / (2 * h)
            scores[:, k] = (np.asarray(vp) - np.asarray(vm)) / (2 * h)
        return dict(f=float(f), g=np.asarray(g), H=0.5 * (H + H.T), scores=scores, steps=steps)

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
                grads.append((self._call("drift", th_d, inp)[1] if th_d.size else None,
                              self._call("prog", th_p, inp)[1] if th_p.size else None))
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

