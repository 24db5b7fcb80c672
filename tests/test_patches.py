"""Convolution patches by slicing: bit for bit those of ``jax.lax.conv_general_dilated_patches``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from pcmjax.chip.patches import extract_patches

SPEC = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NHWDC", "HWDIO", "NHWDC")}


def _reference(x, kernel_size, strides, padding, input_dilation, kernel_dilation):
    return jax.lax.conv_general_dilated_patches(x, kernel_size, strides, padding, lhs_dilation=input_dilation,
                                                rhs_dilation=kernel_dilation,
                                                dimension_numbers=SPEC[len(kernel_size)])


def _assert_bitwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@st.composite
def conv_cases(draw):
    n = draw(st.integers(1, 3))
    axis = st.integers(1, 3) if n == 3 else st.integers(1, 5)
    kernel_size = tuple(draw(st.lists(axis, min_size=n, max_size=n)))
    strides = tuple(draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)))
    kernel_dilation = tuple(draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)))
    kind = draw(st.sampled_from(["SAME", "SAME_LOWER", "VALID", "explicit"]))
    if kind == "explicit":
        padding = [tuple(p) for p in draw(st.lists(st.tuples(st.integers(-1, 3), st.integers(-1, 3)),
                                                   min_size=n, max_size=n))]
        input_dilation = tuple(draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)))
    else:
        padding, input_dilation = kind, (1,) * n
    side = st.integers(1, 6) if n == 3 else st.integers(1, 9)
    shape = (draw(st.integers(1, 2)), *draw(st.lists(side, min_size=n, max_size=n)), draw(st.integers(1, 4)))
    return shape, kernel_size, strides, padding, input_dilation, kernel_dilation


@settings(max_examples=25, deadline=None)
@given(conv_cases(), st.integers(0, 2**31 - 1))
def test_patches_equal_one_hot_convolution_bit_for_bit(case, seed):
    shape, *conv = case
    # Normal values: no subnormals or signed zeros, which the convolution may not keep.
    x = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
    extract = jax.jit(extract_patches, static_argnums=(1, 2, 3, 4, 5))
    try:
        ref = _reference(x, *conv)
    except ValueError:  # negative padding beyond the input: refused by both
        with pytest.raises(ValueError):
            extract(x, *map(_hashable, conv))
        return
    _assert_bitwise(extract(x, *map(_hashable, conv)), ref)


def _hashable(v):
    return tuple(map(tuple, v)) if isinstance(v, list) else v


@pytest.mark.parametrize("shape,strides", [((36, 8, 8, 1), 1), ((36, 8, 8, 16), 2), ((36, 4, 4, 32), 2)])
def test_digits_cnn_layers_bit_for_bit(shape, strides):
    """The digits CNN's three convolutions (3×3, SAME)."""
    x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    got = extract_patches(x, (3, 3), (strides, strides), "SAME", (1, 1), (1, 1))
    _assert_bitwise(got, _reference(x, (3, 3), (strides, strides), "SAME", (1, 1), (1, 1)))
    assert got.shape == (36, -(-shape[1] // strides), -(-shape[2] // strides), 9 * shape[3])


def test_feature_order_is_channel_major():
    """Feature ``c · 9 + 3 i + j`` of output pixel (0, 0) is input pixel (i − 1, j − 1), channel c."""
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    p = extract_patches(x, (3, 3), (1, 1), "SAME", (1, 1), (1, 1))
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.stack([xp[1, i, j, c] for c in range(3) for i in range(3) for j in range(3)])
    np.testing.assert_array_equal(p[1, 0, 0], expected)


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_gradients_are_those_of_the_convolution(mode):
    """Extraction is linear: its derivatives pass the finite-difference check, and its
    vector-Jacobian product equals the one-hot convolution's."""
    x = jax.random.normal(jax.random.key(2), (2, 5, 6, 3), jnp.float32)
    conv = ((3, 2), (2, 1), [(1, 0), (2, 1)], (2, 1), (1, 2))
    check_grads(lambda x: extract_patches(x, *conv), (x,), order=2, modes=[mode], atol=1e-2, rtol=1e-2)
    out, vjp = jax.vjp(lambda x: extract_patches(x, *conv), x)
    _, vjp_ref = jax.vjp(lambda x: _reference(x, *conv), x)
    ct = jax.random.normal(jax.random.key(3), out.shape, jnp.float32)
    np.testing.assert_allclose(vjp(ct)[0], vjp_ref(ct)[0], rtol=1e-6, atol=1e-6)


def test_string_padding_with_input_dilation_is_refused():
    x = jnp.ones((1, 4, 4, 1))
    with pytest.raises(ValueError, match="input_dilation"):
        extract_patches(x, (3, 3), (1, 1), "SAME", (2, 1), (1, 1))
