"""Deploying networks: exact tiling, placement, the clear error, the ideal chip = digital."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pcmjax as pj
from pcmjax import nn as pnn


class Chain(nnx.Module):
    """Linear layers of awkward sizes, chained without activations."""

    def __init__(self, sizes, rngs):
        self.layers = nnx.List([pnn.AnalogLinear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


AWKWARD = (300, 700, 1, 1, 257, 255)  # 300×700, 700×1, 1×1, 1×257, 257×255


@pytest.fixture(scope="module")
def chain():
    model = Chain(AWKWARD, nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (4, 300), minval=-1, maxval=1)
    pnn.set_input_scales(model, x)
    model.eval()
    return model, x


def test_tiles_reassemble_every_kernel_exactly(chain):
    model, _ = chain
    layout = pnn.plan(model, pj.ChipConfig())
    tiles = np.asarray(pnn.tile_weights(model, layout))
    assert tiles.shape == (layout.n_tiles, layout.rows, layout.cols)
    for (_, layer), lp in zip(pnn.analog_layers(model), layout.layers):
        w = np.asarray(layer.kernel[...])
        re = np.zeros_like(w)
        t = lp.first_core
        for a, b in lp.row_chunks:
            for c, d in lp.col_chunks:
                assert np.all(tiles[t, b - a:, :] == 0) and np.all(tiles[t, :, d - c:] == 0)
                re[a:b, c:d] = tiles[t, : b - a, : d - c]
                t += 1
        np.testing.assert_array_equal(re, w)


def test_placement(chain):
    model, _ = chain
    layout = pnn.plan(model, pj.ChipConfig())
    tiles = [(len(lp.row_chunks), len(lp.col_chunks)) for lp in layout.layers]
    assert tiles == [(2, 3), (3, 1), (1, 1), (1, 2), (2, 1)]
    assert layout.n_tiles == 14
    cores = [c for lp in layout.layers for c in lp.cores]
    assert cores == [(0, i) for i in range(14)]  # consecutive, no gaps, chip 0
    assert layout.layers[0].utilisation == pytest.approx(300 * 700 / (6 * 256 * 256))
    report = layout.report()
    assert "14 of 64 cores" in report and "layers/0" in report and "300x700" in report


def test_ideal_chip_reproduces_digital_outputs(chain):
    model, x = chain
    dep = pnn.deploy(model, jax.random.key(0), pj.ChipConfig.ideal())
    assert dep.state.n_cores == 14  # only occupied cores are simulated
    ref = model(x)
    np.testing.assert_allclose(dep(x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
    np.testing.assert_allclose(dep.reference(x), ref, rtol=1e-5, atol=1e-5)
    aged = dep.at_time(jax.random.key(1), 86400.0)  # no drift on the ideal chip
    np.testing.assert_allclose(aged(x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))


def test_ideal_chip_cnn_and_several_chips():
    model = pnn.SmallCNN(channels=(4, 8, 40), rngs=nnx.Rngs(2))
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
    pnn.set_input_scales(model, x)
    model.eval()
    cfg = pj.ChipConfig.ideal(n_cores=2, rows=64, cols=32)
    # conv1 9×4: 1 tile, conv2 36×8: 1, conv3 72×40: 2×2, head 160×10: 3×1.
    with pytest.raises(ValueError, match=r"needs 9 cores .*conv3: 4.* n_chips=5"):
        pnn.deploy(model, jax.random.key(0), cfg)
    dep = pnn.deploy(model, jax.random.key(0), cfg, n_chips=5)
    assert dep.state.n_cores == 9
    assert dep.layout.layers[-1].cores == ((3, 0), (3, 1), (4, 0))  # head: on chips 3 and 4
    assert "chip 4: 0" in dep.report()
    ref = model(x)
    np.testing.assert_allclose(dep(x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))


def test_network_needing_65_cores_gets_a_clear_error():
    model = Chain((256, 65 * 256), nnx.Rngs(0))
    with pytest.raises(ValueError) as e:
        pnn.deploy(model, jax.random.key(0), pj.ChipConfig())
    msg = str(e.value)
    assert "needs 65 cores" in msg and "64 cores" in msg and "n_chips=2" in msg
    assert pnn.plan(model, pj.ChipConfig(), n_chips=2).n_tiles == 65


def test_real_chip_is_close_and_drifts():
    model = Chain((20, 16, 8), nnx.Rngs(1))
    x = jax.random.uniform(jax.random.key(2), (32, 20), minval=-1, maxval=1)
    pnn.set_input_scales(model, x)
    model.eval()
    ref = model(x)
    dep = pnn.deploy(model, jax.random.key(3), pj.ChipConfig())
    err0 = float(jnp.linalg.norm(dep(x, jax.random.key(4)) - ref) / jnp.linalg.norm(ref))
    assert 0.0 < err0 < 0.5
    assert dep.at_time(jax.random.key(5), 3.15e7).t == pytest.approx(3.15e7)
    # Monte Carlo: the pure pieces vmap over chip instances.
    states = jax.tree.map(lambda *a: jnp.stack(a), *[dep.program(jax.random.key(6 + i)) for i in range(3)])
    keys = jax.random.split(jax.random.key(7), 3)
    ys = jax.vmap(dep.apply, in_axes=(0, None, 0, None))(states, dep.calibration, keys, x)
    assert ys.shape == (3,) + ref.shape and not np.allclose(ys[0], ys[1])


def test_deploy_errors():
    with pytest.raises(ValueError, match="no analog layers"):
        pnn.plan(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), pj.ChipConfig())
    with pytest.raises(TypeError, match="ChipConfig"):
        pnn.plan(Chain((2, 2), nnx.Rngs(0)), "hermes")
    with pytest.raises(ValueError, match="n_chips"):
        pnn.plan(Chain((2, 2), nnx.Rngs(0)), pj.ChipConfig(), n_chips=0)


def test_unprogrammed_template_places_without_a_state_and_programs_on_demand():
    model = Chain((20, 16, 8), nnx.Rngs(1))
    x = jax.random.uniform(jax.random.key(2), (8, 20), minval=-1, maxval=1)
    pnn.set_input_scales(model, x)
    model.eval()
    cfg = pj.ChipConfig.ideal()
    template = pnn.deploy(model, jax.random.key(3), cfg, program=False)
    assert template.state is None and template.layout == pnn.plan(model, cfg)
    for use in (lambda: template(x), lambda: template.at_time(jax.random.key(0), 1.0), lambda: template.t,
                lambda: pnn.calibrate(template, jax.random.key(0), x, steps=1)):
        with pytest.raises(ValueError, match="program=False"):
            use()
    # Programming the template gives what deploy() programs from the same key.
    programmed = template.replace(state=template.program(jax.random.key(3)))
    np.testing.assert_array_equal(programmed(x), pnn.deploy(model, jax.random.key(3), cfg)(x))
    np.testing.assert_allclose(programmed(x), model(x), rtol=1e-4, atol=1e-5)  # the ideal chip is exact
    with pytest.raises(TypeError, match="program must be True or False"):
        pnn.deploy(model, jax.random.key(3), cfg, program="no")
