"""Device-model fits: round trips per family, misspecification, JSON, the chip, the CLI.

Round trips: 4,000 devices (HERMES: 2,048; PCM-like: 8,192, since its low-conductance devices
are too noisy to keep and its clipped laws need the levels well covered) with uniformly random
targets, read at six times from 0 s to one day, simulated from a known model; the fit
starts from a perturbed model (every estimated entry ×1.1, or +0.1 σ for the flexible law
coefficients) and every estimated parameter must come back within 3 standard errors of
the truth (the standard errors shrink with the device count; the criterion does not
depend on it). All keys are fixed.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcmjax as pj
from pcmjax.devices import Flexible, HermesPCM, PCMLike, StateIndependent, load, save
from pcmjax.fit import _params, cli_main, fit_device_model, simulate_measurements
from pcmjax.fit._compile import FastJit, _accepted, _jit

# The fit pads the devices to a power of two (compiled code is shared across fits): counts
# at or just below one waste nothing.
N_DEVICES = {"hermes": 2048, "pcm_like": 8192, "state_independent": 4000, "flexible": 4000}
TIMES = (0.0, 60.0, 600.0, 3600.0, 36000.0, 86400.0)

TRUTHS = {
    "hermes": HermesPCM(2),
    "pcm_like": PCMLike(1),
    "state_independent": StateIndependent(sigma_prog=1.0, mu_nu=0.05, sigma_nu=0.02, q_s=0.02),
    "flexible": Flexible(1, g_max=25.0, prog_coeffs=[0.3, 2.0, -1.0], mu_nu=[0.09, -0.05, 0.0],
                         sigma_nu=[0.03, -0.01, 0.0], q_s_law=[0.03, -0.02, 0.01]),
}


def _perturbed(truth):
    entries = _params.entries_for(truth)
    vals = _params.values_of(truth, entries)
    vals = np.where(np.abs(vals) > 1e-3, vals * 1.1, vals + 0.002)
    return _params.finalize(_params.with_values(truth, entries, vals))


_CACHE: dict = {}


def fitted(family):
    """(truth, data, result) of a family's round trip, computed once per session."""
    if family not in _CACHE:
        truth = TRUTHS[family]
        g_t = jax.random.uniform(jax.random.key(10), (N_DEVICES[family],), minval=0.0, maxval=float(truth.g_max))
        data = simulate_measurements(jax.random.key(11), truth, np.asarray(g_t), TIMES)
        kw = dict(degree=2) if family == "flexible" else {}
        res = fit_device_model(data, family, num_devices=truth.num_devices, init=_perturbed(truth), **kw)
        _CACHE[family] = (truth, data, res)
    return _CACHE[family]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(TRUTHS))
def test_round_trip_every_parameter_within_3_se(family):
    truth, data, res = fitted(family)
    assert res.stats["n_devices_total"] == N_DEVICES[family]
    assert res.stats["newton_decrement"] < 0.5  # converged: within half a standard error before polishing
    by_name = {e.name: e for e in _params.entries_for(truth)}
    true = _params.values_of(truth, [by_name[n] for n in res.names])
    z = (res.values - true) / res.stderr
    assert np.all(np.isfinite(z)), dict(zip(res.names, z))
    assert np.max(np.abs(z)) < 3.0, dict(zip(res.names, np.round(z, 2)))
    # Entries the data cannot inform are reported, not estimated (PCM-like: the upper clip
    # bounds, reached only by devices too noisy to keep: held, or reported as not identified).
    if family == "pcm_like":
        se = dict(zip(res.names, res.stderr))
        bounds = {"q_s_law[2]", "mu_nu[3]", "sigma_nu[3]"}
        assert all(n in res.fixed or se.get(n) == np.inf for n in bounds), (res.fixed, se)
        assert set(res.fixed) <= bounds
        assert any("left out" in n for n in res.notes)
    else:
        assert res.fixed == {}
    assert f"{res.names[0]}" in res.summary()


def test_misspecified_family_fits_clearly_worse():
    truth, data, res = fitted("hermes")
    wrong = fit_device_model(data, "state_independent", g_max=float(truth.g_max), t0=float(truth.t0),
                             t_read=float(truth.t_read))
    assert wrong.stats["n_devices"] == res.stats["n_devices"]
    # ΔAIC of thousands: the constant laws cannot describe the HERMES state dependence.
    assert wrong.stats["aic"] - res.stats["aic"] > 1000
    assert wrong.stats["bic"] - res.stats["bic"] > 1000
    for stage in ("nll_noise", "nll_drift", "nll_prog"):
        assert wrong.stats[stage] > res.stats[stage]


@pytest.mark.parametrize("family", list(TRUTHS))
def test_json_round_trip_of_fitted_models(family, tmp_path):
    _, _, res = fitted(family)
    path = save(res.model, tmp_path / f"{family}.json")
    back = load(path)
    assert type(back) is type(res.model) and back.family == family
    for k, v in res.model.params().items():
        np.testing.assert_array_equal(np.asarray(getattr(back, k)), np.asarray(v), err_msg=k)
    assert json.loads(path.read_text())["family"] == family
    # A study file points at the JSON with [device] file = "...".
    config = pytest.importorskip("pcmjax.montecarlo.config")
    dev = config.build_device({"file": str(path)})
    assert type(dev) is type(res.model)


@pytest.mark.parametrize("family", ["flexible", "pcm_like"])
def test_fitted_model_is_accepted_by_the_chip(family):
    # Traced, not compiled (eval_shape): program_chip, at_time and mvm accept the model.
    _, _, res = fitted(family)
    cfg = pj.ChipConfig(n_cores=1, rows=8, cols=8)
    weights = jax.random.normal(jax.random.key(3), (1, 8, 8))

    def run():
        state = pj.program_chip(jax.random.key(4), weights, cfg, res.model)
        return pj.mvm(jax.random.key(5), state.at_time(jax.random.key(6), 3600.0), jnp.ones((1, 2, 8)) * 0.5)

    out = jax.eval_shape(run)
    assert out.shape == (1, 2, 8)


def test_spline_family_laws_and_json(tmp_path):
    m = Flexible(1, basis="spline", g_max=10.0, prog_coeffs=[0.2, 0.5, 0.8, 1.0, 0.9], mu_nu=[0.05] * 4,
                 sigma_nu=[0.01] * 4, q_s_law=[0.03, 0.02, 0.02, 0.01])
    laws = jax.jit(lambda m, g: (m.nu_moments(g)[0], m.prog_sigma(g), m.q_s(g)))
    g = jnp.linspace(0.0, 10.0, 11)
    mu, sp, qs = laws(m, g)
    np.testing.assert_allclose(mu, 0.05, rtol=1e-6)  # constant control values: a constant law
    np.testing.assert_allclose(sp[jnp.array([0, -1])], [0.2, 0.9], rtol=1e-6)  # clamped ends
    back = load(save(m, tmp_path / "s.json"))
    assert back.basis == "spline"
    np.testing.assert_array_equal(laws(back, g)[2], qs)
    with pytest.raises(ValueError, match="at least 4"):
        Flexible(basis="spline", prog_coeffs=[1.0, 2.0])


def test_fit_rejects_bad_arguments():
    _, data, _ = fitted("state_independent")
    with pytest.raises(ValueError, match="family must be one of"):
        fit_device_model(data, "nonsense")
    with pytest.raises(ValueError, match="max_rel_noise"):
        fit_device_model(data, "hermes", max_rel_noise=2.0)
    with pytest.raises(ValueError, match="init is a 'hermes' model"):
        fit_device_model(data, "pcm_like", init=HermesPCM(2))


def test_cli_writes_model_and_figures(tmp_path, capsys):
    truth, data, res = fitted("state_independent")
    data.save(tmp_path / "data.csv")
    out = tmp_path / "fit" / "model.json"
    rc = cli_main([str(tmp_path / "data.csv"), "--family", "state_independent", "--out", str(out),
                   "--stats-json", str(tmp_path / "stats.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "sigma_prog" in printed and "std. error" in printed and "AIC" in printed
    model = load(out)
    assert isinstance(model, StateIndependent)
    np.testing.assert_allclose(float(model.sigma_prog), float(res.model.sigma_prog), rtol=1e-5)
    for fig in ("model_laws.png", "model_drift.png"):
        assert (out.parent / fig).stat().st_size > 10_000
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert set(stats["params"]) == {"q_s_const", "mu_nu", "sigma_nu", "sigma_prog"}
    # Bad data: a clear message and exit status 2.
    (tmp_path / "bad.csv").write_text("device_id,g_target_uS,t_s,g_uS\na,1,0,1\n")
    assert cli_main([str(tmp_path / "bad.csv")]) == 2
    assert "row 1, column t_s" in capsys.readouterr().err


def test_package_cli_dispatches_fit(tmp_path, capsys):
    cli = pytest.importorskip("pcmjax.cli")
    (tmp_path / "bad.csv").write_text("device_id,g_target_uS,t_s,g_uS\na,1,0,-1\na,1,5,1\n")
    assert cli.main(["fit", str(tmp_path / "bad.csv"), "--family", "hermes"]) == 2
    assert "row 1, column g_uS" in capsys.readouterr().err


def test_fast_jit_options_and_their_fallback():
    """The fitting's compiled functions take XLA options this JAX accepts; an option this XLA
    does not know (as older ones lack the fusion-emitter switch) falls back to a plain jit
    with the same values, small and large arguments alike."""
    assert _accepted(tuple(sorted(FastJit.OPTIONS.items())))
    assert not _accepted((("xla_no_such_option", 1),))
    def f(x, *, k):
        return jnp.sum(x * k)

    unknown = _jit(f, ("k",), {"xla_no_such_option": 1})
    fast = FastJit(f, static_argnames=("k",))
    for n in (10, FastJit.LARGE):
        x = np.arange(n, dtype=np.float32) % 7
        expected = 3.0 * float(np.sum(x, dtype=np.float64))  # integers: exact in float32 sums
        assert float(fast(x, k=3.0)) == expected == float(unknown(x, k=3.0))
