"""End-to-end calibration of a deployed network by gradients through the simulated chip.

Per analog layer and output column, a multiplicative ``γ'`` and an additive ``β'``
(start 1 and 0) act on the digital units' output, a gain per core column scales each
row tile's partial sums before they are added (for layers split over several cores,
whose columns have their own ADCs), and per layer a factor scales the input range. They
are learned with optax on a small unlabelled calibration set, so that each
layer's output on the chip matches the digital network's output of that layer (mean
squared error, normalised by the reference's variance so every layer counts alike).
Layers run chained (each sees the chip's own previous outputs), so a layer also learns to
undo errors its predecessors left. Gradients pass through :func:`pcmjax.mvm`, whose PWM
and ADC quantisers are straight-through.

This is what the chip's digital units can do after drift: the per-core global drift
compensation rescales each core as a whole, but drift is state dependent (small
conductances drift faster), so columns drift apart; ADC gain, offset and nonlinearity
residuals add per-column errors. ``γ'``, ``β'`` are the per-column affine of the digital
unit (PHYSICS.md §4.3), so calibrated values cost nothing at inference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcmjax._validate import check_bool, check_float, check_instance, check_int, check_key
from pcmjax.nn.deploy import DeployedModel, identity_calibration, model_inputs

_EPS = 1e-8


def _as_inputs(data):
    if isinstance(data, (tuple, list)) and len(data) == 2 and np.ndim(data[1]) == 1:
        data = data[0]  # (x, y) pairs: labels are not used
    x = model_inputs(data, "data")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"data must be a batch of inputs [N, ...] with N >= 1, got shape {x.shape}.")
    return x


def _unpack(params):
    return {"gamma": params["gamma"], "beta": params["beta"], "tile_gamma": params["tile_gamma"],
            "input_scale": jnp.exp(params["log_input_scale"])}


def make_calibrator(deployed: DeployedModel, data, *, steps: int = 200, learning_rate: float = 1e-2,
                    batch_size: int | None = 128, learn_input_scales: bool = True, optimizer=None):
    """A pure function ``(state, key) → (calibration, losses)`` for one chip instance.

    Use it directly, or ``jax.vmap`` it over chip instances (a batched ``ChipState`` and
    keys) for Monte Carlo studies; :func:`calibrate` wraps it for one deployed model.

    Args:
      deployed: a :class:`DeployedModel` (its network and layout; the state is an argument).
      data: unlabelled calibration inputs ``[N, ...]`` (or an ``(x, y)`` pair).
      steps: optimiser steps.
      learning_rate: Adam learning rate (cosine-decayed to zero).
      batch_size: examples per step (``None`` or ``≥ N``: the whole set every step).
      learn_input_scales: also learn a factor on every layer's input range.
      optimizer: an optax ``GradientTransformation`` instead of the default Adam.

    Returns:
      ``fn(state, key) -> (calibration, losses[steps])``.
    """
    check_instance("deployed", deployed, DeployedModel)
    x = _as_inputs(data)
    check_int("steps", steps, 1)
    check_float("learning_rate", learning_rate, 0.0, lo_open=True)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    check_bool("learn_input_scales", learn_input_scales)
    n = x.shape[0]
    bs = n if batch_size is None or batch_size >= n else int(batch_size)
    _, ref = deployed.reference(x, record=True)
    n_layers = len(deployed.layout.layers)
    scale = [1.0 / (jnp.var(ref[i]) + _EPS) for i in range(n_layers)]
    tx = optimizer if optimizer is not None else optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

    def loss_fn(params, state, key, idx):
        cal = _unpack(params)
        if not learn_input_scales:
            cal["input_scale"] = jax.lax.stop_gradient(cal["input_scale"])
        xb = x[idx] if bs < n else x
        _, outs = deployed.apply(state, cal, key, xb, record=True)
        terms = [jnp.mean((outs[i] - (ref[i][idx] if bs < n else ref[i])) ** 2) * scale[i] for i in range(n_layers)]
        return sum(terms) / n_layers

    def fn(state, key):
        ident = identity_calibration(deployed.layout)
        params = {"gamma": ident["gamma"], "beta": ident["beta"], "tile_gamma": ident["tile_gamma"],
                  "log_input_scale": jnp.zeros((n_layers,))}
        opt_state = tx.init(params)

        def step(carry, i):
            params, opt_state = carry
            k = jax.random.fold_in(key, i)
            idx = jax.random.permutation(jax.random.fold_in(k, 1), n)[:bs]
            loss, grads = jax.value_and_grad(loss_fn)(params, state, k, idx)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, opt_state), jnp.arange(steps))
        return _unpack(params), losses

    return fn


def calibration_loss(deployed: DeployedModel, key, data, calibration=None) -> jax.Array:
    """The calibration objective of ``deployed`` (its state and calibration) on ``data``.

    Args:
      deployed: a programmed :class:`DeployedModel`.
      key: a ``jax.random`` key (read and ADC noise).
      data: inputs ``[N, ...]`` (or an ``(x, y)`` pair); measure on examples the
        calibration did not see to estimate how well it generalises.
      calibration: the calibration to evaluate (default: the model's own).

    Returns:
      scalar: the mean over layers of the normalised squared error of each layer's output.
    """
    check_instance("deployed", deployed, DeployedModel)
    check_key(key)
    x = _as_inputs(data)
    _, ref = deployed.reference(x, record=True)
    cal = deployed.calibration if calibration is None else calibration
    _, outs = deployed.apply(deployed._programmed_state(), cal, key, x, record=True)
    terms = [jnp.mean((outs[i] - ref[i]) ** 2) / (jnp.var(ref[i]) + _EPS) for i in range(len(ref))]
    return sum(terms) / len(terms)


def calibrate(deployed: DeployedModel, key, data, t=None, *, steps: int = 200, learning_rate: float = 1e-2,
              batch_size: int | None = 128, learn_input_scales: bool = True, optimizer=None) -> DeployedModel:
    """Learn the digital units' per-column ``γ'``/``β'`` (and input ranges) of a deployed network.

    Args:
      deployed: a :class:`DeployedModel`.
      key: a ``jax.random`` key (ageing to ``t``, read noise during calibration).
      data: unlabelled calibration inputs ``[N, ...]`` (a few hundred examples suffice).
      t: seconds since programming at which to calibrate (default: the deployed
        model's current time); the returned model is at that time.
      steps, learning_rate, batch_size, learn_input_scales, optimizer: see
        :func:`make_calibrator`.

    Returns:
      the calibrated :class:`DeployedModel`; its ``calibration_losses`` attribute holds
      the loss of every step.
    """
    check_instance("deployed", deployed, DeployedModel)
    check_key(key)
    deployed._programmed_state()  # a clear error for an unprogrammed template
    k_age, k_cal = jax.random.split(key)
    if t is not None:
        deployed = deployed.at_time(k_age, t)
    fn = make_calibrator(deployed, data, steps=steps, learning_rate=learning_rate, batch_size=batch_size,
                         learn_input_scales=learn_input_scales, optimizer=optimizer)
    cal, losses = jax.jit(fn)(deployed.state, k_cal)
    out = deployed.replace(calibration=cal)
    out.calibration_losses = losses
    return out
