"""Local digital processing unit of a core (PHYSICS.md §4.3).

The last stage of the data path (map → program → age → read → **digital unit**). Per
column: ``y_k = (γ_k · count_k + β_k) · c_k`` followed by an activation. γ and β absorb
the conversion back to weight units, the ADC gain/offset calibration, folded batch-norm
and bias (they are what calibration learns); ``c_k`` is the drift-compensation factor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pcmjax._validate import check_choice
from pcmjax.config.periphery import ACTIVATION_NAMES, Activation

ACTIVATIONS = {
    "identity": lambda y: y,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
}
assert set(ACTIVATIONS) == set(ACTIVATION_NAMES), "every configurable activation is implemented here"


def calibrate(w_max, gain_est, offset_est, counts_per_unit: float, remove_offset: bool):
    """The digital unit's affine after the one-time ADC calibration.

    Args:
      w_max: ``[C, K]`` weight scale of each column (weight units per unit of charge).
      gain_est, offset_est: ``[C, K]`` calibrated ADC gain (relative) and offset (counts).
      counts_per_unit: the ADC's ``a`` (counts per unit of normalised charge).
      remove_offset: subtract the estimated offset (one-phase reads; four-phase reads
        cancel it in the analog domain).

    Returns:
      ``(gamma, beta)``, ``[C, K]`` each: counts → weight units.
    """
    gamma = w_max / (counts_per_unit * gain_est)
    beta = -gamma * offset_est if remove_offset else jnp.zeros_like(gamma)
    return gamma, beta


def ldpu_affine(counts, gamma, beta):
    """``γ · counts + β`` with per-column γ, β broadcast over the batch axis."""
    return counts * gamma + beta


def apply_activation(y, activation: Activation):
    """Apply a named activation (``identity``, ``relu``, ``gelu``, ``sigmoid``, ``tanh``)."""
    return ACTIVATIONS[check_choice("activation", activation, sorted(ACTIVATIONS))](y)


def digital_unit(counts, gamma, beta, scale, activation: Activation):
    """Counts of every core to outputs: per-column affine, compensation scale, activation.

    Args:
      counts: ``[C, B, K]`` ADC counts.
      gamma, beta: ``[C, K]`` affine (counts → weight units).
      scale: ``[C, K]`` drift-compensation factor.
      activation: the activation's name.

    Returns:
      ``[C, B, K]`` outputs in weight units (after the activation).
    """
    y = ldpu_affine(counts, gamma[:, None, :], beta[:, None, :]) * scale[:, None, :]
    return apply_activation(y, activation)
