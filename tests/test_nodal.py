"""Exact crossbar solve: against an independent float64 dense nodal analysis, gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import pcmjax as pj
from pcmjax.chip import nodal
from pcmjax.chip.nodal import BLAS_THREAD_VARIABLES, SOLVERS, transfer_pair
from pcmjax.chip.parasitics import ParasiticsConfig, effective_pair


def _dense_transfer(gp, gn, rw, rb):
    """Transfer conductances by modified nodal analysis (NumPy, float64, SI units).

    One dense solve per driver: unit volt on that driver, every other driver and every
    ADC at 0 V; the currents through the ADC segments are one row of the transfer matrix.
    Zero wire resistance is a very small one (1e-9 Ω).
    """
    gp, gn = np.asarray(gp, np.float64) * 1e-6, np.asarray(gn, np.float64) * 1e-6
    rw, rb = max(rw, 1e-9), max(rb, 1e-9)
    n_r, n_k = gp.shape
    n = n_r * n_k
    idx = np.arange(n).reshape(n_r, n_k)
    nodes = {"p": idx, "n": idx + n, "b": idx + 2 * n}
    Y = np.zeros((3 * n, 3 * n))

    def link(a, b, g):
        Y[a, a] += g
        Y[b, b] += g
        Y[a, b] -= g
        Y[b, a] -= g

    for i in range(n_r):
        for k in range(n_k):
            link(nodes["p"][i, k], nodes["b"][i, k], gp[i, k])
            link(nodes["n"][i, k], nodes["b"][i, k], gn[i, k])
            if k + 1 < n_k:
                link(nodes["p"][i, k], nodes["p"][i, k + 1], 1 / rw)
                link(nodes["n"][i, k], nodes["n"][i, k + 1], 1 / rw)
            if i + 1 < n_r:
                link(nodes["b"][i, k], nodes["b"][i + 1, k], 1 / rb)
        Y[nodes["p"][i, 0], nodes["p"][i, 0]] += 1 / rw  # driver segments
        Y[nodes["n"][i, 0], nodes["n"][i, 0]] += 1 / rw
    for k in range(n_k):
        Y[nodes["b"][-1, k], nodes["b"][-1, k]] += 1 / rb  # ADC segments
    drivers = np.concatenate([nodes["p"][:, 0], nodes["n"][:, 0]])
    rhs = np.zeros((3 * n, 2 * n_r))
    rhs[drivers, np.arange(2 * n_r)] = 1 / rw
    u = np.linalg.solve(Y, rhs)
    a = u[nodes["b"][-1, :], :].T / rb * 1e6  # [2R, K], µS
    return a[:n_r], a[n_r:]


def _array(shape, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1, 1, shape)
    return np.maximum(w, 0) * 20.7, np.maximum(-w, 0) * 20.7


def _ohms_for(lam, g_mean, n):
    """Wire resistance per segment giving λ ≈ r Ḡ n² / 2 on a line of n cells."""
    return 2 * lam / (g_mean * n * n * 1e-6)


# λ per line; the fixed-point expansion diverges near λ ≈ 1.7 per line (3.5 in total).
@pytest.mark.parametrize("lam_w,lam_b", [(0.02, 0.03), (0.5, 0.5), (1.75, 1.75), (10.0, 10.0), (0.0, 2.0),
                                         (2.0, 0.0)])
def test_float64_matches_dense_nodal_analysis(lam_w, lam_b):
    R, K = 7, 9
    gp, gn = _array((R, K))
    rw = _ohms_for(lam_w, gp.mean(), K)
    rb = _ohms_for(lam_b, (gp + gn).mean(), R)
    ref_p, ref_n = _dense_transfer(gp, gn, rw, rb)
    with jax.enable_x64(True):
        ap, an = transfer_pair(jnp.asarray(gp), jnp.asarray(gn), rw, rb)
        assert ap.dtype == jnp.float64
    scale = np.max(np.abs(ref_p - ref_n))
    np.testing.assert_allclose(np.asarray(ap), ref_p, rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(np.asarray(an), ref_n, rtol=1e-6, atol=1e-6 * scale)
    # Column currents for a random input within 1e-6 of the largest.
    v = np.random.default_rng(3).uniform(-1, 1, R)
    ref_i = v @ (ref_p - ref_n)
    assert np.max(np.abs(v @ np.asarray(ap - an) - ref_i)) < 1e-6 * np.max(np.abs(ref_i))
    if lam_w + lam_b > 3:  # the IR drop is large there, so the check above is not trivial
        assert np.max(np.abs(ref_i - v @ (gp - gn))) > 0.3 * np.max(np.abs(ref_i))


@pytest.mark.parametrize("lam", [0.1, 3.5, 30.0])
def test_float32_default(lam):
    R, K = 16, 12
    gp, gn = _array((R, K), seed=1)
    rw = _ohms_for(lam / 2, gp.mean(), K)
    rb = _ohms_for(lam / 2, (gp + gn).mean(), R)
    ref_p, ref_n = _dense_transfer(gp, gn, rw, rb)
    ap, an = transfer_pair(jnp.asarray(gp, jnp.float32), jnp.asarray(gn, jnp.float32), rw, rb)
    assert ap.dtype == jnp.float32
    w, ref = np.asarray(ap - an), ref_p - ref_n
    assert np.all(np.isfinite(w))
    assert np.max(np.abs(w - ref)) < 2e-5 * np.max(np.abs(ref))


def test_ideal_wires_and_batch_axes():
    gp, gn = _array((2, 3, 5, 4), seed=2)
    ap, an = transfer_pair(gp.astype(np.float32), gn.astype(np.float32), 0.0, 0.0)
    np.testing.assert_allclose(ap, gp, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(an, gn, rtol=1e-6, atol=1e-5)
    bp, bn = transfer_pair(gp, gn, 300.0, 500.0)
    for c in range(2):
        for s in range(3):
            one_p, one_n = transfer_pair(gp[c, s], gn[c, s], 300.0, 500.0)
            np.testing.assert_allclose(bp[c, s], one_p, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(bn[c, s], one_n, rtol=1e-5, atol=1e-6)


def test_agrees_with_first_order_model_at_small_drop():
    # Both models are exact to first order in λ; they differ by O(λ²).
    gp, gn = _array((8, 8), seed=4)
    ap, an = transfer_pair(gp, gn, 2.0, 3.0)
    fp, fn = effective_pair(jnp.asarray(gp, jnp.float32), jnp.asarray(gn, jnp.float32), 2.0, 3.0)
    drop = np.max(np.abs(np.asarray(ap - an) - (gp - gn)))
    assert drop > 1e-4 * 20.7
    assert np.max(np.abs(np.asarray((ap - an) - (fp - fn)))) < 0.05 * drop


def test_no_nan_at_extremes():
    gp = np.zeros((6, 5))
    gp[2, 3] = 25.0
    gn = np.zeros((6, 5))
    for rw, rb in [(0.0, 0.0), (1e9, 1e9), (0.0, 1e9), (1e9, 0.0)]:
        ap, an = transfer_pair(gp, gn, rw, rb)
        assert np.all(np.isfinite(ap)) and np.all(np.isfinite(an))
        assert np.all(np.asarray(ap) >= -1e-6)  # a passive network: no negative transfer
    ap, _ = transfer_pair(gp, gn, 1e9, 1e9)
    assert float(ap[2, 3]) < 1e-3  # almost nothing reaches the ADC through megohm wires


@pytest.mark.parametrize("lam", [0.1, 1.5, 10.0])
def test_gradients_against_finite_differences(lam):
    # Reverse mode is the adjoint solve (custom VJP); finite differences of the forward
    # solve are the independent check, for devices and both wire resistances.
    gp, gn = _array((2, 4, 5), seed=5)
    gp, gn = gp + 1.0, gn + 0.5
    rw = _ohms_for(lam, gp.mean(), 5)
    rb = _ohms_for(lam, (gp + gn).mean(), 4)
    weights = np.random.default_rng(6).normal(size=(2, 2, 4, 5))
    with jax.enable_x64(True):
        def loss(a, b, r_w, r_b):
            ap, an = transfer_pair(a, b, r_w * rw, r_b * rb)
            return jnp.sum(weights[0] * ap) + jnp.sum(weights[1] * an)

        args = (jnp.asarray(gp), jnp.asarray(gn), jnp.asarray(1.0), jnp.asarray(1.0))
        check_grads(loss, args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_gradient_of_a_device_against_dense_analysis():
    # d(a_pos[i, k])/d(g_pos[i, k]) from the adjoint pass against a float64 dense-solve
    # central difference (an implementation that shares no code with transfer_pair).
    gp, gn = _array((5, 6), seed=7)
    rw, rb = _ohms_for(0.8, gp.mean(), 6), _ohms_for(0.8, (gp + gn).mean(), 5)
    i, k, h = 3, 4, 1e-4
    with jax.enable_x64(True):
        grad = jax.grad(lambda a: transfer_pair(a, jnp.asarray(gn), rw, rb)[0][i, k])(jnp.asarray(gp))
    up, dn = gp.copy(), gp.copy()
    up[i, k] += h
    dn[i, k] -= h
    fd = (_dense_transfer(up, gn, rw, rb)[0][i, k] - _dense_transfer(dn, gn, rw, rb)[0][i, k]) / (2 * h)
    assert abs(float(grad[i, k]) - fd) < 1e-6 * abs(fd)
    assert 0.05 < fd < 0.95  # a real attenuation: neither the ideal 1 nor nothing


def test_float32_gradients_finite_at_extremes():
    gp, gn = _array((3, 6, 5), seed=8)
    for rw, rb in [(0.0, 0.0), (1e3, 1e3), (1e9, 1e9)]:
        g = jax.grad(lambda a, b: jnp.sum(jnp.square(transfer_pair(a, b, rw, rb)[0])), argnums=(0, 1))(
            jnp.asarray(gp, jnp.float32), jnp.asarray(gn, jnp.float32))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)


def test_solvers_agree_with_dense_analysis():
    # Cholesky with an explicit inverse (the default), Cholesky with triangular solves and LU
    # are the same elimination; each must match the float64 dense analysis, also at λ = 30.
    R, K = 7, 9
    gp, gn = _array((R, K), seed=9)
    for lam, tol, x64 in ((1.75, 1e-9, True), (15.0, 2e-5, False)):
        rw, rb = _ohms_for(lam, gp.mean(), K), _ohms_for(lam, (gp + gn).mean(), R)
        ref_p, ref_n = _dense_transfer(gp, gn, rw, rb)
        scale = np.max(np.abs(ref_p - ref_n))
        dtype = np.float64 if x64 else np.float32
        with jax.enable_x64(x64):
            for solver in SOLVERS:
                ap, an = transfer_pair(gp.astype(dtype), gn.astype(dtype), rw, rb, solver=solver)
                assert np.max(np.abs(np.asarray(ap, np.float64) - ref_p)) < tol * scale, solver
                assert np.max(np.abs(np.asarray(an, np.float64) - ref_n)) < tol * scale, solver
    with pytest.raises(ValueError, match="solver must be one of"):
        transfer_pair(gp, gn, 1.0, 1.0, solver="qr")


def test_warns_once_when_blas_threads_are_not_limited(monkeypatch):
    for name in BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(nodal, "_WARNED", [])
    with pytest.warns(RuntimeWarning, match="OPENBLAS_NUM_THREADS"):
        transfer_pair(np.ones((3, 2), np.float32), np.zeros((3, 2), np.float32), 1.0, 1.0)  # a new trace
    assert not nodal.warn_if_blas_threads_unset()  # once per process
    monkeypatch.setattr(nodal, "_WARNED", [])
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert not nodal.warn_if_blas_threads_unset()


def test_programming_solves_the_exact_wires_once():
    # Programming reads the compensation reference and prepares the state at t = 0 from one
    # ageing of the same devices: one call of the solve in the traced program, not two.
    cfg = pj.ChipConfig(n_cores=2, rows=8, cols=8).replace(parasitics=ParasiticsConfig(50.0, 50.0, method="exact"))
    w = jax.random.normal(jax.random.key(0), (2, 8, 8)) / 4
    jaxpr = str(jax.make_jaxpr(lambda k, w: pj.program_chip(k, w, cfg))(jax.random.key(1), w))
    assert jaxpr.count("name=transfer_pair") == 1
    # Same devices: without per-read and ADC noise both reads give the same counts, so the
    # compensation factor at t = 0 is 1 (two draws of the accumulated 1/f noise would not).
    quiet = cfg.replace(read_noise=False, adc=dataclasses.replace(cfg.adc, noise_std=0.0))
    state = pj.program_chip(jax.random.key(1), w, quiet)
    np.testing.assert_array_equal(np.asarray(state.comp), 1.0)
