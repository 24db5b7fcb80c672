"""Through the hardware: device-model scale factors from chip-level MVM outputs alone.

Stated tolerance: with 2 cores of 128×128 weights, 64 inputs, reads at 1 min and 1 day
(3 repeats each), every recovered scale factor is within 5 % of the truth and within
4 standard errors.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import pcmjax as pj
from pcmjax.fit import fit_scale_factors, simulate_hardware

TRUE = dict(prog_scale=1.4, drift_scale=0.8, read_noise_scale=1.6)


@pytest.mark.slow
def test_scale_factors_recovered_from_mvm_outputs():
    cfg = pj.ChipConfig(n_cores=2, rows=128, cols=128, drift_compensation="none")
    kw, kx = jax.random.split(jax.random.key(5))
    weights = jax.random.normal(kw, (2, 128, 128))
    x = jax.random.uniform(kx, (2, 64, 128), minval=-1.0, maxval=1.0)
    meas = simulate_hardware(jax.random.key(7), weights, x, [60.0, 86400.0], cfg,
                             pj.devices.HermesPCM(2, **TRUE), repeats=3)
    assert meas.y.shape == (2, 3, 2, 64, 128)
    fit = fit_scale_factors(jax.random.key(11), meas, cfg, pj.devices.HermesPCM(2))
    for name, true in TRUE.items():
        assert abs(fit.scales[name] / true - 1) < 0.05, fit.summary()
        assert abs(fit.scales[name] - true) < 4 * fit.stderr[name], fit.summary()
        assert float(getattr(fit.device, name)) == pytest.approx(fit.scales[name], rel=1e-6)
    assert "prog_scale" in fit.summary()


def test_scale_fit_input_checks():
    from pcmjax.fit import HardwareMeasurements

    bad = HardwareMeasurements(np.zeros((1, 4, 4)), np.zeros((1, 2, 4)), np.array([1.0]), np.zeros((1, 1, 1, 2, 4)))
    with pytest.raises(ValueError, match="repeats >= 2"):
        fit_scale_factors(jax.random.key(0), bad)
