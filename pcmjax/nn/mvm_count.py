"""How many MVMs each analog layer of a network runs per inference (for the cost model).

:func:`layer_mvms` traces the network's digital forward pass abstractly and counts the
rows of every analog layer's output; :func:`pcmjax.cost.from_layout` turns the counts
into latency and energy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pcmjax.nn import _context
from pcmjax.nn.deploy import Layout, inference_view
from pcmjax.nn.layers import analog_layers


class _RowCounter(dict):
    """An outputs dict for the layers' recorder that adds up the rows of every call."""

    def __setitem__(self, index, y):
        rows = math.prod(int(d) for d in y.shape[:-1])
        super().__setitem__(index, self.get(index, 0) + rows)


def layer_mvms(model, layout: Layout, input_shape) -> dict[str, float]:
    """MVMs per inference of every analog layer of a ``pcmjax.nn`` network.

    The network's digital forward pass is traced abstractly (``jax.eval_shape``: nothing
    is computed) on one example of shape ``input_shape``, and every analog layer's output
    viewed as the 2-D ``[rows, out]`` array its crossbars produce is counted: one MVM per
    row. A dense layer gives 1, a convolution its number of output pixels, a layer called
    several times (in a Python loop) the sum over its calls.

    Args:
      model: an ``nnx.Module`` with :class:`~pcmjax.nn.AnalogLinear` /
        :class:`~pcmjax.nn.AnalogConv` layers.
      layout: its :func:`pcmjax.nn.plan` (the layer names are taken from it).
      input_shape: shape of one example, without the batch axis (``(64,)`` for the digits
        MLP, ``(8, 8, 1)`` for 8×8 one-channel images).

    Returns:
      ``{layer name: MVMs per inference}``, for :func:`pcmjax.cost.from_layout`.

    Raises:
      ValueError: the layout was planned for a network with a different number of
        analog layers.
    """
    net = inference_view(model)  # numbered as the layout, frozen statistics, no dropout
    layers = analog_layers(net)
    if len(layers) != len(layout.layers):
        raise ValueError(f"layout has {len(layout.layers)} layers but the model has {len(layers)} analog layers; "
                         "plan the layout from this model.")
    for _, layer in layers:
        layer.mode = "digital"
    graphdef, state = nnx.split(net)
    counts = _RowCounter()

    def forward(state, x):
        with _context.use(_context.ChipContext(layout=layout, outputs=counts)):
            return nnx.merge(graphdef, state)(x)

    shape = tuple(int(d) for d in input_shape)
    jax.eval_shape(forward, state, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    return {lp.name: float(counts.get(i, 0)) for i, lp in enumerate(layout.layers)}
