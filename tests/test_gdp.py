"""Gradient-based programming: fixed points, an analytic pre-distortion, error reduction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcmjax as pj
from pcmjax.chip.gdp import GDPConfig, mvm_error, optimise_targets
from pcmjax.chip.mapping import weight_scale, weights_to_targets


def _targets(cfg, dev, w):
    return weights_to_targets(w, weight_scale(w, cfg), dev.g_max)


def _opt(cfg, dev, g, key=0):
    return jax.jit(lambda k, g: optimise_targets(k, g, dev, cfg, return_history=True))(jax.random.key(key), g)


def test_noise_free_chip_keeps_the_mapped_targets():
    cfg = pj.ChipConfig.ideal(n_cores=1, rows=8, cols=8).set("program.gdp", GDPConfig(steps=10))
    dev = pj.devices.HermesPCM(2)
    w = jax.random.uniform(jax.random.key(0), (1, 8, 8), minval=-1, maxval=1)
    g = _targets(cfg, dev, w)
    g_opt, losses = _opt(cfg, dev, g)
    # Zero error at the start; float32 round-off in the fused loss then gives Adam a tiny
    # gradient, so the targets wander by much less than a programming-noise sigma.
    assert float(losses[0]) < 1e-12 and float(jnp.max(losses)) < 1e-5
    np.testing.assert_allclose(g_opt, g, atol=1e-3 * float(dev.g_max))


def _mu_nu_hermes(g_r):
    """PHYSICS.md §2.1 mean drift exponent, typed in independently."""
    g_r = np.maximum(g_r, 1e-7)
    low = np.clip(-0.0387 * np.log(g_r) - 0.0182, 0.072, 0.13)
    high = -0.0436 * g_r**2 - 0.0126 * g_r + 0.0736
    return np.where(g_r < 0.0945, low, high)


def test_deterministic_drift_gives_the_analytic_predistortion():
    # Through program_chip. No programming noise, no ν spread, no 1/f noise, no
    # compensation: the best target u solves u · ((t + t0)/t0)^(−μ_ν(u)) = w* for every
    # device (solved here by bisection with the PHYSICS.md law).
    t, t0 = 3600.0, 300.0
    dev = pj.devices.HermesPCM(2, prog_scale=0.0, read_noise_scale=0.0,
                               sigma_nu=(0.0, 0.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0))
    cfg = pj.ChipConfig(n_cores=2, rows=8, cols=8, drift_compensation="none").only(
        "programming_noise", "drift", "drift_noise").set("program.method", "gdp").set(
        "program.gdp", GDPConfig(steps=400, learning_rate=0.005, samples=1, times_s=(t,)))
    k1, k2 = jax.random.split(jax.random.key(1))
    w = jax.random.uniform(k1, (2, 8, 8), minval=0.05, maxval=0.8) * jnp.where(
        jax.random.bernoulli(k2, 0.5, (2, 8, 8)), 1.0, -1.0)
    w = w.at[:, 0, 0].set(1.0)  # w_max = 1: the mapped targets are |w| · g_max
    st = pj.program_chip(jax.random.key(9), w, cfg, dev)
    u_opt = np.asarray(st.g_target / dev.g_max)
    w_star = np.abs(np.asarray(w))
    lo, hi = np.zeros_like(w_star), np.ones_like(w_star)
    for _ in range(60):
        mid = (lo + hi) / 2
        f = mid * ((t + t0) / t0) ** (-_mu_nu_hermes(mid))
        lo, hi = np.where(f < w_star, mid, lo), np.where(f < w_star, hi, mid)
    expected = (lo + hi) / 2
    side = np.where(np.asarray(w) > 0, 0, 1)[:, None]
    got = np.take_along_axis(u_opt, side, axis=1)[:, 0]
    other = np.take_along_axis(u_opt, 1 - side, axis=1)[:, 0]
    ok = expected < 0.99  # the largest weights would need a target above g_max
    np.testing.assert_allclose(got[ok], expected[ok], rtol=3e-3, atol=1e-4)
    np.testing.assert_array_equal(other, 0.0)  # the RESET side stays RESET
    assert np.all(got[~ok] == 1.0)
    # The chip then programs exactly these targets (no programming noise here).
    np.testing.assert_array_equal(st.g_prog, st.g_target)
    assert pj.ChipConfig.from_dict(cfg.to_dict()) == cfg


def test_gdp_lowers_the_expected_error_on_hermes_devices():
    dev = pj.devices.HermesPCM(2)
    cfg = pj.ChipConfig(n_cores=1, rows=32, cols=32).set(
        "program.gdp", GDPConfig(steps=150, samples=2, times_s=(86400.0,)))
    w = jax.random.normal(jax.random.key(3), (1, 32, 32))
    g = _targets(cfg, dev, w)
    g_opt, _ = _opt(cfg, dev, g)
    u0, u1 = g / dev.g_max, g_opt / dev.g_max
    w_star = u0[:, 0] - u0[:, 1]
    f = jax.jit(jax.vmap(lambda k, u: mvm_error(k, u, w_star, dev, cfg), in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(100), 128)  # the same noise for both: paired
    e0, e1 = np.asarray(f(keys, u0)), np.asarray(f(keys, u1))
    d = e0 - e1
    assert d.mean() > 4 * d.std(ddof=1) / np.sqrt(d.size)
    assert e1.mean() < 0.97 * e0.mean()


def test_verify_write_is_differentiable():
    dev = pj.devices.HermesPCM(2)
    cfg = pj.ChipConfig(n_cores=1, rows=4, cols=4).set("program.method", "gdp").set(
        "program.gdp", GDPConfig(write="verify", times_s=(1.0,)))
    u = jax.random.uniform(jax.random.key(5), (1, 2, 4, 4), minval=0.1, maxval=0.9)
    w_star = u[:, 0] - u[:, 1]
    loss, grad = jax.jit(jax.value_and_grad(lambda u: mvm_error(jax.random.key(6), u, w_star, dev, cfg)))(u)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).sum()) > 0


@pytest.mark.parametrize("kw", [dict(steps=-1), dict(samples=0), dict(learning_rate=0.0), dict(times_s=()),
                                dict(times_s=(-1.0,)), dict(write="magic"), dict(input_batch=1.5)])
def test_validation(kw):
    with pytest.raises(ValueError, match="program.gdp"):
        GDPConfig(**kw)


def test_config_wiring():
    with pytest.raises(ValueError, match="program.method"):
        pj.ProgramConfig(method="gpd")
    with pytest.raises(TypeError, match="GDPConfig"):
        pj.ProgramConfig(method="gdp", gdp=3)
    assert GDPConfig(times_s=[1, 2]).times_s == (1.0, 2.0)
