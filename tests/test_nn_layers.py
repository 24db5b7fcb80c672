"""Analog layers: digital mode equals Flax, HWA mode perturbs and passes gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads
from scipy import stats

import pcmjax as pj
from pcmjax import nn as pnn
from pcmjax.nn import hwa as hwa_mod


def _x(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("lead", [(5,), (2, 3), ()])
def test_linear_digital_matches_nnx(use_bias, lead):
    a = pnn.AnalogLinear(7, 4, use_bias=use_bias, rngs=nnx.Rngs(3))
    b = nnx.Linear(7, 4, use_bias=use_bias, rngs=nnx.Rngs(3))
    if use_bias:  # non-zero bias, identical in both
        a.bias[...] = b.bias[...] = jnp.arange(4.0)
    np.testing.assert_array_equal(a.kernel[...], b.kernel[...])
    x = _x(lead + (7,))
    np.testing.assert_allclose(a(x), b(x), rtol=1e-6, atol=1e-6)


def test_models_initialise_like_nnx_twins():
    """Building an analog layer draws from ``rngs`` exactly as nnx.Linear does."""
    r1, r2 = nnx.Rngs(0), nnx.Rngs(0)
    a1, a2 = pnn.AnalogLinear(3, 5, rngs=r1), pnn.AnalogLinear(5, 2, rngs=r1)
    b1, b2 = nnx.Linear(3, 5, rngs=r2), nnx.Linear(5, 2, rngs=r2)
    np.testing.assert_array_equal(a2.kernel[...], b2.kernel[...])
    np.testing.assert_array_equal(a1.kernel[...], b1.kernel[...])


CONV_CASES = [
    dict(kernel_size=(3, 3), strides=1, padding="SAME"),
    dict(kernel_size=(3, 2), strides=(2, 1), padding="VALID"),
    dict(kernel_size=(3,), strides=2, padding=((2, 0),)),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_digital_and_patches_match_nnx(case):
    n = len(case["kernel_size"])
    a = pnn.AnalogConv(3, 5, rngs=nnx.Rngs(1), **case)
    b = nnx.Conv(3, 5, rngs=nnx.Rngs(1), **case)
    b.bias[...] = a.bias[...] = jnp.linspace(-1, 1, 5)
    x = _x((2,) + (7,) * n + (3,))
    ref = b(x)
    np.testing.assert_allclose(a(x), ref, rtol=1e-5, atol=1e-5)
    # The lowering used on the chip (patches @ matrix) gives the same convolution.
    a.use_running_average = True
    pnn.set_mode(a, "hwa", hwa=pnn.HWAConfig.off())
    np.testing.assert_allclose(a(x), ref, rtol=1e-4, atol=1e-4)


def test_conv_unbatched_and_extra_batch_axes():
    a = pnn.AnalogConv(2, 3, 3, rngs=nnx.Rngs(0))
    b = nnx.Conv(2, 3, 3, rngs=nnx.Rngs(0))
    for shape in [(6, 6, 2), (2, 3, 6, 6, 2)]:
        x = _x(shape)
        np.testing.assert_allclose(a(x), b(x), rtol=1e-5, atol=1e-5)


def test_input_scale_tracks_in_training_and_freezes_in_eval():
    layer = pnn.AnalogLinear(4, 2, rngs=nnx.Rngs(0))
    assert float(layer.input_scale[...]) == 0.0
    layer(jnp.full((3, 4), 0.5))
    assert float(layer.input_scale[...]) == pytest.approx(0.5)
    layer.eval()
    layer(jnp.full((3, 4), 9.0))
    assert float(layer.input_scale[...]) == pytest.approx(0.5)
    pnn.set_input_scales(layer, jnp.full((3, 4), 2.0))
    assert float(layer.input_scale[...]) == pytest.approx(2.0)
    assert layer.use_running_average  # restored


def _rectified_moments(mu, sigma):
    """Mean and variance of max(Y, 0), Y ~ N(mu, sigma²)."""
    a = mu / sigma
    m1 = mu * stats.norm.cdf(a) + sigma * stats.norm.pdf(a)
    m2 = (mu**2 + sigma**2) * stats.norm.cdf(a) + mu * sigma * stats.norm.pdf(a)
    return m1, m2 - m1**2


# PCM-like programming noise (PHYSICS.md §2.2): σ_prog(g) = Σ c_i (g / 25 µS)^i µS.
PCM_LIKE_PROG = (0.26348, 1.9650, -1.1731)


def _mean_sq_error(layer, x, ref, calls):
    """Squared error ``‖y − ref‖²`` of ``calls`` HWA forward passes (fresh noise each)."""
    return np.asarray([float(jnp.sum((layer(x) - ref) ** 2)) for _ in range(calls)])


def test_hwa_off_equals_float_and_hwa_noise_matches_closed_form():
    layer = pnn.AnalogLinear(40, 30, rngs=nnx.Rngs(0))
    x = _x((8, 40))
    ref = layer(x)
    layer.eval()
    off = nnx.view(layer, mode="hwa", hwa=pnn.HWAConfig.off())
    np.testing.assert_allclose(off(x), ref, rtol=1e-5, atol=1e-5)
    on = nnx.view(layer, mode="hwa")
    assert not np.allclose(on(x), on(x))  # fresh noise each call

    # Programming noise alone: y = x W' with W' = (G⁺ − G⁻) w_max / g_max and
    # G± = max(g± + 2 σ(g±) ξ, 0), so E‖y − x W‖² = Σ (x (E W' − W))² + x² Var W'.
    calls = 200
    prog = nnx.view(layer, mode="hwa", hwa=pnn.HWAConfig.off().replace(prog_noise_scale=2.0))
    sq = _mean_sq_error(prog, x, ref, calls)
    w = np.asarray(layer.kernel[...], np.float64)
    w_max, g_max = np.abs(w).max(), 25.0
    moments = []
    for g in (np.maximum(w, 0) / w_max * g_max, np.maximum(-w, 0) / w_max * g_max):
        sigma = 2 * sum(c * (g / g_max) ** i for i, c in enumerate(PCM_LIKE_PROG))
        moments.append(_rectified_moments(g, sigma))
    mean_w = (moments[0][0] - moments[1][0]) * w_max / g_max
    var_w = (moments[0][1] + moments[1][1]) * (w_max / g_max) ** 2
    xn, bias = np.asarray(x, np.float64), np.asarray(layer.bias[...], np.float64)
    expected = np.sum((xn @ mean_w + bias - np.asarray(ref, np.float64)) ** 2 + xn**2 @ var_w)
    assert abs(sq.mean() - expected) < 5 * sq.std(ddof=1) / np.sqrt(calls), (sq.mean(), expected)

    # Output noise alone: 4 % of the largest tile output, Gaussian: E‖y − ref‖² = (0.04 max|x W|)² · 8 · 30.
    outn = nnx.view(layer, mode="hwa", hwa=pnn.HWAConfig.off().replace(out_noise=0.04))
    sq = _mean_sq_error(outn, x, ref, calls)
    expected = (0.04 * float(jnp.max(jnp.abs(x @ layer.kernel[...])))) ** 2 * 8 * 30
    assert abs(sq.mean() - expected) < 5 * sq.std(ddof=1) / np.sqrt(calls), (sq.mean(), expected)


def test_programming_noise_statistics():
    """Weight noise is ``prog_noise_scale`` times the device's programming sigma."""
    cfg = pnn.HWAConfig(prog_noise_scale=2.0, drift_time=None)
    wn = jnp.full((200_000,), 0.5)
    out = hwa_mod.perturb_weights(jax.random.key(0), wn, cfg)
    dev = hwa_mod._device("pcm_like")
    sigma_on = 2 * float(dev.prog_sigma(0.5 * dev.g_max)) / float(dev.g_max)
    sigma_off = 2 * float(dev.prog_sigma(0.0)) / float(dev.g_max)
    # off side: max(σ ξ, 0) has variance σ²(1/2 − 1/(2π)).
    expected = np.sqrt(sigma_on**2 + sigma_off**2 * (0.5 - 1 / (2 * np.pi)))
    assert float(jnp.std(out)) == pytest.approx(expected, rel=0.02)


def test_drift_with_compensation_keeps_scale():
    cfg = pnn.HWAConfig(prog_noise_scale=0.0, drift_time=3.15e7, drift_noise=False)
    wn = jnp.linspace(-1, 1, 4001)
    out = hwa_mod.perturb_weights(jax.random.key(1), wn, cfg)
    ratio = float(jnp.sum(jnp.abs(out)) / jnp.sum(jnp.abs(wn)))
    assert ratio == pytest.approx(1.0, abs=0.02)
    assert float(jnp.std(out - wn)) > 0.01  # state-dependent drift distorts


class _ConvNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = pnn.AnalogConv(1, 4, (3, 3), strides=2, rngs=rngs, mode="hwa")
        self.fc = pnn.AnalogLinear(4 * 4 * 4, 10, rngs=rngs, mode="hwa")

    def __call__(self, x):
        return self.fc(jax.nn.relu(self.conv(x)).reshape(x.shape[0], -1))


def test_gradients_reach_every_parameter_in_hwa_mode():
    model = _ConvNet(nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
    y = jnp.arange(6) % 10

    def loss(m):
        return jnp.mean(jax.nn.log_softmax(m(x))[jnp.arange(6), y])

    grads = nnx.jit(nnx.grad(loss))(model)
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
    assert len(leaves) == 4  # 2 kernels + 2 biases
    for path, g in leaves:
        assert np.all(np.isfinite(g)) and float(jnp.max(jnp.abs(g))) > 0, path


def test_row_tiles_and_quantisers():
    assert hwa_mod.row_chunks(300, 256) == ((0, 150), (150, 300))
    assert hwa_mod.row_chunks(257, 256) == ((0, 129), (129, 257))
    assert hwa_mod.row_chunks(1, 256) == ((0, 1),)
    assert hwa_mod.row_chunks(700, 256) == ((0, 234), (234, 468), (468, 700))
    cfg = pnn.HWAConfig(prog_noise_scale=0.0, drift_time=None, out_noise=0.0, weight_clip=None, pwm_bits=4,
                        adc_bits=None)
    x = jnp.array([[0.33, -0.9]])
    w = jnp.eye(2)
    y = hwa_mod.hwa_matmul(jax.random.key(0), x, w, 1.0, cfg)
    np.testing.assert_allclose(y, jnp.round(x * 7) / 7, atol=1e-6)  # 4-bit PWM: 7 levels
    g = jax.grad(lambda x: jnp.sum(hwa_mod.hwa_matmul(jax.random.key(0), x, w, 1.0, cfg)))(jnp.array([[0.3, 1.5]]))
    np.testing.assert_allclose(g, [[1.0, 0.0]])  # straight through inside, zero beyond saturation


def test_errors():
    with pytest.raises(ValueError, match="mode"):
        pnn.AnalogLinear(2, 2, rngs=nnx.Rngs(0), mode="analog")
    with pytest.raises(ValueError, match="in_features"):
        pnn.AnalogLinear(0, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="adc_bits"):
        pnn.HWAConfig(adc_bits=1)
    with pytest.raises(ValueError, match="drift_time"):
        pnn.HWAConfig(drift_time=(10.0, 1.0))
    layer = pnn.AnalogLinear(3, 2, rngs=nnx.Rngs(0), mode="chip")
    with pytest.raises(RuntimeError, match="deploy"):
        layer(jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="in_features=3"):
        pnn.AnalogLinear(3, 2, rngs=nnx.Rngs(0))(jnp.ones((1, 4)))


def _one_layer_models():
    """``(name, model, x)`` of a model holding each kind of analog layer under ``"net"``."""
    rngs = nnx.Rngs(0)

    class Wrap(nnx.Module):
        def __init__(self, net):
            self.net = net

        def __call__(self, x):
            return self.net(x)

    return [
        ("linear", Wrap(pnn.AnalogLinear(5, 3, rngs=rngs)), _x((4, 5))),
        ("conv", Wrap(pnn.AnalogConv(2, 3, 3, rngs=rngs)), _x((2, 4, 4, 2))),
        ("linear_general", Wrap(pnn.AnalogLinearGeneral((5,), (2, 3), rngs=rngs)), _x((4, 5))),
        ("einsum", Wrap(pnn.AnalogEinsum("bd,dh->bh", (5, 3), (3,), rngs=rngs)), _x((4, 5))),
        ("lstm", Wrap(pnn.AnalogRNN(pnn.AnalogLSTMCell(5, 3, rngs=rngs))), _x((2, 6, 5))),
    ]


@pytest.mark.parametrize("case", range(5), ids=["linear", "conv", "linear_general", "einsum", "lstm"])
def test_every_analog_layer_needs_its_input_range_before_deploy(case):
    _, model, x = _one_layer_models()[case]
    cfg = pj.ChipConfig.ideal(n_cores=4)
    name = pnn.plan(model, cfg).layers[0].name
    assert name.startswith("net") and pnn.missing_input_ranges(model) == [name]
    with pytest.raises(ValueError, match=rf"no input range .*\['{name}'\]"):
        pnn.deploy(model, None, cfg, program=False)
    pnn.set_input_scales(model, x)
    assert pnn.missing_input_ranges(model) == []
    assert float(pnn.analog_layers(model)[0][1].input_scale[...]) > 0
    dep = pnn.deploy(model, jax.random.key(0), cfg)
    ref = model(x)
    np.testing.assert_allclose(dep(jax.random.key(1), x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["digital", "hwa"])
def test_conv_gradients_pass_finite_difference_check(mode):
    """With the non-idealities off (and inputs inside the range), a convolution is smooth in
    its input and kernel in both modes; HWA mode runs it as patches times the kernel matrix."""
    layer = pnn.AnalogConv(2, 3, (3, 2), strides=(2, 1), padding=((1, 0), (2, 1)), kernel_dilation=(1, 2),
                           rngs=nnx.Rngs(0), mode=mode, hwa=pnn.HWAConfig.off())
    layer.input_scale[...] = jnp.asarray(4.0)  # |x| < 1: no input clipping
    layer.eval()
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    x = _x((2, 5, 6, 2), seed=4)

    def f(x, kernel):
        p = nnx.State({"kernel": kernel, "bias": params["bias"][...]})
        return nnx.merge(graphdef, p, rest)(x, rngs=jax.random.key(0))

    check_grads(f, (x, layer.kernel[...]), order=1, modes=["fwd", "rev"], atol=1e-2, rtol=1e-2)
    if mode == "hwa":  # the same derivatives as the float convolution
        ref = nnx.view(layer, mode="digital")
        g = jax.grad(lambda x: jnp.sum(jnp.sin(f(x, layer.kernel[...]))))(x)
        g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(ref(x))))(x)
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)
