"""Analog layers: drop-in replacements for ``nnx.Linear`` and ``nnx.Conv``.

Both hold ``kernel`` ``[in, out]`` (``[*kernel_size, in, out]`` for a convolution) and
``bias`` exactly like their Flax counterparts, with the same constructor arguments and
initialisers, so a model can swap them in and load the same weights. A layer runs in one
of three modes (attribute ``mode``, or ``nnx.view(model, mode=...)``):

* ``"digital"``: the plain float computation (identical to ``nnx.Linear`` / ``nnx.Conv``);
* ``"hwa"``: hardware-aware training, the perturbations of :class:`HWAConfig`;
* ``"chip"``: the layer's tiles on a programmed chip; only inside a model made by
  :func:`pcmjax.nn.deploy`, which supplies the chip state.

Every layer keeps a running estimate of its input range, ``input_scale`` (an
:class:`InputScale` variable, like batch-norm statistics: updated while
``use_running_average`` is False, frozen by ``model.eval()``); the chip sees
``x / input_scale`` in [−1, 1], which is what the PWM encodes. A convolution is lowered
to image patches times the kernel matrix, exactly how it is mapped on the crossbars.

A new layer has no range (``input_scale`` 0) and there is no default one. A range is set
by :func:`pcmjax.nn.train` (the running estimate; the first step copies its batch's
statistic before that step's MVMs), by :func:`set_input_scales` or
:func:`pcmjax.nn.measure_input_ranges`, by ``pcmjax.nn.convert(model, data=...)``, or by
loading a checkpoint that holds it. Until then:

* :func:`pcmjax.nn.deploy` refuses the model with a ``ValueError`` naming the layers
  (:func:`missing_input_ranges`);
* an ``"hwa"`` forward pass with frozen statistics (``model.eval()``) uses the range of
  the batch at hand, the statistic the first training step would record;
* ``"digital"`` mode needs no range.
"""

from __future__ import annotations

import typing as tp
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pcmjax import _streams
from pcmjax._validate import check_choice, check_instance, check_int
from pcmjax.chip.patches import extract_patches
from pcmjax.config.hwa import HWAConfig
from pcmjax.nn import _context
from pcmjax.nn.hwa import clip_kernel, hwa_matmul, input_statistic

Mode = Literal["digital", "hwa", "chip"]
MODES = get_args(Mode)

default_kernel_init = nnx.initializers.lecun_normal()
default_bias_init = nnx.initializers.zeros_init()


class InputScale(nnx.BatchStat):
    """Running estimate of a layer's input range (not trained by gradients)."""


def _as_float(inputs, dtype):
    """Inputs as a float array: integers (uint8 pixels, say) are promoted, as ``nnx.Linear``
    and ``nnx.Conv`` promote them to their parameters' dtype."""
    x = jnp.asarray(inputs)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(dtype)


def _check_mode(mode) -> Mode:
    return check_choice("mode", mode, MODES)


class AnalogLayer(nnx.Module):
    """Shared machinery of :class:`AnalogLinear` and :class:`AnalogConv`."""

    def _init_analog(self, rngs: nnx.Rngs, kernel_key, mode: Mode, hwa: HWAConfig | None):
        if hwa is not None:
            check_instance("hwa", hwa, HWAConfig)
        self.mode = _check_mode(mode)
        self.hwa = HWAConfig() if hwa is None else hwa
        self.use_running_average = False
        self.chip_index: int | None = None
        self.input_scale = InputScale(jnp.zeros((), jnp.float32))  # 0: not yet measured
        # The noise stream derives from the kernel key without drawing from ``rngs``, so a
        # model initialises exactly like its nnx.Linear / nnx.Conv twin.
        self.rngs = nnx.Rngs(hwa=jax.random.fold_in(kernel_key, _streams.HWA))

    def set_view(self, mode: Mode | None = None, use_running_average: bool | None = None,
                 hwa: HWAConfig | None = None):
        """Hook of ``nnx.view``: ``nnx.view(model, mode="hwa")``."""
        if mode is not None:
            self.mode = _check_mode(mode)
        if use_running_average is not None:
            self.use_running_average = use_running_average
        if hwa is not None:
            self.hwa = hwa

    def matrix(self) -> jax.Array:
        """The kernel as the ``[rows, cols]`` matrix the crossbars hold."""
        raise NotImplementedError

    def matrix_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of :meth:`matrix` (from the kernel's shape alone)."""
        shape = tuple(self.kernel.shape)
        return int(np.prod(shape[:-1])), int(shape[-1])

    def _input_range(self, x2d):
        """The range ``x2d``'s full scale stands for in an ``"hwa"`` forward pass.

        While training, :meth:`_track_input` has already set ``input_scale`` from this
        batch. With frozen statistics and no range ever measured, the batch's own
        statistic is used (deploying such a layer is an error instead).
        """
        s = self.input_scale[...]
        if self.use_running_average:
            return jnp.where(s > 0, s, input_statistic(x2d, self.hwa))
        return s

    def _track_input(self, x):
        if self.use_running_average or self.mode == "chip":
            return
        stat = input_statistic(x, self.hwa)
        old = self.input_scale[...]
        if getattr(self, "measuring", False):
            # One measuring pass (set_input_scales, convert's data): the largest statistic of
            # every call, so a layer called several times (a recurrent cell at every time step,
            # a shared layer) gets a range that covers all its inputs.
            self.input_scale[...] = jnp.maximum(old, stat)
            return
        m = self.hwa.input_scale_momentum
        self.input_scale[...] = jnp.where(old > 0, m * old + (1 - m) * stat, stat)

    def _hwa_key(self, rngs):
        """The key of one HWA draw: from the call's ``rngs`` (a key or ``nnx.Rngs``), else the layer's own stream."""
        if rngs is None:
            return self.rngs.hwa()
        if isinstance(rngs, nnx.Rngs):
            return rngs.hwa()
        return rngs

    def _analog_matmul(self, x2d, rngs):
        """``x2d @ matrix()`` in HWA or chip mode, ``[N, rows] → [N, cols]``."""
        if self.mode == "chip":
            return _context.chip_matmul(self, x2d)
        return hwa_matmul(self._hwa_key(rngs), x2d, self.matrix(), self._input_range(x2d), self.hwa)

    def _finish(self, y):
        if self.use_bias:
            y = y + jnp.reshape(self.bias[...], (1,) * (y.ndim - 1) + (-1,))
        _context.record(self, y)
        return y


class AnalogLinear(AnalogLayer):
    """A linear layer mapped onto PCM crossbars (the signature of ``nnx.Linear``).

    Args:
      in_features, out_features: sizes of the kernel ``[in_features, out_features]``.
      use_bias: add a (digital) bias.
      param_dtype: dtype of the parameters.
      kernel_init, bias_init: initialisers (``nnx.Linear``'s defaults).
      rngs: ``nnx.Rngs`` (the ``params`` stream initialises the kernel, then the bias).
      mode: ``"digital"``, ``"hwa"`` or ``"chip"``.
      hwa: :class:`HWAConfig` used in ``"hwa"`` mode (default ``HWAConfig()``).
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 param_dtype=jnp.float32, kernel_init=default_kernel_init, bias_init=default_bias_init,
                 rngs: nnx.Rngs, mode: Mode = "digital", hwa: HWAConfig | None = None):
        check_int("in_features", in_features, 1)
        check_int("out_features", out_features, 1)
        kernel_key = rngs.params()
        self.kernel = nnx.Param(kernel_init(kernel_key, (in_features, out_features), param_dtype))
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
        else:
            self.bias = nnx.data(None)
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.param_dtype = param_dtype
        self._init_analog(rngs, kernel_key, mode, hwa)

    def matrix(self):
        return self.kernel[...]

    def __call__(self, inputs, *, rngs=None):
        """``inputs @ kernel + bias`` along the last axis (any leading axes).

        Args:
          inputs: ``[..., in_features]``.
          rngs: optional key or ``nnx.Rngs`` (``hwa`` stream) for HWA noise.
        """
        x = _as_float(inputs, self.param_dtype)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"inputs must have last dimension in_features={self.in_features}, got shape {x.shape}.")
        self._track_input(x)
        if self.mode == "digital":
            y = jnp.matmul(x, self.kernel[...])
        else:
            lead = x.shape[:-1]
            y = self._analog_matmul(x.reshape(-1, self.in_features), rngs).reshape(*lead, self.out_features)
        return self._finish(y)


def _tuple(v, n, name):
    if v is None:
        return (1,) * n
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    if len(v) != n:
        raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {v!r}.")
    return v


def _padding(padding, n):
    if isinstance(padding, str):
        p = padding.upper()
        if p not in ("SAME", "VALID", "SAME_LOWER"):
            raise ValueError(f"padding must be 'SAME', 'VALID', an int or pairs of ints, got {padding!r} "
                             "(circular, reflect and causal padding are not supported by analog layers).")
        return p
    if isinstance(padding, int):
        return [(padding, padding)] * n
    out = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(out) != n:
        raise ValueError(f"padding must have {n} entries, got {padding!r}.")
    return out


class AnalogConv(AnalogLayer):
    """A convolution mapped onto PCM crossbars (NHWC, the signature of ``nnx.Conv``).

    The kernel ``[*kernel_size, in_features, out_features]`` is held on the chip as the
    matrix ``[in_features · prod(kernel_size), out_features]`` (channel-major rows, the
    order of ``jax.lax.conv_general_dilated_patches``); every output pixel is one MVM of
    its input patch (:func:`pcmjax.chip.patches.extract_patches`). On a deployed chip, a
    layer of at least 8 input channels reads the encoded image directly
    as convolutions (:mod:`pcmjax.chip.conv`: the same conversions and normals, without
    building the patches); its derivatives are then reverse-mode only (``jax.grad``, not
    ``jax.jvp``).

    Args:
      in_features, out_features: input and output channels.
      kernel_size: int or tuple of spatial sizes.
      strides, padding, input_dilation, kernel_dilation: as in ``nnx.Conv``.
      use_bias, param_dtype, kernel_init, bias_init, rngs, mode, hwa: as in
        :class:`AnalogLinear`.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int | tp.Sequence[int],
                 strides: int | tp.Sequence[int] | None = 1, *, padding="SAME", input_dilation=1,
                 kernel_dilation=1, feature_group_count: int = 1, use_bias: bool = True,
                 param_dtype=jnp.float32, kernel_init=default_kernel_init, bias_init=default_bias_init,
                 rngs: nnx.Rngs, mode: Mode = "digital", hwa: HWAConfig | None = None):
        check_int("in_features", in_features, 1)
        check_int("out_features", out_features, 1)
        if feature_group_count != 1:
            raise ValueError(f"AnalogConv supports feature_group_count=1 only, got {feature_group_count!r}.")
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        kernel_key = rngs.params()
        self.kernel = nnx.Param(kernel_init(kernel_key, kernel_size + (in_features, out_features), param_dtype))
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
        else:
            self.bias = nnx.data(None)
        n = len(kernel_size)
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.strides = _tuple(strides, n, "strides")
        self.padding = _padding(padding, n)
        self.input_dilation = _tuple(input_dilation, n, "input_dilation")
        self.kernel_dilation = _tuple(kernel_dilation, n, "kernel_dilation")
        self.use_bias = use_bias
        self.param_dtype = param_dtype
        self._init_analog(rngs, kernel_key, mode, hwa)

    def matrix(self):
        k = self.kernel[...]
        n = len(self.kernel_size)
        perm = (n,) + tuple(range(n)) + (n + 1,)  # channel-major rows, as the patches
        return jnp.transpose(k, perm).reshape(-1, self.out_features)

    def _dimension_numbers(self):
        n = len(self.kernel_size)
        sp = "HWD"[:n] if n <= 3 else None
        if sp is None:
            raise ValueError(f"AnalogConv supports 1 to 3 spatial dimensions, got kernel_size {self.kernel_size}.")
        return ("N" + sp + "C", sp + "IO", "N" + sp + "C")

    def __call__(self, inputs, *, rngs=None):
        """Convolve NHWC ``inputs`` (extra leading batch axes are flattened, as ``nnx.Conv``).

        Args:
          inputs: ``[*batch, *spatial, in_features]``.
          rngs: optional key or ``nnx.Rngs`` (``hwa`` stream) for HWA noise.
        """
        x = _as_float(inputs, self.param_dtype)
        n = len(self.kernel_size)
        if x.ndim < n + 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"inputs must have shape [batch, *spatial({n}), in_features={self.in_features}], "
                             f"got shape {x.shape}.")
        batch_shape = x.shape[: x.ndim - n - 1]
        x = x.reshape((-1,) + x.shape[x.ndim - n - 1:])
        self._track_input(x)
        dn = self._dimension_numbers()
        if self.mode == "digital":
            y = jax.lax.conv_general_dilated(x, self.kernel[...], self.strides, self.padding,
                                             lhs_dilation=self.input_dilation, rhs_dilation=self.kernel_dilation,
                                             dimension_numbers=dn)
        elif self.mode == "chip" and _context.conv_read_applies(self):  # the image read directly
            y = _context.chip_conv(self, x)
        else:
            p = extract_patches(x, self.kernel_size, self.strides, self.padding, self.input_dilation,
                                self.kernel_dilation)
            out_sp = p.shape[1:-1]
            y = self._analog_matmul(p.reshape(-1, p.shape[-1]), rngs)
            y = y.reshape((x.shape[0],) + out_sp + (self.out_features,))
        y = y.reshape(batch_shape + y.shape[1:]) if batch_shape != (x.shape[0],) else y
        return self._finish(y)


def analog_layers(model) -> list[tuple[tuple, AnalogLayer]]:
    """Every analog layer of ``model`` with its path, in graph order."""
    return [(path, m) for path, m in nnx.iter_modules(model) if isinstance(m, AnalogLayer)]


def missing_input_ranges(model) -> list[str]:
    """Paths (``"layers/0"``, as :func:`pcmjax.nn.plan` names them) of the analog layers of
    ``model`` whose input range was never set (concrete models only, not under ``jit``).

    Args:
      model: an ``nnx.Module`` containing analog layers.

    Returns:
      the layer names, in graph order (empty when every layer has its range).
    """
    return ["/".join(str(p) for p in path) or "<root>" for path, layer in analog_layers(model)
            if not float(layer.input_scale[...]) > 0]


def set_mode(model, mode: Mode, *, hwa: HWAConfig | None = None):
    """Set the mode (and optionally the HWA config) of every analog layer in place.

    Args:
      model: an ``nnx.Module`` containing analog layers.
      mode: ``"digital"``, ``"hwa"`` or ``"chip"``.
      hwa: if given, the :class:`HWAConfig` of every layer.

    Returns:
      ``model`` (for chaining).
    """
    _check_mode(mode)
    for _, layer in analog_layers(model):
        layer.set_view(mode=mode, hwa=hwa)
    return model


def clip_weights(model):
    """Clip every analog kernel at its layer's ``hwa.weight_clip`` standard deviations, in place.

    HWA training sees clipped kernels in its forward; clipping the parameters after
    training makes the deployed weights what training saw.
    """
    for _, layer in analog_layers(model):
        layer.kernel[...] = clip_kernel(layer.kernel[...], layer.hwa)
    return model


@nnx.jit
def _forward(model, x):
    return model(x)


def set_input_scales(model, x, *, quantile: float | None = None):
    """Measure every analog layer's input range on ``x`` (one digital forward pass).

    Args:
      model: the network (called as ``model(x)``).
      x: a batch of representative inputs.
      quantile: quantile of ``|input|`` to use (default: each layer's
        ``hwa.input_scale_quantile``).

    Returns:
      ``model``, with ``input_scale`` of every analog layer set.
    """
    layers = [layer for _, layer in analog_layers(model)]
    saved = [(layer.mode, layer.use_running_average, layer.hwa) for layer in layers]
    try:
        for layer in layers:
            layer.mode, layer.use_running_average, layer.measuring = "digital", False, True
            if quantile is not None:
                layer.hwa = layer.hwa.replace(input_scale_quantile=quantile)
            layer.input_scale[...] = jnp.zeros((), jnp.float32)  # first update copies the statistic
        _forward(model, jnp.asarray(x))
    finally:
        for layer, (mode, ura, hwa) in zip(layers, saved):
            layer.mode, layer.use_running_average, layer.hwa, layer.measuring = mode, ura, hwa, False
    return model
