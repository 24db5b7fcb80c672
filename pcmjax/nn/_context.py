"""The context a deployed forward pass runs in: chip state, calibration, key, recorder.

:func:`pcmjax.nn.deploy` clones a network and gives each analog layer a static
``chip_index``; its forward pass sets a :class:`ChipContext` (a ``contextvars`` variable,
set and reset inside the traced function, so it is safe under ``jit``/``vmap``/``grad``)
that the layers in ``"chip"`` mode read to run their tiles.

The module is private; code outside :mod:`pcmjax.nn` uses its public entries,
:func:`pcmjax.nn.layer_call_order` (the order a forward pass calls the analog layers)
and :func:`model_inputs` (how a deployed model takes its inputs, via
:meth:`pcmjax.nn.DeployedModel.apply`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pcmjax._validate import check_finite_array, is_traced
from pcmjax.chip.conv import ConvGeometry
from pcmjax.chip.mvm import conv_mvm, mvm
from pcmjax.chip.patches import output_shape, patch_padding

_CTX: contextvars.ContextVar = contextvars.ContextVar("pcmjax_nn_chip", default=None)

# ChipState fields without a core axis.
_NOT_PER_CORE = ("cfg", "device", "t")


@dataclasses.dataclass
class ChipContext:
    """What a deployed forward pass needs (``state`` is ``None`` for a digital reference run).

    Attributes:
      layout: the :class:`pcmjax.nn.deploy.Layout` (static).
      state: the programmed :class:`pcmjax.ChipState` holding every tile.
      calibration: per-layer ``gamma``/``beta`` (``[out]``) and ``tile_gamma``
        (``[row splits, out]``) tuples and ``input_scale`` factors.
      key: a ``jax.random`` key for read and ADC noise (``None`` only for the digital
        reference run, which draws nothing).
      outputs: if a dict, every analog layer stores its output there by ``chip_index``.
    """

    layout: Any
    state: Any = None
    calibration: Any = None
    key: Any = None
    outputs: dict | None = None


@contextlib.contextmanager
def use(ctx: ChipContext):
    token = _CTX.set(ctx)
    try:
        yield ctx
    finally:
        _CTX.reset(token)


def record(layer, y):
    ctx = _CTX.get()
    if ctx is not None and ctx.outputs is not None and layer.chip_index is not None:
        ctx.outputs[layer.chip_index] = y


def slice_cores(state, start: int, n: int, rows: int | None = None, cols: int | None = None):
    """The sub-state of cores ``start .. start + n − 1``, optionally cut to ``rows × cols``.

    Every per-core field is sliced along the core axis; with ``rows``/``cols`` the
    crossbar axes are cut to the first rows/columns too. A layer whose tiles are smaller
    than the network's largest tile then computes only its own devices: the rows cut off
    would receive zero input and the columns cut off are discarded, so the result is
    the same, at a fraction of the cost.
    """
    R, K = state.rows, state.cols
    changes = {}
    for f in dataclasses.fields(state):
        if f.name in _NOT_PER_CORE:
            continue
        v = getattr(state, f.name)
        if not hasattr(v, "ndim") or v.ndim < 1:
            continue
        v = jax.lax.slice_in_dim(v, start, start + n, axis=0)
        if cols is not None and v.ndim >= 2 and v.shape[-1] == K:
            v = v[..., :cols]
        if rows is not None and v.ndim >= 3 and v.shape[-2] == R:
            v = v[..., :rows, :]
        changes[f.name] = v
    if state.tiles is not None:  # the used block of each core, cut like the arrays
        changes["tiles"] = tuple((min(r, rows or R), min(k, cols or K)) for r, k in state.tiles[start:start + n])
    return state.replace(**changes)


def _layer_call(layer):
    """``(ctx, chip index, layer placement, calibration, input range)`` of a chip-mode call."""
    ctx = _CTX.get()
    if ctx is None or ctx.state is None or layer.chip_index is None:
        raise RuntimeError(
            "this analog layer is in 'chip' mode but is not running inside a deployed model; "
            "use pcmjax.nn.deploy(model, key, config) and call the deployed model."
        )
    i = layer.chip_index
    cal = ctx.calibration
    # deploy() refuses a layer without a measured range; a range of 0 can only arrive with
    # parameters swapped in under jit, where it cannot be checked: NaN marks it, never a default.
    s0 = layer.input_scale[...]
    s = jnp.where(s0 > 0, s0, jnp.nan) * cal["input_scale"][i]
    return ctx, i, ctx.layout.layers[i], cal, s


def _tile_cores(ctx, lp):
    """The sub-state of the layer's tiles (tile ``(r, c)`` on core ``first_core + r·n_c + c``)."""
    rows = max(b - a for a, b in lp.row_chunks)  # this layer's largest tile
    cols = max(b - a for a, b in lp.col_chunks)
    return slice_cores(ctx.state, lp.first_core, len(lp.row_chunks) * len(lp.col_chunks), rows, cols)


def _combine(lp, cal, i, y, s):
    """The layer's outputs from its tiles' ``[tiles, N, cols]``: column chunks joined, each
    core's calibrated gain, row partial sums added, the layer's calibrated affine."""
    y = y.reshape(len(lp.row_chunks), len(lp.col_chunks), *y.shape[1:])
    y = jnp.concatenate([y[:, j, :, : b - a] for j, (a, b) in enumerate(lp.col_chunks)], axis=-1)  # [n_r, N, out]
    if "tile_gamma" in cal:  # each core's digital unit scales its own columns before the digital sum
        y = y * cal["tile_gamma"][i][:, None, :]
    # The row tiles' partial sums added one by one: XLA:CPU may run a reduction over this
    # short leading axis as a library call (in the digits-CNN study 1.1 ms per evaluation,
    # against 0.04 ms for the adds with the same scales fused in).
    total = functools.reduce(operator.add, [y[r] for r in range(y.shape[0])])
    return (total * s) * cal["gamma"][i] + cal["beta"][i]


def chip_matmul(layer, x2d):
    """``x2d @ layer.matrix()`` on the layer's tiles of the programmed chip.

    The input is scaled into [−1, 1] by the layer's measured input range (times the
    calibrated factor), split into row chunks, zero-padded to the tile rows and sent to every tile;
    each tile's columns are scaled by its calibrated gain (the core's digital unit), row
    partial sums are added digitally, column chunks concatenated, then the calibrated
    per-column affine ``γ' y + β'`` of the layer is applied.
    """
    ctx, i, lp, cal, s = _layer_call(layer)
    xs = x2d / s
    rows = max(b - a for a, b in lp.row_chunks)
    xt = jnp.stack([jnp.pad(xs[:, a:b], ((0, 0), (0, rows - (b - a)))) for a, b in lp.row_chunks])
    xt = jnp.repeat(xt, len(lp.col_chunks), axis=0)  # tile (r, c) sits on core first_core + r·n_c + c
    y = mvm(jax.random.fold_in(ctx.key, i), _tile_cores(ctx, lp), xt)  # [tiles, N, cols]
    return _combine(lp, cal, i, y, s)


def conv_read_applies(layer) -> bool:
    """Whether a chip-mode convolution reads its image directly (:func:`chip_conv`): with
    at least ``CONV_READ_MIN_CHANNELS`` input channels."""
    ctx = _CTX.get()
    return ctx is not None and ctx.state is not None and layer.in_features >= CONV_READ_MIN_CHANNELS


# Below this many input channels the image patches are cheaper to read than the convolution
# (XLA:CPU, digits CNN: patches 2.6x faster at 1 channel, the convolution 2-4.5x at 16-32).
CONV_READ_MIN_CHANNELS = 8


def chip_conv(layer, image):
    """The convolution layer ``layer`` of ``image`` (``[N, *spatial, in]``) on its tiles,
    ``[N, *out spatial, out]``: what :func:`chip_matmul` gives for the image's patches, read
    without building them (:mod:`pcmjax.chip.conv`; same conversions and normals, the sums
    in another order)."""
    ctx, i, lp, cal, s = _layer_call(layer)
    spatial, args = image.shape[1:-1], (layer.kernel_size, layer.strides)
    dilations = (layer.input_dilation, layer.kernel_dilation)
    pads = tuple(patch_padding(spatial, *args, layer.padding, *dilations))
    n_c = len(lp.col_chunks)
    geom = ConvGeometry(tuple(layer.kernel_size), tuple(layer.strides), pads, *map(tuple, dilations),
                        layer.in_features, tuple(lp.row_chunks[t // n_c] for t in range(len(lp.row_chunks) * n_c)))
    y = conv_mvm(jax.random.fold_in(ctx.key, i), _tile_cores(ctx, lp), image / s, geom)  # [tiles, N·pixels, cols]
    out = output_shape(spatial, *args, pads, *dilations)
    return _combine(lp, cal, i, y, s).reshape(image.shape[0], *out, -1)


def layer_call_order(deployed, x) -> tuple[int, ...]:
    """The analog layers' ``chip_index`` in the order the forward pass first calls them.

    Traced abstractly (nothing is computed) on the digital network of ``deployed``. The
    attribute order of a model need not be its data flow (an output layer ``out`` listed
    before the ``rnn`` that feeds it); layer-by-layer procedures such as calibrating each
    layer after the ones feeding it need this order. Layers the pass never calls come last.

    Args:
      deployed: a :class:`pcmjax.nn.DeployedModel` (placed; programming is not needed).
      x: example inputs ``[N, ...]`` (only the shape of one example and the dtype are used).

    Returns:
      every layer's ``chip_index``, once each.
    """
    outputs: dict = {}  # insertion order = first call
    x = jnp.asarray(x) if not hasattr(x, "dtype") else x

    def forward(params, x):
        with use(ChipContext(layout=deployed.layout, outputs=outputs)):
            return nnx.merge(deployed.ref_graphdef, params)(x)

    jax.eval_shape(forward, deployed.params, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
    order = [int(i) for i in outputs]
    return tuple(order + [i for i in range(len(deployed.layout.layers)) if i not in order])


def model_inputs(x, name: str = "x"):
    """A deployed model's input as the network receives it.

    Integer arrays (token ids) pass unchanged; others are checked by
    ``check_finite_array`` (concrete NaN or inf raise ``ValueError``) and become float32.

    Args:
      x: the inputs ``[N, ...]`` (an array or nested lists).
      name: the argument's name in error messages.

    Returns:
      a ``jax.Array``: integer as given, otherwise float32.
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    if jnp.issubdtype(dtype, jnp.integer):
        return x if is_traced(x) else jnp.asarray(x)
    return check_finite_array(x, name)
