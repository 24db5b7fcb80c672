"""Hardware-aware (HWA) training: the chip's non-idealities injected into a float forward.

The HERMES training recipe (PHYSICS.md §6): weight noise twice the PCM-like programming
noise, additive output noise, 8-bit input (PWM) and output (ADC) quantisation, weights
clipped, 256×256 tiles. Here each of those is a field of :class:`HWAConfig`, and drift
at a sampled time (with its 1/f noise and global drift compensation) can be added, so a
network learns to tolerate the state the chip will be in months after programming.

Gradients: weight noise is a perturbation with its gradient stopped (``w + sg(w̃ − w)``,
the usual HWA estimator); PWM and ADC quantisers are straight-through inside their range
and zero outside (:func:`pcmjax._ste.quantize_symmetric`); the weight clip passes no
gradient beyond the clip value.

References:
  Joshi et al., Nat. Commun. 11, 2473 (2020); Rasch et al., Nat. Commun. 14, 5282 (2023);
  Le Gallo et al., Nat. Electron. 6, 680 (2023).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from pcmjax import _random
from pcmjax._ste import quantize_symmetric
from pcmjax.chip.compensation import compensation_factor
from pcmjax.config.hwa import HWAConfig
from pcmjax.devices import DeviceModel, HermesPCM, PCMLike

_EPS = 1e-12  # floor of scales we divide by, and of a usable total conductance (fractions of g_max)

# Named devices of HWAConfig.noise_device / drift_device.
_DEVICES = {"pcm_like": lambda: PCMLike(num_devices=1), "hermes": lambda: HermesPCM(num_devices=2),
            "hermes1": lambda: HermesPCM(num_devices=1)}


def _device(spec) -> DeviceModel:
    return spec if isinstance(spec, DeviceModel) else _DEVICES[spec]()


def _levels(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def row_chunks(n: int, size: int) -> tuple[tuple[int, int], ...]:
    """Split ``n`` rows (or columns) into ``ceil(n / size)`` near-equal ``(start, stop)`` chunks.

    Chunks have ``ceil(n / k)`` entries except the last (``k`` chunks): 300 → 150 + 150,
    257 → 129 + 128, 700 → 234 + 234 + 232 with ``size = 256``.
    """
    k = -(-n // size)
    step = -(-n // k)
    return tuple((a, min(a + step, n)) for a in range(0, n, step))


def clip_kernel(kernel, cfg: HWAConfig):
    """Clip ``kernel`` at ``weight_clip`` standard deviations (no-op if ``None``)."""
    if cfg.weight_clip is None:
        return kernel
    bound = jax.lax.stop_gradient(cfg.weight_clip * jnp.std(kernel))
    return jnp.clip(kernel, -bound, bound)


def sample_time(key, cfg: HWAConfig):
    """The drift time of one forward pass, seconds (log-uniform between the bounds of a pair)."""
    t = cfg.drift_time
    if not isinstance(t, tuple):
        return jnp.asarray(t, jnp.float32)
    lo, hi = (math.log(max(v, 1e-3)) for v in t)
    return jnp.exp(jax.random.uniform(key, (), jnp.float32, lo, hi))


def _drifted(key, g, g_p, cfg: HWAConfig, t):
    """Conductances (fractions of ``g_max``) ``t`` seconds after programming, compensated."""
    dev = _device(cfg.drift_device)
    k_t, k_nu, k_n = jax.random.split(key, 3)
    t = sample_time(k_t, cfg) if t is None else jnp.asarray(t, jnp.float32)
    nu = dev.drift_exponent_from_normal(g * dev.g_max, _random.normal(k_nu, g.shape))
    if cfg.drift_noise:
        xi = _random.normal(k_n, g.shape)
        g_t = dev.at_time_from_normal(g_p * dev.g_max, nu, t, xi, g_target=g * dev.g_max) / dev.g_max
    else:
        g_t = g_p * dev.drift_factor(nu, t)
    if cfg.drift_compensation:  # one ratio of total conductances for the whole layer
        g_t = g_t * compensation_factor(g_p.reshape(-1), g_t.reshape(-1), "global", floor=_EPS)[0]
    return g_t


@partial(jax.jit, static_argnames=("cfg",))
def perturb_weights(key, wn, cfg: HWAConfig, t=None):
    """Weights as the chip would hold them: programming noise, drift to ``t``, 1/f noise, GDC.

    Each law is the device model's own, fed with the fast standard normals of
    :func:`pcmjax._random.normal`: ``g_p = max(g_T + k σ_prog ξ, 0)``
    (:meth:`~pcmjax.devices.DeviceModel.program_from_normal` with ``k ξ``),
    ``ν = |μ_ν + σ_ν ξ|``, ``g(t) = max(g_d + |g_d| σ_n(t) ξ, 0)`` (PHYSICS.md §2), then
    the global drift-compensation ratio :func:`pcmjax.chip.compensation.compensation_factor`.

    Args:
      key: a ``jax.random`` key.
      wn: normalised weights in [−1, 1] (``w / w_max``), any shape.
      cfg: :class:`HWAConfig`.
      t: seconds since programming (default: sampled from ``cfg.drift_time``).

    Returns:
      perturbed normalised weights, same shape; the gradient with respect to ``wn`` is
      the identity (the perturbation is a stopped-gradient offset).
    """
    g = jnp.stack([jnp.maximum(wn, 0.0), jnp.maximum(-wn, 0.0)])  # per sign, fraction of g_max
    g = jax.lax.stop_gradient(g)
    k_prog, k_drift = jax.random.split(key)
    if cfg.prog_noise_scale > 0:
        dev = _device(cfg.noise_device)
        xi = cfg.prog_noise_scale * _random.normal(k_prog, g.shape)
        g_p = dev.program_from_normal(g * dev.g_max, xi) / dev.g_max
    else:
        g_p = g
    g_t = g_p if cfg.drift_time is None else _drifted(k_drift, g, g_p, cfg, t)
    w = g_t[0] - g_t[1]
    return wn + jax.lax.stop_gradient(w - wn)


def input_statistic(x, cfg: HWAConfig):
    """The input-range statistic of one batch: abs-max or a quantile of ``|x|``."""
    a = jnp.abs(jax.lax.stop_gradient(x)).reshape(-1)
    if cfg.input_scale_quantile >= 1.0:
        return jnp.max(a)
    if a.shape[0] > 65536:  # a strided subsample keeps the sort cheap on large conv inputs
        a = a[:: a.shape[0] // 65536]
    return jnp.quantile(a, cfg.input_scale_quantile)


def hwa_weights(key, kernel, cfg: HWAConfig):
    """The weights the chip holds for one forward pass: clipped, normalised, perturbed.

    The perturbation (programming noise, drift to a sampled time, 1/f noise, GDC) is a
    property of the programmed devices, so it is drawn once per forward pass; a
    recurrent cell reuses it at every time step (:func:`hwa_read`).

    Args:
      key: a ``jax.random`` key.
      kernel: ``[in, out]`` weights.
      cfg: :class:`HWAConfig`.

    Returns:
      ``(wn, w_max)``: the perturbed normalised weights ``[in, out]`` (gradient: that of
      ``kernel / w_max``) and the scalar weight scale ``w_max``.
    """
    w = clip_kernel(kernel, cfg)
    w_max = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(w)), _EPS))
    wn = w / w_max
    if cfg.prog_noise_scale > 0 or cfg.drift_time is not None:
        wn = perturb_weights(key, wn, cfg)
    return wn, w_max


@partial(jax.jit, static_argnames=("cfg",))
def hwa_read(key, x, wn, w_max, input_scale, cfg: HWAConfig):
    """One read of weights from :func:`hwa_weights`: input quantisation, tiles, output noise, ADC.

    Args:
      key: a ``jax.random`` key (the output noise of this read).
      x: ``[batch, in]`` inputs.
      wn: ``[in, out]`` normalised (perturbed) weights.
      w_max: scalar weight scale (``kernel ≈ wn · w_max``).
      input_scale: positive scalar; ``x / input_scale`` is what the PWM encodes.
      cfg: :class:`HWAConfig`.

    Returns:
      ``[batch, out]`` in the units of ``x @ kernel``.
    """
    s = jnp.maximum(jax.lax.stop_gradient(input_scale), _EPS)
    xs = x / s
    xq = quantize_symmetric(xs, _levels(cfg.pwm_bits)) if cfg.pwm_bits else jnp.clip(xs, -1.0, 1.0)
    n_in, n_out = wn.shape
    chunks = row_chunks(n_in, cfg.tile_rows)
    if len(chunks) == 1:
        p = (xq @ wn)[None]
    else:
        step = chunks[0][1]
        pad = step * len(chunks) - n_in
        xr = jnp.pad(xq, ((0, 0), (0, pad))).reshape(xq.shape[0], len(chunks), step)
        wr = jnp.pad(wn, ((0, pad), (0, 0))).reshape(len(chunks), step, n_out)
        p = jnp.einsum("brc,rco->rbo", xr, wr)  # one partial sum per row tile
    if cfg.out_noise > 0:
        ref = jax.lax.stop_gradient(jnp.max(jnp.abs(p))) if cfg.out_noise_mode == "relative" else 1.0
        p = p + cfg.out_noise * ref * _random.normal(key, p.shape)
    if cfg.adc_bits:
        p = quantize_symmetric(p / cfg.out_bound, _levels(cfg.adc_bits)) * cfg.out_bound
    return jnp.sum(p, axis=0) * (s * w_max)


@partial(jax.jit, static_argnames=("cfg",))
def hwa_matmul(key, x, kernel, input_scale, cfg: HWAConfig):
    """``x @ kernel`` as the chip computes it, with the HWA perturbations of ``cfg``.

    Weights drawn by :func:`hwa_weights`, read once by :func:`hwa_read`.

    Args:
      key: a ``jax.random`` key.
      x: ``[batch, in]`` inputs.
      kernel: ``[in, out]`` weights.
      input_scale: positive scalar; ``x / input_scale`` is what the PWM encodes.
      cfg: :class:`HWAConfig`.

    Returns:
      ``[batch, out]`` in the units of ``x @ kernel``.
    """
    k_w, k_out = jax.random.split(key)
    wn, w_max = hwa_weights(k_w, kernel, cfg)
    return hwa_read(k_out, x, wn, w_max, input_scale, cfg)
