"""Per-column ADC calibration: gain, offset, nonlinearity and noise from a sweep.

The converter model is the chip's (PHYSICS.md §4.2, :mod:`pcmjax.periphery.adc`): for a
known input ``s`` (e.g. a normalised column charge), column ``k`` sees

    u = a g_k s + o_k + σ_k ξ,     v = u / (1 + b_k |u| / N_max),
    count = clip(round(v), −N_max, N_max),

with ``a`` the nominal counts per unit input (``counts_per_unit``), ``g_k`` the relative
gain, ``o_k`` the offset (counts), ``b_k`` the residual compression at full scale and
``σ_k`` the input-referred noise (counts rms). A count ``c`` means ``v`` fell in
``[c − ½, c + ½)`` (or beyond ``N_max − ½`` when saturated), i.e. ``u`` in an interval
found by inverting the compression; the likelihood of each count is the Gaussian
probability of that interval, exact for rounding, noise and saturation together.
Columns are independent: each is fitted by damped Newton steps on its own four
parameters (vectorised over columns), with standard errors from the inverse Hessian.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from pcmjax._validate import check_int, check_key
from pcmjax.fit._compile import FastJit
from pcmjax.periphery.adc import adc_transfer, sample_adc_mismatch

NOISE_FLOOR = 0.05  # counts: below this the interval likelihood is a step function


@dataclasses.dataclass(eq=False)
class ADCFit:
    """Fitted per-column ADC parameters (``[K]`` arrays) with standard errors.

    Attributes:
      gain: relative gain ``g_k`` (absolute counts per unit input if ``counts_per_unit`` = 1).
      offset: offset, counts.
      nonlinearity: residual compression ``b_k`` at full scale.
      noise: input-referred noise, counts rms.
      stderr: ``{name: [K]}`` standard errors of the four.
      nll: ``[K]`` negative log-likelihood per column.
      n_points: ``[K]`` counts used per column.
      converged: ``[K]`` bool.
    """

    gain: np.ndarray
    offset: np.ndarray
    nonlinearity: np.ndarray
    noise: np.ndarray
    stderr: dict
    nll: np.ndarray
    n_points: np.ndarray
    converged: np.ndarray

    def predict(self, inputs, counts_per_unit: float = 1.0, n_max: int | None = None):
        """Noise-free expected ``v`` (before rounding) for ``inputs`` ``[S]`` or ``[S, K]``."""
        s = np.asarray(inputs, np.float64)
        s = s[:, None] if s.ndim == 1 else s
        u = counts_per_unit * self.gain * s + self.offset
        n = float(n_max) if n_max else 1.0
        return u / (1 + self.nonlinearity * np.abs(u) / n) if n_max else u


def _log_interval(lo, hi):
    """``log(Φ(hi) − Φ(lo))`` for ``lo < hi`` (upper-tail intervals mirrored for accuracy)."""
    upper = lo > 0  # both in the upper tail: use Φ(−lo) − Φ(−hi)
    a = jnp.where(upper, -hi, lo)
    b = jnp.where(upper, -lo, hi)
    return jnp.log(jnp.maximum(ndtr(b) - ndtr(a), 1e-300))


def _inverse(y, b, n_max):
    """``(|u|, ok)`` with ``|u| / (1 + b|u|/N) = y``; ``ok`` False beyond the compression's
    limit (where the returned value is a finite placeholder, so gradients stay finite)."""
    den = 1.0 - b * y / n_max
    ok = den > 1e-9
    return y / jnp.where(ok, den, 1.0), ok


def _column_nll(theta, s, c, w, a, n_max):
    """NLL of one column: ``theta = (gain, offset, b, log σ)``; ``s, c, w``: ``[M]``."""
    gain, offset, b, log_sig = theta
    sig = NOISE_FLOOR + jnp.exp(log_sig)
    mu = a * gain * s + offset
    mag = jnp.abs(c)
    lo_mag, lo_ok = _inverse(jnp.maximum(mag - 0.5, 0.0), b, n_max)
    hi_mag, hi_ok = _inverse(mag + 0.5, b, n_max)
    hi_ok = hi_ok & (mag < n_max)  # a saturated count only bounds |u| from below
    pos, neg = c > 0, c < 0
    # Interval of u: [lo, hi]; open ends become ±40 standard deviations.
    lo = jnp.where(pos, lo_mag, -hi_mag)
    hi = jnp.where(pos, hi_mag, jnp.where(neg, -lo_mag, hi_mag))
    lo_open = jnp.where(pos, ~lo_ok, ~hi_ok)
    hi_open = jnp.where(pos, ~hi_ok, jnp.where(neg, ~lo_ok, ~hi_ok))
    zl = jnp.where(lo_open, -40.0, (lo - mu) / sig)
    zh = jnp.where(hi_open, 40.0, (hi - mu) / sig)
    return -jnp.sum(w * _log_interval(zl, jnp.maximum(zh, zl + 1e-12)))


def _columns_vg(theta, s, c, w, a, n_max):
    vg = jax.vmap(jax.value_and_grad(_column_nll), in_axes=(0, 1, 1, 1, None, None))
    return vg(theta, s, c, w, a, n_max)


_columns_vg_fast = FastJit(_columns_vg, static_argnames=("n_max",))


def _value_grad_hessian(theta, s, c, w, a, n_max):
    """Per-column value, gradient and (central-difference) Hessian: the columns are
    independent, so each parameter's perturbation is applied to every column at once."""
    val, g = (np.asarray(x) for x in _columns_vg_fast(theta, s, c, w, a, n_max=n_max))
    K, P = theta.shape
    H = np.zeros((K, P, P))
    h = np.array([1e-5, 1e-3, 1e-5, 1e-4]) * np.maximum(np.abs(theta), [1.0, 1.0, 0.01, 1.0])
    for p in range(P):
        tp, tm = theta.copy(), theta.copy()
        tp[:, p] += h[:, p]
        tm[:, p] -= h[:, p]
        gp = np.asarray(_columns_vg_fast(tp, s, c, w, a, n_max=n_max)[1])
        gm = np.asarray(_columns_vg_fast(tm, s, c, w, a, n_max=n_max)[1])
        H[:, :, p] = (gp - gm) / (2 * h[:, p, None])
    return val, g, 0.5 * (H + np.swapaxes(H, 1, 2))


def fit_adc(inputs, counts, *, n_max: int | None = None, cfg=None, counts_per_unit: float = 1.0,
            max_iter: int = 60) -> ADCFit:
    """Fit gain, offset, nonlinearity and noise of every column from a calibration sweep.

    Args:
      inputs: known inputs, ``[S]`` (the same for every column) or ``[S, K]``.
      counts: measured counts, ``[S, K]`` or ``[S, R, K]`` (R repeated conversions).
      n_max: largest count per sign (default: ``cfg.n_max``).
      cfg: an :class:`pcmjax.ADCConfig` (for ``n_max``).
      counts_per_unit: nominal counts per unit input ``a``; the fitted gain is relative to
        it (``cfg.counts_per_unit(rows)`` makes it the chip's ``1 + δ_k``).
      max_iter: Newton iterations.

    Returns:
      :class:`ADCFit`.
    """
    if n_max is None:
        if cfg is None:
            raise ValueError("give n_max (the largest count per sign) or cfg (an ADCConfig).")
        n_max = cfg.n_max
    n_max = int(n_max)
    c = np.asarray(counts, np.float64)
    if c.ndim == 3:
        S, R, K = c.shape
    elif c.ndim == 2:
        S, K = c.shape
        R = 1
        c = c[:, None, :]
    else:
        raise ValueError(f"counts must have shape [S, K] or [S, R, K], got {c.shape}.")
    s = np.asarray(inputs, np.float64)
    if s.shape == (S,):
        s = np.broadcast_to(s[:, None], (S, K))
    if s.shape != (S, K):
        raise ValueError(f"inputs must have shape [S] or [S, K] = [{S}] or [{S}, {K}], got {s.shape}.")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(c))):
        raise ValueError("inputs and counts must be finite.")
    if np.any(np.abs(c) > n_max) or np.any(c != np.round(c)):
        raise ValueError(f"counts must be integers within ±n_max = ±{n_max}.")
    if S < 4:
        raise ValueError(f"a sweep needs at least 4 input values, got {S}.")
    ss = np.repeat(s[:, None, :], R, axis=1).reshape(S * R, K)
    cc = c.reshape(S * R, K)
    w = np.ones_like(cc)
    theta0 = _initial(ss, cc, counts_per_unit, n_max)
    with jax.enable_x64(True):
        theta, lam = theta0, np.full(K, 1e-3)
        converged = np.zeros(K, bool)
        val, g, H = _value_grad_hessian(theta, ss, cc, w, counts_per_unit, n_max)
        for _ in range(max_iter):
            # Levenberg-damped Newton step per column; accepted where it lowers that column's NLL.
            diag = np.abs(np.diagonal(H, axis1=1, axis2=2))[:, :, None]
            damp = lam[:, None, None] * (diag * np.eye(4) + 1e-9 * np.eye(4))
            try:
                step = np.linalg.solve(H + damp, g[..., None])[..., 0]
            except np.linalg.LinAlgError:
                step = g * 1e-6
            cand = theta - step
            val_c, g_c = (np.asarray(x) for x in _columns_vg_fast(cand, ss, cc, w, counts_per_unit, n_max=n_max))
            better = np.isfinite(val_c) & (val_c <= val)
            converged |= better & (val - val_c < 1e-10 * np.maximum(1.0, np.abs(val)))
            theta = np.where(better[:, None], cand, theta)
            lam = np.where(better, np.maximum(lam * 0.1, 1e-12), lam * 10.0)
            if np.all(converged | (lam > 1e8)):
                break
            if better.any():
                val, g, H = _value_grad_hessian(theta, ss, cc, w, counts_per_unit, n_max)
        val, g, H = _value_grad_hessian(theta, ss, cc, w, counts_per_unit, n_max)
    cov = np.stack([np.linalg.pinv(h) for h in H])
    se = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
    sig = NOISE_FLOOR + np.exp(theta[:, 3])
    stderr = dict(gain=se[:, 0], offset=se[:, 1], nonlinearity=se[:, 2], noise=se[:, 3] * (sig - NOISE_FLOOR))
    return ADCFit(gain=theta[:, 0], offset=theta[:, 1], nonlinearity=theta[:, 2], noise=sig, stderr=stderr,
                  nll=val, n_points=np.full(K, S * R), converged=converged)


def _initial(s, c, a, n_max):
    """Least squares of the unsaturated counts on the input, per column; b = 0."""
    K = s.shape[1]
    theta = np.zeros((K, 4))
    for k in range(K):
        ok = np.abs(c[:, k]) < 0.9 * n_max
        X = np.stack([a * s[ok, k], np.ones(ok.sum())], 1)
        coef, *_ = np.linalg.lstsq(X, c[ok, k], rcond=None)
        resid = c[ok, k] - X @ coef
        theta[k] = [coef[0], coef[1], 0.0, np.log(max(np.std(resid), 0.3) - NOISE_FLOOR)]
    return theta


def simulate_adc_sweep(key, cfg, inputs, n_cols: int, repeats: int = 1, counts_per_unit: float | None = None,
                       rows: int = 256):
    """Counts of ``n_cols`` simulated columns for a sweep of known inputs (the chip's model).

    Args:
      key: a ``jax.random`` key.
      cfg: :class:`pcmjax.ADCConfig` (mismatch spreads, noise, bits).
      inputs: ``[S]`` inputs in normalised column charge.
      n_cols: columns.
      repeats: conversions per input.
      counts_per_unit: ``a`` (default ``cfg.counts_per_unit(rows)``).

    Returns:
      ``(counts [S, repeats, n_cols], truth)`` with ``truth`` the drawn ``gain``,
      ``offset`` and ``nonlin`` per column.
    """
    check_key(key)
    n_cols, repeats = check_int("n_cols", n_cols, 1), check_int("repeats", repeats, 1)
    a = cfg.counts_per_unit(rows) if counts_per_unit is None else counts_per_unit
    counts, mis = _simulate_sweep(key, jnp.asarray(inputs, jnp.float32), float(a), cfg, n_cols, repeats)
    return np.asarray(counts), {k: np.asarray(v) for k, v in mis.items()}


@partial(jax.jit, static_argnames=("cfg", "n_cols", "repeats"))
def _simulate_sweep(key, inputs, a, cfg, n_cols, repeats):
    k_mis, k_noise = jax.random.split(key)
    mis = sample_adc_mismatch(k_mis, cfg, (n_cols,))
    s = inputs[:, None, None]
    u = a * mis["gain"] * s + mis["offset"]
    u = u + cfg.noise_std * jax.random.normal(k_noise, (inputs.shape[0], repeats, n_cols))
    counts = adc_transfer(u, mis["nonlin"], cfg)
    return counts, {k: mis[k] for k in ("gain", "offset", "nonlin")}
