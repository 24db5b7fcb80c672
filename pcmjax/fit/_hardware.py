"""Fitting through the hardware: device-model scale factors from chip-level MVM outputs.

A chip-level measurement programs known weights, and at several times after programming
applies known inputs a few times each and records the outputs. Nothing about single
devices is observed. Three summaries of the outputs at each time ``t`` carry the three
scale factors of the device model (``prog_scale``, ``drift_scale``, ``read_noise_scale``):

* ``gain(t)``: least-squares slope of the repeat-averaged outputs on the ideal ``x @ W``
  (the mean drift: ``drift_scale``);
* ``state(t)``: mean squared deviation of the repeat-averaged outputs from that line,
  corrected for the read noise left in the average (programming error, drift spread and
  accumulated 1/f noise: ``prog_scale`` once the others are known);
* ``read(t)``: mean variance across repeats (fresh per-read noise: ``read_noise_scale``).

The fit is the method of simulated moments: the same summaries are computed from the
differentiable chip simulation (``program_chip`` → ``ChipState.at_time`` → ``mvm``) of a
few chip instances with fixed random numbers, and the log-scale factors minimise the
squared differences of the log-summaries weighted by their standard errors, by gradients
through the whole simulation (the Jacobian of the simulated summaries by reverse-mode
differentiation of the chip simulation, in Levenberg–Marquardt steps). Standard errors
come from the delta method ``(1 + 1/n_sim) (Gᵀ W G)⁻¹`` with ``G`` the Jacobian of the
simulated summaries.
"""

from __future__ import annotations

import copy
import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from pcmjax._validate import check_int, check_key
from pcmjax.chip.mvm import mvm
from pcmjax.chip.state import program_chip
from pcmjax.config import ChipConfig
from pcmjax.devices import HermesPCM

SCALES = ("prog_scale", "drift_scale", "read_noise_scale")


@dataclasses.dataclass(frozen=True, eq=False)
class HardwareMeasurements:
    """Chip-level MVM outputs of known weights and inputs.

    Attributes:
      weights: ``[cores, rows, cols]`` programmed weights.
      x: ``[cores, batch, rows]`` inputs.
      times: ``[T]`` seconds after programming of the reads.
      y: ``[T, repeats, cores, batch, cols]`` outputs (repeats ≥ 2).
    """

    weights: np.ndarray
    x: np.ndarray
    times: np.ndarray
    y: np.ndarray


@dataclasses.dataclass(eq=False)
class ScaleFit:
    """Recovered scale factors (``{name: value}``), standard errors and diagnostics."""

    scales: dict
    stderr: dict
    moments_measured: np.ndarray
    moments_fitted: np.ndarray
    moment_se: np.ndarray
    loss: float
    device: object

    def summary(self) -> str:
        lines = [f"{'scale factor':<18}{'value':>10}{'std. error':>12}"]
        lines += [f"{k:<18}{self.scales[k]:>10.4f}{self.stderr[k]:>12.4f}" for k in SCALES]
        lines.append(f"weighted moment misfit (chi²-like) = {self.loss:.2f} over {self.moments_measured.size} moments")
        return "\n".join(lines)


def _with_scales(device, log_scales):
    out = copy.copy(device)
    for i, name in enumerate(SCALES):
        object.__setattr__(out, name, jnp.exp(log_scales[i]))
    return out


def _moments(y, y0):
    """Log-summaries ``[3 T]`` (gain, state, read per time) and per-output contributions.

    Args:
      y: ``[T, P, C, B, K]`` outputs; y0: ``[C, B, K]`` ideal outputs.
    """
    P = y.shape[1]
    ybar = jnp.mean(y, axis=1)  # [T, C, B, K]
    read = jnp.var(y, axis=1, ddof=1)  # [T, C, B, K]
    gain = jnp.sum(ybar * y0, axis=(1, 2, 3)) / jnp.sum(y0 * y0)
    dev2 = (ybar - gain[:, None, None, None] * y0) ** 2 - read / P
    m = jnp.concatenate([jnp.log(gain), jnp.log(jnp.maximum(jnp.mean(dev2, axis=(1, 2, 3)), 1e-30)),
                         jnp.log(jnp.mean(read, axis=(1, 2, 3)))])
    return m, (ybar, read, dev2, gain)


def _moment_se(y, y0):
    """Standard errors of the log-summaries, clustered by column: outputs of one column
    share its devices and its ADC, so columns (not outputs) are the independent units."""
    m, (ybar, read, dev2, gain) = _moments(y, y0)
    ybar, read, dev2, gain, y0 = (np.asarray(v, np.float64) for v in (ybar, read, dev2, gain, y0))
    # [T, C, B, K] -> per-column sums over the batch: [T, C*K]
    col = lambda a: np.moveaxis(a, -2, -1).reshape(a.shape[0], -1, a.shape[-2]).sum(-1)  # noqa: E731
    n_cols = y0.shape[0] * y0.shape[2]
    resid = ybar - gain[:, None, None, None] * y0
    num = col(resid * y0[None])
    se_gain = np.sqrt(n_cols) * np.std(num, axis=1) / np.sum(y0 * y0) / gain
    d, r = col(dev2), col(read)
    se_state = np.std(d, axis=1) / np.sqrt(n_cols) / np.maximum(np.mean(d, axis=1), 1e-30)
    se_read = np.std(r, axis=1) / np.sqrt(n_cols) / np.mean(r, axis=1)
    return np.asarray(m), np.concatenate([se_gain, se_state, se_read])


def _simulate_outputs(key, device, weights, x, times, cfg, repeats):
    """``[T, repeats, C, B, K]`` outputs of one simulated chip instance (times and repeats
    are vmapped, so the traced program holds one programming, one ageing and one MVM)."""
    k_prog, k_time = jax.random.split(key)
    state = program_chip(k_prog, weights, cfg, device)

    def at(i, t):
        kt = jax.random.fold_in(k_time, i)
        st = state.at_time(jax.random.fold_in(kt, 0), t)
        return jax.vmap(lambda r: mvm(jax.random.fold_in(kt, r + 1), st, x))(jnp.arange(repeats))

    return jax.vmap(at)(jnp.arange(len(times)), jnp.asarray(times, jnp.float32))


def simulate_hardware(key, weights, x, times, cfg=None, device=None, repeats: int = 4) -> HardwareMeasurements:
    """Chip-level measurements from the simulator (one chip instance): for tests and demos.

    Args:
      key: a ``jax.random`` key.
      weights: ``[cores, rows, cols]``; x: ``[cores, batch, rows]``; times: seconds.
      cfg: :class:`pcmjax.ChipConfig`; device: the device model (with its scale factors).
      repeats: MVMs per input and time.
    """
    check_key(key)
    repeats = check_int("repeats", repeats, 1)
    cfg = ChipConfig() if cfg is None else cfg
    device = HermesPCM(2) if device is None else device
    times = tuple(float(t) for t in np.asarray(times, np.float64).reshape(-1))
    weights, x = jnp.asarray(weights, jnp.float32), jnp.asarray(x, jnp.float32)
    y0 = jnp.einsum("cbr,crk->cbk", x, weights)
    # The same compiled program as the fit (one instance, zero cotangent).
    log_scales = jnp.log(jnp.asarray([float(getattr(device, k)) for k in SCALES], jnp.float32))
    _, _, ys = _simulate_vjp(log_scales, key[None], np.zeros(3 * len(times), np.float32), device, weights, x, y0,
                             times=times, cfg=cfg, repeats=int(repeats))
    return HardwareMeasurements(np.asarray(weights), np.asarray(x), np.asarray(times), np.asarray(ys[0]))


@partial(jax.jit, static_argnames=("times", "cfg", "repeats"))
def _simulate_vjp(log_scales, keys, cotangent, device, weights, x, y0, times, cfg, repeats):
    """Outputs of ``len(keys)`` simulated chips with scale factors ``exp(log_scales)``, their
    mean log-summaries ``m`` and ``cotangentᵀ ∂m/∂log_scales`` by reverse-mode
    differentiation of the chip simulation (the quantisers' straight-through gradients
    are custom VJPs, so forward mode is not available)."""

    def f(th):
        dev = _with_scales(device, th)
        ys = jax.vmap(lambda k: _simulate_outputs(k, dev, weights, x, times, cfg, repeats))(keys)
        return jnp.mean(jax.vmap(lambda y: _moments(y, y0)[0])(ys), axis=0), ys

    m, vjp, ys = jax.vjp(f, log_scales, has_aux=True)
    return m, vjp(cotangent)[0], ys


def _jacobian(theta, keys, device, weights, x, y0, static):
    """Moments and their Jacobian, one reverse pass per moment (a vmapped reverse pass
    over all moments at once crashed XLA's CPU backend with this program)."""
    M = 3 * len(static["times"])
    rows, m = [], None
    for i in range(M):
        ct = np.zeros(M, np.float32)
        ct[i] = 1.0
        m, g, _ = _simulate_vjp(jnp.asarray(theta, jnp.float32), keys, ct, device, weights, x, y0, **static)
        rows.append(np.asarray(g, np.float64))
    return np.asarray(m, np.float64), np.stack(rows)


def fit_scale_factors(key, meas: HardwareMeasurements, cfg=None, device=None, *, n_sim: int = 1,
                      max_iter: int = 10) -> ScaleFit:
    """Recover ``prog_scale``, ``drift_scale`` and ``read_noise_scale`` from MVM outputs alone.

    Args:
      key: random key of the simulated chip instances (fixed through the fit).
      meas: :class:`HardwareMeasurements`.
      cfg: the chip's :class:`pcmjax.ChipConfig` (everything but the three scales known).
      device: the device model whose scales are fitted (its own scale values are ignored).
      n_sim: simulated instances averaged per evaluation.
      max_iter: Levenberg–Marquardt (damped Gauss–Newton) iterations.

    Returns:
      :class:`ScaleFit` with a device model carrying the recovered scales.
    """
    check_key(key)
    n_sim = check_int("n_sim", n_sim, 1)
    max_iter = check_int("max_iter", max_iter, 1)
    cfg = ChipConfig() if cfg is None else cfg
    device = HermesPCM(2) if device is None else device
    y = np.asarray(meas.y, np.float64)
    if y.ndim != 5 or y.shape[1] < 2:
        raise ValueError(f"y must have shape [times, repeats >= 2, cores, batch, cols], got {y.shape}.")
    if y.shape[0] != np.size(meas.times):
        raise ValueError(f"y has {y.shape[0]} times but times has {np.size(meas.times)}.")
    weights = jnp.asarray(meas.weights, jnp.float32)
    x = jnp.asarray(meas.x, jnp.float32)
    y0 = jnp.einsum("cbr,crk->cbk", x, weights)
    m_meas, se = _moment_se(jnp.asarray(y, jnp.float32), y0)
    static = dict(times=tuple(float(t) for t in np.asarray(meas.times).reshape(-1)), cfg=cfg, repeats=int(y.shape[1]))
    keys = jax.random.split(key, n_sim)
    w = 1.0 / se**2
    theta = np.zeros(3)
    best = (np.inf, theta, None, None)
    lam = 1e-2
    for _ in range(max_iter):
        m, G = _jacobian(theta, keys, device, weights, x, y0, static)
        r = m - m_meas
        cur = float(np.sum(w * r * r))
        if cur > best[0]:  # the last step made things worse: back off and damp more
            theta, lam = best[1], lam * 10
            continue
        best = (cur, theta, G, m)
        A = G.T @ (G * w[:, None])
        step = np.clip(np.linalg.solve(A + lam * np.diag(np.diag(A)), G.T @ (w * r)), -1.0, 1.0)
        theta = theta - step
        lam = max(lam / 10, 1e-6)
        if np.max(np.abs(step)) < 2e-3:
            break
    loss, theta, G, m = best
    cov = (1.0 + 1.0 / n_sim) * np.linalg.pinv(G.T @ (G * w[:, None]))
    scales = np.exp(theta)
    se_scales = scales * np.sqrt(np.maximum(np.diag(cov), 0.0))  # delta method for exp
    fitted = device.replace(**{k: float(v) for k, v in zip(SCALES, scales)})
    return ScaleFit(scales=dict(zip(SCALES, scales.tolist())), stderr=dict(zip(SCALES, se_scales.tolist())),
                    moments_measured=m_meas, moments_fitted=m, moment_se=se, loss=loss, device=fitted)
