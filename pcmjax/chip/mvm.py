"""The matrix-vector product of every core at once (DESIGN.md, PHYSICS.md §2.4, §4).

The public end of the data path: a prepared :class:`~pcmjax.ChipState` (mapped,
programmed and aged by :func:`~pcmjax.program_chip` and ``at_time``) is read
(:mod:`pcmjax.chip.read`: PWM charge, per-read noise, CCO ADC counts) and the counts go
through the digital unit (:mod:`pcmjax.periphery.ldpu`: per-column affine, drift
compensation, activation). The core axis is an array axis: one batched contraction
computes all cores.
"""

from __future__ import annotations

import jax

from pcmjax._validate import check_choice, check_finite_array, check_inputs, check_instance, check_key
from pcmjax.chip.conv import ConvGeometry, conv_contract
from pcmjax.chip.read import make_read
from pcmjax.chip.state import ChipState
from pcmjax.config import ACTIVATION_NAMES, Activation
from pcmjax.periphery.ldpu import digital_unit

__all__ = ["mvm", "conv_mvm"]


def mvm(key, state: ChipState, x, activation: Activation | None = None):
    """Matrix-vector products on every programmed core.

    Args:
      key: a ``jax.random`` key (per-read and ADC noise).
      state: a :class:`ChipState` (from ``program_chip`` / ``at_time``).
      x: ``[cores, batch, rows]`` inputs in [−1, 1] (values beyond ±1 saturate).
      activation: digital-unit activation (default: ``state.cfg.activation``).

    Returns:
      ``[cores, batch, cols]`` outputs in weight units: ``≈ x @ W`` per core.
    """
    activation = _check_read(key, state, activation)
    x = check_inputs(x, state.n_cores, state.rows)
    return _mvm(key, state, x, activation)


def _check_read(key, state, activation) -> Activation:
    """The checks every MVM entry makes: key, one unbatched state; returns the activation."""
    check_instance("state", state, ChipState)
    check_key(key)
    if state.g_prog.ndim != 4:
        raise ValueError(
            f"state has extra leading axes (conductances of shape {state.g_prog.shape}); "
            "use jax.vmap over chip instances."
        )
    activation = state.cfg.activation if activation is None else activation
    check_choice("activation", activation, ACTIVATION_NAMES)
    return activation


def _mvm_impl(key, state: ChipState, x, activation: Activation, geometry: ConvGeometry | None = None):
    contract = None if geometry is None else conv_contract(geometry)
    with jax.named_scope("read"):
        counts = make_read(state.cfg, contract=contract)(key, x, state.w, state.var, state.adc_params())
    with jax.named_scope("digital_unit"):
        return digital_unit(counts, state.gamma, state.beta, state.comp, activation)


_mvm = jax.jit(_mvm_impl, static_argnames=("activation", "geometry"))


def conv_mvm(key, state: ChipState, image, geometry: ConvGeometry, activation: Activation | None = None):
    """The MVMs of every output pixel of a convolution, read from the image (:mod:`pcmjax.chip.conv`).

    Equal to ``mvm(key, state, x)`` with ``x`` each core's row chunk of the image's
    patches, up to the order of the additions (one- and four-phase reads).

    Args:
      key: a ``jax.random`` key (per-read and ADC noise).
      state: a :class:`ChipState` whose cores hold the kernel matrix's row chunks
        ``geometry.row_chunks`` (one per core).
      image: ``[N, *spatial, in_features]`` inputs in [−1, 1].
      geometry: the convolution (:class:`pcmjax.chip.conv.ConvGeometry`).
      activation: digital-unit activation (default: ``state.cfg.activation``).

    Returns:
      ``[cores, N · prod(output spatial), cols]`` outputs in weight units.
    """
    activation = _check_read(key, state, activation)
    check_instance("geometry", geometry, ConvGeometry)
    image = check_finite_array(image, "image")
    n = len(geometry.kernel_size)
    if image.ndim != n + 2 or image.shape[-1] != geometry.in_features:
        raise ValueError(f"image must have shape [N, {n} spatial axes, in_features={geometry.in_features}], got "
                         f"shape {tuple(image.shape)}.")
    if len(geometry.row_chunks) != state.n_cores:
        raise ValueError(f"a convolution read needs one row chunk per core; got {len(geometry.row_chunks)} chunks "
                         f"for {state.n_cores} cores.")
    return _mvm(key, state, image, activation, geometry)
