"""Attention on the chip: a converted transformer block's projections are analog, the rest digital."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import pcmjax as pj
from pcmjax import nn as pnn


class Block(nnx.Module):
    """A pre-norm transformer encoder block and a classifier on the mean token."""

    def __init__(self, d=8, heads=2, n_classes=3, *, rngs):
        self.norm1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, rngs=rngs)
        self.mlp = nnx.Sequential(nnx.Linear(d, 2 * d, rngs=rngs), nnx.gelu, nnx.Linear(2 * d, d, rngs=rngs))
        self.mix = nnx.Einsum("btd,de->bte", (d, d), (d,), rngs=rngs)
        self.head = nnx.Linear(d, n_classes, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(jnp.mean(self.mix(x), axis=1))


def _model():
    model = Block(rngs=nnx.Rngs(0))
    for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param))):
        if path[-1] == "bias":
            var.set_value(0.3 * jax.random.normal(jax.random.fold_in(jax.random.key(1), i), var.shape))
    return model


X = jax.random.normal(jax.random.key(2), (3, 5, 8))


def test_attention_projections_become_analog_and_the_block_stays_exact():
    model = _model()
    analog = pnn.convert(model, data=X)
    layers = {"/".join(map(str, p)): (type(m).__name__, m.matrix_shape()) for p, m in pnn.analog_layers(analog)}
    assert layers == {
        "attn/query": ("AnalogLinearGeneral", (8, 8)),  # d × heads·head_dim
        "attn/key": ("AnalogLinearGeneral", (8, 8)),
        "attn/value": ("AnalogLinearGeneral", (8, 8)),
        "attn/out": ("AnalogLinearGeneral", (8, 8)),  # heads·head_dim × d
        "mlp/layers/0": ("AnalogLinear", (8, 16)),
        "mlp/layers/2": ("AnalogLinear", (16, 8)),
        "mix": ("AnalogEinsum", (8, 8)),
        "head": ("AnalogLinear", (8, 3)),
    }
    assert type(analog.attn) is nnx.MultiHeadAttention and type(analog.norm1) is nnx.LayerNorm
    np.testing.assert_array_equal(analog(X), model(X))


def test_converted_transformer_on_the_ideal_chip_equals_the_original():
    model = _model()
    analog = pnn.convert(model, data=X)
    dep = pnn.deploy(analog, jax.random.key(3), pj.ChipConfig.ideal(n_cores=8))
    assert dep.layout.n_tiles == 8
    ref = model(X)
    y = dep.apply(dep.state, dep.calibration, jax.random.key(4), X)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
    # The attention output projection on the chip, recorded, matches the digital one.
    _, rec = dep.apply(dep.state, dep.calibration, jax.random.key(4), X, record=True)
    _, ref_rec = dep.reference(X, record=True)
    i = [lp.name for lp in dep.layout.layers].index("attn/out")
    assert rec[i].shape == (3 * 5, 8)  # one row per MVM
    np.testing.assert_allclose(rec[i], ref_rec[i], rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref_rec[i]))))


def test_excluding_the_attention_keeps_it_digital():
    model = _model()
    analog = pnn.convert(model, exclude=nnx.MultiHeadAttention)
    assert all(type(getattr(analog.attn, n)) is nnx.LinearGeneral for n in ("query", "key", "value", "out"))
    assert len(pnn.analog_layers(analog)) == 4


def test_mvm_count_is_one_per_token_for_every_projection():
    analog = pnn.convert(_model(), data=X)
    counts = pnn.layer_mvms(analog, pnn.plan(analog, pj.ChipConfig()), X.shape[1:])
    tokens = float(X.shape[1])
    assert counts == {"attn/key": tokens, "attn/out": tokens, "attn/query": tokens, "attn/value": tokens,
                      "head": 1.0, "mix": tokens, "mlp/layers/0": tokens, "mlp/layers/2": tokens}
