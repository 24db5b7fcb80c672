"""Analog counterparts of ``nnx.LinearGeneral`` and ``nnx.Einsum`` (attention projections).

Each class *is* its Flax layer (a subclass, with the same constructor, attributes and
parameters ``kernel`` and ``bias``) plus the machinery of :class:`AnalogLayer`. In
``"digital"`` mode it runs Flax's own code, so a converted model gives exactly the
original's output. In ``"hwa"`` and ``"chip"`` modes the kernel is held as one matrix
``[contracted, produced]`` (the contracted axes of the kernel flattened into rows, its
output axes into columns) and every other axis of the input is a batch of MVMs:

* ``LinearGeneral(in_features=(d,), out_features=(heads, head_dim))``, a query, key or
  value projection of ``nnx.MultiHeadAttention``, is the ``d × heads·head_dim`` matrix;
  its output projection ``in_features=(heads, head_dim), axis=(-2, -1)`` the
  ``heads·head_dim × d`` matrix;
* ``Einsum("btd,dnh->btnh")`` is the ``d × n·h`` matrix, ``b·t`` MVMs.

Attention scores, softmax and the weighted sum of values involve no stored weights and
stay in the digital units.
"""

from __future__ import annotations

import math
import string

import jax
import jax.numpy as jnp
from flax import nnx

from pcmjax.config.hwa import HWAConfig
from pcmjax.nn import _context
from pcmjax.nn.layers import AnalogLayer


def _peek_key(rngs: nnx.Rngs):
    """The key the next ``rngs.params()`` will return, without drawing it."""
    stream = rngs.params
    return jax.random.fold_in(stream.key[...], stream.count[...])


def _norm_axes(axes, ndim: int) -> tuple[int, ...]:
    return tuple(sorted(a if a >= 0 else ndim + a for a in axes))


class AnalogLinearGeneral(AnalogLayer, nnx.LinearGeneral):
    """``nnx.LinearGeneral`` mapped onto PCM crossbars (same signature, plus ``mode`` and ``hwa``).

    The kernel ``[*in_features, *out_features]`` is the matrix ``[prod(in_features),
    prod(out_features)]``; the input's axes ``axis`` are flattened into one row vector
    per MVM. Kernels with ``batch_axis`` (one matrix per batch index) are not supported.

    Args:
      in_features: size(s) of the contracted input axes.
      out_features: size(s) of the output axes.
      axis: the input axes contracted (default: the last).
      use_bias: add a (digital) bias.
      rngs: ``nnx.Rngs`` (the ``params`` stream initialises the kernel, then the bias).
      mode: ``"digital"``, ``"hwa"`` or ``"chip"``.
      hwa: :class:`HWAConfig` used in ``"hwa"`` mode (default ``HWAConfig()``).
      **kwargs: further ``nnx.LinearGeneral`` arguments (``kernel_init``, ``dtype``, ...);
        the computation options matter in digital mode only.
    """

    def __init__(self, in_features, out_features, *, axis=-1, use_bias: bool = True, rngs: nnx.Rngs,
                 mode: str = "digital", hwa: HWAConfig | None = None, **kwargs):
        if kwargs.get("batch_axis"):
            raise ValueError(f"AnalogLinearGeneral does not support batch_axis (one matrix per batch index), "
                             f"got batch_axis={dict(kwargs['batch_axis'])!r}.")
        kernel_key = _peek_key(rngs)
        nnx.LinearGeneral.__init__(self, in_features, out_features, axis=axis, use_bias=use_bias, rngs=rngs,
                                   **kwargs)
        self._init_analog(rngs, kernel_key, mode, hwa)

    def matrix_shape(self) -> tuple[int, int]:
        return math.prod(self.in_features), math.prod(self.out_features)

    def matrix(self):
        return self.kernel[...].reshape(self.matrix_shape())

    def __call__(self, inputs, out_sharding=None, *, rngs=None):
        """The layer on ``inputs`` (any leading axes; ``axis`` of sizes ``in_features``).

        Args:
          inputs: ``[..., *in_features]`` (the contracted axes where ``axis`` says).
          out_sharding: passed to Flax in digital mode.
          rngs: optional key or ``nnx.Rngs`` (``hwa`` stream) for HWA noise.

        Returns:
          ``[...free axes, *out_features]``.
        """
        x = jnp.asarray(inputs)
        axes = _norm_axes(self.axis, x.ndim)
        got = tuple(x.shape[a] for a in axes)
        if got != tuple(self.in_features):
            raise ValueError(f"inputs must have sizes {tuple(self.in_features)} on axes {tuple(self.axis)}, "
                             f"got shape {x.shape}.")
        self._track_input(x)
        if self.mode == "digital":
            y = nnx.LinearGeneral.__call__(self, x, out_sharding=out_sharding)
        else:
            k = len(axes)
            xt = jnp.moveaxis(x, axes, tuple(range(x.ndim - k, x.ndim)))
            free = xt.shape[: x.ndim - k]
            n_in, _ = self.matrix_shape()
            y = self._analog_matmul(xt.reshape(-1, n_in), rngs).reshape(free + tuple(self.out_features))
            if self.bias is not None:
                y = y + jnp.reshape(self.bias[...], (1,) * len(free) + tuple(self.out_features))
        _context.record(self, y.reshape(-1, self.matrix_shape()[1]))  # one row per MVM, as the crossbars
        return y


def _einsum_parts(einsum_str: str, x_ndim: int | None = None):
    """Split ``"in,kernel->out"`` into the roles of its letters.

    ``x_ndim`` (the input's rank) sizes an ellipsis; ``None`` drops it (enough for the
    kernel's roles).

    Returns:
      ``(in_spec, k_spec, out_spec, batch, contracted, produced)``: the specs with any
      ``...`` replaced by capital letters, the input's letters kept in the output
      (batch, in input order), the kernel's letters summed with the input
      (contracted) and those passed to the output (produced), both in kernel order.

    Raises:
      ValueError: if the kernel is not one matrix (a kernel letter in the input and the
        output, only in the kernel, repeated, or an ellipsis in the kernel).
    """
    lhs, out_spec = einsum_str.replace(" ", "").split("->")
    in_spec, k_spec = lhs.split(",")
    if "..." in k_spec or any(k_spec.count(c) > 1 for c in k_spec):
        raise ValueError(f"einsum {einsum_str!r}: the kernel spec {k_spec!r} must name each axis once, "
                         "without an ellipsis.")
    if "..." in in_spec:
        n = 0 if x_ndim is None else x_ndim - (len(in_spec) - 3)
        fill = "".join(c for c in string.ascii_uppercase if c not in einsum_str)[:n]
        in_spec, out_spec = in_spec.replace("...", fill), out_spec.replace("...", fill)
    bad = [c for c in k_spec if (c in in_spec) == (c in out_spec)]
    if bad:
        raise ValueError(f"einsum {einsum_str!r} is not one matrix per call: kernel axes {bad} appear in both the "
                         "input and the output (one matrix per index) or in neither; exclude this layer.")
    contracted = "".join(c for c in k_spec if c in in_spec)
    produced = "".join(c for c in k_spec if c in out_spec)
    batch = "".join(c for c in in_spec if c in out_spec and c not in k_spec)
    return in_spec, k_spec, out_spec, batch, contracted, produced


class AnalogEinsum(AnalogLayer, nnx.Einsum):
    """``nnx.Einsum`` mapped onto PCM crossbars (same signature, plus ``mode`` and ``hwa``).

    The equation must make the kernel one matrix: each kernel axis is either summed
    with the input (a row axis) or passed to the output (a column axis), for example
    ``"btd,dnh->btnh"`` (rows ``d``, columns ``n·h``). The equation is fixed at
    construction (an ``einsum_str`` given per call is accepted only in digital mode).

    Args:
      einsum_str: the equation ``"input,kernel->output"``.
      kernel_shape: shape of the kernel.
      bias_shape: shape of the bias (``None``: no bias).
      rngs: ``nnx.Rngs`` (the ``params`` stream initialises the kernel, then the bias).
      mode: ``"digital"``, ``"hwa"`` or ``"chip"``.
      hwa: :class:`HWAConfig` used in ``"hwa"`` mode (default ``HWAConfig()``).
      **kwargs: further ``nnx.Einsum`` arguments (``kernel_init``, ``dtype``, ...); the
        computation options matter in digital mode only.
    """

    def __init__(self, einsum_str: str, kernel_shape, bias_shape=None, *, rngs: nnx.Rngs,
                 mode: str = "digital", hwa: HWAConfig | None = None, **kwargs):
        if not isinstance(einsum_str, str) or "->" not in einsum_str or einsum_str.count(",") != 1:
            raise ValueError(f"einsum_str must be an explicit two-operand equation 'in,kernel->out', "
                             f"got {einsum_str!r}.")
        _einsum_parts(einsum_str)
        kernel_key = _peek_key(rngs)
        nnx.Einsum.__init__(self, einsum_str, kernel_shape, bias_shape, rngs=rngs, **kwargs)
        self._init_analog(rngs, kernel_key, mode, hwa)

    def _roles(self, x_ndim=None):
        return _einsum_parts(self.einsum_str, x_ndim)

    def matrix_shape(self) -> tuple[int, int]:
        _, k_spec, _, _, contracted, produced = self._roles()
        size = dict(zip(k_spec, self.kernel_shape))
        return math.prod(size[c] for c in contracted), math.prod(size[c] for c in produced)

    def matrix(self):
        _, k_spec, _, _, contracted, produced = self._roles()
        return jnp.einsum(f"{k_spec}->{contracted}{produced}", self.kernel[...]).reshape(self.matrix_shape())

    def __call__(self, inputs, einsum_str=None, out_sharding=None, *, rngs=None):
        """The einsum of ``inputs`` with the kernel (plus the broadcast bias).

        Args:
          inputs: the einsum's first operand.
          einsum_str: digital mode only: an equation replacing the constructor's.
          out_sharding: passed to Flax in digital mode.
          rngs: optional key or ``nnx.Rngs`` (``hwa`` stream) for HWA noise.
        """
        x = jnp.asarray(inputs)
        self._track_input(x)
        if self.mode == "digital":
            y = nnx.Einsum.__call__(self, x, einsum_str, out_sharding=out_sharding)
            if einsum_str is None or einsum_str.replace(" ", "") == self.einsum_str:
                self._record(y, x.ndim)
            return y
        if einsum_str is not None and einsum_str.replace(" ", "") != self.einsum_str:
            raise ValueError(f"an analog Einsum computes its constructor's equation {self.einsum_str!r}; "
                             f"got einsum_str={einsum_str!r} in mode {self.mode!r}.")
        in_spec, k_spec, out_spec, batch, contracted, produced = self._roles(x.ndim)
        size = dict(zip(in_spec, x.shape)) | dict(zip(k_spec, self.kernel_shape))
        xb = jnp.einsum(f"{in_spec}->{batch}{contracted}", x)
        n_in, _ = self.matrix_shape()
        y = self._analog_matmul(xb.reshape(-1, n_in), rngs)
        y = y.reshape(tuple(size[c] for c in batch + produced))
        y = jnp.einsum(f"{batch}{produced}->{out_spec}", y)
        if self.bias is not None:
            y = y + jnp.reshape(self.bias[...], self._infer_broadcasted_bias_shape(self.einsum_str, x,
                                                                                  self.kernel[...]))
        self._record(y, x.ndim)
        return y

    def _record(self, y, x_ndim):
        """Record the output as the crossbars give it: one row per MVM, ``[rows, produced]``."""
        _, _, out_spec, batch, _, produced = self._roles(x_ndim)
        _context.record(self, jnp.einsum(f"{out_spec}->{batch}{produced}", y).reshape(-1, self.matrix_shape()[1]))


__all__ = ["AnalogLinearGeneral", "AnalogEinsum"]
