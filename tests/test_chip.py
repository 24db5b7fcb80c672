"""Tests of the chip pipeline: configuration, mapping, programming, drift, per-read noise,
periphery in the loop, drift compensation, gradients, transforms and input checks.

Each non-ideality is switched on alone (``ChipConfig.only``) and its effect on the MVM
is compared with an expectation computed here in float64 NumPy from PHYSICS.md (§1, §2,
§3, §4, §5) and the state's arrays, never with the package's own law functions.
Statistical checks use fixed keys and a tolerance of ``Z`` standard errors.

Most of the time of these tests is XLA compiling one pipeline per configuration. The chip
is therefore small (4 cores of 64×32), configurations are shared between tests, and most
tests call the public functions through the top-level jits ``program``, ``age`` and
``run`` below, compiled without XLA's backend optimisation passes (about 2.5× faster to
compile, the same operations). The eager public path is exercised by the ideal-chip,
gradient and input-checking tests.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_vjp

import pcmjax as pj
from pcmjax.devices import HermesPCM, StateIndependent

Z = 5.0  # tolerance in standard errors
C, R, K = 4, 64, 32  # cores, rows, cols of the test chip
GEOM = dict(n_cores=C, rows=R, cols=K)
BASE = pj.ChipConfig(**GEOM, drift_compensation="none")
DEFAULT = pj.ChipConfig(**GEOM)  # every non-ideality at its HERMES default
YEAR = 365.25 * 86400.0

# HERMES two-device figures (PHYSICS.md §2.1), transcribed for the independent references.
G_MAX2 = 20.7
T0_2 = 300.0
T_READ = 512e-9
PROG_C2 = (0.16603222, 4.71806468, -8.48101252, 4.68961419)
PROG_C1 = (0.15781817, 2.32443916, -2.16310839, 0.68841818)
G_MAX1 = 10.35


_FAST_COMPILE = {"xla_backend_optimization_level": 0}


@partial(jax.jit, static_argnames="cfg", compiler_options=_FAST_COMPILE)
def _program(key, w, cfg, device):
    return pj.program_chip(key, w, cfg, device)


def program(key, w, cfg, device=None):
    """``pj.program_chip`` under a top-level jit (default device: HermesPCM(2), as there)."""
    return _program(key, w, cfg, HermesPCM(num_devices=2) if device is None else device)


@partial(jax.jit, compiler_options=_FAST_COMPILE)
def age(state, key, t):
    """``state.at_time(key, t)`` under a top-level jit."""
    return state.at_time(key, t)


@partial(jax.jit, compiler_options=_FAST_COMPILE)
def run(key, state, x):
    """``pj.mvm`` under a top-level jit."""
    return pj.mvm(key, state, x)


def _key(i):
    return jax.random.key(i)


def _uniform(seed, shape, lo=-1.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def _ref(x, w):
    """float64 x @ W per core."""
    return np.einsum("cbr,crk->cbk", np.asarray(x, np.float64), np.asarray(w, np.float64))


def _a(cfg):
    """ADC counts per unit of normalised charge, PHYSICS.md §4.2: N_max / (full_scale · rows)."""
    return (2**cfg.adc.bits - 1) / (cfg.adc.full_scale * cfg.rows)


def _q_s_2dev(g_r):
    """HERMES two-device Q_s (PHYSICS.md §2.1), float64."""
    g_r = np.maximum(np.abs(g_r), 1e-7)
    low = np.clip(-0.0117 * np.log(g_r) - 0.0069, 0.015, 0.04)
    high = 0.0069 * g_r**3 - 0.0280 * g_r**2 + 0.0211 * g_r + 0.0123
    return np.where(g_r < 0.16, low, high)


def _poly(c, x):
    return sum(ci * x**i for i, ci in enumerate(c))


W = _uniform(0, (C, R, K))  # shared test weights
X = _uniform(1, (C, 16, R))  # shared test inputs


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


def test_ideal_switches_every_nonideality_off():
    cfg = pj.ChipConfig.ideal()
    assert not cfg.programming_noise and not cfg.drift and not cfg.drift_noise and not cfg.read_noise
    assert not cfg.pwm.enabled and not cfg.adc.enabled
    assert cfg.adc.gain_std == cfg.adc.offset_std == cfg.adc.noise_std == cfg.adc.nonlinearity == 0.0
    assert cfg.polarity_asymmetry == 0.0 and cfg.drift_compensation == "none"
    assert (cfg.n_cores, cfg.rows, cfg.cols) == (64, 256, 256)


def test_only_keeps_the_named_nonideality():
    cfg = pj.ChipConfig().only("read_noise", "pwm")
    assert cfg.read_noise and cfg.pwm.enabled
    assert not cfg.drift and not cfg.programming_noise and not cfg.adc.enabled
    assert cfg.drift_compensation == "global"  # kept as configured
    assert pj.ChipConfig().without("drift").drift is False
    assert set(pj.NONIDEALITIES) >= {"programming_noise", "drift", "drift_noise", "read_noise", "pwm",
                                     "adc_quantization", "adc_gain", "adc_offset", "adc_noise",
                                     "polarity_asymmetry", "faults", "ir_drop", "temperature"}


# Faults, wire resistance and a hot chip, all strong enough to change every MVM.
_FAULTS = dict(stuck_set=0.1, stuck_reset=0.05, dead_columns=0.2)
_PARASITICS = dict(r_word_line=20.0, r_bit_line=30.0)
_TEMPERATURE = dict(temperature_k=350.0, read_temperature_k=330.0)


def _extras():
    from pcmjax.config import FaultConfig, ParasiticsConfig, TemperatureConfig

    return dict(faults=FaultConfig(**_FAULTS), parasitics=ParasiticsConfig(**_PARASITICS),
                temperature=TemperatureConfig(**_TEMPERATURE))


def test_without_and_only_know_faults_ir_drop_temperature():
    cfg = pj.ChipConfig(**_extras())
    assert cfg.faults.enabled and cfg.parasitics.enabled and cfg.temperature.enabled
    off = cfg.without("faults")
    assert (off.faults.stuck_set, off.faults.stuck_reset, off.faults.dead_columns) == (0.0, 0.0, 0.0)
    assert off.parasitics == cfg.parasitics and off.temperature == cfg.temperature
    off = cfg.without("ir_drop")
    assert not off.parasitics.enabled and (off.parasitics.r_word_line, off.parasitics.r_bit_line) == (0.0, 0.0)
    assert off.faults == cfg.faults and off.temperature == cfg.temperature
    off = cfg.without("temperature")
    assert not off.temperature.enabled and off.temperature.temperature_k is None
    assert off.temperature.read_temperature_k is None and off.faults == cfg.faults
    kept = cfg.only("ir_drop")
    assert kept.parasitics == cfg.parasitics and not kept.faults.enabled and not kept.temperature.enabled
    assert not kept.drift and not kept.adc.enabled and kept.drift_compensation == "global"
    both = cfg.only("faults", "temperature")
    assert both.faults == cfg.faults and both.temperature == cfg.temperature and not both.parasitics.enabled
    with pytest.raises(ValueError, match=r"unknown non-ideality 'ir-drop'.*'ir_drop'"):
        cfg.without("ir-drop")
    with pytest.raises(ValueError, match=r"\['wire'\].*'temperature'"):
        cfg.only("faults", "wire")


def test_ideal_switches_faults_ir_drop_and_temperature_off():
    extras = _extras()
    cfg = pj.ChipConfig.ideal(**GEOM, **extras)
    assert not cfg.faults.enabled and not cfg.parasitics.enabled and not cfg.temperature.enabled
    assert cfg == pj.ChipConfig.ideal(**GEOM)  # nothing of the extras is left
    # Each extra alone really changes the MVM of an otherwise ideal chip ...
    x = X[:, :, :]
    ref = _ref(x, W)
    scale = _ref(np.abs(x), np.abs(W))
    for name, value in extras.items():
        on = pj.ChipConfig.ideal(**GEOM).replace(**{name: value})
        y = np.asarray(run(_key(1), age(program(_key(0), W, on), _key(2), 1e4), x), np.float64)
        assert np.max(np.abs(y - ref) / scale) > 1e-3, name
    # ... and ideal() with all of them configured is x @ W to float32 rounding.
    y = np.asarray(run(_key(1), age(program(_key(0), W, cfg), _key(2), 1e4), x), np.float64)
    assert np.all(np.abs(y - ref) <= 2e-6 * scale + 1e-9)


def test_config_set_update_and_dict_round_trip():
    cfg = pj.ChipConfig().set("adc.bits", 8).set("program.method", "verify")
    assert cfg.adc.bits == 8 and cfg.program.method == "verify"
    d = cfg.to_dict()
    again = pj.ChipConfig.from_dict(d)
    assert again == cfg and hash(again) == hash(cfg)
    assert pj.ChipConfig.from_dict({"adc": {"bits": 7}, "read_phases": 4}).adc.bits == 7
    assert pj.ChipConfig().capacity == 64 * 256 * 256


# ---------------------------------------------------------------------------------------
# 1. The ideal chip computes x @ W
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "w_max, phases, shape, eager",
    [("tile", 1, (C, R, K), True), ("column", 4, (3, 50, 20), False)],
    ids=["tile-one_phase-eager", "column-four_phase-smaller_than_chip"],
)
def test_ideal_mvm_equals_matmul(w_max, phases, shape, eager):
    cfg = pj.ChipConfig.ideal(**GEOM, w_max=w_max, read_phases=phases)
    c, r, k = shape
    w = W[:c, :r, :k].copy()
    w[1, :, 3] = 0.0  # an all-zero column (w_max falls back to 1 in column mode)
    w[2] *= 1e-3  # a tile of small weights: the mapping normalises it
    x = X[:c, :, :r]
    if eager:  # the public functions as a user calls them
        state = pj.program_chip(_key(0), w, cfg)
        y = pj.mvm(_key(1), state, x)
        y_t = pj.mvm(_key(1), state.at_time(_key(2), 1e6), x)
    else:
        state = program(_key(0), w, cfg)
        y = run(_key(1), state, x)
        y_t = run(_key(1), age(state, _key(2), 1e6), x)
    assert (state.n_cores, state.rows, state.cols) == shape
    y, y_t = np.asarray(y, np.float64), np.asarray(y_t, np.float64)
    ref = _ref(x, w)
    scale = _ref(np.abs(x), np.abs(w))  # float32 sums: error relative to Σ|x||w|
    assert y.shape == (c, x.shape[1], k)
    assert np.all(np.abs(y - ref) <= 2e-6 * scale + 1e-9)
    # also after ageing: nothing drifts on the ideal chip
    assert np.all(np.abs(y_t - ref) <= 2e-6 * scale + 1e-9)
    # mapping (PHYSICS.md §1): G± = relu(±w / w_max) · g_max, per tile or per column
    w64 = w.astype(np.float64)
    wmax = np.abs(w64).max(axis=(1, 2) if w_max == "tile" else 1, keepdims=True)
    wmax = np.broadcast_to(np.where(wmax > 0, wmax, 1.0), (c, 1, k))
    np.testing.assert_allclose(np.asarray(state.w_max), wmax, rtol=1e-6)
    g = np.asarray(state.g_target, np.float64)
    np.testing.assert_allclose(g[:, 0], np.maximum(w64, 0) / wmax * G_MAX2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g[:, 1], np.maximum(-w64, 0) / wmax * G_MAX2, rtol=1e-5, atol=1e-6)
    assert np.all((g[:, 0] == 0) | (g[:, 1] == 0))  # one polarity per weight


def test_w_clip_sigma_caps_the_scale():
    from pcmjax.chip.mapping import weight_scale

    w64 = W.astype(np.float64)
    got = np.asarray(weight_scale(jnp.asarray(W), pj.ChipConfig(w_clip_sigma=2.0)))
    want = np.minimum(np.abs(w64).max(axis=(1, 2)), 2.0 * w64.std(axis=(1, 2)))
    np.testing.assert_allclose(got[:, 0, 0], want, rtol=1e-5)
    got = np.asarray(weight_scale(jnp.asarray(W), pj.ChipConfig(w_max="column", w_clip_sigma=1.0)))
    want = np.minimum(np.abs(w64).max(axis=1), w64.std(axis=1))
    np.testing.assert_allclose(got[:, 0, :], want, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# 2. Each non-ideality alone
# ---------------------------------------------------------------------------------------


def test_pwm_alone_per_element_error_is_half_a_step():
    cfg = BASE.only("pwm")
    w = np.zeros((C, R, K), np.float32)
    w[:, :K, :] = np.eye(K, dtype=np.float32)  # y_k = x_k: the crossbar passes the inputs
    state = program(_key(0), w, cfg)
    x = _uniform(2, (C, 16, R))
    y = np.asarray(run(_key(1), state, x), np.float64)
    xin = x[:, :, :K].astype(np.float64)
    assert np.max(np.abs(y - xin)) <= 1 / (2 * 127) + 1e-6
    np.testing.assert_allclose(y * 127, np.round(y * 127), atol=1e-4)  # on the 8-bit grid
    np.testing.assert_allclose(y, np.round(xin * 127) / 127, atol=1e-6)


def test_pwm_alone_output_error_variance():
    cfg = BASE.only("pwm")
    state = program(_key(0), W, cfg)
    b = 256
    x = _uniform(3, (C, b, R))  # uniform inputs: the rounding error is uniform on ±step/2
    y = np.asarray(run(_key(1), state, x), np.float64)
    err = y - _ref(x, W)
    step = 1.0 / 127
    var = np.sum(W.astype(np.float64) ** 2, axis=1) * step**2 / 12  # [C, K] closed form
    zed = err / np.sqrt(var)[:, None, :]
    # Columns share the inputs' errors, so estimate the SE from independent (core, batch)
    # blocks.
    block = np.mean(zed**2, axis=2)  # [C, B]
    se = block.std() / math.sqrt(block.size)
    assert abs(block.mean() - 1.0) < Z * se
    mblock = zed.mean(axis=2)
    assert abs(mblock.mean()) < Z * mblock.std() / math.sqrt(mblock.size)


def test_adc_quantisation_alone():
    cfg = BASE.only("adc_quantization")
    state = program(_key(0), W, cfg)
    x = _uniform(4, (C, 64, R))
    x[:, 0, :] = np.sign(W[:, :, 0])  # drive column 0 of every core far beyond full scale
    x[:, 1, :] = -np.sign(W[:, :, 1])
    y = np.asarray(run(_key(1), state, x), np.float64)
    ref = _ref(x, W)
    wmax = np.abs(W.astype(np.float64)).max(axis=(1, 2))[:, None, None]
    lsb = wmax / _a(cfg)  # γ: one count in output units
    np.testing.assert_allclose(np.asarray(state.gamma), np.broadcast_to(lsb[:, 0], (C, K)), rtol=1e-6)
    n_max = 2**cfg.adc.bits - 1
    counts = y / lsb
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # integer counts
    inside = np.abs(ref) / lsb <= n_max - 0.01
    beyond = np.abs(ref) / lsb >= n_max + 0.51
    assert inside.sum() > 1000 and beyond.sum() >= 2 * C
    assert np.all(np.abs(y - ref)[inside] <= (0.5 + 1e-3) * np.broadcast_to(lsb, y.shape)[inside])
    np.testing.assert_allclose(counts[beyond], np.sign(ref[beyond]) * n_max, atol=1e-3)


def test_adc_quantisation_gradient_zero_in_saturation():
    cfg = BASE.only("adc_quantization")
    state = program(_key(0), W, cfg)
    x = np.zeros((C, 2, R), np.float32)
    x[:, 0, :] = np.sign(W[:, :, 0])  # saturates column 0
    x[:, 1, :] = 0.05 * np.sign(W[:, :, 0])  # column 0 in range
    jac = jax.jacrev(lambda v: pj.mvm(_key(1), state, v)[:, :, 0])(jnp.asarray(x))  # [C, 2, C, 2, R]
    jac = np.asarray(jac)
    for c in range(C):
        np.testing.assert_array_equal(jac[c, 0, c, 0], 0.0)  # saturated: no gradient
        np.testing.assert_allclose(jac[c, 1, c, 1], W[c, :, 0], rtol=1e-5, atol=1e-7)  # STE: W


def test_adc_gain_alone():
    cfg = BASE.only("adc_gain")
    state = program(_key(3), W, cfg)
    y = np.asarray(run(_key(1), state, X), np.float64)
    ref = _ref(X, W)
    ratio = np.sum(y * ref, axis=1) / np.sum(ref * ref, axis=1)  # [C, K] per column
    # The response is linear per column (gain only)
    np.testing.assert_allclose(y, ratio[:, None, :] * ref, atol=1e-5 * np.abs(ref).max())
    # ratio = gain / gain_est; gain_est is what the digital unit divides by:
    # γ = w_max / (a · gain_est)  (state.gamma), so gain_est = w_max / (a γ).
    wmax = np.abs(W.astype(np.float64)).max(axis=(1, 2))[:, None]
    gain_est = wmax / (_a(cfg) * np.asarray(state.gamma, np.float64))
    gain = np.asarray(state.adc_gain, np.float64)
    np.testing.assert_allclose(ratio, gain / gain_est, rtol=1e-5)
    # The analog gain spread (7 %) is calibrated away up to the calibration error (0.5 %).
    n = gain.size
    assert abs(gain.std() - cfg.adc.gain_std) < Z * cfg.adc.gain_std / math.sqrt(2 * n)
    # ratio − 1 = 1/(1 + ε ξ) − 1 ≈ −ε ξ: zero mean, standard deviation ε = cal_gain_error.
    rel, eps = ratio - 1.0, cfg.adc.cal_gain_error
    assert abs(rel.mean()) < Z * eps / math.sqrt(n)
    assert abs(rel.std() - eps) < Z * eps / math.sqrt(2 * n)
    assert np.all(np.asarray(state.beta) == 0.0)  # no offset without adc_offset


def test_adc_offset_alone():
    cfg = BASE.only("adc_offset")
    state = program(_key(4), W, cfg)
    y = np.asarray(run(_key(1), state, X), np.float64)
    gamma = np.asarray(state.gamma, np.float64)
    resid = np.asarray(state.adc_offset, np.float64) - np.asarray(state.adc_offset_est, np.float64)
    # Offset o is added in counts; the digital unit subtracts its estimate through β.
    np.testing.assert_allclose(y - _ref(X, W), np.broadcast_to((gamma * resid)[:, None, :], y.shape),
                               atol=1e-5)
    # The calibration leaves o − ô = −σ_cal ξ: zero mean, standard deviation cal_offset_error.
    n, sigma = resid.size, cfg.adc.cal_offset_error
    assert abs(resid.mean()) < Z * sigma / math.sqrt(n)
    assert abs(resid.std() - sigma) < Z * sigma / math.sqrt(2 * n)


@pytest.mark.parametrize("phases", [1, 4])
def test_adc_noise_alone(phases):
    cfg = BASE.only("adc_noise").replace(read_phases=phases)
    state = program(_key(0), W, cfg)
    x = _uniform(7, (C, 512, R))
    y = np.asarray(run(_key(5), state, x), np.float64)
    gamma = np.asarray(state.gamma, np.float64)[:, None, :]
    e = (y - _ref(x, W)) / gamma  # counts
    # One conversion in one-phase mode, four independent ones in four-phase mode.
    sigma = cfg.adc.noise_std * (1.0 if phases == 1 else 2.0)
    n = e.size
    assert abs(e.mean()) < Z * sigma / math.sqrt(n)
    assert abs(e.std() - sigma) < Z * sigma / math.sqrt(2 * n)


def test_adc_nonlinearity_alone():
    cfg = BASE.only("adc_nonlinearity")
    state = program(_key(0), W, cfg)
    b = np.asarray(state.adc_nonlin, np.float64)[:, None, :]
    assert np.all(b >= 0) and b.mean() > 0
    y = np.asarray(run(_key(1), state, X), np.float64)
    a = _a(cfg)
    wmax = np.abs(W.astype(np.float64)).max(axis=(1, 2))[:, None, None]
    u = a * _ref(X, W) / wmax  # counts before the converter
    want = wmax / a * u / (1 + b * np.abs(u) / (2**cfg.adc.bits - 1))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(y - _ref(X, W))) > 1e-3  # visible compression


@pytest.fixture(scope="module")
def read_noise_case():
    cfg = BASE.only("read_noise")
    state = program(_key(0), W, cfg)
    return cfg, state


def test_read_noise_variance_of_the_state(read_noise_case):
    cfg, state = read_noise_case
    g = np.asarray(state.g_prog, np.float64)  # no programming noise, no drift: g = target
    np.testing.assert_allclose(g, np.asarray(state.g_target, np.float64), rtol=0, atol=0)
    factor = math.sqrt(math.log((cfg.read_interval_s + 2 * T_READ) / (2 * T_READ)))
    sigma = _q_s_2dev(g / G_MAX2) * np.abs(g) * factor  # µS, per device
    var = np.sum((sigma / G_MAX2) ** 2, axis=1, keepdims=True)  # both polarities, [C, 1, R, K]
    np.testing.assert_allclose(np.asarray(state.var, np.float64), var, rtol=2e-5, atol=1e-12)


def test_read_noise_alone_output_variance(read_noise_case):
    cfg, state = read_noise_case
    x = _uniform(8, (C, 4, R))
    keys = jax.random.split(_key(11), 1024)
    ys = np.asarray(jax.vmap(lambda k: run(k, state, x))(keys), np.float64)  # [M, C, B, K]
    ref = _ref(x, W)
    g = np.asarray(state.g_prog, np.float64)
    factor = math.sqrt(math.log((cfg.read_interval_s + 2 * T_READ) / (2 * T_READ)))
    var_dev = np.sum((_q_s_2dev(g / G_MAX2) * g * factor / G_MAX2) ** 2, axis=1)  # [C, R, K]
    wmax = np.abs(W.astype(np.float64)).max(axis=(1, 2))[:, None, None]
    var = wmax**2 * np.einsum("cbr,crk->cbk", x.astype(np.float64) ** 2, var_dev)  # output units²
    zed = (ys - ref) / np.sqrt(var)
    n = zed.size
    assert abs(zed.mean()) < Z / math.sqrt(n)
    assert abs(zed.var() - 1.0) < Z * math.sqrt(2.0 / n)
    # per output, too: the variance follows Σ x² σ² output by output (a loose check on each)
    v_out = ys.var(axis=0) / var
    m = ys.shape[0]
    assert np.all(np.abs(v_out - 1.0) < 6 * math.sqrt(2.0 / m))
    # fresh noise per key, none between identical keys
    assert not np.array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(np.asarray(run(keys[3], state, x)), ys[3].astype(np.float32))


def test_programming_noise_alone_one_shot():
    cfg = BASE.only("programming_noise")
    levels = np.array([0.25, 0.5, 1.0])
    rng = np.random.default_rng(9)
    w = (rng.choice(levels, (C, R, K)) * rng.choice([-1.0, 1.0], (C, R, K))).astype(np.float32)
    state = program(_key(21), w, cfg)
    gt = np.asarray(state.g_target, np.float64)
    gp = np.asarray(state.g_prog, np.float64)
    err = gp - gt
    for lv in levels:
        sel = np.isclose(gt, lv * G_MAX2)
        n = sel.sum()
        sigma = _poly(PROG_C2, lv)  # σ_prog(g_T), PHYSICS.md §2.1 (targets ≥ 5σ above 0)
        assert n > 1000
        assert abs(err[sel].mean()) < Z * sigma / math.sqrt(n), lv
        assert abs(err[sel].std() - sigma) < Z * sigma / math.sqrt(2 * n), lv
    # Zero targets (the RESET polarity): max(σ0 ξ, 0), a rectified normal.
    sel = gt == 0
    n = sel.sum()
    s0 = PROG_C2[0]
    assert abs(np.mean(gp[sel] == 0) - 0.5) < Z * 0.5 / math.sqrt(n)
    mean, var = s0 / math.sqrt(2 * math.pi), s0**2 * (0.5 - 1 / (2 * math.pi))
    assert abs(gp[sel].mean() - mean) < Z * math.sqrt(var / n)
    assert abs(gp[sel].var() - var) < Z * np.std((gp[sel] - mean) ** 2) / math.sqrt(n)
    # The MVM sees exactly the programmed conductances.
    y = np.asarray(run(_key(1), state, X), np.float64)
    w_eff = (gp[:, 0] - gp[:, 1]) / G_MAX2  # w_max = 1
    np.testing.assert_allclose(y, _ref(X, w_eff), atol=2e-6 * _ref(np.abs(X), np.abs(w_eff)).max())


def test_drift_alone_follows_power_law():
    cfg = BASE.only("drift")
    rng = np.random.default_rng(10)
    w = (rng.uniform(0.1, 1.0, (C, R, K)) * rng.choice([-1.0, 1.0], (C, R, K))).astype(np.float32)
    state = program(_key(0), w, cfg)
    eye = np.broadcast_to(np.eye(R, dtype=np.float32), (C, R, R))  # one-hot inputs: y = W(t)
    y0 = np.asarray(run(_key(1), state, eye), np.float64)
    nu = np.asarray(state.nu, np.float64)
    nu_w = np.where(w > 0, nu[:, 0], nu[:, 1])  # the programmed polarity's exponent
    assert np.all(nu >= 0) and nu_w.std() > 0.005  # state-dependent exponents
    np.testing.assert_allclose(y0, w, rtol=2e-6)
    for t in (1.0, 3600.0, YEAR):
        y = np.asarray(run(_key(1), age(state, _key(2), t), eye), np.float64)
        np.testing.assert_allclose(y / y0, ((t + T0_2) / T0_2) ** (-nu_w), rtol=1e-5)


def test_polarity_asymmetry_alone_and_four_phase_removes_it():
    alpha = 0.03
    cfg = BASE.only("polarity_asymmetry").replace(polarity_asymmetry=alpha)
    state = program(_key(0), W, cfg)
    y = np.asarray(run(_key(1), state, X), np.float64)
    x64 = X.astype(np.float64)
    want = _ref(x64 * (1 + alpha * np.sign(x64)), W)
    tol = 2e-6 * _ref(np.abs(X), np.abs(W)).max()
    np.testing.assert_allclose(y, want, atol=tol)
    assert np.max(np.abs(y - _ref(X, W))) > 100 * tol
    four = program(_key(0), W, cfg.replace(read_phases=4))
    np.testing.assert_allclose(np.asarray(run(_key(1), four, X), np.float64), _ref(X, W), atol=tol)


def test_global_drift_compensation_improves_state_dependent_drift():
    t = YEAR
    plain = age(program(_key(0), W, BASE.only("drift")), _key(2), t)
    comp = age(program(_key(0), W, BASE.only("drift").replace(drift_compensation="global")), _key(2), t)
    np.testing.assert_array_equal(np.asarray(plain.nu), np.asarray(comp.nu))  # the same chip
    ref = _ref(X, W)
    e_plain = np.sqrt(np.mean((np.asarray(run(_key(1), plain, X)) - ref) ** 2))
    e_comp = np.sqrt(np.mean((np.asarray(run(_key(1), comp, X)) - ref) ** 2))
    # ν varies from device to device (σ_ν ≈ 0.01-0.04): one factor per core removes the
    # common decay (~55 % at a year), not the spread around it.
    assert e_comp < 0.7 * e_plain
    # The global factor is one number per core, > 1 (it undoes a decay).
    f = np.asarray(comp.comp)
    np.testing.assert_allclose(f, f[:, :1] * np.ones_like(f), rtol=1e-6)
    assert np.all(f > 1.2)


def test_drift_compensation_exact_for_state_independent_drift():
    dev = StateIndependent(sigma_nu=0.0)  # every device drifts with the same ν = μ_ν
    cfg = BASE.only("drift").replace(drift_compensation="global")
    state = program(_key(0), W, cfg, dev)
    nu = np.asarray(state.nu)
    np.testing.assert_allclose(nu, float(dev.mu_nu), rtol=1e-6)
    for t in (3600.0, YEAR):
        st = age(state, _key(2), t)
        np.testing.assert_allclose(np.asarray(st.comp, np.float64),
                                   (1 + t / float(dev.t0)) ** float(dev.mu_nu), rtol=1e-5)
        y = np.asarray(run(_key(1), st, X), np.float64)
        np.testing.assert_allclose(y, _ref(X, W), atol=1e-5 * _ref(np.abs(X), np.abs(W)).max())



@pytest.mark.parametrize("mode", ["global", "column"])
def test_drift_compensation_reads_only_the_mapped_part_of_a_core(mode):
    """A tile smaller than the core (the rest zero): the reference drives only the rows and
    counts only the columns that hold weights, so the factor is the ratio of the mapped
    devices' total conductance, whatever the unused RESET devices conduct and drift."""
    w = np.zeros((C, R, K), np.float32)
    w[0, :, :3] = np.asarray(W[0, :, :3])  # a 64×3 output layer
    w[1, :20, :] = np.asarray(W[1, :20, :])  # a 20×32 first layer
    w[2] = np.asarray(W[2])  # a full tile
    w[2, 5, 7] = 0.0  # a zero weight inside a tile is still driven and counted
    # Linear ADC, no noise: the reference counts are proportional to the conductance sums.
    cfg = BASE.only("programming_noise", "drift").replace(drift_compensation=mode)
    state = program(_key(0), jnp.asarray(w), cfg)
    g0 = np.asarray(state.g_prog, np.float64)
    assert g0[0, :, :, 3:].max() > 0  # the unused RESET devices do conduct (zero-target programming noise)
    for t in (3600.0, YEAR):
        st = age(state, _key(2), t)
        gt = np.asarray(st.conductances(_key(2), t), np.float64)
        for c, (rows, cols) in enumerate([(R, 3), (20, K), (R, K)]):
            s0 = g0[c, :, :rows, :cols].sum(axis=(0, 1))  # per column, both polarities
            st_ = gt[c, :, :rows, :cols].sum(axis=(0, 1))
            want = s0 / st_ if mode == "column" else np.full(cols, s0.sum() / st_.sum())
            np.testing.assert_allclose(np.asarray(st.comp[c, :cols], np.float64), want, rtol=2e-5)
        # An all-zero core has nothing to compensate.
        np.testing.assert_array_equal(np.asarray(st.comp[3]), 1.0)

def _kw(v):
    """Input-line kernel Kw(v)_k = Σ_k' (min(k, k') + 1) v_k' along the last axis (float64)."""
    k = np.arange(v.shape[-1])
    return v @ (np.minimum(k[:, None], k[None, :]) + 1.0).T


def _kb(v):
    """Bit-line kernel Kb(v)_i = Σ_i' (R − max(i, i')) v_i' along axis −2 (float64)."""
    n = v.shape[-2]
    i = np.arange(n)
    return np.einsum("ij,...jk->...ik", n - np.maximum(i[:, None], i[None, :]), v)


@pytest.mark.parametrize("phases", [1, 4])
def test_conductances_are_the_ones_at_time_uses(phases):
    from pcmjax.config import ParasiticsConfig, TemperatureConfig

    t_a, t_r, r_w, r_b = 340.0, 320.0, 20.0, 30.0
    cfg = DEFAULT.replace(read_phases=phases, parasitics=ParasiticsConfig(r_w, r_b),
                          temperature=TemperatureConfig(temperature_k=t_a, read_temperature_k=t_r))
    state = program(_key(0), W, cfg)
    t = 3600.0
    phys = np.asarray(state.conductances(_key(5), t), np.float64)
    eff = np.asarray(state.conductances(_key(5), t, effective=True), np.float64)
    # The reference-temperature devices of the same chip, with the same random numbers.
    ref_state = state.replace(cfg=cfg.without("temperature", "ir_drop"))
    g_ref = np.asarray(ref_state.conductances(_key(5), t), np.float64)
    assert not np.allclose(g_ref, np.asarray(ref_state.conductances(_key(6), t)))  # the key matters
    # Temperature (chip/temperature.py docstring): Arrhenius with E_a from the target
    # level, and the drift exponent read at T_r scaled by T_a / T_r.
    g_r = np.clip(np.asarray(state.g_target, np.float64) / G_MAX2, 0.0, 1.0)
    ea = 0.3 + (0.03 - 0.3) * g_r
    nu = np.asarray(state.nu, np.float64)
    want = g_ref * np.exp(-ea / 8.617333262e-5 * (1 / t_r - 1 / 300.0)) \
        * ((t + T0_2) / T0_2) ** (-nu * (t_a / t_r - 1.0))
    np.testing.assert_allclose(phys, want, rtol=2e-5, atol=1e-6)
    # IR drop, first order (chip/parasitics.py): G ⊙ (1 − r_w Kw(G)) ⊙ (1 − r_b Kb(G⁺ + G⁻)).
    bit = 1.0 - r_b * 1e-6 * _kb(phys[:, 0] + phys[:, 1])[:, None]
    want_eff = phys * (1.0 - r_w * 1e-6 * _kw(phys)) * bit
    np.testing.assert_allclose(eff, want_eff, rtol=2e-5, atol=1e-6)
    assert np.max(np.abs(eff - phys)) > 1e-3 * np.max(phys)  # the IR drop is visible
    # What the MVM sees: at_time(key, t).w is the effective conductances over g_max.
    w = np.asarray(age(state, _key(5), t).w, np.float64)
    if phases == 1:
        np.testing.assert_allclose(w[:, 0], (eff[:, 0] - eff[:, 1]) / G_MAX2, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(w, eff / G_MAX2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="t must be a scalar"):
        state.conductances(_key(5), np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="effective must be True or False"):
        state.conductances(_key(5), t, effective="yes")


# ---------------------------------------------------------------------------------------
# 3. Program-and-verify
# ---------------------------------------------------------------------------------------

# Program-and-verify as HERMES does it, calibrated to the fitted programming noise: tests/test_verify.py.


# ---------------------------------------------------------------------------------------
# 4. Gradients
# ---------------------------------------------------------------------------------------


def _smooth_weights():
    """|w| in [0.35, 0.8] and one 1.0 per tile: w_max stays put under small perturbations,
    no target crosses 0 and none sits at a kink of the piecewise laws (g_r 0.0945, 0.16,
    0.3055), so the path is smooth where finite differences probe it."""
    rng = np.random.default_rng(12)
    w = rng.uniform(0.35, 0.8, (C, R, K)) * rng.choice([-1.0, 1.0], (C, R, K))
    w[:, 0, 0] = 1.0
    return w.astype(np.float32)


# Smooth non-idealities only: no PWM, no ADC rounding, no compensation.
SMOOTH = BASE.only("programming_noise", "drift", "drift_noise", "read_noise")


@pytest.mark.slow
def test_check_grads_on_the_smooth_path():
    assert not SMOOTH.pwm.enabled and not SMOOTH.adc.enabled and SMOOTH.drift_compensation == "none"
    dev = HermesPCM(num_devices=2)

    def f(x, w, p, gamma_scale, beta):
        d = dev.replace(prog_scale=p[0], drift_scale=p[1], read_noise_scale=p[2])
        st = pj.program_chip(_key(0), w, SMOOTH, d).at_time(_key(1), 3600.0)
        st = st.replace(gamma=st.gamma * gamma_scale, beta=beta)
        return pj.mvm(_key(2), st, x)

    x = jnp.asarray(_uniform(13, (C, 3, R), -0.9, 0.9))
    args = (x, jnp.asarray(_smooth_weights()), jnp.ones(3), jnp.ones((C, K)), jnp.full((C, K), 0.1))
    f_jit = jax.jit(f, compiler_options=_FAST_COMPILE)
    vjp_jit = jax.jit(lambda a, ct: jax.vjp(f, *a)[1](ct), compiler_options=_FAST_COMPILE)
    y = np.asarray(f_jit(*args))
    assert np.all(np.isfinite(y)) and np.std(y) > 0.1
    # Derivatives w.r.t. inputs, weights (through mapping and programming), the device
    # model's scales (through programming, drift, accumulated and per-read noise) and the
    # digital unit's γ, β, against central differences in a random direction. This is
    # check_grads(f, args, order=1, modes=["rev"]), i.e. check_vjp(f, partial(jax.vjp, f),
    # args), with the VJP compiled once as a top-level jit.
    check_vjp(f_jit, lambda *a: (f_jit(*a), lambda ct: vjp_jit(a, ct)), args, eps=1e-3, atol=2e-2, rtol=2e-2)
    # each argument's VJP is finite and not identically zero
    for g in vjp_jit(args, jnp.ones_like(f_jit(*args))):
        assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)


def test_gradients_finite_through_the_full_default_pipeline():
    cfg = DEFAULT  # every non-ideality, global drift compensation
    dev = HermesPCM(num_devices=2)

    @partial(jax.jit, compiler_options=_FAST_COMPILE)
    @partial(jax.grad, argnums=(0, 1, 2, 3))
    def grads(x, w, p, gb):
        d = dev.replace(prog_scale=p[0], drift_scale=p[1], read_noise_scale=p[2])
        st = pj.program_chip(_key(0), w, cfg, d).at_time(_key(1), 86400.0)
        st = st.replace(gamma=st.gamma * gb[0], beta=st.beta + gb[1])
        return jnp.sum(jnp.sin(pj.mvm(_key(2), st, x)))

    x = jnp.asarray(_uniform(17, (C, 4, R), -0.5, 0.5))
    x = x.at[0, 0, :8].set(0.0).at[0, 1, :8].set(1.5)  # exact zeros and saturated inputs
    out = grads(x, jnp.asarray(W), jnp.ones(3), jnp.array([1.0, 0.0]))
    for g in out:
        g = np.asarray(g)
        assert np.all(np.isfinite(g))
        assert np.any(g != 0)
    np.testing.assert_array_equal(np.asarray(out[0])[0, 1, :8], 0.0)  # PWM saturation
    assert np.all(np.asarray(out[2]) != 0)  # prog_scale, drift_scale, read_noise_scale


def test_gradient_wrt_x_is_weights_on_the_ideal_chip():
    cfg = pj.ChipConfig.ideal(**GEOM)
    state = pj.program_chip(_key(0), W, cfg)
    g = jax.grad(lambda v: jnp.sum(pj.mvm(_key(1), state, v)))(jnp.asarray(X))
    np.testing.assert_allclose(np.asarray(g), np.broadcast_to(W.sum(axis=2)[:, None, :], X.shape),
                               rtol=1e-5, atol=1e-5)


def test_pwm_gradient_zero_outside_range_in_the_loop():
    cfg = BASE.only("pwm")
    state = program(_key(0), W, cfg)
    x = np.full((C, 1, R), 0.5, np.float32)
    x[:, 0, :10] = 1.5  # saturated inputs
    g = np.asarray(jax.grad(lambda v: jnp.sum(pj.mvm(_key(1), state, v)))(jnp.asarray(x)))
    np.testing.assert_array_equal(g[:, 0, :10], 0.0)
    np.testing.assert_allclose(g[:, 0, 10:], W.sum(axis=2)[:, 10:], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# 5. jit, vmap and determinism
# ---------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames="cfg", compiler_options=_FAST_COMPILE)
def _instance(key, w, x, t=3600.0, cfg=DEFAULT):
    """One chip instance: program, age to t, one MVM (the public functions)."""
    st = pj.program_chip(key, w, cfg).at_time(jax.random.fold_in(key, 1), t)
    return st, pj.mvm(jax.random.fold_in(key, 2), st, x)


def test_vmap_over_instances_equals_per_instance_calls():
    keys = jax.random.split(_key(30), 3)
    x = X[:, :4]
    states, ys = jax.vmap(_instance, in_axes=(0, None, None))(keys, W, x)  # an instance axis
    assert states.g_prog.shape == (3, C, 2, R, K) and ys.shape == (3, C, 4, K)
    with pytest.raises(ValueError, match="vmap"):
        pj.mvm(_key(0), states, x)  # the instance axis must be vmapped, not passed
    ys = np.asarray(ys)
    lsb = np.asarray(states.gamma)[:, :, None, :]
    for i in range(3):
        st, yi = _instance(keys[i], W, x)
        # the same chip instance: identical random draws
        np.testing.assert_allclose(np.asarray(st.g_prog), np.asarray(states.g_prog[i]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(st.nu), np.asarray(states.nu[i]), rtol=1e-6, atol=1e-7)
        yi = np.asarray(yi)
        # The same result up to float32 rounding of batched vs unbatched arithmetic, which
        # can move a value that sits on a count boundary to the neighbouring count.
        close = np.abs(yi - ys[i]) <= 1e-5 * np.abs(ys[i]) + 1e-6
        assert np.mean(close) > 0.95
        assert np.all(np.abs(yi - ys[i]) <= 1e-5 * np.abs(ys[i]) + 1.01 * lsb[i])
    assert not np.allclose(ys[0], ys[1])  # instances differ
    # a batch of instances of the eager mvm on the vmapped state
    y2 = jax.vmap(lambda k, s: pj.mvm(jax.random.fold_in(k, 2), s, x))(keys, states)
    np.testing.assert_allclose(np.asarray(y2), ys, atol=1.01 * lsb.max())


def test_same_key_same_result():
    x = X[:, :4]
    a = np.asarray(_instance(_key(31), W, x)[1])
    b = np.asarray(_instance(_key(31), W, x)[1])
    c = np.asarray(_instance(_key(32), W, x)[1])
    st = _instance(_key(31), W, x)[0]
    d = np.asarray(run(_key(6), st, x))
    e = np.asarray(run(_key(6), st, x))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(d, e)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


# ---------------------------------------------------------------------------------------
# 6. Bad input and valid extremes
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_state():
    return pj.program_chip(_key(0), W, pj.ChipConfig.ideal(**GEOM))


def test_weights_too_many_cores():
    with pytest.raises(ValueError, match=r"weights has shape \(70, 256, 256\).*64 cores of 256"):
        pj.program_chip(_key(0), np.zeros((70, 256, 256), np.float32), pj.ChipConfig())


@pytest.mark.parametrize("shape", [(256, 256), (1, 2, 3, 4), (R * K,)])
def test_weights_wrong_ndim(shape):
    with pytest.raises(ValueError, match="weights"):
        pj.program_chip(_key(0), np.zeros(shape, np.float32), BASE)


@pytest.mark.parametrize("shape", [(1, R + 1, K), (1, R, K + 1), (C + 1, R, K), (0, R, K)])
def test_weights_larger_than_chip(shape):
    with pytest.raises(ValueError, match="weights has shape"):
        pj.program_chip(_key(0), np.zeros(shape, np.float32), BASE)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(bad):
    w = W.copy()
    w[1, 2, 3] = bad
    with pytest.raises(ValueError, match=r"weights must be finite.*\(1, 2, 3\)"):
        pj.program_chip(_key(0), w, BASE)


def test_non_numeric_weights():
    with pytest.raises(TypeError, match="weights"):
        pj.program_chip(_key(0), np.array([["a"]], dtype=object), BASE)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_x(small_state, bad):
    x = X.copy()
    x[0, 0, 0] = bad
    with pytest.raises(ValueError, match="x must be finite"):
        pj.mvm(_key(0), small_state, x)


@pytest.mark.parametrize("shape", [(C, 2, R - 1), (C - 1, 2, R), (2, R), (C, 0, R), (C, 2, R, 1)])
def test_x_shape_mismatch(small_state, shape):
    with pytest.raises(ValueError, match="x"):
        pj.mvm(_key(0), small_state, np.zeros(shape, np.float32))


@pytest.mark.parametrize("t", [-1.0, -1e-9, float("nan"), float("inf")])
def test_bad_time(small_state, t):
    with pytest.raises(ValueError, match="t must be"):
        small_state.at_time(_key(0), t)


def test_non_scalar_time(small_state):
    with pytest.raises(ValueError, match="scalar"):
        small_state.at_time(_key(0), jnp.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="t must be"):
        small_state.at_time(_key(0), "1 h")


def test_negative_time_under_jit_fails_when_run(small_state):
    aged = jax.jit(lambda t: small_state.at_time(_key(0), t).comp)
    np.testing.assert_array_equal(np.asarray(aged(0.0)), np.asarray(small_state.at_time(_key(0), 0.0).comp))
    for t in (-1.0, float("nan")):
        with pytest.raises(Exception, match="t must be >= 0 seconds after programming"):
            jax.block_until_ready(aged(t))
    conductances = jax.jit(jax.vmap(lambda t: small_state.conductances(_key(0), t)))
    with pytest.raises(Exception, match="t must be >= 0 seconds after programming"):
        jax.block_until_ready(conductances(jnp.array([1.0, -5.0])))


def test_bits_out_of_range():
    with pytest.raises(ValueError, match="pwm.bits"):
        pj.PWMConfig(bits=1)
    with pytest.raises(ValueError, match="adc.bits"):
        pj.ADCConfig(bits=17)
    with pytest.raises(ValueError, match="adc.bits"):
        pj.ChipConfig().set("adc.bits", 17)


@pytest.mark.parametrize("phases", [2, 0, 3, True])
def test_read_phases(phases):
    with pytest.raises(ValueError, match="read_phases"):
        pj.ChipConfig(read_phases=phases)


def test_unknown_option_names():
    with pytest.raises(TypeError, match="foo"):
        pj.ChipConfig().replace(foo=1)
    with pytest.raises(ValueError, match="nope"):
        pj.ChipConfig().without("nope")
    with pytest.raises(ValueError, match="nope"):
        pj.ChipConfig().only("drift", "nope")
    with pytest.raises((TypeError, ValueError), match="bitz"):
        pj.ChipConfig.from_dict({"adc": {"bitz": 3}})
    with pytest.raises((TypeError, ValueError), match="nosuch"):
        pj.ChipConfig.from_dict({"nosuch": {"bits": 3}})
    with pytest.raises((TypeError, ValueError), match="colour"):
        pj.ChipConfig().set("program.colour", 1)
    # the nested sections named in the messages are the config's real ones
    sections = r"\['program', 'pwm', 'adc', 'faults', 'parasitics', 'temperature'\]"
    with pytest.raises(ValueError, match=r"unknown option 'drift.x'; nested sections are " + sections):
        pj.ChipConfig().set("drift.x", 1)
    with pytest.raises(ValueError, match=r"unknown chip option section 'nosuch'; sections: " + sections):
        pj.ChipConfig.from_dict({"nosuch": {"bits": 3}})
    assert pj.ChipConfig.from_dict({"parasitics": {"r_word_line": 2.0}}).parasitics.r_word_line == 2.0


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(n_cores=0), "n_cores"), (dict(rows=2.5), "rows"), (dict(w_max="row"), "w_max"),
     (dict(drift_compensation="local"), "drift_compensation"), (dict(activation="swish"), "activation"),
     (dict(polarity_asymmetry=0.7), "polarity_asymmetry"), (dict(gdc_input=0.0), "gdc_input"),
     (dict(read_interval_s=-1.0), "read_interval_s"), (dict(w_clip_sigma=-1.0), "w_clip_sigma")],
)
def test_bad_config_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        pj.ChipConfig(**kwargs)


def test_bad_config_types():
    with pytest.raises(TypeError, match="drift"):
        pj.ChipConfig(drift="yes")
    with pytest.raises(TypeError, match="adc"):
        pj.ChipConfig(adc={"bits": 8})
    with pytest.raises(ValueError, match="program.method"):
        pj.ProgramConfig(method="gdp_typo")


def test_bad_device():
    with pytest.raises(ValueError, match="num_devices"):
        HermesPCM(num_devices=3)
    with pytest.raises(TypeError, match="device"):
        pj.program_chip(_key(0), W, BASE, device="hermes")
    with pytest.raises(TypeError, match="cfg"):
        pj.program_chip(_key(0), W, {"rows": 64})


@pytest.mark.parametrize("key", [0, 3.5, np.zeros(2, np.float32), np.zeros(3, np.uint32), "seed", None])
def test_non_key_as_key(small_state, key):
    with pytest.raises(TypeError, match="key"):
        pj.program_chip(key, W, BASE)
    with pytest.raises(TypeError, match="key"):
        pj.mvm(key, small_state, X)
    with pytest.raises(TypeError, match="key"):
        small_state.at_time(key, 1.0)


def test_batched_key_rejected(small_state):
    with pytest.raises(ValueError, match="key"):
        pj.mvm(jax.random.split(_key(0), 2), small_state, X)


def test_raw_uint32_key_accepted(small_state):
    y = pj.mvm(jax.random.PRNGKey(0), small_state, X)
    np.testing.assert_allclose(np.asarray(y, np.float64), _ref(X, W), atol=1e-4)


def test_bad_state_and_activation(small_state):
    with pytest.raises(TypeError, match="state"):
        pj.mvm(_key(0), {"w": W}, X)
    with pytest.raises(ValueError, match="activation"):
        pj.mvm(_key(0), small_state, X, activation="swish")


def test_activation_in_the_digital_unit(small_state):
    y = np.asarray(pj.mvm(_key(0), small_state, X, activation="relu"), np.float64)
    np.testing.assert_allclose(y, np.maximum(_ref(X, W), 0), atol=1e-4)


@pytest.mark.parametrize(
    "cfg",
    [DEFAULT, DEFAULT.replace(read_phases=4, drift_compensation="column")],
    ids=["default", "four_phase-column_compensation"],
)
def test_valid_extremes_give_finite_outputs(cfg):
    rng = np.random.default_rng(40)
    x = rng.choice([-1.0, 1.0], (C, 4, R)).astype(np.float32)  # |x| = 1
    x[:, 0] = 1.0
    zero = np.zeros((C, R, K), np.float32)
    for t in (0.0, 1e9):
        st, y = _instance(_key(0), zero, x, t, cfg=cfg)
        y = np.asarray(y)
        assert np.all(np.isfinite(y))
        # all-zero weights: only ADC offset residue, noise and RESET-device leakage remain
        assert np.max(np.abs(y) / np.asarray(st.gamma)[:, None, :]) < 40
        assert np.all(np.isfinite(np.asarray(st.comp))) and np.all(np.asarray(st.comp) > 0)
    # full-scale weights and inputs: the ADC saturates, still finite
    ones = np.ones((C, R, K), np.float32)
    st, y = _instance(_key(0), ones, np.ones((C, 4, R), np.float32), 1e9, cfg=cfg)
    y = np.asarray(y)
    assert np.all(np.isfinite(y)) and np.all(y > 0)
    assert np.max(y / np.asarray(st.gamma)[:, None, :]) > 500  # saturated counts (N_max = 511)


# ---------------------------------------------------------------------------------------
# The read path (pcmjax.chip.read.make_read) against a float64 NumPy conversion
# ---------------------------------------------------------------------------------------

_RC, _RB, _RR, _RK = 2, 128, 32, 16  # cores, batch, rows, cols of the read tests


def _read_inputs(adc_on: bool):
    """Inputs, normalised conductances, variances and ADC parameters (float32) of a read."""
    rng = np.random.default_rng(11)
    f32 = lambda v: np.asarray(v, np.float32)  # noqa: E731
    x = f32(rng.uniform(-1.0, 1.0, (_RC, _RB, _RR)))
    w2 = f32(rng.uniform(0.0, 1.0, (_RC, 2, _RR, _RK)) * (rng.uniform(size=(_RC, 2, _RR, _RK)) < 0.6))
    var2 = f32(rng.uniform(0.0, 4e-3, w2.shape))
    adc = dict(gain=f32(1.0 + 0.07 * rng.standard_normal((_RC, _RK))),
               offset=f32(rng.standard_normal((_RC, _RK))),
               nonlin=f32(np.abs(0.01 + 0.005 * rng.standard_normal((_RC, _RK))) * adc_on),
               offset_est=f32(rng.standard_normal((_RC, _RK))))
    return x, w2, var2, adc


def _np_convert(s, adc, cfg, expand):
    """One conversion per element of the charge ``s`` (float64): gain, offset, compression, ADC."""
    a = _a(cfg)
    g, o, b = (np.asarray(adc[n], np.float64)[expand] for n in ("gain", "offset", "nonlin"))
    u = a * g * s + o
    v = u / (1.0 + b * np.abs(u) / cfg.adc.n_max)
    return np.clip(np.round(v), -cfg.adc.n_max, cfg.adc.n_max) if cfg.adc.enabled else v


def _np_reads(x, w2, adc, cfg):
    """float64 one-phase, four-phase and reference reads (PHYSICS.md §4, §5), noise off."""
    lv = 2 ** (cfg.pwm.bits - 1) - 1
    q = np.round(np.clip(np.asarray(x, np.float64), -1, 1) * lv) / lv
    w2 = np.asarray(w2, np.float64)
    alpha = cfg.polarity_asymmetry
    col = (slice(None), None, slice(None))  # [C, K] → [C, 1, K]
    one = _np_convert(np.einsum("cbr,crk->cbk", q * (1 + alpha * np.sign(q)), w2[:, 0] - w2[:, 1]), adc, cfg, col)
    four = sum(sp * sq * _np_convert(np.einsum("cbr,crk->cbk", np.maximum(sp * q, 0), w2[:, j]), adc, cfg, col)
               for sp in (1, -1) for j, sq in ((0, 1), (1, -1)))
    q_ref = np.abs(q)
    ref = sum(_np_convert(np.einsum("cbr,crk->cbk", q_ref, w2[:, j]), adc, cfg, col) for j in (0, 1))
    ref = ref - 2 * np.asarray(adc["offset_est"], np.float64)[col]
    return one, four, q_ref, ref


@pytest.mark.parametrize("adc_on", [True, False])
def test_make_read_matches_numpy_without_noise(adc_on):
    from pcmjax.chip import make_read

    cfg = pj.ChipConfig(n_cores=_RC, rows=_RR, cols=_RK, read_noise=False).set("adc.noise_std", 0.0)
    cfg = cfg.set("adc.enabled", adc_on)
    x, w2, var2, adc = _read_inputs(adc_on)
    one, four, q_ref, ref = _np_reads(x, w2, adc, cfg)
    w1 = (w2[:, :1] - w2[:, 1:])
    got_one = np.asarray(make_read(cfg, "one_phase")(_key(0), x, w1, var2[:, :1], adc), np.float64)
    got_four = np.asarray(make_read(cfg.replace(read_phases=4))(_key(0), x, w2, var2, adc), np.float64)
    got_ref = np.asarray(make_read(cfg, "reference")(_key(0), np.abs(x), w2, var2, adc), np.float64)
    for got, want in ((got_one, one), (got_four, four), (got_ref, ref)):
        assert got.shape == (_RC, _RB, _RK)
        if adc_on:  # integer counts; float32 charge may round the other way at a half count
            diff = np.abs(got - want)
            assert diff.max() <= 4.0 + 1e-4 and np.mean(diff > 1e-4) < 2e-3
        else:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # The default read is the one of cfg.read_phases.
    np.testing.assert_array_equal(make_read(cfg)(_key(0), x, w1, var2[:, :1], adc), got_one)
    with pytest.raises(ValueError, match="kind"):
        make_read(cfg, "two_phase")


def _uniform_rows():
    """Driven rows of the uniform reference tests: all of core 0, the first half of core 1."""
    return np.arange(_RR)[None, :] < np.array([[_RR], [_RR // 2]])


@pytest.mark.parametrize("adc_on", [True, False])
def test_uniform_reference_matches_numpy_without_noise(adc_on):
    from pcmjax.chip.read import uniform_reference

    # The compensation's reference read (one amplitude on the driven rows, as a masked row
    # sum) against the float64 conversion of that input, as the generic reference read does it.
    cfg = pj.ChipConfig(n_cores=_RC, rows=_RR, cols=_RK, read_noise=False).set("adc.noise_std", 0.0)
    cfg = cfg.set("adc.enabled", adc_on)
    _, w2, var2, adc = _read_inputs(adc_on)
    rows, amp = _uniform_rows(), 0.05
    _, _, _, want = _np_reads(np.where(rows, amp, 0.0)[:, None, :], w2, adc, cfg)
    got = np.asarray(uniform_reference(_key(0), cfg, amp, rows, w2, var2, adc), np.float64)
    assert got.shape == (_RC, _RK)
    if adc_on:  # integer counts; float32 sums may round the other way at a half count
        assert np.abs(got - want[:, 0]).max() <= 2.0 + 1e-4 and np.mean(np.abs(got - want[:, 0]) > 1e-4) < 0.1
    else:
        np.testing.assert_allclose(got, want[:, 0], rtol=1e-4, atol=1e-3)


def test_uniform_reference_noise_variance_closed_form():
    from pcmjax.chip.read import uniform_reference

    # Per-read and ADC noise of the two conversions (one per polarity):
    # Σ_p σ_ADC² + a² (1+δ)² q² Σ_{driven i} σ_ipk², over 300 keys × 32 columns (σ_ADC = 30
    # counts: both terms of the same size, ~1700 counts²).
    cfg = pj.ChipConfig(n_cores=_RC, rows=_RR, cols=_RK).set("adc.enabled", False).set("adc.noise_std", 30.0)
    quiet = cfg.replace(read_noise=False).set("adc.noise_std", 0.0)
    _, w2, var2, adc = _read_inputs(False)
    rows, amp = _uniform_rows(), 0.8
    keys = jax.random.split(_key(5), 300)
    noisy = jax.vmap(lambda k: uniform_reference(k, cfg, amp, rows, w2, var2, adc))(keys)
    e = np.asarray(noisy, np.float64) - np.asarray(uniform_reference(keys[0], quiet, amp, rows, w2, var2, adc))
    lv = 2 ** (cfg.pwm.bits - 1) - 1
    q = round(amp * lv) / lv
    v = np.einsum("cr,cprk->ck", rows.astype(np.float64), np.asarray(var2, np.float64))
    pred = 2 * 30.0**2 + (_a(cfg) * np.asarray(adc["gain"], np.float64)) ** 2 * q**2 * v
    z2 = e**2 / pred
    n = z2.size
    assert abs(np.mean(e / np.sqrt(pred))) < Z / math.sqrt(n)
    assert abs(z2.mean() - 1.0) < Z * math.sqrt(2.0 / n)


@pytest.mark.parametrize("kind", ["one_phase", "four_phase", "reference"])
def test_make_read_noise_variance_closed_form(kind):
    from pcmjax.chip import make_read

    # No rounding or compression: the noise is additive, with the variance of PHYSICS.md §2.4
    # per conversion, σ_ADC² + a² (1+δ)² Σ_i q_i² σ_i², summed over the conversions of a read.
    cfg = pj.ChipConfig(n_cores=_RC, rows=_RR, cols=_RK).set("adc.enabled", False).set("adc.noise_std", 0.7)
    x, w2, var2, adc = _read_inputs(False)
    if kind == "reference":
        x = np.abs(x)
    w, var = (w2[:, :1] - w2[:, 1:], var2[:, :1] + var2[:, 1:]) if kind == "one_phase" else (w2, var2)
    quiet = cfg.replace(read_noise=False).set("adc.noise_std", 0.0)
    e = np.asarray(make_read(cfg, kind)(_key(3), x, w, var, adc), np.float64)
    e -= np.asarray(make_read(quiet, kind)(_key(3), x, w, var, adc), np.float64)
    lv = 2 ** (cfg.pwm.bits - 1) - 1
    q = np.round(np.clip(np.asarray(x, np.float64), -1, 1) * lv) / lv
    q = q * (1 + cfg.polarity_asymmetry * np.sign(q)) if kind == "one_phase" else q
    g2 = (_a(cfg) * np.asarray(adc["gain"], np.float64)[:, None, :]) ** 2
    var64 = np.asarray(var, np.float64)
    if kind == "one_phase":
        phases = [(q, var64[:, 0])]
    elif kind == "four_phase":
        phases = [(np.maximum(sp * q, 0), var64[:, j]) for sp in (1, -1) for j in (0, 1)]
    else:
        phases = [(q, var64[:, j]) for j in (0, 1)]
    pred = sum(0.7**2 + g2 * np.einsum("cbr,crk->cbk", qp**2, vp) for qp, vp in phases)
    z2 = e**2 / pred
    n = z2.size
    assert abs(np.mean(e / np.sqrt(pred))) < Z / math.sqrt(n)
    assert abs(z2.mean() - 1.0) < Z * math.sqrt(2.0 / n)
