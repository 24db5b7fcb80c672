"""Local digital processing unit of a core (PHYSICS.md §4.3).

Per column: ``y_k = γ_k · count_k + β_k`` followed by an activation. γ and β absorb the
conversion back to weight units, the ADC gain/offset calibration, drift compensation,
folded batch-norm and bias: they are what calibration learns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "identity": lambda y: y,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
}


def ldpu_affine(counts, gamma, beta):
    """``γ · counts + β`` with per-column γ, β broadcast over the batch axis."""
    return counts * gamma + beta


def apply_activation(y, activation: str):
    """Apply a named activation (``identity``, ``relu``, ``gelu``, ``sigmoid``, ``tanh``)."""
    try:
        fn = ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}.") from None
    return fn(y)
