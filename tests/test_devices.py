"""Statistical tests of the PCM device models against PHYSICS.md §2.

The expectations are computed here, in float64 NumPy/SciPy, from the formulas and figures
written in PHYSICS.md (the package's own law functions are not used for them). Sample
statistics are compared with a tolerance of ``Z`` standard errors, the standard errors
coming from the sample itself (mean, variance) or from the closed form (median).
All random keys are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import stats

from pcmjax.devices import HermesPCM, PCMLike, StateIndependent, load, save
from pcmjax.devices._base import standard_normal

Z = 5.0  # tolerance in standard errors
N = 200_000  # samples per condition
F32_REL = 2e-5  # allowance for float32 evaluation of the laws (far below the SE)


# ---------------------------------------------------------------------------------------
# Independent float64 references, transcribed from PHYSICS.md §2.
# ---------------------------------------------------------------------------------------


def _g_r(g, g_max):
    return np.maximum(np.abs(np.asarray(g, np.float64)) / g_max, 1e-7)


def _poly(coeffs, x):
    return sum(c * x**i for i, c in enumerate(coeffs))


@dataclasses.dataclass
class Ref:
    """σ_prog, (μ_ν, σ_ν) and Q_s of one family, as functions of conductance in µS."""

    g_max: float
    t0: float
    t_read: float
    prog_sigma: callable
    nu_moments: callable
    q_s: callable


def hermes_ref(n: int) -> Ref:
    # §2.1 table and laws.
    g_max = {1: 10.35, 2: 20.7}[n]
    t0 = {1: 200.0, 2: 300.0}[n]
    c = {1: (0.15781817, 2.32443916, -2.16310839, 0.68841818),
         2: (0.16603222, 4.71806468, -8.48101252, 4.68961419)}[n]

    def prog_sigma(g_t):
        return _poly(c, np.asarray(g_t, np.float64) / g_max)

    def nu_moments(g_t):
        g = _g_r(g_t, g_max)
        mu = np.where(g < 0.0945, np.clip(-0.0387 * np.log(g) - 0.0182, 0.072, 0.13),
                      -0.0436 * g**2 - 0.0126 * g + 0.0736)
        if n == 1:
            sig = np.where(g < 0.3039, np.clip(-0.0120 * np.log(g) - 0.0023, 0.0124, 0.04),
                           -0.0165 * g**2 + 0.0116 * g + 0.0104)
        else:
            sig = np.where(g < 0.3055, np.clip(-0.0117 * np.log(g) - 0.0057, 0.0091, 0.04),
                           -0.0118 * g**2 + 0.0093 * g + 0.0073)
        return mu, sig

    def q_s(g_p):
        g = _g_r(g_p, g_max)
        if n == 1:
            return np.where(g < 0.1591, np.clip(-0.0078 * np.log(g) + 0.0038, 0.0179, 0.04),
                            0.0664 * g**3 - 0.1352 * g**2 + 0.0768 * g + 0.0088)
        return np.where(g < 0.16, np.clip(-0.0117 * np.log(g) - 0.0069, 0.015, 0.04),
                        0.0069 * g**3 - 0.0280 * g**2 + 0.0211 * g + 0.0123)

    return Ref(g_max, t0, 512e-9, prog_sigma, nu_moments, q_s)


def pcm_like_ref() -> Ref:
    # §2.2.
    g_max = 25.0

    def prog_sigma(g_t):
        return _poly((0.26348, 1.9650, -1.1731), np.asarray(g_t, np.float64) / g_max)

    def nu_moments(g_t):
        g = _g_r(g_t, g_max)
        return (np.clip(-0.0155 * np.log(g) + 0.0244, 0.049, 0.1),
                np.clip(-0.0125 * np.log(g) - 0.0059, 0.008, 0.045))

    def q_s(g_p):
        g = _g_r(g_p, g_max)
        return np.minimum(0.0088 / np.maximum(g**0.65, 1e-3), 0.2)

    return Ref(g_max, 20.0, 250e-9, prog_sigma, nu_moments, q_s)


SI_PARAMS = dict(sigma_prog=0.8, mu_nu=0.03, sigma_nu=0.025, q_s=0.06)


def state_independent_ref() -> Ref:
    # §2.3 with the constants passed to the constructor; g_max/t0/t_read default to §2.2.
    p = SI_PARAMS
    const = lambda v: (lambda g: np.full(np.shape(g), v, np.float64))  # noqa: E731
    return Ref(25.0, 20.0, 250e-9, const(p["sigma_prog"]),
               lambda g: (const(p["mu_nu"])(g), const(p["sigma_nu"])(g)), const(p["q_s"]))


FAMILIES = {
    "hermes1": (lambda **kw: HermesPCM(num_devices=1, **kw), hermes_ref(1)),
    "hermes2": (lambda **kw: HermesPCM(num_devices=2, **kw), hermes_ref(2)),
    "pcm_like": (lambda **kw: PCMLike(**kw), pcm_like_ref()),
    "state_indep": (lambda **kw: StateIndependent(**SI_PARAMS, **kw), state_independent_ref()),
}
FAMILY_IDS = list(FAMILIES)


# ---------------------------------------------------------------------------------------
# Closed forms and sample statistics.
# ---------------------------------------------------------------------------------------


def rectified_normal_moments(mu, sigma):
    """Mean and variance of max(Y, 0), Y ~ N(mu, sigma²)."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    a = mu / sigma
    cdf, pdf = stats.norm.cdf(a), stats.norm.pdf(a)
    m1 = mu * cdf + sigma * pdf
    m2 = (mu**2 + sigma**2) * cdf + mu * sigma * pdf
    return m1, m2 - m1**2


def folded_normal_moments(mu, sigma):
    """Mean and variance of |Y|, Y ~ N(mu, sigma²)."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    m1 = sigma * np.sqrt(2 / np.pi) * np.exp(-(mu**2) / (2 * sigma**2)) + mu * (1 - 2 * stats.norm.cdf(-mu / sigma))
    return m1, mu**2 + sigma**2 - m1**2


def assert_moments(samples, exp_mean, exp_var, label=""):
    """Row-wise sample mean / variance within Z standard errors of the expectation.

    ``samples`` has shape (K, n); ``exp_mean``/``exp_var`` shape (K,).
    """
    x = np.asarray(samples, np.float64)
    n = x.shape[-1]
    mean = x.mean(-1)
    c = x - mean[..., None]
    var = (c**2).mean(-1) * n / (n - 1)
    m4 = (c**4).mean(-1)
    se_mean = np.sqrt(var / n)
    se_var = np.sqrt(np.maximum(m4 - var**2, 0.0) / n)
    exp_mean, exp_var = np.broadcast_to(exp_mean, mean.shape), np.broadcast_to(exp_var, var.shape)
    tol_mean = Z * se_mean + F32_REL * np.abs(exp_mean)
    tol_var = Z * se_var + 2 * F32_REL * np.abs(exp_var)
    bad_m = np.abs(mean - exp_mean) > tol_mean
    bad_v = np.abs(var - exp_var) > tol_var
    assert not bad_m.any(), (
        f"{label} mean: got {mean[bad_m]}, expected {exp_mean[bad_m]} ± {tol_mean[bad_m]} (rows {np.where(bad_m)[0]})")
    assert not bad_v.any(), (
        f"{label} var: got {var[bad_v]}, expected {exp_var[bad_v]} ± {tol_var[bad_v]} (rows {np.where(bad_v)[0]})")


def f32(values):
    """Values as the float32 the model sees, returned in float64 for the reference."""
    return np.asarray(values, np.float32).astype(np.float64)


def rows(values, n=N):
    """A (K, n) float32 array whose row k is filled with values[k]."""
    return jnp.broadcast_to(jnp.asarray(values, jnp.float32)[:, None], (len(values), n))


# ---------------------------------------------------------------------------------------
# 0. The laws themselves (deterministic): σ_prog, (μ_ν, σ_ν) and Q_s on a dense grid.
# ---------------------------------------------------------------------------------------

THRESHOLDS = [0.0945, 0.3039, 0.3055, 0.1591, 0.16]


def _law_grid(g_max):
    g_r = np.concatenate([[0.0, 1e-9], np.logspace(-8, 0, 300), np.linspace(0.01, 1.2, 300)])
    g = f32(g_r * g_max)
    # Drop points whose branch could differ between float32 and float64.
    near = np.min([np.abs(g / g_max / thr - 1) for thr in THRESHOLDS], axis=0) < 1e-5
    return g[~near]


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_laws_match_physics(family):
    make, ref = FAMILIES[family]
    model = make()
    g = _law_grid(ref.g_max)
    x = jnp.asarray(g, jnp.float32)
    tol = dict(rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(model.prog_sigma(x), np.float64), ref.prog_sigma(g), **tol)
    mu, sig = model.nu_moments(x)
    mu_ref, sig_ref = ref.nu_moments(g)
    np.testing.assert_allclose(np.asarray(mu, np.float64), mu_ref, **tol)
    np.testing.assert_allclose(np.asarray(sig, np.float64), sig_ref, **tol)
    np.testing.assert_allclose(np.asarray(model.q_s(x), np.float64), ref.q_s(g), **tol)


# ---------------------------------------------------------------------------------------
# 1. Programming.
# ---------------------------------------------------------------------------------------

# g_T / g_max: 0, small, mid, g_max and a little above g_max (where the fits stay positive).
PROG_FRACTIONS = [0.0, 0.02, 0.1, 0.5, 1.0, 1.2]


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_program_rectified_normal(family):
    make, ref = FAMILIES[family]
    model = make()
    g_t = f32(np.asarray(PROG_FRACTIONS) * ref.g_max)
    g = np.asarray(model.program(jax.random.PRNGKey(1), rows(g_t)))
    assert g.dtype == np.float32 and (g >= 0).all()
    sigma = ref.prog_sigma(g_t)
    assert (sigma > 0).all()
    assert_moments(g, *rectified_normal_moments(g_t, sigma), label=f"{family} program")
    # g_T = 0: exactly half the devices are clipped to 0 (binomial, 5 SE).
    frac0 = (g[0] == 0).mean()
    assert abs(frac0 - 0.5) < Z * math.sqrt(0.25 / N)


def test_program_scales_below_characterised_g_max():
    """§2.1: with g_max below the characterised value σ_prog scales by g_max / g_max_char."""
    ref = hermes_ref(1)
    g_max = 5.0
    model = HermesPCM(num_devices=1, g_max=g_max, prog_scale=0.7)
    g_t = f32([0.0, 0.3 * g_max, 0.9 * g_max])
    sigma = 0.7 * _poly((0.15781817, 2.32443916, -2.16310839, 0.68841818), g_t / g_max) * g_max / ref.g_max
    g = model.program(jax.random.PRNGKey(2), rows(g_t))
    assert_moments(g, *rectified_normal_moments(g_t, sigma), label="hermes1 g_max=5 program")


# ---------------------------------------------------------------------------------------
# 2. Drift exponent.
# ---------------------------------------------------------------------------------------

# g_T / g_max on both sides of every threshold / clip corner of each family's laws.
NU_FRACTIONS = {
    # μ_ν: clip corner at 0.0217, threshold 0.0945; σ_ν: threshold 0.3039 / 0.3055 and
    # clip corners at ~0.06 / ~0.02; g_T = 0 floors g_r at 1e-7.
    "hermes1": [0.0, 0.005, 0.03, 0.09, 0.1, 0.29, 0.32, 0.6, 1.0, 1.1],
    "hermes2": [0.0, 0.005, 0.03, 0.09, 0.1, 0.29, 0.32, 0.6, 1.0, 1.1],
    # μ_ν clip corners at g_r = 0.0076 and 0.2045; σ_ν at 0.0171 and 0.329.
    "pcm_like": [0.0, 0.005, 0.01, 0.015, 0.02, 0.19, 0.22, 0.31, 0.35, 1.0, 1.2],
    "state_indep": [0.0, 0.3, 1.0],
}


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_drift_exponent_folded_normal(family):
    make, ref = FAMILIES[family]
    model = make()
    g_t = f32(np.asarray(NU_FRACTIONS[family]) * ref.g_max)
    nu = np.asarray(model.drift_exponent(jax.random.PRNGKey(3), rows(g_t)))
    assert (nu >= 0).all()
    mu, sigma = ref.nu_moments(g_t)
    assert (sigma > 0).all()
    assert_moments(nu, *folded_normal_moments(mu, sigma), label=f"{family} nu")


def test_drift_exponent_switches_law_at_the_hermes_threshold():
    """HERMES μ_ν is clip(−0.0387 ln g_r − 0.0182, 0.072, 0.13) below g_r = 0.0945 and a
    quadratic above: the model's mean ν (σ_ν ≪ μ_ν, so the fold is negligible) just below
    and just above the threshold are the two published values, 0.073138 and 0.072018
    (worked out by hand from PHYSICS.md §2.1), resolved by the sample."""
    model = HermesPCM(num_devices=1)
    g_r = np.asarray([0.0945 * (1 - 1e-3), 0.0945 * (1 + 1e-3)])
    expected_mu = np.asarray([0.073138, 0.072018])  # −0.0387 ln(0.0944055) − 0.0182; 0.0736 − 0.0126 g − 0.0436 g²
    nu = np.asarray(model.drift_exponent(jax.random.PRNGKey(13), rows(f32(g_r * 10.35))), np.float64)
    sigma = np.clip(-0.0120 * np.log(g_r) - 0.0023, 0.0124, 0.04)  # below 0.3039: the log branch
    m, v = folded_normal_moments(expected_mu, sigma)
    assert_moments(nu, m, v, label="hermes1 nu at the threshold")
    assert nu[0].mean() - nu[1].mean() > Z * np.sqrt((v[0] + v[1]) / N)  # the step is resolved


def test_reparameterised_laws_equal_the_sampling_methods():
    """``*_from_normal`` with the standard normals a key draws gives what the keyed methods give."""
    model = HermesPCM(num_devices=2)
    g_t = jnp.linspace(0.0, 1.1 * float(model.g_max), 64)
    k = jax.random.PRNGKey(14)
    xi = standard_normal(k, g_t.shape)
    np.testing.assert_array_equal(model.program(k, g_t), model.program_from_normal(g_t, xi))
    np.testing.assert_array_equal(model.drift_exponent(k, g_t), model.drift_exponent_from_normal(g_t, xi))
    nu = jnp.full(g_t.shape, 0.06)
    np.testing.assert_array_equal(model.at_time(k, g_t, nu, 3600.0), model.at_time_from_normal(g_t, nu, 3600.0, xi))


# ---------------------------------------------------------------------------------------
# 3. Conductance at time t.
# ---------------------------------------------------------------------------------------

TIMES = [0.0, 1.0, 3600.0, 86400.0, 3.15576e7, 1e9]
# g_prog / g_max: 0 (exactly 0 out), Q_s clipped at its cap, both sides of the Q_s threshold
# (0.1591 / 0.16) and of PCM-like's cap corner (0.0082), mid, g_max, above g_max.
AT_FRACTIONS = [0.0, 1e-4, 0.005, 0.012, 0.15, 0.17, 0.5, 1.0, 1.1]
AT_NU = [0.06, 0.0, 0.12, 0.05, 0.1, 0.03, 0.07, 0.09, 0.02]


def drift_factor_ref(nu, t, t0):
    return ((t + t0) / t0) ** (-np.asarray(nu, np.float64))


def noise_factor_ref(t, t0, t_read):
    return np.sqrt(np.log((t + t0 + t_read) / (2 * t_read)))


@pytest.mark.parametrize("t", TIMES)
@pytest.mark.parametrize("family", FAMILY_IDS)
def test_at_time_rectified_normal(family, t):
    make, ref = FAMILIES[family]
    model = make()
    g_p = f32(np.asarray(AT_FRACTIONS) * ref.g_max)
    nu = f32(AT_NU)
    key = jax.random.PRNGKey(int(4 + t) % 2**31)
    g = np.asarray(model.at_time(key, rows(g_p), rows(nu), t))
    assert g.shape == (len(g_p), N) and (g >= 0).all()
    assert (g[0] == 0).all(), "g_prog = 0 must stay exactly 0"
    g_d = g_p * drift_factor_ref(nu, t, ref.t0)
    sigma = np.abs(g_d) * ref.q_s(g_p) * noise_factor_ref(t, ref.t0, ref.t_read)
    m, v = rectified_normal_moments(g_d[1:], sigma[1:])
    assert_moments(g[1:], m, v, label=f"{family} at_time t={t}")


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_at_time_median_is_drift_factor(family):
    """With fixed ν the noise is symmetric before clipping, so median(g(t)/g_prog) is the
    drift factor ((t + t0)/t0)^-ν exactly; the same holds for g(t) / (g_prog · factor(ν))
    with ν sampled per device (median 1). Standard error of a median: 1 / (2 f(m) sqrt(n))."""
    make, ref = FAMILIES[family]
    model = make()
    t, nu_fixed = 3600.0, 0.07
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(5), 4)
    g_t = jnp.full((N,), 0.4 * ref.g_max, jnp.float32)
    g_prog = model.program(k1, g_t)
    gp = np.asarray(g_prog, np.float64)
    ok = gp > 0
    sig_n = ref.q_s(gp[ok]) * noise_factor_ref(t, ref.t0, ref.t_read)

    # Fixed ν.
    g = np.asarray(model.at_time(k2, g_prog, jnp.full((N,), nu_fixed, jnp.float32), t), np.float64)
    factor = float(drift_factor_ref(f32(nu_fixed), t, ref.t0))
    ratio = g[ok] / gp[ok]
    density = np.mean(stats.norm.pdf(0.0) / (factor * sig_n))  # mixture density at the median
    se = 1.0 / (2.0 * density * math.sqrt(ok.sum()))
    assert abs(np.median(ratio) - factor) < Z * se + F32_REL, (np.median(ratio), factor, se)

    # Full chain, ν from drift_exponent.
    nu = model.drift_exponent(k3, g_t)
    g = np.asarray(model.at_time(k4, g_prog, nu, t), np.float64)
    ratio = g[ok] / (gp[ok] * drift_factor_ref(np.asarray(nu, np.float64)[ok], t, ref.t0))
    se = 1.0 / (2.0 * np.mean(stats.norm.pdf(0.0) / sig_n) * math.sqrt(ok.sum()))
    assert abs(np.median(ratio) - 1.0) < Z * se + F32_REL, (np.median(ratio), se)


def test_at_time_q_s_from_target():
    """q_s_from='target' evaluates Q_s at g_target (not at g_prog)."""
    ref = hermes_ref(1)
    model = HermesPCM(num_devices=1, q_s_from="target")
    g_p = f32([0.5, 0.5]) * ref.g_max
    g_tgt = f32([0.01, 0.9]) * ref.g_max
    nu = f32([0.05, 0.05])
    t = 86400.0
    g = model.at_time(jax.random.PRNGKey(6), rows(g_p), rows(nu), t, g_target=rows(g_tgt))
    g_d = g_p * drift_factor_ref(nu, t, ref.t0)
    sigma = g_d * ref.q_s(g_tgt) * noise_factor_ref(t, ref.t0, ref.t_read)
    assert_moments(g, *rectified_normal_moments(g_d, sigma), label="hermes1 q_s_from=target")


def test_scale_parameters():
    """prog_scale, drift_scale and read_noise_scale multiply σ_prog, ν and Q_s."""
    ref = hermes_ref(2)
    model = HermesPCM(num_devices=2, prog_scale=0.5, drift_scale=1.5, read_noise_scale=3.0)
    g_t = f32([0.0, 0.3, 0.8]) * ref.g_max
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
    assert_moments(model.program(k1, rows(g_t)), *rectified_normal_moments(g_t, 0.5 * ref.prog_sigma(g_t)),
                   label="prog_scale")
    mu, sig = ref.nu_moments(g_t)
    m, v = folded_normal_moments(mu, sig)
    assert_moments(model.drift_exponent(k2, rows(g_t)), 1.5 * m, 1.5**2 * v, label="drift_scale")
    t, nu = 1e6, f32([0.05, 0.05, 0.05])
    g_d = g_t[1:] * drift_factor_ref(nu[1:], t, ref.t0)
    sigma = 3.0 * g_d * ref.q_s(g_t[1:]) * noise_factor_ref(t, ref.t0, ref.t_read)
    g = model.at_time(k3, rows(g_t[1:]), rows(nu[1:]), t)
    assert_moments(g, *rectified_normal_moments(g_d, sigma), label="read_noise_scale")


# ---------------------------------------------------------------------------------------
# 4. Gradients.
# ---------------------------------------------------------------------------------------


def _chain_loss(model, g_t, t, keys):
    g_prog = model.program(keys[0], g_t)
    nu = model.drift_exponent(keys[1], g_t)
    g = model.at_time(keys[2], g_prog, nu, t)
    return jnp.mean((g / model.g_max) ** 2)


@pytest.mark.parametrize("t", [0.0, 3600.0, 1e9])
@pytest.mark.parametrize("family", FAMILY_IDS)
def test_grad_finite_all_params(family, t):
    make, ref = FAMILIES[family]
    model = make()
    keys = jax.random.split(jax.random.PRNGKey(8), 3)
    # Includes g_T = 0 (the clip at 0 and the g_r floor) and g_T = g_max.
    g_t = jnp.asarray(np.linspace(0.0, 1.0, 257) * ref.g_max, jnp.float32)
    grads = jax.grad(_chain_loss)(model, g_t, t, keys)
    assert type(grads) is type(model)
    for name, value in grads.params().items():
        assert np.all(np.isfinite(np.asarray(value))), f"{family}: d loss / d {name} not finite"
    for name in ("prog_scale", "drift_scale", "read_noise_scale"):
        if not (name == "drift_scale" and t == 0.0):  # no drift at t = 0
            assert float(getattr(grads, name)) != 0.0, f"{family}: d loss / d {name} is 0"


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_check_grads_scales(family):
    make, ref = FAMILIES[family]
    model = make()
    keys = jax.random.split(jax.random.PRNGKey(9), 3)
    # Mid-range targets: programmed values stay far from 0 and from the Q_s threshold, so
    # no kink lies within eps of the evaluation point (the |μ_ν + σ_ν ξ| kink does not move
    # with drift_scale, which multiplies outside the absolute value).
    g_t = jnp.asarray(np.linspace(0.45, 0.6, 64) * ref.g_max, jnp.float32)
    t = 86400.0

    def f(prog_scale, drift_scale, read_noise_scale):
        m = model.replace(prog_scale=prog_scale, drift_scale=drift_scale, read_noise_scale=read_noise_scale)
        return _chain_loss(m, g_t, t, keys)

    args = (jnp.float32(1.0), jnp.float32(1.0), jnp.float32(1.0))
    # The kinks really are far: check on the sampled values themselves.
    g_prog = np.asarray(model.program(keys[0], g_t))
    assert g_prog.min() > 0.2 * ref.g_max
    check_grads(f, args, order=1, modes=["rev"], eps=1e-3)


# ---------------------------------------------------------------------------------------
# 5. Bad input.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 3, 2.0, True])
def test_bad_num_devices(n):
    with pytest.raises(ValueError, match="num_devices"):
        HermesPCM(num_devices=n)


@pytest.mark.parametrize("make", [
    lambda: HermesPCM(num_devices=1, g_maxx=3.0),
    lambda: PCMLike(sigma_prog=1.0),
    lambda: StateIndependent(prog_coeffs=(1.0, 2.0)),
], ids=["hermes", "pcm_like", "state_indep"])
def test_unknown_parameter(make):
    with pytest.raises(TypeError):
        make()


def test_replace_unknown_field():
    with pytest.raises(TypeError):
        HermesPCM(num_devices=1).replace(not_a_field=1.0)


@pytest.mark.parametrize("make", [
    lambda: HermesPCM(num_devices=1, prog_coeffs=(0.1, 0.2, 0.3)),
    lambda: HermesPCM(num_devices=2, prog_coeffs=np.zeros((2, 4))),
    lambda: PCMLike(prog_coeffs=(0.1, 0.2, 0.3, 0.4)),
    lambda: HermesPCM(num_devices=1, mu_nu=(0.1, 0.2)),
])
def test_wrong_shape(make):
    with pytest.raises(ValueError, match="shape"):
        make()


@pytest.mark.parametrize("make", [
    lambda: HermesPCM(num_devices=1, t0=float("nan")),
    lambda: HermesPCM(num_devices=2, prog_coeffs=(0.1, np.inf, 0.0, 0.0)),
    lambda: PCMLike(g_max=float("inf")),
    lambda: StateIndependent(sigma_prog=float("nan")),
    lambda: StateIndependent(q_s=-float("inf")),
])
def test_non_finite_param(make):
    with pytest.raises(ValueError, match="finite"):
        make()


def test_q_s_from_target_requires_g_target():
    model = HermesPCM(num_devices=2, q_s_from="target")
    g = jnp.ones((4,), jnp.float32)
    with pytest.raises(ValueError, match="g_target"):
        model.at_time(jax.random.PRNGKey(0), g, jnp.full((4,), 0.05), 10.0)
    with pytest.raises(ValueError, match="g_target"):
        model.read_sigma(g, 1e-6)
    with pytest.raises(ValueError, match="q_s_from"):
        HermesPCM(num_devices=2, q_s_from="nope")


# ---------------------------------------------------------------------------------------
# 6. Extreme valid input, jit / vmap, save / load.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_extreme_valid_inputs_finite(family):
    make, ref = FAMILIES[family]
    model = make()
    g_t = jnp.asarray([0.0, 0.0, ref.g_max, ref.g_max], jnp.float32)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(10), 3)
    g_prog = model.program(k1, g_t)
    nu = model.drift_exponent(k2, g_t)
    for t in (0.0, 1e9):
        g = np.asarray(model.at_time(k3, g_prog, nu, t))
        assert np.isfinite(g).all() and (g >= 0).all()
    assert np.isfinite(np.asarray(g_prog)).all() and np.isfinite(np.asarray(nu)).all()
    assert np.isfinite(np.asarray(model.read_sigma(g_t, 1e9))).all()


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_jit_and_vmap(family):
    make, ref = FAMILIES[family]
    model = make()
    g_t = jnp.asarray(np.linspace(0, 1, 16) * ref.g_max, jnp.float32)

    def chain(m, key, t):
        k1, k2, k3 = jax.random.split(key, 3)
        return m.at_time(k3, m.program(k1, g_t), m.drift_exponent(k2, g_t), t)

    key = jax.random.PRNGKey(11)
    eager = chain(model, key, 3600.0)
    np.testing.assert_allclose(np.asarray(jax.jit(chain)(model, key, 3600.0)), np.asarray(eager),
                               rtol=1e-5, atol=1e-6)

    @jax.jit
    def batched(m, keys, times, scales):
        # vmap over keys and times, and over a model parameter (the model is a pytree).
        over_t = jax.vmap(chain, in_axes=(None, 0, 0))(m, keys, times)
        over_s = jax.vmap(lambda s: chain(m.replace(read_noise_scale=s), key, 3600.0))(scales)
        return over_t, over_s

    keys = jax.random.split(key, 5)
    times = jnp.asarray([0.0, 1.0, 3600.0, 86400.0, 1e9], jnp.float32)
    scales = jnp.asarray([0.5, 1.0, 2.0], jnp.float32)
    over_t, over_s = batched(model, keys, times, scales)
    assert over_t.shape == (5, 16) and over_s.shape == (3, 16)
    for i in range(5):
        np.testing.assert_allclose(np.asarray(over_t[i]), np.asarray(chain(model, keys[i], times[i])),
                                   rtol=1e-5, atol=1e-6)
    for i in range(3):
        expected = chain(model.replace(read_noise_scale=scales[i]), key, 3600.0)
        np.testing.assert_allclose(np.asarray(over_s[i]), np.asarray(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", [
    HermesPCM(num_devices=1),
    HermesPCM(num_devices=2, q_s_from="target", prog_scale=0.9, t0=123.456),
    PCMLike(),
    PCMLike(num_devices=2, drift_scale=1.1),
    StateIndependent(**SI_PARAMS, read_noise_scale=0.3),
], ids=["hermes1", "hermes2_target", "pcm_like", "pcm_like2", "state_indep"])
def test_save_load_round_trip(model, tmp_path):
    path = save(model, tmp_path / "model.json")
    back = load(path)
    assert type(back) is type(model)
    assert back.num_devices == model.num_devices and back.q_s_from == model.q_s_from
    p0, p1 = model.params(), back.params()
    assert p0.keys() == p1.keys()
    for name in p0:
        a, b = np.asarray(p0[name]), np.asarray(p1[name])
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    # Same parameters give the same samples.
    g_t = jnp.linspace(0.0, float(model.g_max), 8)
    key = jax.random.PRNGKey(12)
    np.testing.assert_array_equal(np.asarray(model.program(key, g_t)), np.asarray(back.program(key, g_t)))


def test_load_bad_family(tmp_path):
    path = tmp_path / "bad.json"
    d = json.loads(save(PCMLike(), tmp_path / "ok.json").read_text())
    d["family"] = "no_such_family"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="family"):
        load(path)


def test_load_missing_and_invalid_json(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError):
        load(bad)


# ---------------------------------------------------------------------------------------
# 7. Per-read noise.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_read_sigma(family):
    make, ref = FAMILIES[family]
    model = make()
    g = f32(np.asarray([0.0, 1e-4, 0.005, 0.012, 0.1, 0.15, 0.158, 0.1595, 0.1605, 0.165, 0.17, 0.5, 1.0, 1.1])
            * ref.g_max)
    intervals = f32([0.0, 1e-7, 1e-6, 1e-3, 1.0, 3600.0])
    got = np.asarray(model.read_sigma(g[:, None], intervals[None, :]), np.float64)
    expected = (ref.q_s(g)[:, None] * np.abs(g)[:, None]
                * np.sqrt(np.log((intervals[None, :] + 2 * ref.t_read) / (2 * ref.t_read))))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-12)
    assert (got[:, 0] == 0).all() and (got[0] == 0).all()


def test_read_sigma_q_s_from_target():
    ref = hermes_ref(2)
    model = HermesPCM(num_devices=2, q_s_from="target")
    g = f32([0.5, 0.5, 0.5]) * ref.g_max
    g_tgt = f32([0.0, 0.1, 0.9]) * ref.g_max
    got = np.asarray(model.read_sigma(g, 1e-3, g_target=g_tgt), np.float64)
    expected = ref.q_s(g_tgt) * g * np.sqrt(np.log((1e-3 + 2 * ref.t_read) / (2 * ref.t_read)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
