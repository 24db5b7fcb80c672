"""Tests of the chip periphery (PHYSICS.md §4): PWM encoding, the CCO ADC, its per-column
mismatch and calibration, the digital unit, and the straight-through quantisers.

Expected values are recomputed here in float64 NumPy from the formulas of PHYSICS.md §4
(never with the package's own functions); statistical checks use fixed keys and a
tolerance of ``Z`` standard errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcmjax as pj
from pcmjax._ste import quantize_symmetric, round_ste
from pcmjax.periphery import (
    ACTIVATIONS,
    ADCConfig,
    PWMConfig,
    adc_transfer,
    apply_activation,
    ldpu_affine,
    pwm_encode,
    sample_adc_mismatch,
)

Z = 5.0
F32 = 1e-6  # float32 allowance, relative to values of order one


def _grid(n=20001, lo=-1.0, hi=1.0):
    return np.linspace(lo, hi, n, dtype=np.float32)


# ---------------------------------------------------------------------------------------
# Straight-through rounding
# ---------------------------------------------------------------------------------------


def test_round_ste_forward_is_round():
    x = np.array([-2.5, -1.5, -0.5, -0.49, 0.0, 0.49, 0.5, 1.5, 2.5, 3.7], np.float32)
    np.testing.assert_array_equal(np.asarray(round_ste(x)), np.round(x))  # half to even, like NumPy


def test_round_ste_gradient_is_one_everywhere():
    x = jnp.asarray(np.linspace(-5.0, 5.0, 41, dtype=np.float32))  # includes half-integers
    g = jax.jit(jax.vmap(jax.grad(round_ste)))(x)
    np.testing.assert_array_equal(np.asarray(g), np.ones(41, np.float32))
    # Through a chain: d/dx round(3x)^2 = 2·round(3x)·3.
    f = lambda v: round_ste(3.0 * v) ** 2  # noqa: E731
    assert float(jax.grad(f)(jnp.float32(0.4))) == pytest.approx(2 * 1.0 * 3.0)


def test_round_ste_under_jit_and_second_order_shape():
    x = jnp.arange(6.0).reshape(2, 3) / 3.0
    np.testing.assert_array_equal(np.asarray(jax.jit(round_ste)(x)), np.round(np.asarray(x)))
    g = jax.grad(lambda v: jnp.sum(round_ste(v) * v))(x)  # product rule with the identity VJP
    np.testing.assert_allclose(np.asarray(g), np.round(np.asarray(x)) + np.asarray(x), rtol=1e-6)


def test_quantize_symmetric_grid_and_saturation():
    x = np.array([-3.0, -1.0, -0.5, 0.0, 0.26, 1.0, 2.0], np.float32)
    got = np.asarray(quantize_symmetric(x, 3))
    want = np.round(np.clip(x, -1, 1).astype(np.float64) * 3) / 3
    np.testing.assert_allclose(got, want, atol=F32)


# ---------------------------------------------------------------------------------------
# PWM input encoding (§4.1)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8, 12])
def test_pwm_levels_and_grid(bits):
    cfg = PWMConfig(bits=bits)
    levels = 2 ** (bits - 1) - 1
    assert cfg.levels == levels
    x = _grid()
    xq = np.asarray(pwm_encode(x, cfg), np.float64)
    q = xq * levels
    # On the grid q / (2^(b-1) - 1) with integer q in [-levels, levels] ...
    np.testing.assert_allclose(q, np.round(q), atol=1e-4)
    assert np.all(np.abs(np.round(q)) <= levels)
    # ... equal to round(x · levels) (NumPy float64 reference) ...
    np.testing.assert_allclose(xq, np.round(x.astype(np.float64) * levels) / levels, atol=F32)
    # ... and within half a step of the input.
    assert np.max(np.abs(xq - x)) <= 0.5 / levels + F32


def test_pwm_default_is_hermes_8_bit():
    cfg = PWMConfig()
    assert cfg.enabled and cfg.bits == 8 and cfg.levels == 127
    x = _grid(100_001)
    err = np.asarray(pwm_encode(x, cfg), np.float64) - x
    assert np.max(np.abs(err)) <= 1.0 / (2 * 127) + F32
    # The error is the uniform quantisation error: variance step²/12 for inputs spread
    # evenly over many steps (a deterministic grid, so a tight relative bound).
    assert np.var(err) == pytest.approx((1 / 127) ** 2 / 12, rel=0.02)


def test_pwm_saturates_beyond_one():
    x = np.array([-7.0, -1.2, -1.0, 1.0, 1.0001, 3.0], np.float32)
    np.testing.assert_allclose(np.asarray(pwm_encode(x, PWMConfig())), np.clip(x, -1, 1), atol=F32)


def test_pwm_disabled_only_saturates():
    cfg = PWMConfig(enabled=False)
    x = np.array([-2.0, -0.3337, 0.123456, 0.9999, 5.0], np.float32)
    np.testing.assert_array_equal(np.asarray(pwm_encode(x, cfg)), np.clip(x, -1, 1))


def test_pwm_gradient_one_inside_zero_outside():
    x_in = jnp.asarray(np.linspace(-0.99, 0.99, 199, dtype=np.float32))
    x_out = jnp.asarray(np.array([-5.0, -1.5, -1.01, 1.01, 1.5, 5.0], np.float32))
    for cfg in (PWMConfig(), PWMConfig(bits=4), PWMConfig(enabled=False)):
        grad = jax.jit(jax.vmap(jax.grad(lambda v, c=cfg: pwm_encode(v, c))))
        np.testing.assert_array_equal(np.asarray(grad(x_in)), np.ones(x_in.shape, np.float32))
        np.testing.assert_array_equal(np.asarray(grad(x_out)), np.zeros(x_out.shape, np.float32))


@pytest.mark.parametrize("bits", [1, 17, 0, -3])
def test_pwm_bits_out_of_range(bits):
    with pytest.raises(ValueError, match="pwm.bits"):
        PWMConfig(bits=bits)


def test_pwm_bad_types():
    with pytest.raises(ValueError, match="pwm.bits"):
        PWMConfig(bits=8.0)
    with pytest.raises(ValueError, match="pwm.bits"):
        PWMConfig(bits=True)
    with pytest.raises(TypeError, match="pwm.enabled"):
        PWMConfig(enabled=1)


# ---------------------------------------------------------------------------------------
# CCO ADC (§4.2)
# ---------------------------------------------------------------------------------------


def _adc_ref(u, b, n_max):
    """PHYSICS.md §4.2 in float64: sign(u) · clip(round(|u| / (1 + b|u|/N_max)), 0, N_max)."""
    u = np.asarray(u, np.float64)
    mag = np.abs(u) / (1.0 + b * np.abs(u) / n_max)
    return np.sign(u) * np.clip(np.round(mag), 0, n_max)


@pytest.mark.parametrize("bits", [2, 9, 12, 16])
def test_adc_n_max_and_gain(bits):
    cfg = ADCConfig(bits=bits, full_scale=0.25)
    assert cfg.n_max == 2**bits - 1
    # a maps full_scale · rows units of column charge to N_max counts.
    assert cfg.counts_per_unit(64) == pytest.approx((2**bits - 1) / (0.25 * 64))


def test_adc_linear_quantisation_and_saturation():
    cfg = ADCConfig()  # N_max = 511
    n_max = cfg.n_max
    u = np.linspace(-800.0, 800.0, 40_001, dtype=np.float32)
    c = np.asarray(adc_transfer(jnp.asarray(u), 0.0, cfg), np.float64)
    np.testing.assert_array_equal(c, _adc_ref(u, 0.0, n_max))
    inside = np.abs(u) <= n_max
    assert np.max(np.abs(c[inside] - u[inside])) <= 0.5 + F32  # half an LSB
    beyond = np.abs(u) >= n_max + 0.5
    np.testing.assert_array_equal(c[beyond], np.sign(u[beyond]) * n_max)
    assert beyond.any() and inside.any()


def test_adc_sign_magnitude_symmetry():
    cfg = ADCConfig(bits=6)
    u = jnp.asarray(np.random.default_rng(0).normal(0, 40, 10_000).astype(np.float32))
    b = jnp.asarray(np.random.default_rng(1).uniform(0, 0.05, 10_000).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(adc_transfer(-u, b, cfg)), -np.asarray(adc_transfer(u, b, cfg)))


def test_adc_nonlinearity_matches_formula():
    cfg = ADCConfig(bits=9)
    rng = np.random.default_rng(2)
    u = rng.uniform(-700, 700, 50_000).astype(np.float32)
    b = rng.uniform(0.0, 0.05, 50_000).astype(np.float32)
    got = np.asarray(adc_transfer(jnp.asarray(u), jnp.asarray(b), cfg), np.float64)
    want = _adc_ref(u, b.astype(np.float64), cfg.n_max)
    # float32 evaluation may flip a rounding that sits within ~1e-4 of a half count.
    mag = np.abs(u.astype(np.float64)) / (1 + b * np.abs(u.astype(np.float64)) / cfg.n_max)
    near_half = np.abs(mag - np.floor(mag) - 0.5) < 1e-3
    np.testing.assert_array_equal(got[~near_half], want[~near_half])
    assert np.all(np.abs(got - want) <= 1)
    # The compression is visible: at full scale with b = 0.05 a count is lost per ~20.
    assert np.asarray(adc_transfer(jnp.float32(400.0), 0.05, cfg)) == np.round(400 / (1 + 0.05 * 400 / 511))


def test_adc_disabled_is_unquantised_but_keeps_nonlinearity():
    cfg = ADCConfig(enabled=False)
    u = np.linspace(-2000.0, 2000.0, 1001, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(adc_transfer(jnp.asarray(u), 0.0, cfg)), u)
    b = 0.02
    got = np.asarray(adc_transfer(jnp.asarray(u), b, cfg), np.float64)
    want = u / (1 + b * np.abs(u.astype(np.float64)) / cfg.n_max)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_adc_gradient_one_inside_zero_in_saturation():
    cfg = ADCConfig()
    grad = jax.jit(jax.vmap(jax.grad(lambda v: adc_transfer(v, 0.0, cfg))))
    u_in = jnp.asarray(np.linspace(-500.0, 500.0, 101, dtype=np.float32))
    u_sat = jnp.asarray(np.array([-1e4, -600.0, -512.0, 512.0, 600.0, 1e4], np.float32))
    np.testing.assert_array_equal(np.asarray(grad(u_in)), np.ones(101, np.float32))  # incl. u = 0
    np.testing.assert_array_equal(np.asarray(grad(u_sat)), np.zeros(6, np.float32))


def test_adc_gradient_with_nonlinearity_is_derivative_of_the_compression():
    cfg = ADCConfig()
    b = 0.03
    u = np.linspace(-450.0, 450.0, 91, dtype=np.float32)
    g = np.asarray(jax.jit(jax.vmap(jax.grad(lambda v: adc_transfer(v, b, cfg))))(jnp.asarray(u)), np.float64)
    # d/du [u / (1 + b|u|/N)] = 1 / (1 + b|u|/N)²  (straight-through rounding).
    want = 1.0 / (1.0 + b * np.abs(u.astype(np.float64)) / cfg.n_max) ** 2
    np.testing.assert_allclose(g, want, rtol=1e-5)


@pytest.mark.parametrize("bits", [1, 17, 0])
def test_adc_bits_out_of_range(bits):
    with pytest.raises(ValueError, match="adc.bits"):
        ADCConfig(bits=bits)


@pytest.mark.parametrize(
    "field, value",
    [("gain_std", -0.1), ("gain_std", 0.5), ("offset_std", float("nan")), ("noise_std", float("inf")),
     ("nonlinearity", -1.0), ("cal_gain_error", -0.01), ("full_scale", 0.0), ("full_scale", 1.5)],
)
def test_adc_bad_values(field, value):
    with pytest.raises(ValueError, match=f"adc.{field}"):
        ADCConfig(**{field: value})


def test_adc_enabled_must_be_bool():
    with pytest.raises(TypeError, match="adc.enabled"):
        ADCConfig(enabled="yes")


# ---------------------------------------------------------------------------------------
# Per-column ADC mismatch and its calibration
# ---------------------------------------------------------------------------------------


MISMATCH_SHAPE = (64, 1024)  # one shape for every draw below: compiled once


def _std_tol(sigma, n):
    """Z standard errors of a sample standard deviation of n normal draws."""
    return Z * sigma / math.sqrt(2.0 * n)


def test_adc_mismatch_statistics():
    cfg = ADCConfig(gain_std=0.07, offset_std=1.5, nonlinearity=0.02, nonlinearity_std=0.004,
                    cal_gain_error=0.01, cal_offset_error=0.3)
    shape = MISMATCH_SHAPE
    d = {k: np.asarray(v, np.float64) for k, v in sample_adc_mismatch(jax.random.key(4), cfg, shape).items()}
    n = math.prod(shape)
    for k in ("gain", "offset", "nonlin", "gain_est", "offset_est"):
        assert d[k].shape == shape
    # gain = 1 + δ, δ ~ N(0, gain_std²)
    assert abs(d["gain"].mean() - 1.0) < Z * 0.07 / math.sqrt(n)
    assert abs(d["gain"].std() - 0.07) < _std_tol(0.07, n)
    # offset ~ N(0, offset_std²), counts
    assert abs(d["offset"].mean()) < Z * 1.5 / math.sqrt(n)
    assert abs(d["offset"].std() - 1.5) < _std_tol(1.5, n)
    # b = max(b̄ + σ_b ξ, 0): 5 σ above zero, so effectively normal
    assert np.all(d["nonlin"] >= 0)
    assert abs(d["nonlin"].mean() - 0.02) < Z * 0.004 / math.sqrt(n)
    assert abs(d["nonlin"].std() - 0.004) < _std_tol(0.004, n)
    # calibration estimates: relative gain error and absolute offset error
    rel = d["gain_est"] / d["gain"] - 1.0
    assert abs(rel.mean()) < Z * 0.01 / math.sqrt(n)
    assert abs(rel.std() - 0.01) < _std_tol(0.01, n)
    oe = d["offset_est"] - d["offset"]
    assert abs(oe.mean()) < Z * 0.3 / math.sqrt(n)
    assert abs(oe.std() - 0.3) < _std_tol(0.3, n)
    # mismatch is independent between the fields
    assert abs(np.corrcoef(d["gain"].ravel(), d["offset"].ravel())[0, 1]) < Z / math.sqrt(n)


def test_adc_nonlinearity_floored_at_zero():
    cfg = ADCConfig(nonlinearity=0.0, nonlinearity_std=0.01)
    b = np.asarray(sample_adc_mismatch(jax.random.key(1), cfg, MISMATCH_SHAPE)["nonlin"], np.float64)
    assert b.min() == 0.0
    # max(σξ, 0): half the mass at 0, mean σ/sqrt(2π)
    n = b.size
    assert abs(np.mean(b == 0.0) - 0.5) < Z * 0.5 / math.sqrt(n)
    var = 0.01**2 * (0.5 - 1 / (2 * math.pi))
    assert abs(b.mean() - 0.01 / math.sqrt(2 * math.pi)) < Z * math.sqrt(var / n)


def test_adc_mismatch_zero_spread_is_exact():
    cfg = ADCConfig(gain_std=0.0, offset_std=0.0, nonlinearity=0.0, nonlinearity_std=0.0,
                    cal_gain_error=0.0, cal_offset_error=0.0)
    d = sample_adc_mismatch(jax.random.key(0), cfg, MISMATCH_SHAPE)
    np.testing.assert_array_equal(np.asarray(d["gain"]), np.ones(MISMATCH_SHAPE))
    np.testing.assert_array_equal(np.asarray(d["gain_est"]), np.ones(MISMATCH_SHAPE))
    for k in ("offset", "nonlin", "offset_est"):
        np.testing.assert_array_equal(np.asarray(d[k]), np.zeros(MISMATCH_SHAPE))


def test_adc_mismatch_deterministic_per_key():
    cfg = ADCConfig()
    a = sample_adc_mismatch(jax.random.key(5), cfg, MISMATCH_SHAPE)
    b = sample_adc_mismatch(jax.random.key(5), cfg, MISMATCH_SHAPE)
    c = sample_adc_mismatch(jax.random.key(6), cfg, MISMATCH_SHAPE)
    np.testing.assert_array_equal(np.asarray(a["gain"]), np.asarray(b["gain"]))
    assert not np.array_equal(np.asarray(a["gain"]), np.asarray(c["gain"]))


# ---------------------------------------------------------------------------------------
# Local digital processing unit (§4.3)
# ---------------------------------------------------------------------------------------


def test_ldpu_affine_per_column():
    rng = np.random.default_rng(3)
    counts = rng.integers(-511, 512, (2, 5, 7)).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, (2, 1, 7)).astype(np.float32)
    beta = rng.normal(0, 1, (2, 1, 7)).astype(np.float32)
    got = np.asarray(ldpu_affine(counts, gamma, beta), np.float64)
    want = counts.astype(np.float64) * gamma + beta
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # gradient w.r.t. gamma is the sum of counts over the batch, w.r.t. beta the batch size
    gg, gb = jax.grad(lambda g, b: jnp.sum(ldpu_affine(counts, g, b)), argnums=(0, 1))(gamma, beta)
    np.testing.assert_allclose(np.asarray(gg), counts.sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gb), np.full(beta.shape, 5.0), rtol=1e-6)


def test_activations():
    y = np.linspace(-4, 4, 81).astype(np.float32)
    y64 = y.astype(np.float64)
    want = {
        "identity": y64,
        "relu": np.maximum(y64, 0.0),
        "sigmoid": 1 / (1 + np.exp(-y64)),
        "tanh": np.tanh(y64),
    }
    for name, ref in want.items():
        np.testing.assert_allclose(np.asarray(apply_activation(y, name), np.float64), ref, atol=1e-6)
    gelu = np.asarray(apply_activation(y, "gelu"), np.float64)
    # gelu(y) ≈ y Φ(y): below y for y < 0, ~y for large y, 0 at 0
    assert gelu[40] == 0.0 and abs(gelu[-1] - 4.0) < 1e-3 and np.all(gelu[:40] <= 0)
    assert set(ACTIVATIONS) >= {"identity", "relu", "gelu", "sigmoid", "tanh"}


def test_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        apply_activation(np.zeros(3, np.float32), "swish")


def test_uncalibrated_adc_keeps_the_raw_mismatch():
    """ADCConfig(calibrated=False): the digital unit assumes the nominal converter, so the residual
    gain error per column is the raw spread (SD gain_std) and the offset residual the raw offset."""
    cfg = pj.ADCConfig(calibrated=False)
    n = 20000
    adc = sample_adc_mismatch(jax.random.key(5), cfg, (4, n // 4))
    assert np.all(np.asarray(adc["gain_est"]) == 1.0) and np.all(np.asarray(adc["offset_est"]) == 0.0)
    resid = np.asarray(adc["gain"] / adc["gain_est"] - 1.0).ravel()
    se = cfg.gain_std / np.sqrt(2 * (n - 1))  # SE of a sample standard deviation
    assert abs(resid.std(ddof=1) - cfg.gain_std) < 5 * se
    calibrated = sample_adc_mismatch(jax.random.key(5), pj.ADCConfig(), (4, n // 4))
    resid_cal = np.asarray(calibrated["gain"] / calibrated["gain_est"] - 1.0).ravel()
    assert resid_cal.std() < 0.01  # cal_gain_error 0.5 %
