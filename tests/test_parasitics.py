"""IR drop: kernels, first-order model against an independent float64 nodal solve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import pcmjax as pj
from pcmjax.chip.parasitics import (
    ParasiticsConfig,
    effective_conductances,
    effective_pair,
    kb,
    kw,
    nodal_solve,
    through_wires,
)

R = K = 16


def _ref_nodal(gp, gn, v, rw, rb):
    """Modified nodal analysis with explicit driver and ground nodes (NumPy, float64).

    Nodes: every cell's two input-line nodes and its bit-line node; the drivers (±V_i)
    and the ADC virtual ground are fixed-voltage nodes eliminated from the system.
    """
    gp, gn = gp * 1e-6, gn * 1e-6  # S
    n_r, n_k = gp.shape
    node = {}
    for kind in ("p", "n", "b"):
        for i in range(n_r):
            for k in range(n_k):
                node[(kind, i, k)] = len(node)
    edges = []  # (a, b, conductance); b may be ("fixed", voltage)
    for i in range(n_r):
        for k in range(n_k):
            edges.append((node[("p", i, k)], node[("b", i, k)], gp[i, k]))
            edges.append((node[("n", i, k)], node[("b", i, k)], gn[i, k]))
            if k + 1 < n_k:
                edges.append((node[("p", i, k)], node[("p", i, k + 1)], 1 / rw))
                edges.append((node[("n", i, k)], node[("n", i, k + 1)], 1 / rw))
            if i + 1 < n_r:
                edges.append((node[("b", i, k)], node[("b", i + 1, k)], 1 / rb))
        edges.append((node[("p", i, 0)], ("fixed", v[i]), 1 / rw))
        edges.append((node[("n", i, 0)], ("fixed", -v[i]), 1 / rw))
    for k in range(n_k):
        edges.append((node[("b", n_r - 1, k)], ("fixed", 0.0), 1 / rb))
    n = len(node)
    Y, rhs = np.zeros((n, n)), np.zeros(n)
    for a, b, g in edges:
        Y[a, a] += g
        if isinstance(b, tuple):
            rhs[a] += g * b[1]
        else:
            Y[b, b] += g
            Y[a, b] -= g
            Y[b, a] -= g
    u = np.linalg.solve(Y, rhs)
    return np.array([u[node[("b", n_r - 1, k)]] / rb for k in range(n_k)]) * 1e6  # back to V·µS


def _array(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1, 1, (R, K))
    return np.maximum(w, 0) * 20.7, np.maximum(-w, 0) * 20.7, rng.uniform(-1, 1, R)


def test_kernels_match_explicit_matrices():
    v = np.random.default_rng(1).normal(size=(3, 5, 7))
    i = np.arange(5)
    kb_mat = 5 - np.maximum(i[:, None], i[None, :])
    k = np.arange(7)
    kw_mat = np.minimum(k[:, None], k[None, :]) + 1
    np.testing.assert_allclose(kb(jnp.asarray(v)), np.einsum("ij,cjk->cik", kb_mat, v), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kw(jnp.asarray(v)), np.einsum("crj,jk->crk", v, kw_mat), rtol=1e-5, atol=1e-5)


def test_module_nodal_solve_matches_reference():
    gp, gn, v = _array()
    with jax.enable_x64(True):
        ours = np.asarray(nodal_solve(gp, gn, v, 20.0, 30.0))
    np.testing.assert_allclose(ours, _ref_nodal(gp, gn, v, 20.0, 30.0), rtol=1e-9, atol=1e-9)


# (r_word, r_bit, iterations, bound on max error / max |ideal output|). λ = λ_w + λ_b is
# about 0.036, 0.18 and 0.35 for 10, 50, 100 Ω on this array; first order errs by ~λ²/5.
@pytest.mark.parametrize("rw,rb,it,tol", [
    (10.0, 10.0, 1, 1e-3), (50.0, 50.0, 1, 1e-2), (100.0, 100.0, 1, 3.5e-2), (100.0, 100.0, 2, 3e-3),
    (100.0, 1e-3, 20, 1e-5), (1e-3, 100.0, 20, 1e-5),
])
def test_first_order_against_nodal_solve(rw, rb, it, tol):
    gp, gn, v = _array()
    exact = _ref_nodal(gp, gn, v, rw, rb)
    ideal = v @ (gp - gn)
    with jax.enable_x64(True):
        ep, en = effective_pair(jnp.asarray(gp), jnp.asarray(gn), rw, rb, it)
        model = v @ np.asarray(ep - en)
    err = np.max(np.abs(model - exact)) / np.max(np.abs(ideal))
    drop = np.max(np.abs(exact - ideal)) / np.max(np.abs(ideal))
    assert err < tol
    assert err < 0.5 * drop  # the model explains most of the IR drop


def test_error_grows_with_current_and_distance():
    # Uniform array, all inputs on: the relative loss of a device grows with its distance
    # from the driver (column) and from the ADC (row), and with the line current.
    g = jnp.full((R, K), 10.0)
    ep, _ = effective_pair(g, jnp.zeros_like(g), 20.0, 20.0)
    rel = 1 - np.asarray(ep) / 10.0
    assert np.all(np.diff(rel, axis=1) > 0)  # farther from the driver at column 0
    assert np.all(np.diff(rel, axis=0) < 0)  # row R−1 is next to the ADC
    ep2, _ = effective_pair(2 * g, jnp.zeros_like(g), 20.0, 20.0)
    assert np.all(1 - np.asarray(ep2) / 20.0 > rel)


def test_vectorised_over_cores_and_default_off():
    key = jax.random.key(0)
    g = jax.random.uniform(key, (3, 2, R, K), maxval=20.0)
    cfg = pj.ChipConfig(n_cores=3, rows=R, cols=K, parasitics=ParasiticsConfig(5.0, 7.0))
    out = effective_conductances(g, cfg)
    for c in range(3):
        ep, en = effective_pair(g[c, 0], g[c, 1], 5.0, 7.0)
        np.testing.assert_allclose(out[c, 0], ep, rtol=1e-6)
        np.testing.assert_allclose(out[c, 1], en, rtol=1e-6)
    assert not pj.ChipConfig().parasitics.enabled


def test_chip_mvm_with_wire_resistance():
    key = jax.random.key(1)
    gp, gn, v = _array(2)
    w = (gp - gn) / 20.7
    cfg = pj.ChipConfig.ideal(n_cores=1, rows=R, cols=K).replace(parasitics=ParasiticsConfig(50.0, 50.0, 5))
    st = pj.program_chip(key, jnp.asarray(w[None], jnp.float32), cfg)
    y = np.asarray(pj.mvm(key, st, jnp.asarray(v[None, None], jnp.float32)))[0, 0]
    exact = _ref_nodal(gp, gn, v, 50.0, 50.0) / 20.7  # weights in units of w_max = 1
    scale = np.max(np.abs(v @ w))
    assert np.max(np.abs(y - exact)) / scale < 2e-3


def test_gradients():
    key = jax.random.key(2)
    g = jax.random.uniform(key, (2, 4, 5), minval=1.0, maxval=20.0)
    with jax.enable_x64(True):
        g64 = jnp.asarray(g, jnp.float64)
        check_grads(lambda a, b: sum(effective_pair(a, b, 200.0, 300.0, 3)), (g64[0], g64[1]), order=1,
                    modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kw_", [dict(r_word_line=-1.0), dict(r_bit_line=float("inf")), dict(iterations=0),
                                 dict(r_word_line="1")])
def test_validation(kw_):
    with pytest.raises(ValueError, match="parasitics"):
        ParasiticsConfig(**kw_)


def test_method_validation():
    with pytest.raises(ValueError, match="parasitics.method.*'nodal'"):
        ParasiticsConfig(1.0, 1.0, method="nodal")
    assert ParasiticsConfig().method == "fixed_point"


def test_exact_method_in_the_chip_beyond_the_expansion():
    # λ ≈ 4 in total: the fixed-point series diverges; the exact model matches the nodal
    # reference and the chip's MVM uses it.
    key = jax.random.key(3)
    gp, gn, v = _array(4)
    w = (gp - gn) / 20.7
    r = 2 * 2.0 / (gp.mean() * R * R * 1e-6)
    exact = _ref_nodal(gp, gn, v, r, r) / 20.7
    ideal = v @ w
    assert np.max(np.abs(exact - ideal)) > 0.3 * np.max(np.abs(ideal))  # a large IR drop
    par = ParasiticsConfig(r, r, method="exact")
    g = jnp.asarray(np.stack([gp, gn])[None], jnp.float32)
    cfg = pj.ChipConfig.ideal(n_cores=1, rows=R, cols=K).replace(parasitics=par)
    eff = np.asarray(effective_conductances(g, cfg))[0]
    np.testing.assert_allclose(v @ (eff[0] - eff[1]) / 20.7, exact, rtol=0, atol=2e-5 * np.max(np.abs(exact)))
    fixed = np.asarray(effective_conductances(g, cfg.replace(parasitics=ParasiticsConfig(r, r, 20))))[0]
    assert not np.max(np.abs(v @ (fixed[0] - fixed[1]) / 20.7 - exact)) < 0.1 * np.max(np.abs(exact))
    st = pj.program_chip(key, jnp.asarray(w[None], jnp.float32), cfg)
    y = np.asarray(pj.mvm(key, st, jnp.asarray(v[None, None], jnp.float32)))[0, 0]
    assert np.max(np.abs(y - exact)) / np.max(np.abs(exact)) < 2e-3


@pytest.mark.parametrize("method", ["fixed_point", "exact"])
def test_read_noise_variance_attenuated_like_the_signal(method):
    # A device's conductance noise reaches its ADC scaled by ∂(column current)/∂g, from a
    # float64 nodal analysis by central differences; through_wires uses (a/g)², within
    # the device's own loading of its lines and O(λ²) of it (λ = 0.2 on 16×16).
    gp, gn, _ = _array(3)
    lam = 0.2
    r = lam / (1e-6 * (gp.mean() * K * K + (gp + gn).mean() * R * R) / 2)
    cfg = pj.ChipConfig.ideal(n_cores=1, rows=R, cols=K).replace(parasitics=ParasiticsConfig(r, r, method=method))
    g = jnp.asarray(np.stack([gp, gn])[None], jnp.float32)
    g_eff, var_eff = through_wires(g, jnp.ones_like(g), cfg)
    np.testing.assert_allclose(g_eff, effective_conductances(g, cfg), rtol=1e-6)
    rng = np.random.default_rng(0)
    model, exact = [], []
    for _ in range(6):
        i, k = rng.integers(R), rng.integers(K)
        pol = 0 if gp[i, k] > 0 else 1
        v, h = np.eye(R)[i], 1e-3
        step = np.zeros((2, R, K))
        step[pol, i, k] = h
        up = _ref_nodal(gp + step[0], gn + step[1], v, r, r)[k]
        dn = _ref_nodal(gp - step[0], gn - step[1], v, r, r)[k]
        exact.append(((up - dn) / (2 * h)) ** 2)
        model.append(float(var_eff[0, pol, i, k]))
    exact, model = np.array(exact), np.array(model)
    assert np.max(np.abs(model / exact - 1)) < 0.1
    assert np.mean(1 / exact - 1) > 0.2  # without the attenuation the variance is far off


def test_variance_untouched_by_ideal_wires():
    g = jax.random.uniform(jax.random.key(4), (2, 2, 5, 6), maxval=20.0).at[0, 0, 1, 1].set(0.0)
    var = jnp.full_like(g, 0.3)
    cfg = pj.ChipConfig.ideal(n_cores=2, rows=5, cols=6).replace(parasitics=ParasiticsConfig(1e-9, 1e-9))
    _, v = through_wires(g, var, cfg)
    np.testing.assert_allclose(v, var, rtol=1e-5)


def test_chip_read_noise_goes_through_the_wires():
    # at_time's per-read variance is the devices' own, scaled per device by (a/g)² of the
    # effective conductances the same state's MVM uses.
    key = jax.random.key(5)
    gp, gn, _ = _array(4)
    cfg = pj.ChipConfig(n_cores=1, rows=R, cols=K, read_phases=4, parasitics=ParasiticsConfig(40.0, 40.0))
    st = pj.program_chip(key, jnp.asarray((gp - gn)[None] / 20.7, jnp.float32), cfg)
    t = 3600.0
    var = np.asarray(st.at_time(key, t).var, np.float64)
    var_own = np.asarray(st.replace(cfg=cfg.without("ir_drop")).at_time(key, t).var, np.float64)
    phys = np.asarray(st.conductances(key, t), np.float64)
    eff = np.asarray(st.conductances(key, t, effective=True), np.float64)
    ratio = np.where(phys > 0, np.clip(eff / np.where(phys > 0, phys, 1.0), 0, 1), 1.0)
    np.testing.assert_allclose(var, var_own * ratio**2, rtol=1e-4, atol=1e-12)
    assert np.max(var_own - var) > 0.05 * np.max(var_own)  # a visible attenuation


def _irdrop_networks():
    """``benchmarks/irdrop_networks.py`` as a module (it imports ``benchmarks/char_lstm.py``)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "irdrop_networks.py"
    spec = importlib.util.spec_from_file_location("_irdrop_networks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lstm_study_smoke_exact_wires():
    # The LSTM study's pieces at CI size: a tiny LSTM trained on the generated text, on
    # small ideal cores whose only non-ideality is the exact wires, at a resistance that
    # drops most of the far rows' signal. Independent expectations: training learns the text
    # (below the uniform 5.6 bits of the 50-token read-out), and the wires lose information.
    m = _irdrop_networks()
    model, x, bpc_float, _ = m.lstm_model(None, hidden=16, steps=40, log=lambda *_: None, n_test=4, length=16)
    assert bpc_float < np.log2(50) - 1.0
    cfg = pj.ChipConfig.ideal(rows=32, cols=32).replace(parasitics=ParasiticsConfig(300.0, 300.0, method="exact"))
    res = m._lstm_bpc(model, cfg, jax.random.split(jax.random.key(0), 1), x)
    assert np.isfinite(res["mean"]) and res["n"] == 1
    assert res["mean"] > bpc_float + 0.1


def test_exact_wires_solved_once_per_state_never_per_read():
    # The transfer conductances depend on the state only: ageing computes them (one call of
    # the solve in the traced program), a read uses the stored ones (no call).
    cfg = pj.ChipConfig(n_cores=2, rows=8, cols=8).replace(parasitics=ParasiticsConfig(50.0, 50.0, method="exact"))
    w = jax.random.normal(jax.random.key(0), (2, 8, 8)) / 4
    state = pj.program_chip(jax.random.key(1), w, cfg)
    x = jnp.full((2, 3, 8), 0.5)

    def solves(fn, *args):
        return str(jax.make_jaxpr(fn)(*args)).count("name=transfer_pair")

    assert solves(lambda k, s: s.at_time(k, 3600.0), jax.random.key(2), state) == 1
    assert solves(lambda k, s, x: pj.mvm(k, s, x), jax.random.key(2), state.at_time(jax.random.key(2), 60.0), x) == 0
