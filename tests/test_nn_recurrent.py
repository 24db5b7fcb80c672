"""Recurrent cells on the chip: exact digital copies, one interleaved matrix, per-step noise, calibration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pcmjax as pj
from pcmjax import nn as pnn
from pcmjax.nn.recurrent import hold_weights

CELLS = [nnx.LSTMCell, nnx.OptimizedLSTMCell, nnx.GRUCell, nnx.SimpleCell]


def _randomise(model, key):
    for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param))):
        if path[-1] == "bias":
            var.set_value(0.5 * jax.random.normal(jax.random.fold_in(key, i), var.shape))
    return model


class SeqNet(nnx.Module):
    """A cell through ``nnx.RNN`` (or stepped by hand), then a linear head on the last output."""

    def __init__(self, cell_cls, n_in=5, hidden=12, *, by_hand=False, rngs, **kw):
        cell = cell_cls(n_in, hidden, rngs=rngs, **kw)
        self.by_hand = by_hand
        self.rnn = cell if by_hand else nnx.RNN(cell)
        self.head = nnx.Linear(hidden, 3, rngs=rngs)

    def __call__(self, x):
        if self.by_hand:
            carry = self.rnn.initialize_carry(x[:, 0].shape, nnx.Rngs(carry=0))
            for t in range(x.shape[1]):
                carry, y = self.rnn(carry, x[:, t])
        else:
            y = self.rnn(x)[:, -1]
        return self.head(y)


X = jax.random.normal(jax.random.key(1), (4, 6, 5))


@pytest.mark.parametrize("cell", CELLS + ["residual"])
@pytest.mark.parametrize("by_hand", [False, True])
def test_converted_cells_are_exact_in_digital_mode(cell, by_hand):
    kw = {"residual": True} if cell == "residual" else {}
    cell = nnx.SimpleCell if cell == "residual" else cell
    model = _randomise(SeqNet(cell, by_hand=by_hand, rngs=nnx.Rngs(0), **kw), jax.random.key(2))
    analog = pnn.convert(model, data=X)
    cell_path = "rnn" if by_hand else "rnn/cell"
    assert ["/".join(map(str, p)) for p, _ in pnn.analog_layers(analog)] == ["head", cell_path]
    assert type(analog.rnn).__name__ == ("Analog" + cell.__name__ if by_hand else "AnalogRNN")
    np.testing.assert_array_equal(analog(X), model(X))


def _gate_kernels(cell):
    """The Flax cell's ``(W_x, W_h)`` per gate, from its own parameter names."""
    if isinstance(cell, nnx.LSTMCell):
        return [(getattr(cell, "i" + g).kernel[...], getattr(cell, "h" + g.rstrip("_")).kernel[...])
                for g in ("i", "f_", "g", "o")]
    h = cell.hidden_features
    wi, wh = cell.dense_i.kernel[...], cell.dense_h.kernel[...]
    split = lambda w, k: w[:, k * h:(k + 1) * h]  # noqa: E731
    if isinstance(cell, nnx.OptimizedLSTMCell):
        return [(split(wi, k), split(wh, k)) for k in range(4)]
    if isinstance(cell, nnx.GRUCell):
        z_i, z_h = jnp.zeros_like(split(wi, 0)), jnp.zeros_like(split(wh, 0))
        return [(split(wi, 0), split(wh, 0)), (split(wi, 1), split(wh, 1)), (split(wi, 2), z_h), (z_i, split(wh, 2))]
    return [(wi, wh)]


@pytest.mark.parametrize("cell_cls", CELLS)
def test_one_matrix_per_cell_with_the_gates_interleaved(cell_cls):
    cell = cell_cls(5, 7, rngs=nnx.Rngs(0))
    analog = pnn.convert(nnx.Sequential(cell)).layers[0]
    m = np.asarray(analog.matrix())
    gates = _gate_kernels(cell)
    assert m.shape == analog.matrix_shape() == (5 + 7, len(gates) * 7)
    for u in range(7):
        for k, (wx, wh) in enumerate(gates):
            np.testing.assert_array_equal(m[:, u * len(gates) + k], np.concatenate([wx[:, u], wh[:, u]]))
    # Writing the matrix back (as clipping does) restores the Flax kernels.
    analog.kernel[...] = 2.0 * analog.kernel[...]
    for (wx, wh), (ax, ah) in zip(gates, _gate_kernels(analog)):
        np.testing.assert_array_equal(ax, 2 * wx)
        np.testing.assert_array_equal(ah, 2 * wh)


@pytest.mark.parametrize("cell_cls,by_hand", [(nnx.LSTMCell, False), (nnx.OptimizedLSTMCell, False),
                                              (nnx.GRUCell, True), (nnx.SimpleCell, False)])
def test_converted_rnn_on_the_ideal_chip_equals_the_original(cell_cls, by_hand):
    model = _randomise(SeqNet(cell_cls, by_hand=by_hand, rngs=nnx.Rngs(0)), jax.random.key(2))
    analog = pnn.convert(model, data=X)
    dep = pnn.deploy(analog, jax.random.key(3), pj.ChipConfig.ideal(n_cores=2))
    assert dep.state.n_cores == 2  # the cell's one matrix and the head: every step uses the same cores
    ref = model(X)
    y = dep.apply(dep.state, dep.calibration, jax.random.key(4), X)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
    cell_line = [line for line in dep.report().splitlines() if line.startswith("rnn")]
    assert len(cell_line) == 1 and "chip 0: 1" in cell_line[0] and "1x1" in cell_line[0]


def test_every_step_draws_fresh_read_noise_on_the_same_cores():
    """With no recurrent weights and the same input at every step, only read noise tells the
    steps apart: the digital pre-activations are equal, the chip's differ step to step."""
    model = SeqNet(nnx.SimpleCell, rngs=nnx.Rngs(0))
    model.rnn.cell.dense_h.kernel[...] = jnp.zeros((12, 12))
    x = jnp.broadcast_to(X[:, :1], X.shape)
    analog = pnn.convert(model, data=x)
    dep = pnn.deploy(analog, jax.random.key(3), pj.ChipConfig(n_cores=2).only("read_noise"))
    _, ref = dep.reference(x, record=True)
    _, rec = dep.apply(dep.state, dep.calibration, jax.random.key(4), x, record=True)
    i = [lp.name for lp in dep.layout.layers].index("rnn/cell")
    ref, rec = np.asarray(ref[i]), np.asarray(rec[i])  # [batch, steps, hidden], like the RNN's outputs
    assert rec.shape == ref.shape == (4, 6, 12)
    np.testing.assert_allclose(ref[:, 1:], np.broadcast_to(ref[:, :1], ref[:, 1:].shape), atol=1e-6)
    err = rec - ref
    scale = np.abs(ref).max()
    assert 0 < np.abs(err).max() < 0.2 * scale  # noisy, but reads of the same conductances
    step_diff = np.abs(rec[:, 1:] - rec[:, :-1]).max(axis=(0, 2))
    assert np.all(step_diff > 1e-4 * scale)  # fresh noise at every step
    _, again = dep.apply(dep.state, dep.calibration, jax.random.key(4), x, record=True)
    np.testing.assert_array_equal(again[i], rec)  # the key decides everything


@pytest.mark.slow
def test_calibration_works_on_a_converted_lstm():
    model = _randomise(SeqNet(nnx.OptimizedLSTMCell, rngs=nnx.Rngs(0)), jax.random.key(2))
    analog = pnn.convert(model, data=X)
    dep = pnn.deploy(analog, jax.random.key(3), pj.ChipConfig(n_cores=2)).at_time(jax.random.key(5), 86400.0)
    before = float(pnn.calibration_loss(dep, jax.random.key(6), X))
    cal = pnn.calibrate(dep, jax.random.key(7), X, steps=30, batch_size=None)
    after = float(pnn.calibration_loss(cal, jax.random.key(6), X))
    assert after < 0.7 * before


def test_hwa_training_works_on_a_converted_lstm():
    model = _randomise(SeqNet(nnx.OptimizedLSTMCell, rngs=nnx.Rngs(0)), jax.random.key(2))
    analog = pnn.convert(model, data=X)
    y = jnp.arange(4) % 3
    kernel0 = np.asarray(analog.rnn.cell.dense_i.kernel[...])
    hist = pnn.train(jax.random.key(0), analog, X, y, mode="hwa", epochs=3, batch_size=4, learning_rate=1e-2)
    assert hist["loss"][-1] < hist["loss"][0]
    assert not np.allclose(analog.rnn.cell.dense_i.kernel[...], kernel0)
    assert analog.rnn.cell.mode == "hwa"


@pytest.mark.parametrize("by_hand", [False, True])
def test_mvm_count_of_a_cell_is_one_per_time_step(by_hand):
    analog = pnn.convert(SeqNet(nnx.LSTMCell, by_hand=by_hand, rngs=nnx.Rngs(0)), data=X)
    layout = pnn.plan(analog, pj.ChipConfig())
    counts = pnn.layer_mvms(analog, layout, X.shape[1:])
    assert counts == {"head": 1.0, "rnn" if by_hand else "rnn/cell": float(X.shape[1])}


def _constant_input_net(by_hand):
    """A cell without recurrent weights fed the same input at every step: any difference
    between its steps' pre-activations comes from the HWA noise alone."""
    model = SeqNet(nnx.SimpleCell, by_hand=by_hand, rngs=nnx.Rngs(0), activation_fn=lambda v: v)
    cell = model.rnn if by_hand else model.rnn.cell
    cell.dense_h.kernel[...] = jnp.zeros((12, 12))
    x = jnp.broadcast_to(X[:, :1], X.shape)
    analog = pnn.convert(model, data=x)
    return analog, analog.rnn if by_hand else analog.rnn.cell, x


def _step_outputs(analog, cell, x, by_hand):
    if not by_hand:
        return np.asarray(analog.rnn(x))
    carry = cell.initialize_carry(x[:, 0].shape, nnx.Rngs(carry=0))
    ys = []
    for t in range(x.shape[1]):
        carry, y = cell(carry, x[:, t])
        ys.append(y)
    return np.asarray(jnp.stack(ys, axis=1))


@pytest.mark.parametrize("by_hand", [False, True])
def test_hwa_weight_noise_is_drawn_once_per_sequence(by_hand):
    """Drift and 1/f noise only (no read noise, no quantisation; no programming noise, which
    would make the zero recurrent weights nonzero): through AnalogRNN, or by hand inside
    hold_weights, every step computes with the same perturbed weights."""
    analog, cell, x = _constant_input_net(by_hand)
    cfg = pj.HWAConfig.off().replace(drift_time=(1.0, 3.15e7))
    pnn.set_mode(analog, "hwa", hwa=cfg)
    analog.eval()
    ref = np.asarray(x[:, 0] @ cell.dense_i.kernel[...] + cell.dense_i.bias[...])
    if by_hand:
        with hold_weights(jax.random.key(9), cell):
            y = _step_outputs(analog, cell, x, by_hand)
    else:
        y = _step_outputs(analog, cell, x, by_hand)
    scale = np.abs(ref).max()
    assert np.abs(y[:, 0] - ref).max() > 1e-3 * scale  # the weights are perturbed ...
    np.testing.assert_allclose(y, np.broadcast_to(y[:, :1], y.shape), atol=1e-5 * scale)  # ... the same at every step
    y2 = _step_outputs(analog, cell, x, by_hand) if not by_hand else None
    if y2 is not None:  # the next sequence (forward call) draws new weights
        assert np.abs(y2[:, 0] - y[:, 0]).max() > 1e-3 * scale
    else:  # outside hold_weights a hand-stepped cell draws new weights at every step
        y2 = _step_outputs(analog, cell, x, by_hand)
        assert np.all(np.abs(y2[:, 1:] - y2[:, :-1]).max(axis=(0, 2)) > 1e-3 * scale)


def test_hwa_output_noise_is_fresh_at_every_step():
    analog, cell, x = _constant_input_net(False)
    pnn.set_mode(analog, "hwa", hwa=pj.HWAConfig.off().replace(out_noise=0.04))
    analog.eval()
    y = _step_outputs(analog, cell, x, False)
    scale = np.abs(y).max()
    assert np.all(np.abs(y[:, 1:] - y[:, :-1]).max(axis=(0, 2)) > 1e-3 * scale)
