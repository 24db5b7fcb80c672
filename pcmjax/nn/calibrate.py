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

Matching each layer's output is the right goal for gain and offset errors, not for the
error that remains: device-to-device drift spread and 1/f noise, random within a column,
reach the output layer as noise on its logits that no per-column affine removes, and
noisy logits are over-confident. :func:`fit_readout` (``readout_steps`` of
:func:`make_calibrator`) therefore refits the output layer's ``γ'``, ``β'`` for the loss
that matters: the KL divergence of the chip's predictive distribution from the digital
network's, on the same unlabelled data. It shrinks the logits where they are noisy (a
per-column temperature) and re-centres them; a convex fit on one recorded forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pcmjax._validate import check_bool, check_float, check_instance, check_int, check_key
from pcmjax.nn._context import layer_call_order
from pcmjax.nn.deploy import DeployedModel, identity_calibration, model_inputs
from pcmjax.nn.layers import analog_layers
from pcmjax.nn.recurrent import CELLS

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


def readout_layer(deployed: DeployedModel, x):
    """The output layer that :func:`fit_readout` refits, or a ValueError saying why there is none.

    It is the last analog layer the forward pass calls, and its output must be the
    network's output (logits), with a bias (if any) of one value per output column.

    Args:
      deployed: a :class:`DeployedModel`.
      x: example inputs ``[N, ...]`` (shapes and dtype only).

    Returns:
      ``(index, bias [cols])``: the layer's ``chip_index`` and its bias (zeros without one).
    """
    i = layer_call_order(deployed, x)[-1]
    out, ref = jax.eval_shape(lambda v: deployed.reference(v, record=True), x[:1])
    if tuple(ref[i].shape) != tuple(out.shape):
        raise ValueError(f"readout calibration needs a network whose output is its last analog layer's output "
                         f"(logits), got an output of shape {tuple(out.shape)} after a layer output of shape "
                         f"{tuple(ref[i].shape)}.")
    layer = [m for _, m in analog_layers(nnx.merge(deployed.ref_graphdef, deployed.params))][i]
    cols = deployed.layout.layers[i].shape[1]
    b = None if isinstance(layer, tuple(CELLS.values())) or not getattr(layer, "use_bias", False) else layer.bias
    if b is None:
        return i, jnp.zeros((cols,), jnp.float32)
    if int(np.prod(b.shape)) != cols:
        raise ValueError(f"readout calibration needs a bias per output column, the output layer's has shape {b.shape}.")
    return i, jnp.asarray(b[...], jnp.float32).reshape(cols)


def _fit_readout(deployed, readout, state, calibration, key, x, ref_out, steps, learning_rate):
    i, bias = readout
    out = deployed.apply(state, calibration, key, x)
    cols = bias.shape[0]
    y0, log_p = out.reshape(-1, cols), jax.nn.log_softmax(ref_out.reshape(-1, cols), axis=-1)

    def kl(p):  # the refit output is a ⊙ y0 + c, a per-column affine of the recorded one
        return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(y0 * p[0] + p[1], axis=-1)), axis=-1))

    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

    def step(carry, _):
        p, opt_state = carry
        loss, g = jax.value_and_grad(kl)(p)
        updates, opt_state = tx.update(g, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    p = (jnp.ones((cols,)), jnp.zeros((cols,)))
    (p, _), losses = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
    a, c = p
    gamma, beta = list(calibration["gamma"]), list(calibration["beta"])
    gamma[i] = a * gamma[i]  # a (y0 − b) + c + b with y0 = γ m + β + b
    beta[i] = a * beta[i] + c + (a - 1.0) * bias
    return dict(calibration, gamma=tuple(gamma), beta=tuple(beta)), losses


def fit_readout(deployed: DeployedModel, key, data, *, state=None, calibration=None, steps: int = 300,
                learning_rate: float = 3e-2):
    """Refit the output layer's per-column ``γ'``, ``β'`` to the digital network's predictive distribution.

    One chip forward pass on ``data`` records the network's output (logits); then the
    output layer's per-column affine is fitted by Adam to minimise the mean KL divergence
    ``KL(softmax(digital) ‖ softmax(chip))`` over the examples (and tokens). The fit is
    convex in the affine and costs no further chip passes. Use it after the layer-wise
    calibration (:func:`calibrate`), or alone after global drift compensation.

    Args:
      deployed: a :class:`DeployedModel` whose output is its last analog layer's output.
      key: a ``jax.random`` key (read noise of the recorded pass).
      data: unlabelled inputs ``[N, ...]`` (or an ``(x, y)`` pair).
      state: the chip state (default: the model's own).
      calibration: the calibration to start from (default: the model's own).
      steps: Adam steps (cosine-decayed learning rate).
      learning_rate: initial Adam learning rate.

    Returns:
      ``(calibration, losses[steps])``: the calibration with the output layer's ``gamma``
      and ``beta`` replaced, and the KL divergence (nats) at every step. jit/vmap-able
      over ``state`` and ``key``.
    """
    check_instance("deployed", deployed, DeployedModel)
    check_key(key)
    x = _as_inputs(data)
    check_int("steps", steps, 1)
    check_float("learning_rate", learning_rate, 0.0, lo_open=True)
    state = deployed._programmed_state() if state is None else state
    calibration = deployed.calibration if calibration is None else calibration
    return _fit_readout(deployed, readout_layer(deployed, x), state, calibration, key, x, deployed.reference(x), steps,
                        learning_rate)


def make_calibrator(deployed: DeployedModel, data, *, steps: int = 200, learning_rate: float = 1e-2,
                    batch_size: int | None = 128, learn_input_scales: bool = True, optimizer=None,
                    readout_steps: int = 0):
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
      readout_steps: if positive, then refit the output layer for the network's output
        distribution (:func:`fit_readout`, this many steps; the network's output must be
        logits of its last analog layer).

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
    check_int("readout_steps", readout_steps, 0)
    readout = readout_layer(deployed, x) if readout_steps else None
    n = x.shape[0]
    bs = n if batch_size is None or batch_size >= n else int(batch_size)
    ref_out, ref = deployed.reference(x, record=True)
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
        cal = _unpack(params)
        if readout is not None:
            cal, _ = _fit_readout(deployed, readout, state, cal, jax.random.fold_in(key, steps), x, ref_out,
                                  readout_steps, 3e-2)
        return cal, losses

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
              batch_size: int | None = 128, learn_input_scales: bool = True, optimizer=None,
              readout_steps: int = 0) -> DeployedModel:
    """Learn the digital units' per-column ``γ'``/``β'`` (and input ranges) of a deployed network.

    Args:
      deployed: a :class:`DeployedModel`.
      key: a ``jax.random`` key (ageing to ``t``, read noise during calibration).
      data: unlabelled calibration inputs ``[N, ...]`` (a few hundred examples suffice).
      t: seconds since programming at which to calibrate (default: the deployed
        model's current time); the returned model is at that time.
      steps, learning_rate, batch_size, learn_input_scales, optimizer, readout_steps: see
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
                         learn_input_scales=learn_input_scales, optimizer=optimizer, readout_steps=readout_steps)
    cal, losses = jax.jit(fn)(deployed.state, k_cal)
    out = deployed.replace(calibration=cal)
    out.calibration_losses = losses
    return out
