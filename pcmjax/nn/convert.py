"""Converting any Flax NNX model to analog layers: :func:`convert`.

Every weight layer pcmjax can place on crossbars is replaced by its analog counterpart
holding the same parameters; everything else (embeddings, normalisation, activations,
pooling, attention scores and softmax, the user's own code) is left as it is and runs
digitally, as on the chip's digital units:

| Flax layer | analog layer |
|---|---|
| ``nnx.Linear`` | :class:`~pcmjax.nn.AnalogLinear` |
| ``nnx.Conv`` | :class:`~pcmjax.nn.AnalogConv` |
| ``nnx.LinearGeneral`` (attention q, k, v, out) | :class:`~pcmjax.nn.AnalogLinearGeneral` |
| ``nnx.Einsum`` | :class:`~pcmjax.nn.AnalogEinsum` |
| ``nnx.LSTMCell`` | :class:`~pcmjax.nn.AnalogLSTMCell` (one matrix per cell) |
| ``nnx.OptimizedLSTMCell`` | :class:`~pcmjax.nn.AnalogOptimizedLSTMCell` |
| ``nnx.GRUCell`` | :class:`~pcmjax.nn.AnalogGRUCell` |
| ``nnx.SimpleCell`` | :class:`~pcmjax.nn.AnalogSimpleCell` |
| ``nnx.RNN`` of such a cell | :class:`~pcmjax.nn.AnalogRNN` |

In ``"digital"`` mode the converted model computes exactly what the original does.
Each analog layer needs its input range (what the PWM's full scale stands for): give
``data`` and :func:`convert` measures them; otherwise measure them later with
:func:`measure_input_ranges`. Deploying a converted layer whose range was never
measured is an error, never a silent default.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pcmjax import _streams
from pcmjax.config.hwa import HWAConfig
from pcmjax.nn.general import AnalogEinsum, AnalogLinearGeneral, _einsum_parts
from pcmjax.nn.layers import AnalogConv, AnalogLayer, AnalogLinear, analog_layers
from pcmjax.nn.recurrent import CELLS, AnalogRNN

CONVERTIBLE = (nnx.Linear, nnx.Conv, nnx.LinearGeneral, nnx.Einsum, *CELLS)


def _path_name(path) -> str:
    return "/".join(str(p) for p in path) or "<root>"


def _unsupported(name, module, what):
    return ValueError(f"layer {name!r} ({type(module).__name__}) uses {what}, which its analog counterpart does not "
                      f"support; keep it digital with exclude=[{name!r}].")


def _check_plain(name, m, fn_attr, default_fn):
    """Linear and Conv become AnalogLinear/AnalogConv, which compute in float32 with lax."""
    if (m.dtype is not None and jnp.dtype(m.dtype) != jnp.float32) or jnp.dtype(m.param_dtype) != jnp.float32:
        raise _unsupported(name, m, f"dtype={m.dtype}, param_dtype={m.param_dtype} (float32 only)")
    if m.precision is not None or m.preferred_element_type is not None:
        raise _unsupported(name, m, "a precision or preferred_element_type")
    if getattr(m, fn_attr) is not default_fn:
        raise _unsupported(name, m, f"a custom {fn_attr}")
    if m.promote_dtype is not nnx.nn.dtypes.promote_dtype:
        raise _unsupported(name, m, "a custom promote_dtype")


def _from_linear(name, m, rngs):
    _check_plain(name, m, "dot_general", jax.lax.dot_general)
    return AnalogLinear(m.in_features, m.out_features, use_bias=m.use_bias, rngs=rngs)


def _from_conv(name, m, rngs):
    _check_plain(name, m, "conv_general_dilated", jax.lax.conv_general_dilated)
    if m.feature_group_count != 1 or m.mask is not None:
        raise _unsupported(name, m, "grouped or masked kernels")
    if isinstance(m.padding, str) and m.padding.upper() not in ("SAME", "VALID", "SAME_LOWER"):
        raise _unsupported(name, m, f"padding={m.padding!r}")
    return AnalogConv(m.in_features, m.out_features, m.kernel_size, m.strides, padding=m.padding,
                      input_dilation=m.input_dilation, kernel_dilation=m.kernel_dilation, use_bias=m.use_bias,
                      rngs=rngs)


def _from_linear_general(name, m, rngs):
    if m.batch_axis:
        raise _unsupported(name, m, f"batch_axis={dict(m.batch_axis)!r} (one matrix per batch index)")
    return AnalogLinearGeneral(m.in_features, m.out_features, axis=m.axis, use_bias=m.use_bias, dtype=m.dtype,
                               param_dtype=m.param_dtype, precision=m.precision, promote_dtype=m.promote_dtype,
                               dot_general=m.dot_general, dot_general_cls=m.dot_general_cls,
                               preferred_element_type=m.preferred_element_type, rngs=rngs)


def _from_einsum(name, m, rngs):
    if m.einsum_str is None:
        raise _unsupported(name, m, "an equation given only at call time")
    try:
        _einsum_parts(m.einsum_str)
    except ValueError as e:
        raise _unsupported(name, m, f"an equation that is not one matrix ({e})") from None
    return AnalogEinsum(m.einsum_str, m.kernel_shape, m.bias_shape, dtype=m.dtype, param_dtype=m.param_dtype,
                        precision=m.precision, promote_dtype=m.promote_dtype, einsum_op=m.einsum_op,
                        preferred_element_type=m.preferred_element_type, rngs=rngs)


def _from_cell(name, m, rngs):
    kw = dict(dtype=m.dtype, param_dtype=m.param_dtype, promote_dtype=m.promote_dtype,
              activation_fn=m.activation_fn)
    if isinstance(m, nnx.SimpleCell):
        kw["residual"] = m.residual
    else:
        kw["gate_fn"] = m.gate_fn
    if m.carry_init is not None:
        kw["carry_init"] = m.carry_init
    return CELLS[type(m)](m.in_features, m.hidden_features, rngs=rngs, **kw)


_FACTORIES = {nnx.Linear: _from_linear, nnx.Conv: _from_conv, nnx.LinearGeneral: _from_linear_general,
              nnx.Einsum: _from_einsum, **{cls: _from_cell for cls in CELLS}}


class _Converter:
    """One walk over a (cloned) model, replacing convertible layers in place."""

    def __init__(self, exclude, hwa):
        self.paths, self.types = _parse_exclude(exclude)
        self.hwa = hwa
        self.memo: dict[int, tuple] = {}
        self.found: set[str] = set()
        self.used_paths: set[str] = set()
        self.n_converted = 0

    def _excluded(self, path, value) -> bool:
        name = _path_name(path)
        for p in self.paths:
            if name == p or name.startswith(p + "/"):
                self.used_paths.add(p)
                return True
        return isinstance(value, self.types) if self.types else False

    def visit(self, value, path, excluded=False):
        seen = self.memo.get(id(value))
        if seen is not None and seen[0] is value:
            return seen[1]
        new = self._visit(value, path, excluded)
        if isinstance(value, (nnx.Module, list, dict, tuple)):
            self.memo[id(value)] = (value, new)  # holding ``value`` keeps its id from being reused
        return new

    def _visit(self, value, path, excluded):
        if isinstance(value, nnx.Module):
            self.found.add(type(value).__name__)
            excluded = excluded or self._excluded(path, value)
            if type(value) in _FACTORIES and not excluded:
                return self._convert(value, path)
            if isinstance(value, AnalogLayer):
                return value  # already analog
            self._children(value, path, excluded)
            if type(value) is nnx.RNN and isinstance(value.cell, AnalogLayer):
                return AnalogRNN.from_rnn(value, value.cell)
            return value
        if isinstance(value, (list, tuple)):
            items = [self.visit(v, path + (i,), excluded) for i, v in enumerate(value)]
            if all(a is b for a, b in zip(items, value)):
                return value
            if isinstance(value, list):
                return items
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
        if isinstance(value, dict):
            items = {k: self.visit(v, path + (k,), excluded) for k, v in value.items()}
            return value if all(items[k] is value[k] for k in value) else type(value)(items)
        return value

    def _children(self, module, path, excluded):
        if isinstance(module, nnx.List):
            for i in range(len(module)):
                new = self.visit(module[i], path + (i,), excluded)
                if new is not module[i]:
                    module[i] = new
            return
        for name, value in list(vars(module).items()):
            if name.startswith("_pytree__") or not isinstance(value, (nnx.Module, list, dict, tuple)):
                continue
            new = self.visit(value, path + (name,), excluded)
            if new is not value:
                setattr(module, name, new)

    def _convert(self, module, path):
        name = _path_name(path)
        # The new layer's own initialisation is overwritten by the original's parameters; its
        # key only seeds the layer's HWA noise stream (one per converted layer).
        rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(_streams.CONVERT), self.n_converted))
        new = _FACTORIES[type(module)](name, module, rngs)
        nnx.update(new, nnx.state(module, nnx.Param))
        if self.hwa is not None:
            new.hwa = self.hwa
        self.n_converted += 1
        return new


def _parse_exclude(exclude):
    if exclude is None:
        return (), ()
    items = [exclude] if isinstance(exclude, (str, type)) else list(exclude)
    paths, types = [], []
    for e in items:
        if isinstance(e, type):
            types.append(e)
        elif isinstance(e, str):
            paths.append(e.strip("/"))
        elif isinstance(e, tuple):
            paths.append(_path_name(e))
        else:
            raise TypeError(f"exclude entries must be paths ('encoder/layers/0' or tuples) or module types, "
                            f"got {e!r} of type {type(e).__name__}.")
    return tuple(paths), tuple(types)


def convert(model: nnx.Module, *, data=None, exclude=None, hwa: HWAConfig | None = None) -> nnx.Module:
    """An analog copy of a Flax NNX model (the original is left untouched).

    Every ``nnx.Linear``, ``nnx.Conv``, ``nnx.LinearGeneral``, ``nnx.Einsum`` and
    recurrent cell (``nnx.LSTMCell``, ``nnx.OptimizedLSTMCell``, ``nnx.GRUCell``,
    ``nnx.SimpleCell``) found anywhere in the model (attributes, lists, dicts,
    ``nnx.List``, ``nnx.Sequential``, nested modules; a layer used twice stays shared)
    becomes its analog counterpart with the same parameters, in ``"digital"`` mode, so
    the copy computes exactly what the original does until it is trained hardware-aware
    or deployed. Only these exact types are converted (a subclass may compute
    something else and stays digital).

    Args:
      model: an ``nnx.Module``.
      data: optional representative inputs, ``model(data)`` (or ``model(*data)`` for a
        tuple): one digital pass measures every analog layer's input range (the
        abs-max, or each layer's ``hwa.input_scale_quantile``, over the batch and every
        call, such as every time step). Without it, measure the ranges later with
        :func:`measure_input_ranges`; deploying before that is an error.
      exclude: layers to keep digital: a path (``"encoder/layers/0"``, as
        :func:`pcmjax.nn.plan` names layers, or a tuple), a module type (``nnx.Conv``)
        or a list of them; a path or type excludes everything inside it too.
      hwa: optional :class:`HWAConfig` of every analog layer (default ``HWAConfig()``).

    Returns:
      the converted model (a new object; shares no variables with ``model``).

    Raises:
      ValueError: the model has no convertible layer (the message lists the module types
        found), an ``exclude`` path matches nothing, or a layer uses an option its
        analog counterpart lacks (the message names the layer, to exclude it).
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}.")
    if hwa is not None and not isinstance(hwa, HWAConfig):
        raise TypeError(f"hwa must be a pcmjax.nn.HWAConfig, got {type(hwa).__name__}.")
    conv = _Converter(exclude, hwa)
    new = conv.visit(nnx.clone(model), ())
    unused = [p for p in conv.paths if p not in conv.used_paths]
    if unused:
        names = sorted({_path_name(p) for p, _ in nnx.iter_modules(model) if p})
        raise ValueError(f"exclude paths {unused} match no module of the model; its modules are: {names}.")
    if not analog_layers(new):
        kinds = ", ".join(sorted(conv.found))
        raise ValueError(f"model has no layer to convert to analog: found {kinds}; convertible are "
                         f"{', '.join('nnx.' + c.__name__ for c in CONVERTIBLE)}"
                         + (" (some were excluded)" if conv.paths or conv.types else "") + ".")
    if data is not None:
        measure_input_ranges(new, data)
    return new


@nnx.jit
def _measure_pass(model, args):
    return model(*args)


def measure_input_ranges(model, data):
    """Measure every analog layer's input range with one digital pass of ``model`` on ``data``.

    Batch-norm statistics are left alone and dropout is off. A layer called several
    times (a recurrent cell at every time step) keeps the largest statistic of all its
    calls. The ranges are then frozen (``use_running_average=True`` on the analog
    layers, as ``model.eval()`` would), so calling the model does not move them; training
    (``model.train()``) tracks them again as running estimates.

    Args:
      model: a model with analog layers.
      data: ``model(data)``'s input, or a tuple of positional arguments.

    Returns:
      ``model``, with ``input_scale`` of every analog layer set.
    """
    args = tuple(data) if isinstance(data, tuple) else (data,)
    args = tuple(jnp.asarray(a) if not isinstance(a, jax.Array) else a for a in args)
    view = nnx.view(model, use_running_average=True, deterministic=True, raise_if_not_found=False)
    layers = [layer for _, layer in analog_layers(view)]
    for layer in layers:
        layer.mode, layer.use_running_average, layer.measuring = "digital", False, True
        layer.input_scale[...] = jnp.zeros((), jnp.float32)
    _measure_pass(view, args)
    for _, layer in analog_layers(model):
        layer.use_running_average = True  # frozen until model.train(), like batch-norm statistics
    missed = [_path_name(p) for p, layer in analog_layers(model) if float(layer.input_scale[...]) <= 0]
    if missed:
        raise ValueError(f"data did not reach the analog layers {missed} (or gave them only zeros); "
                         "their input ranges are unknown.")
    return model


__all__ = ["convert", "measure_input_ranges", "CONVERTIBLE"]
