"""Weights to target conductances (PHYSICS.md §1).

The first stage of the data path (**map** → program → age → read → digital unit).
"""

from __future__ import annotations

import jax.numpy as jnp

from pcmjax.config import ChipConfig


def weight_scale(weights, cfg: ChipConfig):
    """``w_max`` per tile or per column: abs-max, optionally clipped at ``k·std``.

    Args:
      weights: ``[cores, rows, cols]``.
      cfg: chip config (``w_max``, ``w_clip_sigma``).

    Returns:
      ``[cores, 1, cols]`` positive scales (an all-zero tile or column gets 1).
    """
    axes = (1, 2) if cfg.w_max == "tile" else (1,)
    absmax = jnp.max(jnp.abs(weights), axis=axes, keepdims=True)
    if cfg.w_clip_sigma is not None:
        std = jnp.std(weights, axis=axes, keepdims=True)
        absmax = jnp.minimum(absmax, cfg.w_clip_sigma * std)
    w_max = jnp.where(absmax > 0, absmax, 1.0)
    return jnp.broadcast_to(w_max, (weights.shape[0], 1, weights.shape[2]))


def weights_to_targets(weights, w_max, g_max):
    """Per-sign target conductances: ``G± = relu(±w / w_max) · g_max``.

    The side of the weight's sign is programmed; the other side is RESET (target 0).
    ``g_max`` is summed over the devices of one sign (HERMES: 20.7 µS with two).

    Returns:
      ``[cores, 2, rows, cols]`` in µS; index 0 = positive, 1 = negative side.
    """
    w_n = jnp.clip(weights / w_max, -1.0, 1.0)
    return jnp.stack([jnp.maximum(w_n, 0.0), jnp.maximum(-w_n, 0.0)], axis=1) * g_max


def map_weights(weights, g_max, cfg: ChipConfig):
    """The mapping stage: per-sign target conductances and the weight scale.

    Args:
      weights: ``[cores, rows, cols]``.
      g_max: the device model's ``g_max`` (µS, summed over the devices of one sign).
      cfg: chip config (``w_max``, ``w_clip_sigma``).

    Returns:
      ``(g_target, w_max)``: ``[cores, 2, rows, cols]`` targets (µS) and ``[cores, 1, cols]``
      scales.
    """
    w_max = weight_scale(weights, cfg)
    return weights_to_targets(weights, w_max, g_max), w_max
