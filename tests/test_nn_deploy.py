"""Deploying networks: exact tiling, placement, the clear error, the ideal chip = digital."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

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
    np.testing.assert_allclose(dep(jax.random.key(9), x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
    np.testing.assert_allclose(dep.reference(x), ref, rtol=1e-5, atol=1e-5)
    aged = dep.at_time(jax.random.key(1), 86400.0)  # no drift on the ideal chip
    np.testing.assert_allclose(aged(jax.random.key(9), x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))


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
    np.testing.assert_allclose(dep(jax.random.key(9), x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))


def test_network_needing_65_cores_gets_a_clear_error():
    model = Chain((256, 65 * 256), nnx.Rngs(0))
    with pytest.raises(ValueError) as e:
        pnn.deploy(model, jax.random.key(0), pj.ChipConfig())
    msg = str(e.value)
    assert "needs 65 cores" in msg and "64 cores" in msg and "n_chips=2" in msg
    assert pnn.plan(model, pj.ChipConfig(), n_chips=2).n_tiles == 65


# HERMES two-device programming noise (PHYSICS.md §2.1): σ_prog(g) = Σ c_i (g / g_max)^i µS.
HERMES2_PROG = (0.16603222, 4.71806468, -8.48101252, 4.68961419)
HERMES2_G_MAX = 20.7


def _rectified_moments(mu, sigma):
    """Mean and variance of max(Y, 0), Y ~ N(mu, sigma²)."""
    a = mu / sigma
    m1 = mu * stats.norm.cdf(a) + sigma * stats.norm.pdf(a)
    m2 = (mu**2 + sigma**2) * stats.norm.cdf(a) + mu * sigma * stats.norm.pdf(a)
    return m1, m2 - m1**2


def _programmed_weight_moments(w):
    """Mean and variance of every weight as programmed (one tile, w_max = abs-max):
    ``(G⁺ − G⁻) w_max / g_max`` with ``G± = max(g± + σ(g±) ξ, 0)``, float64."""
    w = np.asarray(w, np.float64)
    w_max = np.abs(w).max()
    g_pos, g_neg = np.maximum(w, 0) / w_max * HERMES2_G_MAX, np.maximum(-w, 0) / w_max * HERMES2_G_MAX

    def sigma(g):
        return sum(c * (g / HERMES2_G_MAX) ** i for i, c in enumerate(HERMES2_PROG))

    m_pos, v_pos = _rectified_moments(g_pos, sigma(g_pos))
    m_neg, v_neg = _rectified_moments(g_neg, sigma(g_neg))
    scale = w_max / HERMES2_G_MAX
    return (m_pos - m_neg) * scale, (v_pos + v_neg) * scale**2


def test_programming_noise_error_of_a_two_layer_chain_matches_closed_form():
    """On a chip whose only non-ideality is one-shot programming noise, a linear chain
    ``x W1' W2'`` of independently programmed weights has the mean squared error
    ``Σ (E y − y)² + Var y`` with ``Var y2 = Var y1 · (V2 + M2²) + (E y1)² · V2``
    (``M``, ``V``: the programmed weights' moments, from the published device law)."""
    model = Chain((20, 16, 8), nnx.Rngs(1))
    x = jax.random.uniform(jax.random.key(2), (32, 20), minval=-1, maxval=1)
    pnn.set_input_scales(model, x)
    # Room for the noisy first-layer outputs: the inputs of the chip clip at the input range.
    model.layers[1].input_scale[...] = 4 * model.layers[1].input_scale[...]
    model.eval()
    ref = np.asarray(model(x), np.float64)
    dep = pnn.deploy(model, jax.random.key(3), pj.ChipConfig().only("programming_noise"))
    k = 64
    states = jax.vmap(dep.program)(jax.random.split(jax.random.key(6), k))
    keys = jax.random.split(jax.random.key(7), k)
    ys = jax.vmap(dep.apply, in_axes=(0, None, 0, None))(states, dep.calibration, keys, x)
    sq = np.sum((np.asarray(ys, np.float64) - ref) ** 2, axis=(1, 2))  # one squared error per chip instance

    m1, v1 = _programmed_weight_moments(model.layers[0].kernel[...])
    m2, v2 = _programmed_weight_moments(model.layers[1].kernel[...])
    xn = np.asarray(x, np.float64)
    ey1, vy1 = xn @ m1, xn**2 @ v1
    ey2, vy2 = ey1 @ m2, vy1 @ (v2 + m2**2) + ey1**2 @ v2
    expected = np.sum((ey2 - ref) ** 2 + vy2)
    se = sq.std(ddof=1) / np.sqrt(k)
    assert abs(sq.mean() - expected) < 5 * se, (sq.mean(), expected, se)
    assert 0.05 < np.sqrt(expected / np.sum(ref**2)) < 0.5  # the noise is resolved, not negligible


def test_real_chip_drifts_and_vmaps_over_instances():
    model = Chain((20, 16, 8), nnx.Rngs(1))
    x = jax.random.uniform(jax.random.key(2), (32, 20), minval=-1, maxval=1)
    pnn.set_input_scales(model, x)
    model.eval()
    ref = model(x)
    dep = pnn.deploy(model, jax.random.key(3), pj.ChipConfig())
    assert dep.at_time(jax.random.key(5), 3.15e7).t == pytest.approx(3.15e7)
    # Monte Carlo: the pure pieces vmap over chip instances and agree with one-at-a-time calls.
    states = jax.tree.map(lambda *a: jnp.stack(a), *[dep.program(jax.random.key(6 + i)) for i in range(3)])
    keys = jax.random.split(jax.random.key(7), 3)
    ys = jax.vmap(dep.apply, in_axes=(0, None, 0, None))(states, dep.calibration, keys, x)
    assert ys.shape == (3,) + ref.shape and not np.allclose(ys[0], ys[1])
    one = dep.replace(state=dep.program(jax.random.key(7)))(keys[1], x)
    np.testing.assert_allclose(ys[1], one, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(one))))


def test_non_finite_input_to_a_deployed_network_is_a_clear_error():
    model = Chain((4, 3), nnx.Rngs(0))
    pnn.set_input_scales(model, np.ones((2, 4), np.float32))
    dep = pnn.deploy(model, jax.random.key(0), pj.ChipConfig.ideal())
    x = np.ones((2, 4), np.float32)
    x[1, 2] = np.nan
    for call in (lambda: dep(jax.random.key(1), x), lambda: dep.apply(dep.state, dep.calibration, jax.random.key(1), x),
                 lambda: dep.reference(x)):
        with pytest.raises(ValueError, match=r"x must be finite, got nan at index \(1, 2\)"):
            call()
    with pytest.raises(TypeError, match="key"):
        dep(0, np.ones((2, 4), np.float32))  # a seed is not a key


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
    key = jax.random.key(0)
    for use in (lambda: template(key, x), lambda: template.at_time(key, 1.0), lambda: template.t,
                lambda: pnn.calibrate(template, key, x, steps=1)):
        with pytest.raises(ValueError, match="program=False"):
            use()
    # Programming the template gives what deploy() programs from the same key.
    programmed = template.replace(state=template.program(jax.random.key(3)))
    k = jax.random.key(4)
    np.testing.assert_array_equal(programmed(k, x), pnn.deploy(model, jax.random.key(3), cfg)(k, x))
    np.testing.assert_allclose(programmed(k, x), model(x), rtol=1e-4, atol=1e-5)  # the ideal chip is exact
    with pytest.raises(TypeError, match="program must be True or False"):
        pnn.deploy(model, jax.random.key(3), cfg, program="no")


def test_a_layer_without_an_input_range_cannot_be_deployed():
    model = Chain((6, 5, 3), nnx.Rngs(0))
    cfg = pj.ChipConfig.ideal()
    assert pnn.missing_input_ranges(model) == ["layers/0", "layers/1"]
    with pytest.raises(ValueError, match=r"no input range .*\['layers/0', 'layers/1'\].*measure_input_ranges"):
        pnn.deploy(model, jax.random.key(0), cfg)
    with pytest.raises(ValueError, match=r"\['layers/0', 'layers/1'\]"):
        pnn.deploy(model, None, cfg, program=False)  # placing a template checks too
    model.layers[0].input_scale[...] = jnp.float32(2.0)
    with pytest.raises(ValueError, match=r"\['layers/1'\]"):
        pnn.deploy(model, jax.random.key(0), cfg)
    x = jax.random.uniform(jax.random.key(1), (8, 6), minval=-1, maxval=1)
    pnn.set_input_scales(model, x)
    assert pnn.missing_input_ranges(model) == []
    np.testing.assert_allclose(float(model.layers[0].input_scale[...]), float(jnp.max(jnp.abs(x))), rtol=1e-6)
    dep = pnn.deploy(model, jax.random.key(0), cfg)
    np.testing.assert_allclose(dep(jax.random.key(2), x), model(x), rtol=1e-4, atol=1e-5)


def test_training_sets_the_input_ranges_a_deploy_needs():
    model = Chain((6, 3), nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (32, 6), minval=-2, maxval=2)
    y = jnp.arange(32) % 3
    pnn.train(jax.random.key(0), model, x, y, mode="hwa", epochs=1, batch_size=32)
    # One step on the whole set: its abs-max is the first (and only) running estimate.
    np.testing.assert_allclose(float(model.layers[0].input_scale[...]), float(jnp.max(jnp.abs(x))), rtol=1e-6)
    assert pnn.deploy(model, jax.random.key(0), pj.ChipConfig.ideal()).layout.n_tiles == 1


def test_hwa_forward_without_a_range_uses_the_batch_range():
    """Frozen statistics that were never measured: an HWA pass encodes against the batch's
    own abs-max, exactly as with that range set by hand (same noise key)."""
    x = jax.random.uniform(jax.random.key(1), (16, 6), minval=-3, maxval=3)
    unset = pnn.AnalogLinear(6, 4, rngs=nnx.Rngs(0), mode="hwa")
    unset.eval()
    measured = nnx.clone(unset)
    measured.input_scale[...] = jnp.max(jnp.abs(x))
    a, b = unset(x, rngs=jax.random.key(5)), measured(x, rngs=jax.random.key(5))
    np.testing.assert_array_equal(a, b)
    assert float(unset.input_scale[...]) == 0.0  # frozen: not recorded
    ref = x @ unset.kernel[...] + unset.bias[...]
    assert 0.0 < float(jnp.linalg.norm(a - ref) / jnp.linalg.norm(ref)) < 0.5


def test_a_range_dropped_behind_deploys_back_gives_nan_not_a_default():
    """Parameters swapped in under jit cannot be checked: an unset range gives NaN, never a
    silently assumed range."""
    model = Chain((6, 3), nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (4, 6), minval=-1, maxval=1)
    pnn.set_input_scales(model, x)
    dep = pnn.deploy(model, jax.random.key(0), pj.ChipConfig.ideal())
    params = jax.tree.map(lambda v: v, dep.params)
    params["layers"][0]["input_scale"].set_value(jnp.float32(0.0))
    y = dep.replace(params=params)(jax.random.key(2), x)
    assert np.all(np.isnan(np.asarray(y)))
    assert np.all(np.isfinite(np.asarray(dep(jax.random.key(2), x))))


class _TokenModel(nnx.Module):
    """Token ids → embedding → analog linear, checking that ids arrive as integers."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(5, 4, rngs=rngs)
        self.out = pnn.AnalogLinear(4, 3, rngs=rngs)

    def __call__(self, tokens):
        assert jnp.issubdtype(tokens.dtype, jnp.integer), tokens.dtype
        return self.out(self.embed(tokens))


def test_integer_token_inputs_reach_the_model_unchanged():
    model = _TokenModel(nnx.Rngs(0))
    tokens = np.array([[0, 1, 2], [3, 4, 0]], np.int32)
    pnn.set_input_scales(model, tokens)
    dep = pnn.deploy(model, jax.random.key(0), pj.ChipConfig.ideal())
    ref = model(jnp.asarray(tokens))
    np.testing.assert_allclose(dep(jax.random.key(1), tokens), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dep.reference(tokens.tolist()), ref, rtol=1e-6, atol=1e-6)
    # Traced integers too (vmap over chip instances).
    keys = jax.random.split(jax.random.key(2), 2)
    states = jax.vmap(dep.program)(keys)
    ys = jax.vmap(dep.apply, in_axes=(0, None, 0, None))(states, dep.calibration, keys, jnp.asarray(tokens))
    np.testing.assert_allclose(ys[1], ref, rtol=1e-4, atol=1e-5)
    # Floats keep their check; float ids are not converted.
    with pytest.raises(ValueError, match="x must be finite"):
        dep.reference(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(AssertionError):
        dep.reference(tokens.astype(np.float32))


def test_layer_call_order_follows_the_data_flow_not_the_attributes():
    class Reversed(nnx.Module):
        def __init__(self, rngs):
            self.a_out = pnn.AnalogLinear(5, 2, rngs=rngs)  # placed first (graph order), called last
            self.b_in = pnn.AnalogLinear(3, 5, rngs=rngs)
            self.c_unused = pnn.AnalogLinear(2, 2, rngs=rngs)

        def __call__(self, x):
            return self.a_out(self.b_in(x))

    model = Reversed(nnx.Rngs(0))
    for _, layer in pnn.analog_layers(model):
        layer.input_scale[...] = jnp.float32(1.0)
    dep = pnn.deploy(model, None, pj.ChipConfig.ideal(), program=False)
    assert [lp.name for lp in dep.layout.layers] == ["a_out", "b_in", "c_unused"]
    assert pnn.layer_call_order(dep, np.zeros((7, 3), np.float32)) == (1, 0, 2)


def test_integer_pixels_reach_a_cnn_as_nnx_conv_takes_them():
    """Integer inputs pass unchanged to the model; analog layers promote them to float as
    ``nnx.Conv`` does, so uint8 images give what their float values give."""
    model = pnn.SmallCNN(channels=(4, 8, 8), rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).integers(0, 16, (3, 8, 8, 1)).astype(np.uint8)
    pnn.set_input_scales(model, x.astype(np.float32))
    model.eval()
    dep = pnn.deploy(model, jax.random.key(0), pj.ChipConfig.ideal())
    xf = x.astype(np.float32)
    np.testing.assert_allclose(dep.reference(x), dep.reference(xf), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dep(jax.random.key(1), x), dep(jax.random.key(1), xf), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dep.reference(x), model(xf), rtol=1e-5, atol=1e-5)
