"""The HERMES operating-point presets (ChipConfig.hermes, study-file ``preset``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcmjax as pj


def test_hermes_four_phase_is_the_published_operating_point():
    cfg = pj.ChipConfig.hermes()
    # PHYSICS.md §6, §4.1, §4.2, §4.2b: 64 cores of 256x256, 8-bit PWM, ~422 counts per sign in 128 ns.
    assert (cfg.n_cores, cfg.rows, cfg.cols) == (64, 256, 256)
    assert cfg.pwm.bits == 8 and cfg.pwm.levels == 127
    assert cfg.adc.n_max == 422
    assert cfg.read_phases == 4
    assert cfg.drift_compensation == "global"
    assert cfg.program.method == "one_shot"
    verify = pj.ChipConfig.hermes(programming="verify")
    assert verify.program.method == "verify" and verify.program.iterations == 30
    assert pj.ChipConfig.hermes("one_phase").read_phases == 1


@pytest.mark.parametrize("name,phases,method", [("hermes-four-phase", 4, "one_shot"),
                                                ("hermes-one-phase", 1, "one_shot"),
                                                ("hermes-four-phase-verify", 4, "verify")])
def test_preset_names_and_overrides(name, phases, method):
    cfg = pj.ChipConfig.from_dict({"preset": name, "n_cores": 2, "adc": {"noise_std": 0.0}})
    assert cfg.read_phases == phases and cfg.program.method == method
    assert cfg.n_cores == 2 and cfg.adc.noise_std == 0.0 and cfg.adc.n_max == 422
    assert pj.ChipConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_preset_and_mode_name_the_allowed_values():
    with pytest.raises(ValueError, match="preset must be one of .*hermes-four-phase.*got 'hermes'"):
        pj.ChipConfig.from_dict({"preset": "hermes"})
    with pytest.raises(ValueError, match="mode must be one of .*four_phase.*got 'four'"):
        pj.ChipConfig.hermes("four")
    with pytest.raises(ValueError, match="adc.max_count must be an integer in 1..511, got 600"):
        pj.ADCConfig(bits=9, max_count=600)


def test_four_phase_cancels_the_polarity_asymmetry():
    """With only the path asymmetry α left, a one-phase read scales positive inputs by 1 + α and
    negative ones by 1 − α (closed form); the four-phase preset reads x @ W."""
    alpha = 0.05
    base = pj.ChipConfig.ideal(n_cores=1, rows=16, cols=8).replace(polarity_asymmetry=alpha)
    key = jax.random.key(3)
    w = jax.random.uniform(jax.random.fold_in(key, 0), (1, 16, 8), minval=-1.0, maxval=1.0)
    x = jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], (1, 4, 16)), jnp.float32)
    exact = np.asarray(x[0]) @ np.asarray(w[0])
    expect_one = (np.asarray(x[0]) * (1.0 + alpha * np.sign(np.asarray(x[0])))) @ np.asarray(w[0])
    outs = {}
    for phases in (1, 4):
        cfg = base.replace(read_phases=phases)
        state = pj.program_chip(key, w, cfg)
        outs[phases] = np.asarray(pj.mvm(key, state, x))[0]
    np.testing.assert_allclose(outs[1], expect_one, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[4], exact, rtol=1e-5, atol=1e-5)
