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

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp

from pcmjax import _random
from pcmjax._ste import quantize_symmetric
from pcmjax.devices import DeviceModel, HermesPCM, PCMLike
from pcmjax.config.hwa import OUT_NOISE_MODES, HWAConfig

_EPS = 1e-12  # floor of scales we divide by


def _device(spec) -> DeviceModel:
    if isinstance(spec, DeviceModel):
        return spec
    return {"pcm_like": lambda: PCMLike(num_devices=1), "hermes": lambda: HermesPCM(num_devices=2),
            "hermes1": lambda: HermesPCM(num_devices=1)}[spec]()


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


def _seed(key):
    """Two uint32 words of a key's data: no generator call, so nothing to compile."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return key.reshape(-1)[:2].astype(jnp.uint32)


def _normal(seed, stream: int, shape):
    """Standard normals for one numbered stream of ``seed``.

    The method of :func:`pcmjax._random.normal` (counter hash, then the inverse-CDF
    table), with the stream's hash seeds derived arithmetically from the key's words
    instead of by a threefry call: a training step draws several streams per layer, and
    each threefry call would add its own kernel to compile.
    """
    mix = _random._fmix32
    s0 = mix(seed[0] ^ jnp.uint32((0x9E3779B9 * (stream + 1)) & 0xFFFFFFFF))
    s1 = mix(seed[1] + s0)
    n = math.prod(shape)
    bits = mix(mix(jax.lax.iota(jnp.uint32, n) * jnp.uint32(0x9E3779B1) + s0) ^ s1).reshape(shape)
    sign = jnp.where(bits >> 31 == 1, -1.0, 1.0)
    q = ((bits & jnp.uint32(0x7FFFFFFF)).astype(jnp.float32) + 0.5) * (2.0**-31)
    qb = jax.lax.bitcast_convert_type(q, jnp.uint32)
    mant = _random._MANT_BITS
    cell = ((qb >> 23).astype(jnp.int32) - _random._EXP_LO) * (1 << mant) + ((qb >> 16) & 0x7F).astype(jnp.int32)
    table = _random._TABLE_NP
    cell = jnp.clip(cell, 0, table.shape[0] - 1)
    frac = (qb & jnp.uint32(0xFFFF)).astype(jnp.float32) * (1.0 / 65536.0)
    return sign * (jnp.asarray(table[:, 0])[cell] + jnp.asarray(table[:, 1])[cell] * frac)


def _uniform(seed, stream: int):
    """One uniform number in (0, 1) for a numbered stream of ``seed``."""
    h = _random._fmix32(_random._fmix32(seed[0] ^ jnp.uint32(0x85EBCA6B + stream)) + seed[1])
    return (h.astype(jnp.float32) + 0.5) * (2.0**-32)


def sample_time(key, cfg: HWAConfig):
    """The drift time of one forward pass (log-uniform between the bounds of a pair)."""
    t = cfg.drift_time
    if not isinstance(t, tuple):
        return jnp.asarray(t, jnp.float32)
    lo, hi = (math.log(max(v, 1e-3)) for v in t)
    return jnp.exp(lo + (hi - lo) * _uniform(_seed(key), 0))


@partial(jax.jit, static_argnames=("cfg",))
def perturb_weights(key, wn, cfg: HWAConfig, t=None):
    """Weights as the chip would hold them: programming noise, drift to ``t``, 1/f noise, GDC.

    The laws are those of the device models (PHYSICS.md §2): ``g_p = max(g_T + k σ_prog ξ,
    0)``, ``ν = |μ_ν + σ_ν ξ|``, ``g(t) = max(g_p ((t + t0)/t0)^(−ν) (1 + σ_n(t) ξ), 0)``;
    the standard normals come from the fast counter-based generator, which keeps this
    function cheap to compile inside every layer of a training step.

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
    z = _normal(_seed(key), 1, (3,) + g.shape)  # one draw for the three noise sources
    if cfg.prog_noise_scale > 0:
        dev = _device(cfg.noise_device)
        sigma = dev.prog_scale * dev.prog_sigma(g * dev.g_max) / dev.g_max
        g_p = jnp.maximum(g + cfg.prog_noise_scale * sigma * z[0], 0.0)
    else:
        g_p = g
    if cfg.drift_time is not None:
        dev = _device(cfg.drift_device)
        t = sample_time(key, cfg) if t is None else jnp.asarray(t, jnp.float32)
        mu, sd = dev.nu_moments(g * dev.g_max)
        nu = dev.drift_scale * jnp.abs(mu + sd * z[1])
        g_t = g_p * dev.drift_factor(nu, t)
        if cfg.drift_noise:
            g_ref = g_p if dev.q_s_from == "programmed" else g
            sigma_n = dev.read_noise_scale * dev.q_s(g_ref * dev.g_max) * dev.noise_sigma(t)
            g_t = jnp.maximum(g_t + g_t * sigma_n * z[2], 0.0)
        if cfg.drift_compensation:
            g_t = g_t * (jnp.sum(g_p) / jnp.maximum(jnp.sum(g_t), _EPS))
    else:
        g_t = g_p
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


@partial(jax.jit, static_argnames=("cfg",))
def hwa_matmul(key, x, kernel, input_scale, cfg: HWAConfig):
    """``x @ kernel`` as the chip computes it, with the HWA perturbations of ``cfg``.

    Args:
      key: a ``jax.random`` key.
      x: ``[batch, in]`` inputs.
      kernel: ``[in, out]`` weights.
      input_scale: positive scalar; ``x / input_scale`` is what the PWM encodes.
      cfg: :class:`HWAConfig`.

    Returns:
      ``[batch, out]`` in the units of ``x @ kernel``.
    """
    seed = _seed(key)
    s = jnp.maximum(jax.lax.stop_gradient(input_scale), _EPS)
    xs = x / s
    xq = quantize_symmetric(xs, _levels(cfg.pwm_bits)) if cfg.pwm_bits else jnp.clip(xs, -1.0, 1.0)
    w = clip_kernel(kernel, cfg)
    w_max = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(w)), _EPS))
    wn = w / w_max
    if cfg.prog_noise_scale > 0 or cfg.drift_time is not None:
        wn = perturb_weights(key, wn, cfg)
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
        p = p + cfg.out_noise * ref * _normal(seed, 4, p.shape)
    if cfg.adc_bits:
        p = quantize_symmetric(p / cfg.out_bound, _levels(cfg.adc_bits)) * cfg.out_bound
    return jnp.sum(p, axis=0) * (s * w_max)
