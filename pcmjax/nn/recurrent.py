"""Recurrent cells on the chip: one matrix ``[x, h] @ [[W_x], [W_h]]`` per cell, gates digital.

Each class *is* its Flax cell (a subclass of ``nnx.LSTMCell``, ``nnx.OptimizedLSTMCell``,
``nnx.GRUCell`` or ``nnx.SimpleCell``, with the same constructor and parameters) plus
the machinery of :class:`AnalogLayer`. In ``"digital"`` mode it runs Flax's own code. In
``"hwa"`` and ``"chip"`` modes, as HERMES maps an LSTM (PHYSICS.md §6), the input and
recurrent kernels of all gates form one matrix ``[in + hidden, gates · hidden]`` whose
rows take ``[x, h]`` and whose columns are interleaved by unit (column ``u · gates + k``
is gate ``k`` of unit ``u``), so a column tile holds every gate of its units; the input
and recurrent contributions are summed by the crossbar (and, for a matrix split over
row tiles, by the digital units). Biases, gate activations and the cell state stay in
the digital units. A GRU's candidate gate needs its recurrent part apart
(``n = tanh(W_in x + b_in + r ⊙ (W_hn h))``), so its matrix has a fourth column group
``[0; W_hn]`` beside ``[W_in; 0]``.

A time step is one MVM on the same programmed cores; in ``"chip"`` mode each call folds
the cell's step counter into the read key, so every step draws fresh read noise. In
``"hwa"`` mode likewise: :class:`AnalogRNN` draws the cell's perturbed weights
(programming noise, drift, 1/f noise: :func:`pcmjax.nn.hwa.hwa_weights`) once per
forward call and every step reads them with fresh output noise and quantisation
(:func:`pcmjax.nn.hwa.hwa_read`); a cell stepped by hand does the same inside
``with hold_weights(key, cell):``, and outside it draws new weights at every step. Use
the cells through ``nnx.RNN`` (converted to :class:`AnalogRNN`, which also records the
per-step outputs for calibration) or step them by hand in a Python loop or ``nnx.scan``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from pcmjax import _streams
from pcmjax.config.hwa import HWAConfig
from pcmjax.nn import _context
from pcmjax.nn.general import _peek_key
from pcmjax.nn.hwa import hwa_read, hwa_weights
from pcmjax.nn.layers import AnalogLayer

# HWA weights held for a sequence: {cell uid: (wn, w_max)}. A scan's body runs on a copy
# of the cell, so cells are matched by a static id that copies keep.
_HELD: contextvars.ContextVar = contextvars.ContextVar("pcmjax_nn_held_weights", default=None)
_UIDS = itertools.count()


@contextlib.contextmanager
def hold_weights(key, model):
    """Within the block, every analog cell of ``model`` in ``"hwa"`` mode reads one draw of its weights.

    The HWA weight perturbation (programming noise, drift, 1/f noise) models the devices
    a sequence is computed on, which are the same at every time step; only the output
    noise and quantisation of each read are drawn per step. :class:`AnalogRNN` holds its
    cell's weights this way for every forward call.

    Args:
      key: a ``jax.random`` key, or ``None`` to take one from each cell's ``hwa`` stream.
      model: an analog cell or a module containing analog cells.
    """
    held = dict(_HELD.get() or {})
    cells = [m for _, m in nnx.iter_modules(model) if isinstance(m, _AnalogCell) and m.mode == "hwa"]
    for j, cell in enumerate(cells):
        k = cell.rngs.hwa() if key is None else jax.random.fold_in(key, j)
        held[cell.cell_uid] = hwa_weights(k, cell.matrix(), cell.hwa)
    token = _HELD.set(held)
    try:
        yield
    finally:
        _HELD.reset(token)


class StepCount(nnx.Variable):
    """How many chip-mode steps a cell has run in the current forward pass (read-key index)."""


class _FusedKernel:
    """``cell.kernel``: the fused matrix, readable and writable like a kernel variable."""

    def __init__(self, cell):
        self._cell = cell

    @property
    def shape(self):
        return self._cell.matrix_shape()

    def __getitem__(self, index):
        return self._cell.matrix()[index]

    def __setitem__(self, index, value):
        if index is not Ellipsis:
            raise TypeError("a recurrent cell's fused kernel can only be assigned whole (kernel[...] = matrix).")
        self._cell._set_matrix(value)


def _read(ref):
    var, cols = ref
    w = var[...]
    return w if cols is None else w[:, cols]


def _write(ref, value):
    var, cols = ref
    var[...] = value if cols is None else var[...].at[:, cols].set(value)


class _AnalogCell(AnalogLayer):
    """Shared machinery: the fused matrix, the analog pre-activations, the step key."""

    _flax_cls: type = None

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs, mode: str = "digital",
                 hwa: HWAConfig | None = None, **kwargs):
        kernel_key = _peek_key(rngs)
        self._flax_cls.__init__(self, in_features, hidden_features, rngs=rngs, **kwargs)
        self._init_cell(rngs, kernel_key, mode, hwa)

    def _init_cell(self, rngs, kernel_key, mode, hwa):
        self._init_analog(rngs, kernel_key, mode, hwa)
        # Flax's cells keep an optional ``carry`` stream in ``rngs``; keep one beside ``hwa``.
        self.rngs = nnx.Rngs(hwa=jax.random.fold_in(kernel_key, _streams.HWA),
                             carry=jax.random.fold_in(kernel_key, _streams.CARRY))
        self.step_count = StepCount(jnp.zeros((), jnp.uint32))
        self.cell_uid = next(_UIDS)  # static: matches held HWA weights inside a scan (hold_weights)

    def _groups(self) -> list:
        """Column groups in gate order: ``(x_ref, h_ref)``, each ``(variable, columns)`` or ``None``."""
        raise NotImplementedError

    @property
    def kernel(self):
        return _FusedKernel(self)

    def matrix_shape(self) -> tuple[int, int]:
        return self.in_features + self.hidden_features, len(self._groups()) * self.hidden_features

    def matrix(self):
        n_in, h = self.in_features, self.hidden_features
        cols = []
        for x_ref, h_ref in self._groups():
            wx = _read(x_ref) if x_ref is not None else jnp.zeros((n_in, h), self.param_dtype)
            wh = _read(h_ref) if h_ref is not None else jnp.zeros((h, h), self.param_dtype)
            cols.append(jnp.concatenate([wx, wh], axis=0))
        return jnp.stack(cols, axis=-1).reshape(n_in + h, -1)  # column u·G + k: gate k of unit u

    def _set_matrix(self, m):
        n_in, g = self.in_features, len(self._groups())
        m = jnp.asarray(m).reshape(n_in + self.hidden_features, self.hidden_features, g)
        for k, (x_ref, h_ref) in enumerate(self._groups()):
            if x_ref is not None:
                _write(x_ref, m[:n_in, :, k])
            if h_ref is not None:
                _write(h_ref, m[n_in:, :, k])

    def _analog_matmul(self, x2d, rngs):
        held = (_HELD.get() or {}).get(self.cell_uid) if self.mode == "hwa" else None
        if held is not None:  # this sequence's weights, a fresh read
            return hwa_read(self._hwa_key(rngs), x2d, *held, self._input_range(x2d), self.hwa)
        if self.mode != "chip":
            return super()._analog_matmul(x2d, rngs)
        ctx = _context._CTX.get()
        if ctx is None or ctx.key is None:
            return _context.chip_matmul(self, x2d)  # raises its "not deployed" error
        step = self.step_count[...]
        self.step_count[...] = step + 1
        step_key = jax.random.fold_in(jax.random.fold_in(ctx.key, _streams.STEP), step)
        with _context.use(dataclasses.replace(ctx, key=step_key)):
            return _context.chip_matmul(self, x2d)

    def _record_step(self, y):
        ctx = _context._CTX.get()
        if ctx is None or ctx.outputs is None or self.chip_index is None:
            return
        prev = ctx.outputs.get(self.chip_index)
        if prev is None:
            ctx.outputs[self.chip_index] = y[None]
        elif getattr(prev, "ndim", None) == y.ndim + 1:  # stepped by hand: stack the steps
            ctx.outputs[self.chip_index] = jnp.concatenate([prev, y[None]])
        else:  # a recorder that accumulates by itself (the MVM counter of pcmjax.nn.layer_mvms)
            ctx.outputs[self.chip_index] = y

    def _preacts(self, h, inputs, rngs):
        """The gate pre-activations ``[x, h] @ matrix()`` as a list of ``[..., hidden]``."""
        xh = self._concat(h, inputs)
        self._track_input(xh)
        lead = xh.shape[:-1]
        y = self._analog_matmul(xh.reshape(-1, xh.shape[-1]), rngs).reshape(*lead, -1)
        self._record_step(y)
        y = y.reshape(*lead, self.hidden_features, -1)
        return [y[..., k] for k in range(y.shape[-1])]

    @staticmethod
    def _concat(h, inputs):
        x = jnp.asarray(inputs, jnp.float32)
        h = jnp.broadcast_to(jnp.asarray(h, jnp.float32), x.shape[:-1] + jnp.shape(h)[-1:])
        return jnp.concatenate([x, h], axis=-1)

    def _check_inputs(self, inputs):
        if jnp.shape(inputs)[-1:] != (self.in_features,):
            raise ValueError(f"inputs must have last dimension in_features={self.in_features}, "
                             f"got shape {jnp.shape(inputs)}.")

    def __call__(self, carry, inputs, *, rngs=None):
        """One time step: ``(carry, x) → (new carry, output)``, as the Flax cell.

        Args:
          carry: the cell's state (from ``initialize_carry``).
          inputs: ``[..., in_features]``.
          rngs: optional key or ``nnx.Rngs`` (``hwa`` stream) for HWA noise.
        """
        self._check_inputs(inputs)
        if self.mode == "digital":
            xh = self._concat(self._hidden(carry), inputs)
            self._track_input(xh)
            ctx = _context._CTX.get()
            if ctx is not None and ctx.outputs is not None:
                self._record_step(xh @ self.matrix())  # the reference of the chip's pre-activations
            return self._flax_cls.__call__(self, carry, inputs)
        return self._step(carry, self._preacts(self._hidden(carry), inputs, rngs))

    def _hidden(self, carry):
        return carry

    def _step(self, carry, pre):
        raise NotImplementedError


class _LSTMStep:
    def _hidden(self, carry):
        return carry[1]

    def _lstm(self, carry, pre, bias):
        c, _ = carry
        i, f, g, o = (p + b for p, b in zip(pre, bias))
        i, f, g, o = self.gate_fn(i), self.gate_fn(f), self.activation_fn(g), self.gate_fn(o)
        new_c = f * c + i * g
        new_h = o * self.activation_fn(new_c)
        return (new_c, new_h), new_h


class AnalogLSTMCell(_LSTMStep, _AnalogCell, nnx.LSTMCell):
    """``nnx.LSTMCell`` on the chip: ``[x, h] @ [[W_ii W_if W_ig W_io], [W_hi W_hf W_hg W_ho]]``.

    Args:
      in_features: size of the input ``x``.
      hidden_features: size of the hidden state ``h``.
      rngs: ``nnx.Rngs`` (the ``params`` stream initialises the kernels and biases).
      mode: ``"digital"``, ``"hwa"`` or ``"chip"``.
      hwa: :class:`HWAConfig` used in ``"hwa"`` mode (default ``HWAConfig()``).
      **kwargs: further arguments of the Flax cell (``gate_fn``, ``kernel_init``, ...).
    """

    _flax_cls = nnx.LSTMCell

    def _groups(self):
        return [((self.ii.kernel, None), (self.hi.kernel, None)), ((self.if_.kernel, None), (self.hf.kernel, None)),
                ((self.ig.kernel, None), (self.hg.kernel, None)), ((self.io.kernel, None), (self.ho.kernel, None))]

    def _step(self, carry, pre):
        return self._lstm(carry, pre, [m.bias[...] for m in (self.hi, self.hf, self.hg, self.ho)])


class AnalogOptimizedLSTMCell(_LSTMStep, _AnalogCell, nnx.OptimizedLSTMCell):
    """``nnx.OptimizedLSTMCell`` on the chip (its ``[in, 4h]`` and ``[h, 4h]`` kernels, gates interleaved).


    Args: as :class:`AnalogLSTMCell` (``**kwargs``: further arguments of the Flax cell).
    """

    _flax_cls = nnx.OptimizedLSTMCell

    def _groups(self):
        h = self.hidden_features
        return [((self.dense_i.kernel, slice(k * h, (k + 1) * h)), (self.dense_h.kernel, slice(k * h, (k + 1) * h)))
                for k in range(4)]

    def _step(self, carry, pre):
        return self._lstm(carry, pre, jnp.split(self.dense_h.bias[...], 4))


class AnalogGRUCell(_AnalogCell, nnx.GRUCell):
    """``nnx.GRUCell`` on the chip: column groups ``r``, ``z``, ``[W_in; 0]`` and ``[0; W_hn]``.


    Args: as :class:`AnalogLSTMCell` (``**kwargs``: further arguments of the Flax cell).
    """

    _flax_cls = nnx.GRUCell

    def _groups(self):
        h = self.hidden_features
        r, z, n = (slice(k * h, (k + 1) * h) for k in range(3))
        wi, wh = self.dense_i.kernel, self.dense_h.kernel
        return [((wi, r), (wh, r)), ((wi, z), (wh, z)), ((wi, n), None), (None, (wh, n))]

    def _step(self, carry, pre):
        b_r, b_z, b_n = jnp.split(self.dense_i.bias[...], 3)
        p_r, p_z, p_nx, p_nh = pre
        r = self.gate_fn(p_r + b_r)
        z = self.gate_fn(p_z + b_z)
        n = self.activation_fn(p_nx + b_n + r * p_nh)
        new_h = (1.0 - z) * n + z * carry
        return new_h, new_h


class AnalogSimpleCell(_AnalogCell, nnx.SimpleCell):
    """``nnx.SimpleCell`` on the chip: ``[x, h] @ [[W_i], [W_h]]``.


    Args: as :class:`AnalogLSTMCell` (``**kwargs``: further arguments of the Flax cell).
    """

    _flax_cls = nnx.SimpleCell

    def _groups(self):
        return [((self.dense_i.kernel, None), (self.dense_h.kernel, None))]

    def _step(self, carry, pre):
        new = pre[0] + self.dense_i.bias[...]
        if self.residual:
            new = new + carry
        new = self.activation_fn(new)
        return new, new


class _StepRecorder(nnx.Module):
    """Wraps a cell inside ``nnx.RNN``'s scan: each step's recorded outputs leave as scan outputs."""

    def __init__(self, cell):
        self.cell = cell

    @property
    def num_feature_axes(self):
        return self.cell.num_feature_axes

    def initialize_carry(self, *args, **kwargs):
        return self.cell.initialize_carry(*args, **kwargs)

    def __call__(self, carry, x):
        outer = _context._CTX.get()
        inner = {}
        with _context.use(dataclasses.replace(outer, outputs=inner)):
            carry, y = self.cell(carry, x)
        # A cell records once per step (``[1, ...]``); the scan stacks the steps along its time axis.
        return carry, (y, {k: v[0] if v.shape[0] == 1 else v for k, v in inner.items()})


class AnalogRNN(nnx.RNN):
    """``nnx.RNN`` over an analog cell: Flax's scan, plus per-step records for calibration.

    When a deployed forward pass records every analog layer's output (as
    :func:`pcmjax.nn.calibrate` does), the cell's pre-activations of all time steps
    leave the scan stacked along the time axis; otherwise this is ``nnx.RNN``.
    """

    @classmethod
    def from_rnn(cls, rnn: nnx.RNN, cell) -> AnalogRNN:
        """An :class:`AnalogRNN` with the settings (and carry stream) of ``rnn`` around ``cell``."""
        new = cls(cell, time_major=rnn.time_major, return_carry=rnn.return_carry, reverse=rnn.reverse,
                  keep_order=rnn.keep_order, unroll=rnn.unroll, state_axes=rnn.state_axes,
                  broadcast_rngs=rnn.broadcast_rngs, rngs=False)
        new.rngs = rnn.rngs
        return new

    def __call__(self, inputs, **kwargs):
        with hold_weights(None, self.cell):  # one HWA weight draw per sequence (no-op in other modes)
            return self._run(inputs, **kwargs)

    def _run(self, inputs, **kwargs):
        ctx = _context._CTX.get()
        if ctx is None or ctx.outputs is None:
            return super().__call__(inputs, **kwargs)
        return_carry = kwargs.get("return_carry")
        return_carry = self.return_carry if return_carry is None else return_carry
        cell = self.cell
        self.cell = _StepRecorder(cell)
        try:
            out = super().__call__(inputs, **kwargs)
        finally:
            self.cell = cell
        carry, (y, records) = out if return_carry else (None, out)
        for index, y_steps in records.items():  # item by item: a recorder may define __setitem__
            ctx.outputs[index] = y_steps
        return (carry, y) if return_carry else y


CELLS = {nnx.LSTMCell: AnalogLSTMCell, nnx.OptimizedLSTMCell: AnalogOptimizedLSTMCell, nnx.GRUCell: AnalogGRUCell,
         nnx.SimpleCell: AnalogSimpleCell}

__all__ = ["AnalogLSTMCell", "AnalogOptimizedLSTMCell", "AnalogGRUCell", "AnalogSimpleCell", "AnalogRNN",
           "StepCount", "CELLS", "hold_weights"]
