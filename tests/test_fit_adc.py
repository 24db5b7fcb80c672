"""Per-column ADC fit from a calibration sweep: recovery of gain, offset, nonlinearity, noise."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from pcmjax import ADCConfig
from pcmjax.fit import fit_adc, simulate_adc_sweep

COLS = 32


@pytest.fixture(scope="module")
def sweep():
    # Larger nonlinearity than the calibrated default, so that it is measurable per column.
    cfg = ADCConfig(nonlinearity=0.05, nonlinearity_std=0.02, noise_std=0.5)
    a = cfg.counts_per_unit(256)
    s = np.linspace(-1.1, 1.1, 41) * cfg.n_max / a  # reaches saturation at both ends
    counts, truth = simulate_adc_sweep(jax.random.key(0), cfg, s, n_cols=COLS, repeats=8)
    fit = fit_adc(s, counts, cfg=cfg, counts_per_unit=a)
    return cfg, s, counts, truth, fit


@pytest.mark.parametrize("name, true_key", [("gain", "gain"), ("offset", "offset"), ("nonlinearity", "nonlin")])
def test_adc_fit_recovers_each_column(sweep, name, true_key):
    cfg, s, counts, truth, fit = sweep
    assert np.all(fit.converged)
    z = (getattr(fit, name) - truth[true_key]) / fit.stderr[name]
    assert np.max(np.abs(z)) < 4.0, z  # 32 columns: the largest of 32 |z| stays below 4
    assert abs(np.mean(z)) < 3.0 / np.sqrt(COLS) * 1.5
    assert 0.6 < np.std(z) < 1.5  # standard errors of the right size


def test_adc_fit_noise_and_precision(sweep):
    cfg, s, counts, truth, fit = sweep
    np.testing.assert_allclose(np.mean(fit.noise), cfg.noise_std, rtol=0.05)
    assert np.max(np.abs(fit.gain - truth["gain"])) < 2e-3  # 0.2 % gain
    assert np.max(np.abs(fit.offset - truth["offset"])) < 0.15  # counts
    assert np.max(np.abs(fit.nonlinearity - truth["nonlin"])) < 3e-3


def test_adc_fit_input_checks():
    with pytest.raises(ValueError, match="n_max"):
        fit_adc(np.arange(5.0), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="integers within"):
        fit_adc(np.arange(5.0), np.full((5, 2), 0.5), n_max=7)
    with pytest.raises(ValueError, match="shape"):
        fit_adc(np.arange(4.0), np.zeros((5, 2)), n_max=7)
