"""Gradient-based choice of the programming targets ("GDP", PHYSICS.md §3).

One-shot programming and program-and-verify each aim every device at its own mapped
target. Gradient-based programming instead chooses the targets the devices are aimed at
so that the *matrix-vector products* of the programmed array are as close as possible to
the ideal ones, at a chosen time after programming, on random inputs:

    minimise over u ∈ [0, 1]^(C×2×R×K)
        E_{x, ξ} ‖ x · (α(t) · (G⁺(t) − G⁻(t)) / g_max − W*) ‖²

where ``u · g_max`` are the per-sign targets (the optimisation variables, initialised at
the mapped targets), ``G(t)`` is the device model's programming (one-shot noise, or the
chip's program-and-verify) followed by drift and accumulated 1/f noise to ``t``, all
reparameterised (a few fresh standard-normal samples per step, from fixed keys), ``α(t)``
is the chip's drift compensation (global or per column, from the total conductance as
the reference read measures it), ``W*`` the mapped weights in units of ``w_max``, and
``x`` uniform in [−1, 1]. With independent zero-mean inputs the expectation over ``x``
is exact without sampling: ``E[x²] · ‖E‖²_F`` (``input_batch = 0``, the default). When
the chip has wire resistance (:mod:`pcmjax.chip.parasitics`), ``G(t)`` is the effective
conductance of the array, so the targets also pre-compensate the IR drop.

Büchel et al. run the descent on the chip itself, on measured MVM outputs (closed loop).
Here it runs on the model (open loop) and is followed by an ordinary write: the optimiser
knows the device *statistics*, not the noise of the devices it will program, so what it
can correct is systematic: the bias of clipped
programming noise near zero, the conductance dependence of the drift exponent (devices of
low conductance drift faster, and global compensation cannot undo that), the compensation
scale, the IR drop, and the state dependence of the temperature coefficients
(:mod:`pcmjax.chip.temperature`) when configured. The targets are optimised with
``optax.adam`` and projected on ``[0, g_max]`` after every step; devices of the polarity
that a weight's sign leaves RESET stay RESET (HERMES unit-cell strategy).

References:
  J. Büchel et al., "Programming weights to analog in-memory computing cores by direct
  minimization of the matrix-vector multiplication error", IEEE JETCAS 13 (2023).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pcmjax.chip.age import age, drift_exponents
from pcmjax.chip.compensation import compensation_factor
from pcmjax.chip.program import write
from pcmjax.config import ChipConfig
from pcmjax.config.gdp import GDPConfig

__all__ = ["GDPConfig", "mvm_error", "optimise_targets"]

# A total conductance (µS) at most this large measured nothing: its compensation ratio is 1.
_EPS = 1e-6


def _aged(key, g_prog, g_target, device, cfg, t):
    """Conductances the MVM sees at ``t``: fresh drift exponents, then the chip's ageing."""
    k_nu, k_n = jax.random.split(key)
    nu = drift_exponents(k_nu, g_target, device, cfg)
    g, _ = age(k_n, g_prog, nu, g_target, device, cfg, t, variance=False)
    return g


def _alpha(g0, gt, mode):
    """``[C, 1, K]`` drift compensation from the total conductances at 0 and at ``t``."""
    ref0, ref_t = jnp.sum(g0, axis=(1, 2)), jnp.sum(gt, axis=(1, 2))  # [C, K], as the reference read
    return compensation_factor(ref0, ref_t, mode, floor=_EPS)[:, None, :]


def mvm_error(key, u, w_star, device, cfg: ChipConfig, x=None):
    """One sample of the GDP loss: ``‖x · E‖²`` per input vector (summed over every output
    of every core), averaged over the inputs and over ``times_s``.

    Args:
      key: a ``jax.random`` key (programming, drift and noise samples).
      u: ``[C, 2, R, K]`` targets divided by ``g_max``.
      w_star: ``[C, R, K]`` ideal weights in units of ``w_max``.
      device: device model.
      cfg: :class:`~pcmjax.ChipConfig` (static).
      x: ``[C, B, R]`` inputs, or ``None`` for the exact expectation over independent
        uniform inputs in [−1, 1] (``E[x²] = 1/3``).

    Returns:
      scalar loss.
    """
    g_max = device.g_max
    g_target = u * g_max
    k_w, k_0, k_t = jax.random.split(key, 3)
    g_prog = write(k_w, g_target, device, cfg, cfg.program.gdp.write)
    g0 = _aged(k_0, g_prog, g_target, device, cfg, 0.0)
    total = 0.0
    for i, t in enumerate(cfg.program.gdp.times_s):
        gt = _aged(jax.random.fold_in(k_t, i), g_prog, g_target, device, cfg, t)
        alpha = _alpha(g0, gt, cfg.drift_compensation)
        err = alpha * (gt[:, 0] - gt[:, 1]) / g_max - w_star
        if x is None:
            total = total + jnp.sum(err * err) / 3.0
        else:
            y = jnp.einsum("cbr,crk->cbk", x, err)
            total = total + jnp.sum(y * y) / x.shape[1]
    return total / len(cfg.program.gdp.times_s)


def optimise_targets(key, g_target, device, cfg: ChipConfig, x=None, return_history: bool = False):
    """Per-sign programming targets that minimise the MVM error (see the module docstring).

    Args:
      key: a ``jax.random`` key (noise samples and random inputs of the optimisation;
        independent of the key the devices are then programmed with).
      g_target: ``[C, 2, R, K]`` mapped targets, µS.
      device: device model.
      cfg: :class:`~pcmjax.ChipConfig` whose ``program.gdp`` sets the optimisation.
      x: optional ``[C, B, R]`` inputs to draw each step's batch from (e.g. the layer's
        real activations); default: uniform random inputs.
      return_history: also return the loss of every step.

    Returns:
      ``[C, 2, R, K]`` targets in ``[0, g_max]``, µS (and ``[steps]`` losses).
    """
    p = cfg.program.gdp
    g_max = device.g_max
    u0 = jnp.clip(g_target / g_max, 0.0, 1.0)
    active = g_target > 0
    # The same arithmetic as the loss applies to the targets, so that a chip without noise
    # or drift has exactly zero error (and gradient) at the mapped targets.
    g0 = u0 * g_max
    w_star = (g0[:, 0] - g0[:, 1]) / g_max
    # The device model is a constant here: gradients reach the targets only.
    device = jax.lax.stop_gradient(device)
    # Cosine decay: the gradients are noisy (a few noise samples per step), so the step
    # size shrinks to let the targets settle.
    # eps well above float32 round-off of the gradient (~1e-7), which Adam would otherwise
    # blow up to full steps where the error is already zero; real gradients are ~1e-2.
    # optax is imported here, when a chip is programmed with GDP, not when pcmjax is: the
    # command line's start-up (`pcmjax --help`) does not pay for it.
    import optax

    opt = optax.adam(optax.cosine_decay_schedule(p.learning_rate, max(p.steps, 1)), eps=1e-4)

    def sample_inputs(k):
        if x is not None:
            idx = jax.random.randint(k, (max(p.input_batch, 1),), 0, x.shape[1])
            return x[:, idx]
        if p.input_batch == 0:
            return None
        return jax.random.uniform(k, (u0.shape[0], p.input_batch, u0.shape[2]), minval=-1.0, maxval=1.0)

    def loss_fn(u, k):
        k_x, k_n = jax.random.split(k)
        xb = sample_inputs(k_x)
        keys = jax.random.split(k_n, p.samples)
        return jnp.mean(jax.vmap(lambda kk: mvm_error(kk, u, w_star, device, cfg, xb))(keys))

    def step(carry, i):
        u, opt_state = carry
        loss, grad = jax.value_and_grad(loss_fn)(u, jax.random.fold_in(key, i))
        grad = jnp.where(active, grad, 0.0)
        updates, opt_state = opt.update(grad, opt_state, u)
        u = jnp.where(active, jnp.clip(optax.apply_updates(u, updates), 0.0, 1.0), 0.0)
        return (u, opt_state), loss

    (u, _), losses = jax.lax.scan(step, (u0, opt.init(u0)), jnp.arange(p.steps))
    out = u * g_max
    return (out, losses) if return_history else out
