"""Compiled stage functions of a device-model fit, bound to one fit's data.

Each stage (noise, drift, prog; :mod:`._likelihood`) is a compiled function of its flat
parameter vector returning the NLL, its gradient and the per-device NLLs; the
:class:`Evaluator` adds step sizes a fraction of a standard error wide, finite-difference
Hessians, per-device scores and the cross-stage Jacobian the covariance needs.
Compiled code is shared by every fit with the same shapes (devices are padded).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from pcmjax.fit import _likelihood as LK
from pcmjax.fit import _params
from pcmjax.fit._compile import FastJit


class Evaluator:
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

