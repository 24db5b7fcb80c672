"""Drift-compensation references (ChipConfig.gdc_reference) against the devices' own conductances."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcmjax as pj

YEAR = 3.15e7


@pytest.fixture(scope="module")
def chip():
    key = jax.random.key(11)
    w = jax.random.normal(jax.random.fold_in(key, 0), (2, 256, 256)) / 16.0
    dev = pj.devices.HermesPCM(num_devices=2)
    return key, w, dev


def _state(chip, reference, t):
    key, w, dev = chip
    cfg = pj.ChipConfig(n_cores=2, gdc_reference=reference)
    state = pj.program_chip(jax.random.fold_in(key, 1), w, cfg, dev)
    return state, state.at_time(jax.random.fold_in(key, 2), t)


def test_signal_reference_is_the_exact_ratio_of_the_stored_weights(chip):
    """comp = Σ ref₀ / (a Σ ŵ₀ · w_t) with w_t the devices' conductances of the same key (closed form)."""
    key, _, dev = chip
    state, aged = _state(chip, "signal", YEAR)
    g = np.asarray(state.conductances(jax.random.fold_in(key, 2), YEAR), np.float64) / float(dev.g_max)
    gt = np.asarray(state.g_target, np.float64)
    w0 = gt[:, 0] - gt[:, 1]
    w0 = w0 / np.abs(w0).max(axis=(1, 2), keepdims=True)
    a = state.cfg.adc.counts_per_unit(state.cfg.rows)
    ref_t = a * np.sum(w0 * (g[:, 0] - g[:, 1]), axis=1)  # [C, K]
    expect = np.asarray(state.gdc_ref, np.float64).sum(1) / ref_t.sum(1)
    np.testing.assert_allclose(np.asarray(aged.comp)[:, 0], expect, rtol=2e-5)
    # Right after programming the stored weights have not drifted: the exact ratio is 1 up to the
    # 1/f noise of two independent samples (relative SD ≈ 0.02 / sqrt(65536 devices) per core).
    _, fresh = _state(chip, "signal", 0.0)
    np.testing.assert_allclose(np.asarray(fresh.comp), 1.0, atol=2e-3)


def test_total_reference_overcompensates_as_the_conductance_sums_predict(chip):
    """The chip's total-conductance read estimates Σg(0)/Σg(t) of its mapped devices; that ratio
    exceeds the signal's exact ratio because low conductances drift faster (PHYSICS.md §5)."""
    key, _, dev = chip
    state, total = _state(chip, "total", YEAR)
    _, signal = _state(chip, "signal", YEAR)
    g_t = np.asarray(state.conductances(jax.random.fold_in(key, 2), YEAR), np.float64)
    g_0 = np.asarray(state.conductances(jax.random.fold_in(key, 2), 0.0), np.float64)
    predicted = g_0.sum(axis=(1, 2, 3)) / g_t.sum(axis=(1, 2, 3))
    # Tolerance: the ADC's residual compression (b = 1 % at full scale; the reference reads at half
    # scale, then at half of that a year later) biases the read ratio by ≈ 0.3 %; read noise averages
    # over 2 × 65536 devices per core.
    np.testing.assert_allclose(np.asarray(total.comp)[:, 0], predicted, rtol=1e-2)
    bias = np.asarray(total.comp)[:, 0] / np.asarray(signal.comp)[:, 0] - 1.0
    expected_bias = predicted / np.asarray(signal.comp)[:, 0] - 1.0
    assert np.all(expected_bias > 0.03)  # a real over-compensation, not noise
    np.testing.assert_allclose(bias, expected_bias, atol=1.5e-2)


def test_set_devices_and_one_hot_lie_between_signal_and_total(chip):
    factors = {r: float(jnp.mean(_state(chip, r, YEAR)[1].comp)) for r in ("total", "set_devices", "one_hot",
                                                                            "signal")}
    assert factors["signal"] < factors["set_devices"] < factors["total"]
    assert factors["signal"] * 0.99 < factors["one_hot"] < factors["total"]


def test_bad_reference_names_the_allowed_values():
    with pytest.raises(ValueError, match="gdc_reference must be one of .*'total'.*got 'mean'"):
        pj.ChipConfig(gdc_reference="mean")
