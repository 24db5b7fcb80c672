"""Converting Flax models: exact in digital mode, every container, exclusions, ranges, errors, ideal chip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pcmjax as pj
from pcmjax import nn as pnn


def _params(model):
    return {"/".join(map(str, p)): np.asarray(v) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _randomise(model, key):
    """Non-zero biases everywhere, so a dropped bias would show."""
    for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param))):
        if path[-1] == "bias":
            var.set_value(jax.random.normal(jax.random.fold_in(key, i), var.shape))
    return model


class Wrap(nnx.Module):
    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x):
        return self.layer(x)


LAYERS = {
    "linear": (lambda r: nnx.Linear(6, 5, rngs=r), (3, 4, 6), pnn.AnalogLinear),
    "linear_nobias": (lambda r: nnx.Linear(6, 5, use_bias=False, rngs=r), (3, 6), pnn.AnalogLinear),
    "conv2d": (lambda r: nnx.Conv(3, 4, (3, 3), strides=2, rngs=r), (2, 7, 7, 3), pnn.AnalogConv),
    "conv1d_valid_dilated": (lambda r: nnx.Conv(2, 3, 3, padding="VALID", kernel_dilation=2, rngs=r), (2, 9, 2),
                             pnn.AnalogConv),
    "linear_general_heads": (lambda r: nnx.LinearGeneral(6, (2, 3), rngs=r), (2, 4, 6), pnn.AnalogLinearGeneral),
    "linear_general_merge": (lambda r: nnx.LinearGeneral((2, 3), 5, axis=(-2, -1), rngs=r), (4, 2, 3),
                             pnn.AnalogLinearGeneral),
    "einsum": (lambda r: nnx.Einsum("btd,dnh->btnh", (6, 2, 3), (2, 3), rngs=r), (2, 4, 6), pnn.AnalogEinsum),
    "einsum_ellipsis": (lambda r: nnx.Einsum("...d,df->...f", (6, 4), (4,), rngs=r), (2, 3, 6), pnn.AnalogEinsum),
}

IDEAL_HWA = pnn.HWAConfig(prog_noise_scale=0.0, drift_time=None, out_noise=0.0, pwm_bits=None, adc_bits=None,
                          weight_clip=None)


@pytest.mark.parametrize("name", list(LAYERS))
def test_convert_is_exact_in_digital_mode_and_leaves_the_original(name):
    make, shape, cls = LAYERS[name]
    model = _randomise(Wrap(make(nnx.Rngs(0))), jax.random.key(1))
    before = _params(model)
    x = jax.random.normal(jax.random.key(2), shape)
    analog = pnn.convert(model, data=x)
    assert type(analog.layer) is cls and type(model.layer) is not cls
    _assert_same_params(_params(analog), before)
    _assert_same_params(_params(model), before)
    np.testing.assert_array_equal(analog(x), model(x))
    # The analog path (noise-free HWA, range above every input) is the same linear map.
    analog.layer.set_view(mode="hwa", hwa=IDEAL_HWA)
    np.testing.assert_allclose(analog(x), model(x), rtol=1e-5, atol=1e-5)
    analog.layer.kernel[...] = 0.0 * analog.layer.kernel[...]
    _assert_same_params(_params(model), before)  # shares no variables


class Zoo(nnx.Module):
    """Layers in every kind of container, one shared, with digital neighbours."""

    def __init__(self, r):
        self.emb = nnx.Embed(10, 6, rngs=r)
        self.plain = nnx.data([nnx.Linear(6, 8, rngs=r), nnx.Linear(8, 8, rngs=r)])
        self.named = nnx.data({"x": nnx.Linear(8, 8, rngs=r)})
        self.pair = nnx.data((nnx.Linear(8, 8, rngs=r),))
        self.lst = nnx.List([nnx.Linear(8, 8, rngs=r)])
        self.dct = nnx.Dict({"y": nnx.Linear(8, 8, rngs=r)})
        self.seq = nnx.Sequential(nnx.Linear(8, 8, rngs=r), jax.nn.relu)
        self.norm = nnx.LayerNorm(8, rngs=r)
        self.shared = self.plain[1]

    def __call__(self, tokens):
        x = self.plain[1](self.plain[0](self.emb(tokens)))
        x = self.dct["y"](self.lst[0](self.pair[0](self.named["x"](x))))
        return self.shared(self.norm(self.seq(x)))


def test_layers_are_found_in_every_container_and_sharing_is_kept():
    model = _randomise(Zoo(nnx.Rngs(0)), jax.random.key(1))
    tokens = jnp.arange(12) % 10
    analog = pnn.convert(model, data=tokens)
    names = ["/".join(map(str, p)) for p, _ in pnn.analog_layers(analog)]
    assert names == ["dct/y", "lst/0", "named/x", "pair/0", "plain/0", "plain/1", "seq/layers/0"]
    assert analog.shared is analog.plain[1]
    assert type(analog.emb) is nnx.Embed and type(analog.norm) is nnx.LayerNorm
    np.testing.assert_array_equal(analog(tokens), model(tokens))


def test_exclude_by_path_tuple_and_type_keeps_layers_untouched():
    model = Zoo(nnx.Rngs(0))
    analog = pnn.convert(model, exclude=["plain/0", ("named", "x"), nnx.Sequential])
    assert type(analog.plain[0]) is nnx.Linear and type(analog.named["x"]) is nnx.Linear
    assert type(analog.seq.layers[0]) is nnx.Linear  # inside an excluded type
    assert type(analog.plain[1]) is pnn.AnalogLinear
    np.testing.assert_array_equal(analog.plain[0].kernel[...], model.plain[0].kernel[...])
    assert type(pnn.convert(model, exclude=[nnx.Embed]).plain[0]) is pnn.AnalogLinear


def test_input_ranges_are_the_abs_max_of_each_layers_inputs():
    class MLP(nnx.Module):
        def __init__(self, r):
            self.a, self.b = nnx.Linear(5, 7, rngs=r), nnx.Linear(7, 3, rngs=r)

        def __call__(self, x):
            return self.b(jax.nn.relu(self.a(x)))

    model = MLP(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (50, 5))
    analog = pnn.convert(model, data=x)
    np.testing.assert_allclose(float(analog.a.input_scale[...]), np.abs(x).max(), rtol=1e-6)
    np.testing.assert_allclose(float(analog.b.input_scale[...]), np.abs(jax.nn.relu(model.a(x))).max(), rtol=1e-6)
    analog(2 * x)  # ranges stay frozen after measuring
    np.testing.assert_allclose(float(analog.a.input_scale[...]), np.abs(x).max(), rtol=1e-6)


def test_a_layer_called_twice_gets_the_range_of_all_its_inputs():
    model = Zoo(nnx.Rngs(0))
    tokens = jnp.arange(12) % 10
    analog = pnn.convert(model, data=tokens)
    m = model
    first = m.plain[0](m.emb(tokens))  # plain[1]'s first input; it is also `shared`, called last
    x = m.dct["y"](m.lst[0](m.pair[0](m.named["x"](m.plain[1](first)))))
    second = m.norm(m.seq(x))
    expected = max(float(jnp.abs(first).max()), float(jnp.abs(second).max()))
    np.testing.assert_allclose(float(analog.plain[1].input_scale[...]), expected, rtol=1e-6)


def test_bad_input_errors():
    r = nnx.Rngs(0)
    with pytest.raises(ValueError, match=r"no layer to convert.*Embed, LayerNorm"):
        pnn.convert(nnx.Sequential(nnx.Embed(3, 4, rngs=r), nnx.LayerNorm(4, rngs=r)))
    with pytest.raises(ValueError, match=r"exclude paths \['nope'\] match no module.*plain/0"):
        pnn.convert(Zoo(r), exclude="nope")
    with pytest.raises(TypeError, match="exclude entries"):
        pnn.convert(Zoo(r), exclude=[1.5])
    with pytest.raises(TypeError, match="model must be a flax.nnx.Module"):
        pnn.convert(lambda x: x)
    with pytest.raises(ValueError, match=r"layer 'layer' \(Conv\) uses padding='CIRCULAR'.*exclude=\['layer'\]"):
        pnn.convert(Wrap(nnx.Conv(2, 2, 3, padding="CIRCULAR", rngs=r)))
    with pytest.raises(ValueError, match=r"layer 'layer' \(Einsum\).*not one matrix"):
        pnn.convert(Wrap(nnx.Einsum("bd,bdf->bf", (3, 6, 4), rngs=r)))
    with pytest.raises(ValueError, match="did not reach the analog layers"):
        pnn.convert(nnx.Sequential(nnx.Linear(3, 3, rngs=r)), data=jnp.zeros((2, 3)))


class CNN(nnx.Module):
    def __init__(self, r):
        self.conv1 = nnx.Conv(1, 4, (3, 3), rngs=r)
        self.bn = nnx.BatchNorm(4, use_running_average=True, rngs=r)
        self.conv2 = nnx.Conv(4, 6, (3, 3), strides=2, rngs=r)
        self.head = nnx.Linear(4 * 4 * 6, 3, rngs=r)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv1(x)))
        x = nnx.relu(self.conv2(x))
        return self.head(x.reshape(x.shape[0], -1))


def test_converted_cnn_on_the_ideal_chip_equals_the_original():
    model = _randomise(CNN(nnx.Rngs(0)), jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (5, 8, 8, 1))
    analog = pnn.convert(model, data=x)
    dep = pnn.deploy(analog, jax.random.key(3), pj.ChipConfig.ideal(n_cores=4))
    ref = model(x)
    y = dep.apply(dep.state, dep.calibration, jax.random.key(4), x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))



def test_deploying_a_layer_without_an_input_range_is_an_error_naming_it():
    model = CNN(nnx.Rngs(0))
    analog = pnn.convert(model, exclude="conv1")
    with pytest.raises(ValueError, match=r"input range.*conv2.*head.*measure_input_ranges"):
        pnn.deploy(analog, jax.random.key(0), pj.ChipConfig.ideal(n_cores=4))
    pnn.measure_input_ranges(analog, jnp.ones((2, 8, 8, 1)))
    assert pnn.deploy(analog, jax.random.key(0), pj.ChipConfig.ideal(n_cores=4)).layout.n_tiles == 2


def test_hwa_training_needs_analog_layers():
    model = CNN(nnx.Rngs(0))
    x, y = jnp.ones((4, 8, 8, 1)), jnp.arange(4) % 3
    with pytest.raises(ValueError, match=r"mode='hwa'.*no analog layers.*pcmjax.nn.convert"):
        pnn.train(jax.random.key(0), model, x, y, mode="hwa", epochs=1)
    analog = pnn.convert(model, data=x)
    hist = pnn.train(jax.random.key(0), analog, x, y, mode="hwa", epochs=2, batch_size=4)
    assert np.isfinite(hist["loss"]).all() and analog.head.mode == "hwa"
