"""The networks of pcmjax.nn and the training loop."""

import jax
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
    full = nnx.eval_shape(lambda: pnn.ResNet9(rngs=nnx.Rngs(0)))  # default widths (56, 112, 224, 224)
    layout = pnn.plan(full, pj.ChipConfig())
    n_weights = sum(lp.shape[0] * lp.shape[1] for lp in layout.layers)
    # Le Gallo et al. 2023: 1,866,536 weights on 40 cores; Table I: a layer on 8 cores, 86 % used.
    assert n_weights == 1_866_536
    assert layout.n_tiles == 40
    big = [lp for lp in layout.layers if lp.n_tiles == 8]
    assert [lp.name for lp in big] == ["layer3/conv", "res3/0/conv", "res3/1/conv"]
    assert all(round(100 * lp.utilisation) == 86 for lp in big)
    dawn = nnx.eval_shape(lambda: pnn.ResNet9(widths=(64, 128, 256, 512), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="n_chips=2"):  # the DAWNBench widths need two chips
        pnn.plan(dawn, pj.ChipConfig())


def test_train_and_accuracy_on_a_separable_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    model = pnn.MLP(8, (16,), 2, rngs=nnx.Rngs(0))
    hist = pnn.train(jax.random.key(0), model, x, y, epochs=8, batch_size=32, learning_rate=1e-2, x_val=x, y_val=y)
    assert len(hist["loss"]) == 8 and hist["loss"][-1] < hist["loss"][0]
    assert pnn.accuracy(model, x, y) > 0.9
    assert float(model.layers[0].input_scale[...]) > 0  # input ranges were tracked
    with pytest.raises(ValueError, match="mode"):
        pnn.train(jax.random.key(0), model, x, y, mode="chip")
