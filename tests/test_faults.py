"""Device faults: rates against binomial expectations, dead columns, sweeps, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcmjax as pj
from pcmjax.chip import apply_faults
from pcmjax.chip.faults import FaultConfig, faulty_conductances

C, R, K = 4, 32, 32
DEV = pj.devices.HermesPCM(num_devices=2)
G_MAX = float(DEV.g_max)


def _cfg(**faults):
    return pj.ChipConfig.ideal(n_cores=C, rows=R, cols=K).replace(faults=FaultConfig(**faults))


# One compilation for every direct call below (num_devices is static).
_faulty = jax.jit(faulty_conductances, static_argnums=(4,))


def _weights(value):
    return jnp.full((C, R, K), value, jnp.float32)


def test_default_off_and_hashable():
    cfg = pj.ChipConfig()
    assert not cfg.faults.enabled and hash(cfg) == hash(pj.ChipConfig(faults=FaultConfig()))
    assert FaultConfig(0.0, 0.0, 0.0) == cfg.faults


def test_stuck_set_binomial():
    # Zero conductances: a polarity conducts n_set · g_max / 2.
    p = 0.1
    g0 = jnp.zeros((16, 2, 64, 64))
    g, _ = _faulty(jax.random.key(1), g0, g0, G_MAX, 2, 0.0, p, 0.0, 0.0)
    n_set = np.asarray(g) / (G_MAX / 2)
    np.testing.assert_allclose(n_set, np.round(n_set), atol=1e-5)
    n = n_set.size
    for k, prob in ((0, (1 - p) ** 2), (1, 2 * p * (1 - p)), (2, p**2)):
        frac = np.mean(np.round(n_set) == k)
        assert abs(frac - prob) < 5 * np.sqrt(prob * (1 - prob) / n)


def test_stuck_reset_mean():
    # Full-scale positive targets: E[g / g_max] = 1 − p_reset on the positive side.
    p = 0.25
    g1 = jnp.stack([jnp.full((16, 64, 64), G_MAX), jnp.zeros((16, 64, 64))], axis=1)
    g, _ = _faulty(jax.random.key(2), g1, g1 * 0, G_MAX, 2, 0.0, 0.0, p, 0.0)
    g, g_neg = np.asarray(g[:, 0]) / G_MAX, np.asarray(g[:, 1])
    assert set(np.round(np.unique(g), 5)) <= {0.0, 0.5, 1.0}
    se = np.sqrt(p * (1 - p) / 2 / g.size)
    assert abs(g.mean() - (1 - p)) < 5 * se
    np.testing.assert_array_equal(g_neg, 0.0)


def test_dead_columns_read_zero():
    p = 0.2
    key = jax.random.key(3)
    w = jax.random.uniform(key, (C, R, K), minval=0.1, maxval=1.0)
    st = pj.program_chip(key, w, _cfg(dead_columns=p), DEV)
    dead = np.all(np.asarray(st.g_prog) == 0, axis=(1, 2))  # [C, K]
    assert abs(dead.mean() - p) < 5 * np.sqrt(p * (1 - p) / dead.size)
    x = jax.random.uniform(jax.random.key(4), (C, 8, R), minval=0.0, maxval=1.0)
    y = np.asarray(pj.mvm(key, st, x))
    ref = np.einsum("cbr,crk->cbk", np.asarray(x), np.asarray(w))
    np.testing.assert_array_equal(y[np.broadcast_to(dead[:, None, :], y.shape)], 0.0)
    alive = np.broadcast_to(~dead[:, None, :], y.shape)
    np.testing.assert_allclose(y[alive], ref[alive], rtol=1e-4, atol=1e-4)


def test_stuck_set_drift_exponent_single_device():
    dev = pj.devices.HermesPCM(num_devices=1)
    key = jax.random.key(5)
    g = jnp.full((2, 2, 4, 4), 1.0)
    nu = jnp.full_like(g, 0.1)
    g_f, nu_f = jax.jit(faulty_conductances, static_argnums=(4,))(key, g, nu, dev.g_max, 1, 0.02, 1.0, 0.0, 0.0)
    np.testing.assert_allclose(g_f, float(dev.g_max))
    np.testing.assert_allclose(nu_f, 0.02)
    # Half healthy (2 devices, one stuck SET): weighted mean of ν by conductance.
    g_f, nu_f = _faulty(key, jnp.full((1, 2, 64, 64), 4.0), jnp.full((1, 2, 64, 64), 0.1),
                        20.0, 2, 0.0, 0.5, 0.0, 0.0)
    one = np.isclose(np.asarray(g_f), 2.0 + 10.0)
    assert one.any()
    np.testing.assert_allclose(np.asarray(nu_f)[one], (2.0 * 0.1) / 12.0, rtol=1e-5)


def test_gradient_through_healthy_devices():
    key = jax.random.key(6)
    g = jnp.full((2, 2, 8, 8), 5.0)

    def f(g):
        return jnp.sum(faulty_conductances(key, g, jnp.zeros_like(g), 20.0, 2, 0.0, 0.2, 0.3, 0.1)[0])

    grad = np.asarray(jax.jit(jax.grad(f))(g))
    assert set(np.round(np.unique(grad), 6)) <= {0.0, 0.5, 1.0}
    assert (grad == 0).any() and (grad == 1).any()


def test_apply_faults_vmap_over_rates():
    key = jax.random.key(7)
    st = pj.program_chip(key, jax.random.uniform(key, (C, R, K), minval=0.1), _cfg(dead_columns=0.2), DEV)
    rates = jnp.array([0.0, 0.05, 0.2])
    out = jax.vmap(lambda r: apply_faults(jax.random.key(8), st, FaultConfig(stuck_reset=r)))(rates)
    assert out.g_prog.shape == (3, *st.g_prog.shape)
    np.testing.assert_array_equal(out.g_prog[0], st.g_prog)  # zero rate: conductances unchanged
    zeros = [float(jnp.mean((out.g_prog[i] == 0) & (st.g_prog > 0))) for i in range(3)]
    assert zeros[0] == 0 and 0 < zeros[1] < zeros[2]
    # The prepared weights follow the new conductances.
    np.testing.assert_allclose(out.w[2, :, 0], (out.g_prog[2, :, 0] - out.g_prog[2, :, 1]) / G_MAX, atol=1e-6)


@pytest.mark.parametrize("kw,err", [
    (dict(stuck_set=-0.1), ValueError), (dict(dead_columns=1.5), ValueError),
    (dict(stuck_set=0.6, stuck_reset=0.6), ValueError), (dict(stuck_set="a"), TypeError),
    (dict(stuck_reset=True), TypeError),
])
def test_validation(kw, err):
    with pytest.raises(err, match="faults"):
        FaultConfig(**kw)


def test_chip_config_type_check():
    with pytest.raises(TypeError, match="faults must be a FaultConfig"):
        pj.ChipConfig(faults={"stuck_set": 0.1})
    with pytest.raises(TypeError, match="FaultConfig"):
        apply_faults(jax.random.key(0), pj.program_chip(jax.random.key(0), _weights(0.1), _cfg(dead_columns=0.2), DEV),
                     {"stuck_set": 0.1})
