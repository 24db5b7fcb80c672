"""Statistical tests of the fast counter-based normals, ``pcmjax._random.normal``.

Every expectation is a closed form of the standard normal distribution (moments, tail
probabilities from ``math.erfc``) or a property that holds for any independent stream.
Sample statistics are computed in float64 NumPy and compared with a tolerance of ``Z``
standard errors; keys are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pcmjax import _random

Z = 5.0  # tolerance in standard errors
N = 4_000_000  # samples for the distribution tests


@pytest.fixture(scope="module")
def z():
    """4e6 draws from one fixed key, as float64."""
    return np.asarray(_random.normal(jax.random.key(20240611), (N,)), np.float64)


def test_mean_and_variance(z):
    n = z.size
    mean = z.mean()
    var = z.var()
    # SE of the mean is 1/sqrt(n); SE of the sample variance of N(0,1) is sqrt(2/n).
    assert abs(mean) < Z / math.sqrt(n)
    assert abs(var - 1.0) < Z * math.sqrt(2.0 / n)


def test_skewness_and_excess_kurtosis(z):
    n = z.size
    c = z - z.mean()
    m2 = np.mean(c**2)
    skew = np.mean(c**3) / m2**1.5
    kurt = np.mean(c**4) / m2**2 - 3.0
    # Large-sample standard errors for normal data: sqrt(6/n) and sqrt(24/n).
    assert abs(skew) < Z * math.sqrt(6.0 / n)
    assert abs(kurt) < Z * math.sqrt(24.0 / n)


def test_kolmogorov_smirnov(z):
    assert stats.kstest(z, "norm").pvalue > 1e-3


@pytest.mark.parametrize("k", [1.0, 2.0, 3.0, 4.0])
def test_two_sided_tail_probabilities(z, k):
    p = math.erfc(k / math.sqrt(2.0))  # P(|Z| > k) for Z ~ N(0, 1)
    n = z.size
    observed = np.mean(np.abs(z) > k)
    assert abs(observed - p) < Z * math.sqrt(p * (1.0 - p) / n)


def test_symmetry_of_tails(z):
    # The sign bit and the magnitude come from different bits: P(z > 2) == P(z < -2).
    n = z.size
    p = 0.5 * math.erfc(2.0 / math.sqrt(2.0))
    se = math.sqrt(p * (1 - p) / n)
    assert abs(np.mean(z > 2.0) - p) < Z * se
    assert abs(np.mean(z < -2.0) - p) < Z * se


def test_deep_tail_is_reached_and_bounded(z):
    # The table resolves the tail down to q = 2^-32 (|z| ≈ 6.3); with 4e6 draws the
    # largest |z| is about 5 and can never exceed the table's end.
    zmax = np.abs(z).max()
    assert 4.0 < zmax < 6.4


def test_neighbour_correlation(z):
    n = z.size - 1
    for lag in (1, 2, 31, 32, 1024):
        r = np.corrcoef(z[:-lag], z[lag:])[0, 1]
        assert abs(r) < Z / math.sqrt(n), lag


def test_squares_of_neighbours_uncorrelated(z):
    # Dependence that a linear correlation misses: correlation of z_i² and z_{i+1}².
    s = z**2
    r = np.corrcoef(s[:-1], s[1:])[0, 1]
    assert abs(r) < Z / math.sqrt(z.size - 1)


def test_different_keys_are_uncorrelated():
    n = 1_000_000
    base = jax.random.key(7)
    # Distinct keys of the usual kinds: neighbouring seeds, a parent and its children.
    # (JAX's fold_in(k, i) equals split(k)[i], so only one of the two is used.)
    keys = [base, jax.random.key(8), *jax.random.split(base, 3)]
    draw = jax.jit(lambda k: _random.normal(k, (n,)))
    draws = [np.asarray(draw(k), np.float64) for k in keys]
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            r = np.corrcoef(draws[i], draws[j])[0, 1]
            assert abs(r) < Z / math.sqrt(n), (i, j)
            assert not np.array_equal(draws[i], draws[j])


def test_same_key_is_deterministic():
    key = jax.random.key(3)
    a = _random.normal(key, (5, 7))
    b = _random.normal(key, (5, 7))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = jax.jit(_random.normal, static_argnums=1)(key, (5, 7))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_raw_uint32_keys_work():
    raw = jax.random.PRNGKey(3)
    a = np.asarray(jax.jit(_random.normal, static_argnums=1)(raw, (1000,)))
    assert np.all(np.isfinite(a)) and 0.8 < a.std() < 1.2


@pytest.mark.parametrize("shape", [(1,), (3,), (2, 3), (4, 1, 5), (2, 3, 4, 5)])
def test_shapes(shape):
    key = jax.random.key(11)
    a = jax.jit(_random.normal, static_argnums=1)(key, shape)
    assert a.shape == shape
    assert a.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(a)))
    # All elements differ (a repeated value would mean a repeated counter).
    flat = np.asarray(a).ravel()
    assert np.unique(flat).size == flat.size


def test_empty_shape_gives_empty_array():
    a = _random.normal(jax.random.key(0), (0, 3))
    assert a.shape == (0, 3)


def test_scalar_shape_is_a_standard_normal():
    # normal(key, ()) must be a draw, not a constant.
    keys = jax.random.split(jax.random.key(5), 20_000)
    z = np.asarray(jax.jit(jax.vmap(lambda k: _random.normal(k, ())))(keys), np.float64)
    assert z.shape == (20_000,)
    n = z.size
    assert abs(z.mean()) < Z / math.sqrt(n)
    assert abs(z.var() - 1.0) < Z * math.sqrt(2.0 / n)


def test_dtype_argument():
    draw = jax.jit(_random.normal, static_argnums=(1, 2))
    a = draw(jax.random.key(1), (64,), jnp.bfloat16)
    assert a.dtype == jnp.bfloat16
    b = draw(jax.random.key(1), (64,), jnp.float32)
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), rtol=1e-2, atol=1e-2)


def test_vmap_over_keys_matches_per_key_calls():
    keys = jax.random.split(jax.random.key(9), 6)
    one = jax.jit(lambda k: _random.normal(k, (4, 8)))
    batched = jax.vmap(one)(keys)
    assert batched.shape == (6, 4, 8)
    for i in range(6):
        np.testing.assert_array_equal(np.asarray(batched[i]), np.asarray(one(keys[i])))
    # Instances are different streams.
    assert not np.array_equal(np.asarray(batched[0]), np.asarray(batched[1]))


def test_vmap_stream_statistics():
    # Many instances of a small draw: the pooled sample is N(0, 1) and instances are
    # uncorrelated element by element.
    keys = jax.random.split(jax.random.key(13), 50_000)
    d = np.asarray(jax.jit(jax.vmap(lambda k: _random.normal(k, (4,))))(keys), np.float64)
    n = d.size
    assert abs(d.mean()) < Z / math.sqrt(n)
    assert abs(d.var() - 1.0) < Z * math.sqrt(2.0 / n)
    r = np.corrcoef(d[:, 0], d[:, 1])[0, 1]
    assert abs(r) < Z / math.sqrt(d.shape[0])
