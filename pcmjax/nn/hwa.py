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

OUT_NOISE_MODES = ("relative", "absolute")
_EPS = 1e-12  # floor of scales we divide by


def _device(spec) -> DeviceModel:
    if isinstance(spec, DeviceModel):
        return spec
    return {"pcm_like": lambda: PCMLike(num_devices=1), "hermes": lambda: HermesPCM(num_devices=2),
            "hermes1": lambda: HermesPCM(num_devices=1)}[spec]()


def _levels(bits: int) -> int:
    return 2 ** (bits - 1) - 1


@dataclasses.dataclass(frozen=True)
class HWAConfig:
    """What hardware-aware training injects (frozen, hashable: static under ``jit``).

    Attributes:
      prog_noise_scale: multiple of the programming noise of ``noise_device`` added to
        the weights (HERMES recipe: 2). 0 switches programming noise off.
      noise_device: device model of the programming noise: ``"pcm_like"``,
        ``"hermes"`` (two devices per sign), ``"hermes1"`` or a
        :class:`pcmjax.devices.DeviceModel`.
      drift_time: seconds after programming at which drift is injected: a number, a
        ``(t_min, t_max)`` pair sampled log-uniformly at every call, or ``None`` (no
        drift).
      drift_device: device model whose drift exponents and 1/f noise are injected.
      drift_noise: include the accumulated 1/f conductance noise at ``drift_time``.
      drift_compensation: rescale the drifted weights of a layer by the ratio of total
        conductance (global drift compensation, PHYSICS.md §5), as the chip does.
      pwm_bits: input bits including sign (HERMES: 8); ``None``: inputs only clip at ±1.
      adc_bits: output bits including sign (recipe: 8); ``None``: no output quantisation.
      out_bound: ADC full scale of one tile's output in normalised units (inputs and
        weights at most 1): ``ADCConfig.full_scale · rows`` of the chip (0.1 · 256).
      out_noise: standard deviation of additive Gaussian noise on every tile output.
      out_noise_mode: ``"relative"``: ``out_noise`` is a fraction of the batch's largest
        tile output ("~10 % of the output range"); ``"absolute"``: in normalised units.
      weight_clip: clip each kernel at ``weight_clip`` standard deviations of its
        entries (``None``: no clipping). Also applied after every optimiser step by
        :func:`pcmjax.nn.clip_weights`.
      tile_rows: crossbar rows: larger layers are split into row tiles whose partial
        sums are quantised and noised separately, then added (as on the chip).
      input_scale_momentum: momentum of the running estimate of the layer's input range.
      input_scale_quantile: quantile of ``|x|`` the input range tracks (1.0: abs-max).
    """

    prog_noise_scale: float = 2.0
    noise_device: object = "pcm_like"
    drift_time: float | tuple | None = (1.0, 3.15e7)
    drift_device: object = "hermes"
    drift_noise: bool = True
    drift_compensation: bool = True
    pwm_bits: int | None = 8
    adc_bits: int | None = 8
    out_bound: float = 25.6
    out_noise: float = 0.04
    out_noise_mode: str = "relative"
    weight_clip: float | None = 3.0
    tile_rows: int = 256
    input_scale_momentum: float = 0.95
    input_scale_quantile: float = 1.0

    def __post_init__(self):
        def num(name, lo=0.0, lo_open=False):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or (v <= lo if lo_open else v < lo):
                raise ValueError(f"HWAConfig.{name} must be a finite number {'>' if lo_open else '>='} {lo}, "
                                 f"got {v!r}.")

        num("prog_noise_scale")
        num("out_noise")
        num("out_bound", lo_open=True)
        for name in ("noise_device", "drift_device"):
            v = getattr(self, name)
            if not isinstance(v, DeviceModel) and v not in ("pcm_like", "hermes", "hermes1"):
                raise ValueError(f"HWAConfig.{name} must be 'pcm_like', 'hermes', 'hermes1' or a DeviceModel, "
                                 f"got {v!r}.")
        t = self.drift_time
        if t is not None:
            ts = tuple(t) if isinstance(t, (tuple, list)) else (t,)
            if len(ts) not in (1, 2) or not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                                                  for v in ts) or (len(ts) == 2 and ts[0] > ts[1]):
                raise ValueError(f"HWAConfig.drift_time must be None, seconds >= 0 or a (t_min, t_max) pair, "
                                 f"got {t!r}.")
            object.__setattr__(self, "drift_time", ts if len(ts) == 2 else float(ts[0]))
        for name in ("pwm_bits", "adc_bits"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 16):
                raise ValueError(f"HWAConfig.{name} must be None or an integer in 2..16, got {v!r}.")
        if self.out_noise_mode not in OUT_NOISE_MODES:
            raise ValueError(f"HWAConfig.out_noise_mode must be one of {OUT_NOISE_MODES}, got {self.out_noise_mode!r}.")
        if self.weight_clip is not None:
            num("weight_clip", lo_open=True)
        if isinstance(self.tile_rows, bool) or not isinstance(self.tile_rows, int) or self.tile_rows < 1:
            raise ValueError(f"HWAConfig.tile_rows must be a positive integer, got {self.tile_rows!r}.")
        if not 0.0 <= self.input_scale_momentum < 1.0:
            raise ValueError(f"HWAConfig.input_scale_momentum must be in [0, 1), got {self.input_scale_momentum!r}.")
        if not 0.0 < self.input_scale_quantile <= 1.0:
            raise ValueError(f"HWAConfig.input_scale_quantile must be in (0, 1], got {self.input_scale_quantile!r}.")

    def replace(self, **changes) -> "HWAConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def off(cls) -> "HWAConfig":
        """No noise, no quantisation, no clipping: HWA mode then equals the float forward
        (up to input clipping at the input range)."""
        return cls(prog_noise_scale=0.0, drift_time=None, pwm_bits=None, adc_bits=None, out_noise=0.0,
                   weight_clip=None)


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
