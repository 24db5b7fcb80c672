"""Straight-through quantisers.

``round_ste`` rounds in the forward pass and passes the gradient through unchanged
(the straight-through estimator); saturation is done with ``jnp.clip`` whose gradient is
already 1 inside the range and 0 outside, so a quantiser ``round_ste(clip(x))`` passes
gradients straight through inside its range and blocks them outside.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def round_ste(x):
    """``jnp.round(x)`` with the identity as its gradient (straight-through)."""
    return jnp.round(x)


def _round_fwd(x):
    return jnp.round(x), None


def _round_bwd(_, g):
    return (g,)


round_ste.defvjp(_round_fwd, _round_bwd)


def quantize_symmetric(x, levels: int):
    """Clip ``x`` to [-1, 1] and round to ``levels`` steps per unit (straight-through).

    Gradient: 1 inside [-1, 1], 0 outside (saturation).
    """
    return round_ste(jnp.clip(x, -1.0, 1.0) * levels) / levels
