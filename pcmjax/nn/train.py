"""A small optax training loop for analog networks (float or hardware-aware) and accuracy."""

from __future__ import annotations

import time
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pcmjax._validate import check_choice, check_float, check_instance, check_int, check_key
from pcmjax.config.hwa import HWAConfig
from pcmjax.nn.layers import Mode, analog_layers, clip_weights, set_mode

TrainMode = Literal["digital", "hwa"]
TRAIN_MODES = get_args(TrainMode)


def _loss(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def _train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _predict(model, x):
    return jnp.argmax(model(x), axis=-1)


def train(key, model, x, y, *, mode: TrainMode | None = None, hwa: HWAConfig | None = None, epochs: int = 30,
          batch_size: int = 64, learning_rate: float = 1e-3, weight_decay: float = 1e-4,
          optimizer: optax.GradientTransformation | None = None, x_val=None, y_val=None,
          augment=None, verbose: bool = False) -> dict:
    """Train ``model`` in place on ``(x, y)`` with softmax cross-entropy.

    Args:
      key: a ``jax.random`` key: the order of the examples in every epoch (and the keys
        given to ``augment``). The HWA noise comes from the layers' own ``rngs``.
      model: an ``nnx.Module`` returning logits.
      x, y: training inputs ``[N, ...]`` and integer labels ``[N]`` (NumPy or JAX).
      mode: if given, the mode of every analog layer during training (``"digital"`` or
        ``"hwa"``); it stays set afterwards. ``"hwa"`` needs analog layers (a plain
        Flax model: :func:`pcmjax.nn.convert` it first). Layers whose input range was
        never measured measure it on the training batches (a running estimate).
      hwa: with ``mode="hwa"``, the :class:`HWAConfig` of every layer (default: each
        layer's own).
      epochs, batch_size: passes over the data and examples per step (the last partial
        batch of an epoch is dropped).
      learning_rate, weight_decay: AdamW with a cosine-decayed learning rate.
      optimizer: an optax transformation replacing the default AdamW.
      x_val, y_val: optional validation set, evaluated (digitally) after every epoch.
      augment: optional ``augment(key, x_batch) -> x_batch`` on NumPy arrays (e.g. random
        crops and flips), called for every training batch with a fresh ``jax.random`` key.
      verbose: print a line per epoch.

    Returns:
      ``{"loss": [per epoch], "val_accuracy": [per epoch], "seconds": float}``. In HWA
      mode the kernels are clipped at the end (:func:`pcmjax.nn.clip_weights`), so the
      weights deployed are the ones training saw.
    """
    check_key(key)
    if hwa is not None:
        check_instance("hwa", hwa, HWAConfig)
    if mode is not None:
        check_choice("mode", mode, TRAIN_MODES)
        if mode == "hwa" and not analog_layers(model):
            raise ValueError("mode='hwa' trains analog layers, but the model has no analog layers; make them with "
                             "pcmjax.nn.convert(model, data=x) first (or train digitally with mode=None).")
        set_mode(model, mode, hwa=hwa)
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_float("learning_rate", learning_rate, 0.0, lo_open=True)
    check_float("weight_decay", weight_decay, 0.0)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of examples, got {x.shape[0]} and {y.shape[0]}.")
    n = x.shape[0]
    bs = min(batch_size, n)
    steps_per_epoch = n // bs
    tx = optimizer or optax.adamw(optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch),
                                  weight_decay=weight_decay)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    history = {"loss": [], "val_accuracy": []}
    t0 = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        k_perm, k_aug = jax.random.split(jax.random.fold_in(key, epoch))
        perm = np.asarray(jax.random.permutation(k_perm, n))
        losses = []
        for s in range(steps_per_epoch):
            idx = perm[s * bs:(s + 1) * bs]
            xb = x[idx] if augment is None else augment(jax.random.fold_in(k_aug, s), x[idx])
            losses.append(_train_step(model, opt, jnp.asarray(xb), jnp.asarray(y[idx])))
        history["loss"].append(float(jnp.mean(jnp.stack(losses))))
        if x_val is not None:
            history["val_accuracy"].append(accuracy(model, x_val, y_val, mode="digital"))
        if verbose:
            val = f", val acc {history['val_accuracy'][-1]:.4f}" if x_val is not None else ""
            print(f"epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f}{val}", flush=True)
    model.eval()
    if any(getattr(m, "mode", None) == "hwa" for _, m in nnx.iter_modules(model)):
        clip_weights(model)
    history["seconds"] = time.perf_counter() - t0
    return history


def predict(model, x, *, mode: Mode | None = None, batch_size: int = 1024):
    """Class predictions ``[N]`` of ``model`` (in inference view: frozen statistics)."""
    view = nnx.view(model, use_running_average=True, raise_if_not_found=False)
    if mode is not None:
        view = nnx.view(view, mode=mode)
    x = np.asarray(x, np.float32)
    out = [_predict(view, jnp.asarray(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)]
    return np.asarray(jnp.concatenate(out))


def accuracy(model, x, y, *, mode: Mode | None = None, batch_size: int = 1024) -> float:
    """Fraction of ``x`` classified as ``y`` (``mode``: evaluate in that mode, e.g. digital)."""
    return float(np.mean(predict(model, x, mode=mode, batch_size=batch_size) == np.asarray(y)))


def deployed_accuracy(deployed, key, x, y, *, state=None, calibration=None) -> jax.Array:
    """Accuracy of a deployed network (``state``/``calibration`` default to its own; jit/vmap-able)."""
    state = deployed.state if state is None else state
    calibration = deployed.calibration if calibration is None else calibration
    logits = deployed.apply(state, calibration, key, x)
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)
