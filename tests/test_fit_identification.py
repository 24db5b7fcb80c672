"""Device fits reach the optimum from the default start and report honest uncertainties.

* The PCM-like example of a new user (drift law mu_nu = (-0.02, 0.04, 0.06, 0.12), reads
  at 6 times): the default fit's NLL is within 1 of the fit started at the truth, and no
  standard error vanishes (each is either a real number or inf = not identified).
* Coverage over synthetic data sets from randomly perturbed parameters: the identified
  parameters and the mean drift exponent at 5 levels lie within ±2 reported standard
  errors in at least 90 % of the cases (less at most 2 binomial standard errors of the
  number of draws), and the fit's NLL is never more than 1 worse than the fit started at
  the truth. Compiled code is shared: every data set has the same shape.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from pcmjax.devices import Flexible, PCMLike, StateIndependent, save
from pcmjax.fit import _params, cli_main, fit_device_model, simulate_measurements
from pcmjax.fit._derived import _split, folded_mean

TIMES = np.geomspace(30, 1e5, 5)


def _issue_data():
    truth = PCMLike(1, mu_nu=(-0.02, 0.04, 0.06, 0.12))
    g_t = np.repeat(np.linspace(0.08, 1.0, 8) * 25.0, 60)
    return truth, simulate_measurements(jax.random.key(0), truth, g_t, np.geomspace(30, 7 * 86400, 6))


def test_pcm_like_default_start_reaches_the_optimum():
    truth, data = _issue_data()
    fit = fit_device_model(data, "pcm_like")
    at_truth = fit_device_model(data, "pcm_like", init=truth, starts=1)
    assert fit.stats["nll"] <= at_truth.stats["nll"] + 1.0, fit.summary()
    # no vanishing standard error: finite ones are a real fraction of the value's scale
    finite = np.isfinite(fit.stderr)
    assert np.all(fit.stderr[finite] > 1e-6 * np.maximum(np.abs(fit.values[finite]), 1e-3)), fit.summary()
    assert "not identified" in fit.summary() or np.all(finite)
    g = np.array([5.0, 12.0, 20.0])
    m, se = fit.mean_drift(g)
    true = np.asarray(folded_mean(*truth.nu_moments(g)))
    assert np.all(np.abs(m - true) <= 3 * se), (m, true, se)


def test_unreached_clip_bound_is_held_not_given_a_vanishing_error():
    # every level sits on the sloped piece: the bounds 0.0 and 0.5 are never reached
    truth = PCMLike(1, mu_nu=(-0.02, 0.04, 0.0, 0.5))
    data = simulate_measurements(jax.random.key(3), truth, np.repeat(np.linspace(3, 25, 6), 60), TIMES)
    fit = fit_device_model(data, "pcm_like")
    se = dict(zip(fit.names, fit.stderr))
    # held at a value that does not clip the data, or reported as not identified (some
    # configuration that fits as well leaves it unreached): never a finite error
    for bound in ("mu_nu[2]", "mu_nu[3]"):
        assert bound in fit.fixed or se[bound] == np.inf, fit.summary()
    assert abs(fit.params()["mu_nu[0]"][0] + 0.02) < 3 * se["mu_nu[0]"]


def test_cli_init_and_starts(tmp_path):
    truth, data = _issue_data()
    csv = tmp_path / "meas.csv"
    data.save(csv)
    init = tmp_path / "init.json"
    save(truth, init)
    stats = tmp_path / "stats.json"
    rc = cli_main([str(csv), "--family", "pcm_like", "--init", str(init), "--starts", "3", "--figures", "none",
                   "--out", str(tmp_path / "m.json"), "--stats-json", str(stats)])
    assert rc == 0
    out = json.loads(stats.read_text())
    assert all(s is None or s > 0 for _, s in out["params"].values())
    assert cli_main([str(csv), "--family", "pcm_like", "--init", str(tmp_path / "missing.json")]) == 2


def _perturbed(base, rng):
    entries = _params.entries_for(base)
    v = _params.values_of(base, entries) * (1 + 0.15 * rng.standard_normal(len(entries)))
    return _params.finalize(_params.with_values(base, entries, v))


def _within(n_sets, family, base, n_per_level, seed):
    """Hits and draws of the identified parameters and of the mean drift exponent at 5
    levels within ±2 reported standard errors, and the worst NLL against the fit started at
    the truth, over ``n_sets`` data sets from perturbed parameters."""
    rng = np.random.default_rng(seed)
    p_hit = p_tot = m_hit = m_tot = 0
    worst = -np.inf
    for i in range(n_sets):
        truth = _perturbed(base, rng)
        levels = np.linspace(0.08, 1.0, 8) * float(truth.g_max)
        data = simulate_measurements(jax.random.key(100 + i), truth, np.repeat(levels, n_per_level), TIMES)
        fit = fit_device_model(data, family)
        worst = max(worst, fit.stats["nll"] - fit_device_model(data, family, init=truth, starts=1).stats["nll"])
        true = _params.values_of(truth, [_params.Entry(*_split(n), s) for n, s in zip(fit.names, fit.stages)])
        ok = np.isfinite(fit.stderr)
        p_hit += int(np.sum(np.abs(fit.values - true)[ok] <= 2 * fit.stderr[ok]))
        p_tot += int(ok.sum())
        lv = np.linspace(0.1, 0.9, 5) * float(truth.g_max)
        m, se = fit.mean_drift(lv)
        fin = np.isfinite(se)
        m_hit += int(np.sum(np.abs(m - np.asarray(folded_mean(*truth.nu_moments(lv))))[fin] <= 2 * se[fin]))
        m_tot += int(fin.sum())
    return p_hit, p_tot, m_hit, m_tot, worst


def _at_least_90(hits, n):
    """Not significantly below 90 %: at most 2 binomial standard errors under it."""
    return hits >= 0.9 * n - 2.0 * np.sqrt(n * 0.9 * 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("family,base,n_sets", [
    ("state_independent", StateIndependent(), 5),
    ("pcm_like", PCMLike(1), 4),
    ("flexible", Flexible(1, g_max=25.0, prog_coeffs=[0.3, 2.0, -1.0, 0.2], mu_nu=[0.09, -0.05, 0.01, 0.0],
                          sigma_nu=[0.03, -0.01, 0.0, 0.0], q_s_law=[0.03, -0.02, 0.01, 0.0]), 4),
])
def test_coverage_over_perturbed_parameters(family, base, n_sets):
    # The criterion of benchmarks/bench_fit.py (30 sets of 400 devices) at a CI scale: 30
    # devices on each of 8 levels, every entry of the published law perturbed by 15 %.
    p_hit, p_tot, m_hit, m_tot, worst = _within(n_sets, family, base, 30, seed=1)
    assert worst <= 1.0
    assert p_tot >= 2 * n_sets and m_tot >= 3 * n_sets, (p_tot, m_tot)  # most quantities are identified
    assert _at_least_90(p_hit, p_tot), (p_hit, p_tot)
    assert _at_least_90(m_hit, m_tot), (m_hit, m_tot)


def test_line_splits_recover_an_exact_clipped_line():
    # points exactly on clip(a u + b, lo, hi) with both bounds reached: the configuration
    # with zero χ² is that law
    from pcmjax.fit._configs import line_splits

    u = np.log(np.linspace(0.08, 1.0, 8))
    law = (-0.03, 0.03, 0.04, 0.09)
    y = np.clip(law[0] * u + law[1], law[2], law[3])
    splits = line_splits(u, y, np.ones_like(u))
    chi2, best = min(splits, key=lambda r: r[0])
    assert chi2 < 1e-20
    np.testing.assert_allclose(best, law, atol=1e-12)
    assert all(lo <= hi for _, (_, _, lo, hi) in splits)
