"""Convolution reads (pcmjax/chip/conv.py): the image read directly instead of its patches."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import pcmjax as pj
from pcmjax import nn as pnn
from pcmjax.chip import conv as conv_module
from pcmjax.chip.conv import ConvGeometry, _batched_convolution, conv_contract
from pcmjax.chip.mvm import conv_mvm
from pcmjax.chip.patches import extract_patches
from pcmjax.chip.read import make_read
from pcmjax.nn import _context


def _image(n=6, size=7, channels=10, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, size, size, channels), minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("strides,padding,dilation", [((1, 1), ((1, 1), (1, 1)), (1, 1)),
                                                      ((2, 1), ((0, 1), (2, 0)), (1, 2))])
def test_contract_is_the_patches_times_each_tiles_rows(strides, padding, dilation):
    """Three cores holding rows [0, 40), [40, 90) and [90, 90) of a 90-row kernel matrix
    (10 channels × 3×3): each core's charges equal its row chunk of the patches times its rows."""
    x = _image()
    chunks = ((0, 40), (40, 90), (90, 90))
    w = jax.random.normal(jax.random.key(1), (3, 50, 5))
    geom = ConvGeometry((3, 3), strides, padding, (1, 1), dilation, 10, chunks)
    got = conv_contract(geom)(x, w)
    p = extract_patches(x, (3, 3), strides, padding, (1, 1), dilation)
    p = np.asarray(p, np.float64).reshape(-1, 90)
    for c, (a, b) in enumerate(chunks):
        want = p[:, a:b] @ np.asarray(w[c, :b - a], np.float64)
        np.testing.assert_allclose(np.asarray(got[c]), want, rtol=1e-5, atol=1e-5)


def test_conv_mvm_on_an_ideal_chip_is_the_convolution():
    cfg = pj.ChipConfig.ideal(n_cores=1, rows=90, cols=8)
    kernel = jax.random.normal(jax.random.key(2), (3, 3, 10, 8)) * 0.2
    matrix = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(90, 8)  # channel-major rows
    state = pj.program_chip(jax.random.key(3), matrix[None], cfg).at_time(jax.random.key(4), 1.0)
    x = _image()
    geom = ConvGeometry((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 10, ((0, 90),))
    y = conv_mvm(jax.random.key(5), state, x, geom)
    want = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.asarray(y[0]), np.asarray(want).reshape(-1, 8), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"image must have shape \[N, 2 spatial axes, in_features=10\]"):
        conv_mvm(jax.random.key(5), state, x[..., :9], geom)
    with pytest.raises(ValueError, match="image"):
        conv_mvm(jax.random.key(5), state, x.at[0, 0, 0, 0].set(jnp.nan), geom)
    with pytest.raises(TypeError, match="geometry"):
        conv_mvm(jax.random.key(5), state, x, (3, 3))
    batched = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    with pytest.raises(ValueError, match="extra leading axes.*jax.vmap"):
        conv_mvm(jax.random.key(5), batched, x, geom)
    with pytest.raises(ValueError, match="one row chunk per core"):
        conv_mvm(jax.random.key(5), state, x, ConvGeometry((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 10, ()))
    with pytest.raises(ValueError, match="not kind='reference'"):
        make_read(cfg, "reference", contract=conv_contract(geom))


def _has_convolution(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            if _has_convolution(sub):
                return True
    return False


def _deployed_cnn():
    model = pnn.SmallCNN(rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(6), (12, 8, 8, 1))
    pnn.set_input_scales(model, x)
    return pnn.deploy(model, jax.random.key(7), pj.ChipConfig(n_cores=8)), x


def test_deployed_cnn_reads_the_same_counts_as_from_patches(monkeypatch):
    """HERMES noise, drift and ADC on: the two reads use the same normals and differ only in
    the order of the sums, so nearly every conversion gives the same count and the layers'
    outputs agree element for element but for rare flips of one count."""
    dep, x = _deployed_cnn()
    aged = dep.at_time(jax.random.key(8), 3600.0)

    def run():
        fn = lambda xx: aged.apply(aged.state, aged.calibration, jax.random.key(9), xx, record=True)  # noqa: E731
        return _has_convolution(jax.make_jaxpr(fn)(x).jaxpr), fn(x)[1]

    conv, direct = run()
    monkeypatch.setattr(_context, "CONV_READ_MIN_CHANNELS", 10**9)  # every layer from its patches
    jax.clear_caches()  # the deployed forward pass is jitted: trace it again
    no_conv, patched = run()
    assert conv and not no_conv  # the two reads are different programs
    for i in (1, 2):  # conv2 (16 input channels) and conv3 (32, two row tiles) read the image
        a, b = np.asarray(direct[i]), np.asarray(patched[i])
        assert a.shape == b.shape
        same = np.mean(a == b)
        assert same > 0.99, (i, same)
        scale = np.max(np.abs(b))
        assert np.max(np.abs(a - b)) < 0.05 * scale, i
    for i in (0, 3):  # conv1 (1 channel) and the classifier are read from patches / vectors either way
        assert np.array_equal(np.asarray(direct[i]), np.asarray(patched[i])), i


def test_four_phase_contract_is_each_sign_against_each_polarity():
    """Four-phase: the image's positive and negative parts against both polarities of every
    core, ``[C, sign, polarity, B, K]``, each its row chunk of the patches times its rows."""
    x = jnp.stack([jnp.maximum(_image(), 0.0), jnp.maximum(-_image(), 0.0)])
    chunks = ((0, 40), (40, 90), (90, 90))
    w = jax.random.normal(jax.random.key(1), (3, 2, 50, 5))
    geom = ConvGeometry((3, 3), (2, 1), ((0, 1), (2, 0)), (1, 1), (1, 2), 10, chunks)
    got = conv_contract(geom)(x, w)
    assert got.shape == (3, 2, 2, 6 * 3 * 5, 5)  # 6 images of 3 × 5 output pixels
    for sign in range(2):
        p = extract_patches(x[sign], (3, 3), (2, 1), ((0, 1), (2, 0)), (1, 1), (1, 2))
        p = np.asarray(p, np.float64).reshape(-1, 90)
        for c, (a, b) in enumerate(chunks):
            for pol in range(2):
                want = p[:, a:b] @ np.asarray(w[c, pol, :b - a], np.float64)
                np.testing.assert_allclose(np.asarray(got[c, sign, pol]), want, rtol=1e-5, atol=1e-5)


def test_four_phase_deployed_cnn_reads_the_same_counts_as_from_patches(monkeypatch):
    """Four-phase reads of a deployed CNN: the same conversions and normals as from patches."""
    model = pnn.SmallCNN(rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(6), (6, 8, 8, 1))
    pnn.set_input_scales(model, x)
    dep = pnn.deploy(model, jax.random.key(7), pj.ChipConfig(n_cores=8, read_phases=4))

    def run():
        fn = lambda xx: dep.apply(dep.state, dep.calibration, jax.random.key(9), xx, record=True)  # noqa: E731
        return _has_convolution(jax.make_jaxpr(fn)(x).jaxpr), fn(x)[1]

    conv, direct = run()
    monkeypatch.setattr(_context, "CONV_READ_MIN_CHANNELS", 10**9)
    jax.clear_caches()
    no_conv, patched = run()
    assert conv and not no_conv
    for i in (1, 2):
        a, b = np.asarray(direct[i]), np.asarray(patched[i])
        assert np.mean(a == b) > 0.99, i
        assert np.max(np.abs(a - b)) < 0.05 * np.max(np.abs(b)), i


# -- batches of kernels (a study's times, a vmap over chips) --------------------------------
_GEOM = ConvGeometry((3, 3), (2, 1), ((1, 1), (0, 1)), (1, 1), (1, 2), 4, ((0, 36),))


def _reference_conv(q, kernel):
    return jax.lax.conv_general_dilated(q, kernel, _GEOM.strides, _GEOM.padding, rhs_dilation=_GEOM.kernel_dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _batch(outer, inner, dtype=jnp.float32):
    """Images and kernels batched as ``vmap(vmap(·, inner), outer)`` takes them (0 or None per argument)."""
    q = jax.random.normal(jax.random.key(0), (3, 2, 2, 5, 7, 4), dtype)
    k = jax.random.normal(jax.random.key(1), (3, 2, 3, 3, 4, 6), dtype)
    q = q[:, 0] if inner[0] is None else q
    k = k[:, 0] if inner[1] is None else k
    return (q if outer[0] == 0 else q[0]), (k if outer[1] == 0 else k[0])


AXES = [(0, 0), (None, 0), (0, None)]


@pytest.mark.parametrize("outer", AXES)
@pytest.mark.parametrize("inner", AXES)
def test_batched_kernels_equal_vmap_of_the_convolution(inner, outer):
    """Every way of batching images and kernels (one image for several kernels, one kernel
    for several images, a kernel per image), nested twice: the values and the reverse-mode
    derivatives of the batching rule are those of ``vmap`` of the plain convolution, in float64."""
    conv = _batched_convolution(_GEOM)
    with jax.enable_x64(True):
        q, k = _batch(outer, inner, jnp.float64)

        def loss(f):
            return lambda q, k: jnp.sum(jnp.sin(jax.vmap(jax.vmap(f, in_axes=inner), in_axes=outer)(q, k)))

        np.testing.assert_allclose(jax.jit(loss(conv))(q, k), loss(_reference_conv)(q, k), rtol=1e-12)
        got, want = jax.grad(loss(conv), (0, 1))(q, k), jax.grad(loss(_reference_conv), (0, 1))(q, k)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def groups(jaxpr):
    """``(feature_group_count, batch_group_count)`` of every convolution in ``jaxpr``."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            out.append((eqn.params["feature_group_count"], eqn.params["batch_group_count"]))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out += groups(sub)
    return out


def test_batched_kernels_make_no_grouped_convolution():
    """A kernel per image under ``vmap`` runs as one convolution per kernel; one image for
    several kernels as one convolution with the kernels side by side: never a grouped one."""
    conv = _batched_convolution(_GEOM)
    q, k = _batch((0, 0), (0, 0))

    per_image = groups(jax.make_jaxpr(jax.vmap(jax.vmap(conv)))(q, k).jaxpr)
    assert per_image == [(1, 1)] * 6
    shared = groups(jax.make_jaxpr(jax.vmap(conv, in_axes=(None, 0)))(q[0, 0], k[0]).jaxpr)
    assert shared == [(1, 1)]
    assert groups(jax.make_jaxpr(jax.vmap(_reference_conv))(q[0], k[0]).jaxpr) == [(2, 1)]  # what vmap makes


def test_gradients_pass_finite_differences_and_forward_mode_is_refused():
    conv = _batched_convolution(_GEOM)
    with jax.enable_x64(True):
        q, k = _batch((0, 0), (0, 0), jnp.float64)
        check_grads(jax.vmap(conv), (q[0], k[0]), order=1, modes=["rev"])
        check_grads(jax.vmap(conv, in_axes=(None, 0)), (q[0, 0], k[0]), order=1, modes=["rev"])
        with pytest.raises(TypeError, match="forward-mode"):
            jax.jvp(conv, (q[0, 0], k[0, 0]), (q[0, 0], k[0, 0]))


def test_calibration_gradients_of_a_deployed_cnn_equal_the_patches_read(monkeypatch):
    """Calibrating three chips at once (``vmap`` of ``grad``) through convolution reads gives
    the derivatives of the patches read: the same function up to the order of the sums."""
    dep, x = _deployed_cnn()
    keys = jax.random.split(jax.random.key(10), 3)
    states = jax.vmap(lambda k: dep.program(k).at_time(jax.random.fold_in(k, 1), 86400.0))(keys)
    ident = pnn.identity_calibration(dep.layout)

    def grads():
        def loss(cal, state, key):
            return jnp.mean(dep.apply(state, cal, key, x) ** 2)
        return jax.jit(jax.vmap(jax.grad(loss), (None, 0, 0)))(ident, states, keys)

    direct = grads()
    monkeypatch.setattr(_context, "CONV_READ_MIN_CHANNELS", 10**9)
    jax.clear_caches()
    patched = grads()
    for name in ("gamma", "beta"):
        for a, b in zip(direct[name], patched[name]):
            a, b = np.asarray(a), np.asarray(b)
            assert np.all(np.isfinite(a)) and np.abs(b).max() > 0
            np.testing.assert_allclose(a, b, atol=0.05 * np.abs(b).max(), rtol=0.05)


def test_off_the_cpu_a_kernel_per_image_stays_one_grouped_convolution(monkeypatch):
    """GPU and TPU libraries run grouped convolutions well: there the rule keeps ``vmap``'s
    grouped convolution (same values), and only the shared-image case is rewritten."""
    monkeypatch.setattr(conv_module, "loops_over_kernels", lambda: False)
    conv = _batched_convolution(_GEOM)
    q, k = _batch((0, 0), (0, 0))
    f = jax.vmap(conv)
    assert groups(jax.make_jaxpr(f)(q[0], k[0]).jaxpr) == [(2, 1)]
    assert groups(jax.make_jaxpr(jax.vmap(conv, in_axes=(None, 0)))(q[0, 0], k[0]).jaxpr) == [(1, 1)]
    np.testing.assert_allclose(f(q[0], k[0]), jax.vmap(_reference_conv)(q[0], k[0]), rtol=1e-5, atol=1e-5)


def test_more_kernels_than_written_out_run_in_a_loop():
    """Beyond ``UNROLL_LIMIT`` kernels per batch the convolutions run in a ``lax.map`` loop:
    the same values as ``vmap`` of the plain convolution."""
    conv = _batched_convolution(_GEOM)
    n = conv_module.UNROLL_LIMIT + 1
    q = jax.random.normal(jax.random.key(3), (n, 2, 5, 7, 4))
    k = jax.random.normal(jax.random.key(4), (n, 3, 3, 4, 6))
    jaxpr = jax.make_jaxpr(jax.vmap(conv))(q, k).jaxpr
    assert groups(jaxpr) == [(1, 1)]  # one convolution, inside the loop's body
    np.testing.assert_allclose(jax.vmap(conv)(q, k), jax.vmap(_reference_conv)(q, k), rtol=1e-5, atol=1e-5)
