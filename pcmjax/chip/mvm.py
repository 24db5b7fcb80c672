"""The forward pipeline of every core at once (DESIGN.md, PHYSICS.md §2.4, §4).

PWM-encoded inputs → crossbar charge (plus fresh per-read noise) → CCO ADC counts →
digital unit affine (× drift compensation) → activation. The core axis is an array
axis: one batched contraction computes all cores.

Per-read noise (§2.4): the output of a read is Gaussian with variance
``Σ_i x_i² σ_ik²``, so it is computed with a second contraction of ``x²`` against the
per-device variances and sampled once per output, together with the ADC's own noise,
from the fast counter-based normals of :mod:`pcmjax._random`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pcmjax import _random
from pcmjax._validate import check_inputs, check_key
from pcmjax.chip.state import ChipState
from pcmjax.periphery.adc import adc_transfer
from pcmjax.periphery.ldpu import ACTIVATIONS, apply_activation, ldpu_affine
from pcmjax.periphery.pwm import pwm_encode

_SIGNS = np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32)  # NumPy: importing must not start a JAX backend


def mvm(key, state: ChipState, x, activation: str | None = None):
    """Matrix-vector products on every programmed core.

    Args:
      key: a ``jax.random`` key (per-read and ADC noise).
      state: a :class:`ChipState` (from ``program_chip`` / ``at_time``).
      x: ``[cores, batch, rows]`` inputs in [−1, 1] (values beyond ±1 saturate).
      activation: digital-unit activation (default: ``state.cfg.activation``).

    Returns:
      ``[cores, batch, cols]`` outputs in weight units: ``≈ x @ W`` per core.
    """
    if not isinstance(state, ChipState):
        raise TypeError(f"state must be a ChipState (from pcmjax.program_chip), got {type(state).__name__}.")
    check_key(key)
    if state.g_prog.ndim != 4:
        raise ValueError(
            f"state has extra leading axes (conductances of shape {state.g_prog.shape}); "
            "use jax.vmap over chip instances."
        )
    x = check_inputs(x, state.n_cores, state.rows)
    activation = state.cfg.activation if activation is None else activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}.")
    return _mvm(key, state, x, activation)


def _mvm_impl(key, state: ChipState, x, activation: str):
    cfg = state.cfg
    a = cfg.adc.counts_per_unit(cfg.rows)
    xq = pwm_encode(x, cfg.pwm)
    gain = (a * state.adc_gain)[:, None, :]  # [C, 1, K]
    offset = state.adc_offset[:, None, :]
    nonlin = state.adc_nonlin[:, None, :]
    need_noise = cfg.read_noise or cfg.adc.noise_std > 0
    if cfg.read_phases == 1:
        if cfg.polarity_asymmetry > 0:
            xq = xq * (1.0 + cfg.polarity_asymmetry * jnp.sign(xq))
        s = jnp.einsum("cbr,crk->cbk", xq, state.w[:, 0])
        u = gain * s + offset
        if need_noise:
            var = jnp.zeros_like(s) + cfg.adc.noise_std**2
            if cfg.read_noise:
                var = var + gain**2 * jnp.einsum("cbr,crk->cbk", xq * xq, state.var[:, 0])
            u = u + jnp.sqrt(var) * _random.normal(key, s.shape)
        counts = adc_transfer(u, nonlin, cfg.adc)
    else:
        xs = jnp.stack([jnp.maximum(xq, 0.0), jnp.maximum(-xq, 0.0)], axis=1)  # [C, 2, B, R]
        s = jnp.einsum("cpbr,cqrk->cpqbk", xs, state.w)  # four conversions
        u = gain[:, None, None] * s + offset[:, None, None]
        if need_noise:
            var = jnp.zeros_like(s) + cfg.adc.noise_std**2
            if cfg.read_noise:
                var = var + gain[:, None, None] ** 2 * jnp.einsum("cpbr,cqrk->cpqbk", xs * xs, state.var)
            u = u + jnp.sqrt(var) * _random.normal(key, s.shape)
        c4 = adc_transfer(u, nonlin[:, None, None], cfg.adc)
        counts = jnp.einsum("cpqbk,pq->cbk", c4, _SIGNS)
    y = ldpu_affine(counts, state.gamma[:, None, :], state.beta[:, None, :]) * state.comp[:, None, :]
    return apply_activation(y, activation)


_mvm = jax.jit(_mvm_impl, static_argnames=("activation",))
