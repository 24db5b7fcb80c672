"""The read: PWM input charge on the bit lines, per-read noise, CCO ADC (PHYSICS.md §2.4, §4).

The fourth stage of the data path (map → program → age → **read** → digital unit), and
the only place a conversion is written. :func:`make_read` builds, from a chip config, a
pure function ``read(key, x, w, var, adc) -> counts`` (jax-md style: the config is bound
once, the pipeline composes the function). One conversion of a column ``k`` is

    s_k     = Σ_i q_i w_ik                                  (PWM charge, q = pwm(x))
    u_k     = a (1 + δ_k) s_k + o_k + n_k                    (oscillator input, counts)
    count_k = adc(u_k)                                       (rounding, saturation, b_k)

with ``n_k`` Gaussian of variance ``σ_ADC² + a²(1 + δ_k)² Σ_i q_i² σ_ik²``: the per-read
conductance noise of every device (variance ``σ_ik²``, §2.4) and the ADC's own noise,
sampled once per conversion from the counter-based normals of :mod:`pcmjax._random`.
The second contraction of ``q²`` against the variances costs one more ``einsum``; it is
skipped when the chip has no per-read noise.

Three reads are made of it:

* ``"one_phase"``: signed inputs against signed weights ``w = (G⁺ − G⁻)/g_max``, one
  conversion (HERMES default); positive and negative inputs see the gains ``1 ± α``
  (``polarity_asymmetry``).
* ``"four_phase"``: each input sign against each device polarity, four conversions whose
  counts are combined with signs (§4.2b): offsets cancel, the ADC noise adds four times.
* ``"reference"``: the drift-compensation reference read (§5): a non-negative input
  against each device polarity in its own conversion; the offset-corrected counts of the
  two are summed (the column's total conductance, in counts). The compensation's own
  input, one amplitude on the driven rows, is read by :func:`uniform_reference`: the
  same conversions, with each charge as a masked row sum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import jax.numpy as jnp

from pcmjax import _random
from pcmjax._validate import check_choice
from pcmjax.config import ChipConfig
from pcmjax.periphery.adc import adc_transfer
from pcmjax.periphery.pwm import pwm_encode

# The MVM reads of ``ChipConfig.read_phases`` (pcmjax.config.ReadMode) and the reference read.
ReadKind = Literal["one_phase", "four_phase", "reference"]
READ_KINDS = get_args(ReadKind)
Read = Callable[..., "jnp.ndarray"]


def make_read(cfg: ChipConfig, kind: ReadKind | None = None, contract=None) -> Read:
    """The read of a chip config: ``read(key, x, w, var, adc) -> counts``.

    Args:
      cfg: chip config (PWM, ADC, per-read noise, polarity asymmetry).
      kind: ``"one_phase"``, ``"four_phase"`` or ``"reference"``; default: the MVM read of
        ``cfg.read_phases``.
      contract: the charges of the encoded inputs in place of the MVM reads' ``einsum``
        (and of their squares against the variances): a convolution read
        (:func:`pcmjax.chip.conv.conv_contract`), whose ``x`` is an image. One-phase:
        ``contract(q, w[:, 0]) -> [C, B, K]``; four-phase: ``contract(qs, w) -> [C, 2, 2, B, K]``
        with ``qs`` the image's positive and negative parts stacked first. Not for the
        reference read.

    Returns:
      ``read(key, x, w, var, adc)``, a pure function (jit-, vmap- and grad-able) of

      * ``key``: a ``jax.random`` key (per-read and ADC noise);
      * ``x``: ``[C, B, R]`` inputs in [−1, 1] (PWM-encoded here; non-negative for
        ``"reference"``);
      * ``w``: ``[C, P, R, K]`` conductances normalised by ``g_max``: ``P = 1`` signed
        weights (``"one_phase"``), ``P = 2`` the positive and negative polarity;
      * ``var``: per-read variances of ``w``, same shape;
      * ``adc``: per-column ADC parameters ``[C, K]`` (``gain``, ``offset``, ``nonlin``,
        and ``offset_est`` for ``"reference"``), as ``ChipState.adc_params()``;

      returning ``[C, B, K]`` counts (signed for the MVM reads; offset-corrected total
      over both polarities for ``"reference"``).
    """
    kind = {1: "one_phase", 4: "four_phase"}[cfg.read_phases] if kind is None else kind
    check_choice("kind", kind, READ_KINDS)
    if contract is not None and kind == "reference":
        raise ValueError("a contraction in place of the einsum is for the MVM reads (one- or four-phase), not "
                         "kind='reference'.")
    convert = _make_convert(cfg)

    def one_phase(key, x, w, var, adc):
        q = pwm_encode(x, cfg.pwm)
        if cfg.polarity_asymmetry > 0:
            q = q * (1.0 + cfg.polarity_asymmetry * jnp.sign(q))
        return convert(key, contract or "cbr,crk->cbk", q, w[:, 0], var[:, 0], adc)

    def four_phase(key, x, w, var, adc):
        q = pwm_encode(x, cfg.pwm)
        parts = [jnp.maximum(q, 0.0), jnp.maximum(-q, 0.0)]  # the input's two signs
        if contract is not None:  # an image: its signs stacked first
            c4 = convert(key, contract, jnp.stack(parts), w, var, adc)
        else:  # [C, 2, B, R]
            c4 = convert(key, "cpbr,cqrk->cpqbk", jnp.stack(parts, axis=1), w, var, adc)
        return _combine_phases(c4)

    def reference(key, x, w, var, adc):
        q = pwm_encode(x, cfg.pwm)
        c2 = convert(key, _polarity_charges, q, w, var, adc)  # [C, 2, B, K]
        return _polarity_total(c2, adc)

    return {"one_phase": one_phase, "four_phase": four_phase, "reference": reference}[kind]


def _polarity_charges(q, w):
    """``einsum("cbr,cqrk->cqbk", q, w)`` as a broadcast product summed over the rows.

    The reference read has a batch of one or a few inputs: as a ``dot`` XLA:CPU first
    transposes the whole ``[C, 2, R, K]`` operand (a copy of every device's conductance at
    every time evaluated); summed over the rows, it is one fused pass over them.
    """
    return jnp.sum(q[:, None, :, :, None] * w[:, :, None, :, :], axis=3)


def _combine_phases(c4):
    """``[C, 2, 2, B, K]`` counts of a four-phase read → ``[C, B, K]``.

    ``c4[:, p, q]`` is input sign ``p`` (+, −) against device polarity ``q`` (G⁺, G⁻): the
    conversions count with sign + where the two agree and − where they differ. Written as
    adds: as an ``einsum`` with a 2×2 sign matrix, XLA:CPU may run it as a matrix product
    over the four phases (alone at full-chip size, 39 ms against 2 ms for the adds).
    """
    return (c4[:, 0, 0] - c4[:, 0, 1]) + (c4[:, 1, 1] - c4[:, 1, 0])


def _polarity_total(c2, adc):
    """``[C, 2, ...]`` counts of both polarities → their offset-corrected sum ``[C, ...]``.

    Written as an add: XLA:CPU may run a sum over this axis of two as a library reduction
    (alone at full-chip size, 25 ms against 1.4 ms for the add). The result is the same.
    """
    est = _per_column(adc["offset_est"], c2.ndim - 1)
    return (c2[:, 0] - est) + (c2[:, 1] - est)


def _per_column(v, ndim: int):
    """``[C, K]`` per-column parameters broadcast against ``ndim``-dimensional conversions."""
    return v.reshape(v.shape[:1] + (1,) * (ndim - 2) + v.shape[-1:])


def _make_convert(cfg: ChipConfig):
    """ADC conversions of the charges ``einsum(spec, q, w)`` (or ``spec(q, w)``), one per output element."""

    def convert(key, spec, q, w, var, adc):
        contract = (lambda a, b: jnp.einsum(spec, a, b)) if isinstance(spec, str) else spec
        return _convert(cfg, key, contract(q, w), lambda: contract(q * q, var), adc)

    return convert


def _convert(cfg: ChipConfig, key, s, read_variance, adc):
    """Counts of the charges ``s``; ``read_variance()``: their per-read-noise variance (charge²)."""
    gain = _per_column(cfg.adc.counts_per_unit(cfg.rows) * adc["gain"], s.ndim)
    u = gain * s + _per_column(adc["offset"], s.ndim)
    if cfg.read_noise or cfg.adc.noise_std > 0:
        var_counts = jnp.zeros_like(s) + cfg.adc.noise_std**2
        if cfg.read_noise:
            var_counts = var_counts + gain**2 * read_variance()
        u = u + jnp.sqrt(var_counts) * _random.normal(key, s.shape)
    return adc_transfer(u, _per_column(adc["nonlin"], s.ndim), cfg.adc)


def uniform_reference(key, cfg: ChipConfig, amplitude, rows, w, var, adc):
    """The reference read of one uniform input: ``amplitude`` on the rows ``rows``, 0 elsewhere.

    The same conversions as ``make_read(cfg, "reference")`` of that input (one per column
    and polarity, the same normals), with the charge of each column written as the
    encoded amplitude times the sum of its driven devices: a masked reduction over the
    rows, one pass over the conductances and variances (as a product with the input
    vector, XLA:CPU makes it a batch-1 matrix product and first copies every operand).
    The sums are the same up to rounding (the order of the additions).

    Args:
      key: a ``jax.random`` key (per-read and ADC noise).
      cfg: chip config.
      amplitude: input amplitude in [0, 1] (scalar).
      rows: ``[C, R]`` bool, the driven rows.
      w, var: ``[C, 2, R, K]`` conductances and per-read variances, normalised.
      adc: per-column ADC parameters (``gain``, ``offset``, ``nonlin``, ``offset_est``).

    Returns:
      ``[C, K]`` offset-corrected counts summed over the two polarities.
    """
    q = pwm_encode(jnp.asarray(amplitude, jnp.float32), cfg.pwm)
    driven = rows[:, None, :, None]

    def row_sum(a):
        return jnp.sum(jnp.where(driven, a, 0.0), axis=2)  # [C, 2, K]

    c2 = _convert(cfg, key, q * row_sum(w), lambda: (q * q) * row_sum(var), adc)
    return _polarity_total(c2, adc)
