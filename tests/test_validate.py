"""Property-based tests of the boundary checks in ``pcmjax._validate``.

Valid values pass unchanged (converted to the documented type); invalid ones raise
``ValueError``/``TypeError`` whose message names the argument and shows the value given.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pcmjax import ChipConfig
from pcmjax._validate import (
    check_bool,
    check_choice,
    check_finite_array,
    check_float,
    check_inputs,
    check_instance,
    check_int,
    check_key,
    check_weights,
    is_traced,
)

SETTINGS = settings(max_examples=50, deadline=None)
names = st.from_regex(r"[a-z][a-z0-9_]{0,10}(\.[a-z][a-z0-9_]{0,10})?", fullmatch=True)
bounds = st.integers(-1000, 1000)
# Values that are neither numbers nor booleans.
not_numbers = st.one_of(st.none(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.just(1j))


def _raises(exc, fn, *args, **kwargs) -> str:
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    return str(info.value)


# -- check_int ------------------------------------------------------------------------------
@SETTINGS
@given(name=names, data=st.data(), lo=bounds, width=st.integers(0, 1000),
       as_numpy=st.sampled_from([None, np.int32, np.int64]))
def test_check_int_accepts_integers_in_range(name, data, lo, width, as_numpy):
    value = data.draw(st.integers(lo, lo + width))
    given_value = value if as_numpy is None else as_numpy(value)
    out = check_int(name, given_value, lo, lo + width)
    assert out == value and type(out) is int


@SETTINGS
@given(name=names, lo=bounds, width=st.integers(0, 100), offset=st.integers(1, 10**6), below=st.booleans())
def test_check_int_rejects_out_of_range(name, lo, width, offset, below):
    hi = lo + width
    value = lo - offset if below else hi + offset
    msg = _raises(ValueError, check_int, name, value, lo, hi)
    assert msg.startswith(name + " ") and repr(value) in msg and f"{lo}..{hi}" in msg


@SETTINGS
@given(name=names, value=st.one_of(st.booleans(), st.floats(allow_nan=True), not_numbers),
       lo=st.none() | bounds)
def test_check_int_rejects_non_integers(name, value, lo):
    # Booleans and integral floats (3.0) are not integers here either.
    msg = _raises(ValueError, check_int, name, value, lo)
    assert msg.startswith(name + " ") and repr(value) in msg


@SETTINGS
@given(name=names, lo=bounds, offset=st.integers(1, 100))
def test_check_int_one_sided_bound_is_stated(name, lo, offset):
    msg = _raises(ValueError, check_int, name, lo - offset, lo)
    assert f">= {lo}" in msg
    msg = _raises(ValueError, check_int, name, lo + offset, None, lo)
    assert f"<= {lo}" in msg


# -- check_float ----------------------------------------------------------------------------
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(name=names, value=finite, below=st.floats(0, 1e3), above=st.floats(0, 1e3),
       kind=st.sampled_from([float, int, np.float32, np.float64]))
def test_check_float_accepts_numbers_within_closed_bounds(name, value, below, above, kind):
    if kind is int:
        value = float(round(value))
    value = float(kind(value))  # representable in every kind
    out = check_float(name, kind(value), value - below, value + above)
    assert out == value and type(out) is float


@SETTINGS
@given(name=names, bound=finite, lo_side=st.booleans())
def test_check_float_open_bound_excludes_itself(name, bound, lo_side):
    kwargs = {"lo_open": True} if lo_side else {"hi_open": True}
    lo, hi = (bound, None) if lo_side else (None, bound)
    assert check_float(name, bound, lo, hi) == bound  # closed: allowed
    msg = _raises(ValueError, check_float, name, bound, lo, hi, **kwargs)
    assert msg.startswith(name + " ") and repr(bound) in msg and ("> " if lo_side else "< ") in msg


@SETTINGS
@given(name=names, lo=finite, hi_gap=st.floats(0, 1e3), offset=st.floats(1e-3, 1e6), below=st.booleans())
def test_check_float_rejects_out_of_range(name, lo, hi_gap, offset, below):
    hi = lo + hi_gap
    value = lo - offset if below else hi + offset
    msg = _raises(ValueError, check_float, name, value, lo, hi)
    assert msg.startswith(name + " ") and repr(value) in msg and f">= {lo}" in msg and f"<= {hi}" in msg


@SETTINGS
@given(name=names, value=st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, np.float32("nan")]),
                                   st.booleans(), not_numbers))
def test_check_float_rejects_non_finite_and_non_numbers(name, value):
    msg = _raises(ValueError, check_float, name, value)
    assert msg.startswith(name + " ") and repr(value) in msg and "finite number" in msg


# -- check_choice, check_bool, check_instance -----------------------------------------------
choice_sets = st.lists(st.one_of(st.text(max_size=6), st.integers(-5, 5)), min_size=1, max_size=5, unique=True)


@SETTINGS
@given(name=names, choices=choice_sets, data=st.data(), container=st.sampled_from([tuple, list, frozenset]))
def test_check_choice_returns_the_choice(name, choices, data, container):
    value = data.draw(st.sampled_from(choices))
    assert check_choice(name, value, container(choices)) is value


@SETTINGS
@given(name=names, choices=choice_sets, value=st.one_of(st.text(max_size=6), st.integers(), st.none(),
                                                         st.lists(st.integers(), max_size=2)))
def test_check_choice_rejects_others_listing_the_choices(name, choices, value):
    if value in choices:
        return
    msg = _raises(ValueError, check_choice, name, value, frozenset(choices))  # unhashable values too
    assert msg.startswith(name + " ") and repr(value) in msg
    assert all(repr(c) in msg for c in choices)


@SETTINGS
@given(name=names, value=st.booleans(), numpy=st.booleans())
def test_check_bool_accepts_booleans(name, value, numpy):
    out = check_bool(name, np.bool_(value) if numpy else value)
    assert out is value


@SETTINGS
@given(name=names, value=st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=5), st.none()))
def test_check_bool_rejects_non_booleans(name, value):
    msg = _raises(TypeError, check_bool, name, value)
    assert msg.startswith(name + " ") and repr(value) in msg


@SETTINGS
@given(name=names, value=st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats()))
def test_check_instance_names_the_classes(name, value):
    cls = (dict, ChipConfig)
    msg = _raises(TypeError, check_instance, name, value, cls)
    assert msg.startswith(name + " ") and "dict or ChipConfig" in msg and type(value).__name__ in msg
    assert check_instance(name, {}, cls) == {}


# -- check_key ------------------------------------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), typed=st.booleans())
def test_check_key_accepts_keys(seed, typed):
    key = jax.random.key(seed) if typed else jax.random.PRNGKey(seed)
    assert check_key(key) is None


@SETTINGS
@given(name=names, seed=st.integers(-(2**40), 2**40), numpy=st.booleans())
def test_check_key_rejects_integer_seeds(name, seed, numpy):
    value = np.int64(seed) if numpy and abs(seed) < 2**62 else seed
    msg = _raises(TypeError, check_key, value, name)
    assert msg.startswith(name + " ") and str(seed) in msg and "jax.random.key" in msg


@SETTINGS
@given(name=names, n=st.integers(1, 4))
def test_check_key_rejects_batches_of_keys(name, n):
    msg = _raises(ValueError, check_key, jax.random.split(jax.random.key(0), n), name)
    assert msg.startswith(name + " ") and f"({n},)" in msg


@SETTINGS
@given(name=names, arr=hnp.arrays(st.sampled_from([np.float32, np.int32, np.uint32, np.uint8]),
                                  hnp.array_shapes(min_dims=0, max_dims=2, max_side=5)))
def test_check_key_rejects_other_arrays(name, arr):
    if arr.dtype == np.uint32 and arr.shape in ((2,), (4,)):
        assert check_key(arr, name) is None  # a raw key
        return
    msg = _raises(TypeError, check_key, arr, name)
    assert msg.startswith(name + " ") and str(arr.dtype) in msg and str(arr.shape) in msg


# -- arrays ---------------------------------------------------------------------------------
shapes = hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)
# Values of float32 range: the result is float32, and a float64 beyond it would overflow (see below).
real_arrays = st.one_of(
    hnp.arrays(np.float32, shapes, elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    hnp.arrays(np.float64, shapes, elements=st.floats(-3e38, 3e38, allow_nan=False)),
    hnp.arrays(np.int32, shapes),
    hnp.arrays(np.bool_, shapes),
)


@SETTINGS
@given(x=real_arrays, as_list=st.booleans())
def test_check_finite_array_converts_finite_arrays_to_float32(x, as_list):
    out = check_finite_array(x.tolist() if as_list else x, "x")
    assert out.dtype == jnp.float32 and out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out), x.astype(np.float32))
    assert np.all(np.isfinite(np.asarray(out)))


@SETTINGS
@given(name=names, x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
                                elements=st.floats(-10, 10)),
       data=st.data(), bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_check_finite_array_names_the_first_non_finite_entry(name, x, data, bad):
    flat = data.draw(st.lists(st.integers(0, x.size - 1), min_size=1, max_size=3, unique=True))
    x = x.copy()
    x.flat[flat] = bad
    first = np.unravel_index(min(flat), x.shape)
    msg = _raises(ValueError, check_finite_array, x, name)
    assert msg.startswith(name + " ") and str(bad) in msg
    assert str(tuple(int(i) for i in first)) in msg


@SETTINGS
@given(name=names, x=st.one_of(
    hnp.arrays(np.complex64, shapes),
    hnp.arrays(hnp.unicode_string_dtypes(max_len=3), shapes),
    st.just(np.array([None, 1.0], dtype=object)),
))
def test_check_finite_array_rejects_non_real_dtypes(name, x):
    msg = _raises(TypeError, check_finite_array, x, name)
    assert msg.startswith(name + " ") and str(x.dtype) in msg


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_check_finite_array_rejects_float64_beyond_float32():
    msg = _raises(ValueError, check_finite_array, np.array([1.0, 1e39]), "x")
    assert msg.startswith("x must fit in float32") and "1e+39" in msg and "(1,)" in msg


def test_check_finite_array_under_jit_checks_only_the_dtype():
    seen = []

    @jax.jit
    def f(x):
        seen.append(is_traced(x))
        return check_finite_array(x, "x") * 2

    np.testing.assert_array_equal(f(jnp.array([1.0, jnp.inf])), [2.0, jnp.inf])  # values unknown when traced
    assert seen == [True]
    with pytest.raises(TypeError, match="x must be a float array, got dtype int32"):
        jax.jit(lambda x: check_finite_array(x, "x"))(jnp.arange(3, dtype=jnp.int32))
    assert not is_traced(jnp.ones(2)) and not is_traced(np.ones(2))


CHIP = ChipConfig(n_cores=3, rows=5, cols=4)


@SETTINGS
@given(c=st.integers(1, 5), r=st.integers(1, 7), k=st.integers(1, 6))
def test_check_weights_accepts_exactly_what_fits(c, r, k):
    w = np.zeros((c, r, k), np.float32)
    if c <= CHIP.n_cores and r <= CHIP.rows and k <= CHIP.cols:
        assert check_weights(w, CHIP).shape == (c, r, k)
    else:
        msg = _raises(ValueError, check_weights, w, CHIP)
        assert msg.startswith("weights has shape ") and str((c, r, k)) in msg and "3 cores of 5×4" in msg


@SETTINGS
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=6))
def test_check_inputs_requires_cores_batch_rows(shape):
    x = np.zeros(shape, np.float32)
    if len(shape) == 3 and shape[0] == 3 and shape[2] == 5:
        assert check_inputs(x, 3, 5).shape == shape
    else:
        msg = _raises(ValueError, check_inputs, x, 3, 5)
        assert msg.startswith("x must have shape [cores=3, batch, rows=5]") and str(shape) in msg
