"""The networks of pcmjax.nn and the training loop."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pcmjax as pj
from pcmjax import nn as pnn


def test_resnet9_shapes_and_placement():
    small = pnn.ResNet9(10, (4, 4, 8, 8), rngs=nnx.Rngs(0))
    small.eval()
    y = nnx.jit(lambda m, x: m(x))(small, jnp.zeros((2, 32, 32, 3)))
    assert y.shape == (2, 10)
    assert len(pnn.analog_layers(small)) == 9  # 8 convolutions + classifier
    # Placement needs only shapes: abstract models, no weights drawn.
    full = nnx.eval_shape(lambda: pnn.ResNet9(rngs=nnx.Rngs(0)))  # default widths (32, 64, 128, 256)
    layout = pnn.plan(full, pj.ChipConfig())
    n_weights = sum(lp.shape[0] * lp.shape[1] for lp in layout.layers)
    assert n_weights == 1_643_872
    assert layout.n_tiles == 36
    dawn = nnx.eval_shape(lambda: pnn.ResNet9(widths=(64, 128, 256, 512), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="n_chips=2"):  # the DAWNBench widths need two chips
        pnn.plan(dawn, pj.ChipConfig())


def test_train_and_accuracy_on_a_separable_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    model = pnn.MLP(8, (16,), 2, rngs=nnx.Rngs(0))
    hist = pnn.train(model, x, y, epochs=8, batch_size=32, learning_rate=1e-2, x_val=x, y_val=y)
    assert len(hist["loss"]) == 8 and hist["loss"][-1] < hist["loss"][0]
    assert pnn.accuracy(model, x, y) > 0.9
    assert float(model.layers[0].input_scale[...]) > 0  # input ranges were tracked
    with pytest.raises(ValueError, match="mode"):
        pnn.train(model, x, y, mode="chip")
