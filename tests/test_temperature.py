"""Temperature: Arrhenius factors, drift exponent, read noise, compensation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcmjax as pj
from pcmjax.chip import temperature
from pcmjax.config import TemperatureConfig

KB = 1.380649e-23 / 1.602176634e-19  # eV/K from the SI definitions


def test_reference_is_off():
    assert not TemperatureConfig().enabled
    assert not TemperatureConfig(temperature_k=300.0).enabled
    assert TemperatureConfig(temperature_k=310.0).enabled
    assert TemperatureConfig(read_temperature_k=290.0).enabled
    assert not pj.ChipConfig().temperature.enabled


@pytest.mark.parametrize("T", [250.0, 330.0, 358.0])
@pytest.mark.parametrize("g_r", [0.0, 0.4, 1.0])
def test_arrhenius_factor_by_hand(T, g_r):
    tc = TemperatureConfig(temperature_k=T)
    ea = 0.3 + (0.03 - 0.3) * g_r
    expected = math.exp(-ea / KB * (1 / T - 1 / 300.0))
    assert float(temperature.conductance_factor(jnp.float32(g_r), tc)) == pytest.approx(expected, rel=1e-5)
    # Warmer conducts more, and the amorphous-like low states change most.
    if T > 300:
        assert expected > 1


def test_apply_drift_and_noise_factors():
    tc = TemperatureConfig(temperature_k=330.0, read_temperature_k=300.0)
    g = jnp.array([2.0, 8.0, 15.0])
    var = jnp.array([1e-4, 2e-4, 3e-4])
    nu = jnp.array([0.1, 0.06, 0.02])
    t, t0, g_max = 86400.0, 300.0, 20.0
    gT, varT = temperature.apply(g, var, g, nu, t, t0, g_max, tc)
    # Read at the reference temperature: no Arrhenius factor, ν_eff = ν · 330/300.
    d = ((t + t0) / t0) ** (-np.asarray(nu) * (330 / 300 - 1))
    np.testing.assert_allclose(gT, np.asarray(g) * d, rtol=1e-5)
    np.testing.assert_allclose(varT, np.asarray(var) * d**2, rtol=1e-5)
    # Isothermal at 330 K: the drift is untouched; the variance scales as a^(2 − 2β).
    tc = TemperatureConfig(temperature_k=330.0)
    a = np.exp(-(0.3 - 0.27 * np.asarray(g) / g_max) / KB * (1 / 330 - 1 / 300))
    gT, varT = temperature.apply(g, var, g, nu, t, t0, g_max, tc)
    np.testing.assert_allclose(gT, np.asarray(g) * a, rtol=1e-5)
    np.testing.assert_allclose(varT, np.asarray(var) * a, rtol=1e-5)


def _chip(w, drift_compensation):
    cfg = pj.ChipConfig.ideal(n_cores=1, rows=16, cols=16).replace(drift=True, drift_compensation=drift_compensation)
    return pj.program_chip(jax.random.key(0), w, cfg)


def test_isothermal_ratio_is_time_independent():
    w = jax.random.uniform(jax.random.key(1), (1, 16, 16), minval=-1, maxval=1)
    st = _chip(w, "global")
    hot = temperature.at_temperature(st, 340.0)
    key = jax.random.key(2)
    g_r = np.asarray(st.g_target / st.device.g_max)
    a = np.exp(-(0.3 - 0.27 * g_r) / KB * (1 / 340 - 1 / 300))
    for t in (1.0, 86400.0):
        ref = np.asarray(st.at_time(key, t).w[:, 0])
        got = np.asarray(hot.at_time(key, t).w[:, 0])
        t0 = float(st.device.t0)  # ((t + t0) / t0)^(−ν), PHYSICS.md §2.2
        g0 = np.asarray(st.g_prog, np.float64) * ((t + t0) / t0) ** -np.asarray(st.nu, np.float64) / float(
            st.device.g_max)
        np.testing.assert_allclose(got, g0[:, 0] * a[:, 0] - g0[:, 1] * a[:, 1], rtol=1e-4, atol=1e-6)
        assert not np.allclose(got, ref)


def _y(state, x, T):
    # The ideal periphery: the array's weights times the compensation factor.
    s = (state if T is None else temperature.at_temperature(state, T)).at_time(jax.random.key(5), 3600.0)
    return jnp.einsum("cbr,crk->cbk", x, s.w[:, 0] * s.comp[:, None, :])


def test_global_compensation_removes_a_uniform_shift():
    key = jax.random.key(3)
    x = jax.random.uniform(key, (1, 4, 16), minval=-1, maxval=1)
    st = _chip(jnp.full((1, 16, 16), 0.5), "global")
    np.testing.assert_allclose(_y(st, x, 350.0), _y(st, x, None), rtol=1e-4)
    # Mixed levels: the spread of activation energies leaves an error that grows with ΔT.
    st = _chip(jax.random.uniform(key, (1, 16, 16), minval=-1, maxval=1), "global")
    y_ref = _y(st, x, None)
    errs = [float(jnp.linalg.norm(_y(st, x, T) - y_ref)) for T in (320.0, 350.0)]
    want = [float(np.linalg.norm(_y_closed_form(st, x, T) - _y_closed_form(st, x, None))) for T in (320.0, 350.0)]
    np.testing.assert_allclose(errs, want, rtol=2e-3)
    assert want[0] < want[1]


def _y_closed_form(state, x, T, t=3600.0):
    """float64 outputs of the ideal chip at ``t`` read at ``T`` (None: 300 K), global compensation.

    Exact writes, no noise: the conductances are ``G_T · ((t+t0)/t0)^(−ν) · A(g_r)`` with the
    Arrhenius factor ``A``; the reference read (linear here) measures the total conductance of
    the core, at programming at 300 K and at ``t`` at ``T``.
    """
    g_max, t0 = float(state.device.g_max), float(state.device.t0)
    g_t = np.asarray(state.g_target, np.float64)
    g_r = g_t / g_max
    a = 1.0 if T is None else np.exp(-(0.3 - 0.27 * g_r) / KB * (1 / T - 1 / 300.0))
    g = g_t * ((t + t0) / t0) ** -np.asarray(state.nu, np.float64) * a
    comp = g_t.sum(axis=(1, 2, 3)) / g.sum(axis=(1, 2, 3))  # [C]
    w = (g[:, 0] - g[:, 1]) / g_max * comp[:, None, None]
    return np.einsum("cbr,crk->cbk", np.asarray(x, np.float64), w)


def test_gradients():
    # d(g_T)/dg is the Arrhenius factor (the state dependence enters through g_target).
    tc = TemperatureConfig(temperature_k=330.0)
    g, nu = jnp.array([1.0, 10.0]), jnp.array([0.05, 0.02])
    grad = jax.grad(lambda g: jnp.sum(temperature.apply(g, g * 0, jnp.array([1.0, 10.0]), nu, 60.0, 300.0, 20.0,
                                                        tc)[0]))(g)
    g_r = np.array([1.0, 10.0]) / 20.0
    arrhenius = np.exp(-(0.3 - 0.27 * g_r) / KB * (1 / 330 - 1 / 300))  # E_a(g) = E_RESET + (E_SET − E_RESET) g_r
    np.testing.assert_allclose(grad, arrhenius, rtol=1e-5)
    tc = TemperatureConfig(temperature_k=330.0, read_temperature_k=310.0)
    dnu = jax.grad(lambda nu: jnp.sum(temperature.apply(g, g * 0, g, nu, 60.0, 300.0, 20.0, tc)[0]))(nu)
    assert np.all(np.asarray(dnu) < 0)  # stronger effective drift lowers the conductance


@pytest.mark.parametrize("kw", [dict(temperature_k=-1.0), dict(temperature_k=0.0), dict(reference_k=None),
                                dict(ea_reset_ev=-0.1), dict(noise_exponent="x"), dict(read_temperature_k=True)])
def test_validation(kw):
    with pytest.raises(ValueError, match="temperature"):
        TemperatureConfig(**kw)


def test_config_round_trip():
    cfg = pj.ChipConfig(temperature=TemperatureConfig(temperature_k=320.0))
    assert pj.ChipConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TypeError, match="TemperatureConfig"):
        pj.ChipConfig(temperature=320.0)
