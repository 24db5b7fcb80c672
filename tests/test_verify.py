"""Tests of program-and-verify as HERMES does it (pcmjax.chip.verify, PHYSICS.md §3).

The calibration test compares the simulated programmed spread with the HERMES-fitted
programming-noise polynomial of PHYSICS.md §2.1, transcribed here (not the device model's
own ``prog_sigma``). Its tolerance is the calibration target of 10 %; the test also checks
that its own sampling error is far below that: the standard error of a standard deviation
estimated from ``N`` samples is ``σ sqrt((κ − 1) / (4N))`` with ``κ`` the sample kurtosis
(``σ / sqrt(2N)`` for a Gaussian), so with ``N = 16,000`` per level 5 standard errors are
about 3 % of σ, and a simulated σ within 10 % of the law is a property of the model, not a
lucky draw.
"""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcmjax.chip import program_chip
from pcmjax.chip.verify import program_verify
from pcmjax.config import ChipConfig, ProgramConfig
from pcmjax.devices import HermesPCM

Z = 5.0  # standard errors
LEVELS = np.round(np.linspace(0.1, 1.0, 10), 2)
N_LEVEL = 16_000
# PHYSICS.md §2.1: g_max (µS) and σ_prog = Σ c_i (g_T / g_max)^i (µS), per devices per sign.
HERMES = {
    1: (10.35, (0.15781817, 2.32443916, -2.16310839, 0.68841818)),
    2: (20.7, (0.16603222, 4.71806468, -8.48101252, 4.68961419)),
}
COUNTS_PER_DEVICE = 80.0  # HERMES: G_max = 80 counts per device of a sign
_verify = jax.jit(program_verify, static_argnames="cfg")  # one compile per configuration


def _cfg(**program):
    return ChipConfig(n_cores=1, rows=8, cols=8, program=ProgramConfig(method="verify", **program))


def _fitted_sigma(n, x):
    _, c = HERMES[n]
    return sum(ci * x**i for i, ci in enumerate(c))


@pytest.mark.parametrize("n", [1, 2])
def test_spread_reproduces_the_hermes_fitted_programming_noise(n):
    g_max, _ = HERMES[n]
    g_t = np.repeat(LEVELS[:, None] * g_max, N_LEVEL, axis=1).astype(np.float32)
    g = np.asarray(_verify(jax.random.key(20 + n), jnp.asarray(g_t), HermesPCM(num_devices=n), cfg=_cfg()),
                   np.float64)
    err = g - g_t
    sd = err.std(axis=1)
    centred = err - err.mean(axis=1, keepdims=True)
    kurt = np.mean(centred**4, axis=1) / sd**4
    se = sd * np.sqrt((kurt - 1.0) / (4.0 * N_LEVEL))
    assert np.all(Z * se / sd < 0.04), Z * se / sd  # the test resolves far better than 10 %
    ratio = sd / _fitted_sigma(n, LEVELS)
    assert np.all(np.abs(ratio - 1.0) < 0.10), dict(zip(LEVELS, np.round(ratio, 3)))
    # ... and nearly unbiased, as the fitted law (centred on G_T): the stop decisions leave a
    # systematic mean error of a fraction of a count, at most 0.3 % of g_max (0.1 σ at the
    # lowest level), plus 5 standard errors of the sample mean.
    assert np.all(np.abs(err.mean(axis=1)) < 0.003 * g_max + Z * sd / np.sqrt(N_LEVEL)), err.mean(axis=1)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("tolerance", [5.0, 1.0])
def test_without_noise_every_device_stops_inside_the_tolerance_band(n, tolerance):
    """No read, conversion or pulse noise: the loop stops at the first read whose integer
    count is less than ``tolerance`` from the target, so ``|G − G_T| < tolerance + ½`` counts
    (rounding), on the HERMES scale of 80 counts per device (0.129 µS per count either way).
    A gain of ½ approaches from the SET side in halving steps, so the stops spread over the
    band rather than landing on the target."""
    dev = HermesPCM(num_devices=n, read_noise_scale=0.0)
    g_max, _ = HERMES[n]
    per_us = COUNTS_PER_DEVICE * n / g_max
    cfg = _cfg(pulse_spread=0.0, verify_adc_noise=0.0, step=0.5, tolerance_counts=tolerance)
    g_t = jnp.asarray(np.random.default_rng(3).uniform(0.02, 1.0, 4000) * g_max, jnp.float32)
    g = _verify(jax.random.key(4), g_t, dev, cfg=cfg)
    err_counts = np.abs(np.asarray(g, np.float64) - np.asarray(g_t, np.float64)) * per_us
    assert np.max(err_counts) < tolerance + 0.5 + 1e-3
    assert np.max(err_counts) > 0.5 * tolerance  # the band is used, not an exact hit
    assert abs(per_us - 80.0 / 10.35) < 1e-9  # one count is the same conductance for n = 1, 2


@pytest.mark.parametrize("n", [1, 2])
def test_zero_targets_stay_reset(n):
    """A zero target is RESET, never iterated: the device model's RESET conductance
    ``max(σ_prog(0) ξ, 0)``, a half-normal with mean ``σ_prog(0) / sqrt(2π)`` (PHYSICS.md §2.1)."""
    g_max, coeffs = HERMES[n]
    size = 20_000
    g_t = np.zeros(size, np.float32)
    g_t[::2] = 0.5 * g_max  # half the polarities are programmed, half RESET
    g = np.asarray(_verify(jax.random.key(5), jnp.asarray(g_t), HermesPCM(num_devices=n), cfg=_cfg()), np.float64)
    reset = g[1::2]
    s0 = coeffs[0]
    assert np.all(reset >= 0.0) and np.max(reset) < Z * s0
    mean, sd = s0 / np.sqrt(2 * np.pi), s0 * np.sqrt(0.5 - 1 / (2 * np.pi))
    assert abs(reset.mean() - mean) < Z * sd / np.sqrt(reset.size)
    assert np.mean(np.abs(g[::2] - 0.5 * g_max)) < 0.1 * g_max  # the others were programmed


def test_gradient_passes_through_the_loop():
    """Rounding passes gradients straight through, so a programmed conductance follows its
    target: dG/dG_T is finite everywhere and 1 on average (0 for RESET targets)."""
    dev = HermesPCM(num_devices=2)
    g_t = jnp.asarray(np.random.default_rng(6).uniform(0.05, 1.0, 2000) * 20.7, jnp.float32).at[:10].set(0.0)
    grad = np.asarray(jax.jit(jax.grad(lambda t: jnp.sum(program_verify(jax.random.key(7), t, dev, _cfg()))))(g_t))
    assert np.all(np.isfinite(grad))
    assert np.all(grad[:10] == 0.0)
    assert abs(grad[10:].mean() - 1.0) < 0.1


def test_shape_dtype_and_noise_free_read_path():
    """Any target shape; also with the conversion noise off and no read noise (the floored
    variance keeps the gradient finite)."""
    dev = HermesPCM(num_devices=1, read_noise_scale=0.0)
    g_t = jnp.full((2, 2, 3, 5), 5.0, jnp.float32)
    cfg = _cfg(verify_adc_noise=0.0)

    @jax.jit
    def value_and_grad(t):
        g, vjp = jax.vjp(lambda u: program_verify(jax.random.key(8), u, dev, cfg), t)
        return g, vjp(jnp.ones_like(g))[0]

    g, grad = value_and_grad(g_t)
    assert g.shape == g_t.shape and g.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(grad))) and np.all(np.isfinite(np.asarray(g)))


def test_defaults_are_hermes_parameters():
    p = ProgramConfig()
    assert (p.iterations, p.counts_per_device, p.tolerance_counts, p.verify_read_s) == (30, 80.0, 5.0, 512e-9)


@pytest.mark.parametrize("field,bad", [
    ("iterations", 0), ("iterations", 2.5), ("counts_per_device", 0.0), ("counts_per_device", -80.0),
    ("tolerance_counts", 0.0), ("tolerance_counts", float("nan")), ("verify_read_s", 0.0),
    ("verify_read_s", 2.0), ("verify_adc_noise", -0.1), ("step", 0.0), ("step", 2.5),
    ("pulse_spread", -0.01), ("pulse_spread", 1.5), ("pulse_spread_scale", 0.0),
    ("relax_fraction", 1.2), ("relax_fraction", -0.1), ("set_relax_fraction", 1.01),
    ("set_level", 0.2), ("set_level", True), ("set_spread", 0.6), ("verify_adc_noise", "0.5"),
])
def test_config_validation_names_the_field(field, bad):
    with pytest.raises(ValueError, match=f"program.{field}") as info:
        ProgramConfig(**{field: bad})
    assert repr(bad) in str(info.value) or str(bad) in str(info.value)


def test_config_round_trips_through_a_dict():
    p = ProgramConfig(method="verify", tolerance_counts=3.0, pulse_spread=0.2)
    cfg = ChipConfig(program=p)
    assert ChipConfig.from_dict(cfg.to_dict()).program == p
    assert dataclasses.replace(p, relax_fraction=0.0).relax_fraction == 0.0


def test_calibrated_parameters_are_traceable():
    """The calibration script fits traced parameters: program_verify only does arithmetic
    with the pulse-response fields (a namespace stands in for ProgramConfig)."""
    base = dataclasses.asdict(ProgramConfig(method="verify"))
    dev = HermesPCM(num_devices=1)
    g_t = jnp.full((64,), 5.0, jnp.float32)

    def sd(spread):
        p = types.SimpleNamespace(**{**base, "pulse_spread": spread})
        return jnp.std(program_verify(jax.random.key(9), g_t, dev, types.SimpleNamespace(program=p)))

    assert float(jax.jit(sd)(0.3)) > float(jax.jit(sd)(0.0))


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2])
def test_program_chip_with_verify_has_the_fitted_spread(n):
    """Drop-in for the fitted one-shot model: a chip programmed with ``method="verify"`` has,
    over its mapped targets, the rms error of the HERMES-fitted law (within 10 %; 16,384
    programmed polarities, so 5 standard errors of an rms are about 3 %)."""
    g_max, _ = HERMES[n]
    w = np.random.default_rng(10).uniform(-1.0, 1.0, (1, 128, 128)).astype(np.float32)
    cfg = ChipConfig(n_cores=1, rows=128, cols=128).only("programming_noise").set("program.method", "verify")
    state = jax.jit(program_chip, static_argnames="cfg")(jax.random.key(11), jnp.asarray(w), cfg=cfg,
                                                         device=HermesPCM(num_devices=n))
    g_t, g_p = np.asarray(state.g_target, np.float64), np.asarray(state.g_prog, np.float64)
    act = g_t > 0
    assert act.sum() >= 16_000
    rms = np.sqrt(np.mean((g_p - g_t)[act] ** 2))
    rms_fit = np.sqrt(np.mean(_fitted_sigma(n, g_t[act] / g_max) ** 2))
    assert abs(rms / rms_fit - 1.0) < 0.10, rms / rms_fit
    assert np.all(g_p[~act] < Z * HERMES[n][1][0])  # the other polarity stays RESET
