"""Device-fit coverage: synthetic data sets from randomly perturbed parameters per family.

For each data set: the default fit and the fit started at the truth; prints per family the
fraction of identified parameters (finite standard error) and of mean drift exponents at
5 levels with a finite error within ±2 reported standard errors (with how many were
identified / finite), the worst NLL difference (default − truth start) and the time,
then one JSON line. Usage: ``python benchmarks/bench_fit.py [--sets 30] [--devices 400]
[--families pcm_like,state_independent,hermes,flexible]``; ``--examples`` runs the two worked
examples instead (1000 PCM-like devices with the drift law clipped over most levels; 1200
single HERMES devices whose drift law is 0.8 of the published one, 6 reads from 30 s to
1 week): the default fit against the fit started at the truth and the mean drift
exponent at 5 levels against the truth with its reported error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from pcmjax.devices import Flexible, HermesPCM, PCMLike, StateIndependent
from pcmjax.fit import _params, fit_device_model, simulate_measurements
from pcmjax.fit._derived import _split, folded_mean

BASES = {"pcm_like": lambda: PCMLike(1), "state_independent": StateIndependent, "hermes": lambda: HermesPCM(2),
         "flexible": lambda: Flexible(1, g_max=25.0, prog_coeffs=[0.3, 2.0, -1.0, 0.2], mu_nu=[0.09, -0.05, 0.01, 0.0],
                                      sigma_nu=[0.03, -0.01, 0.0, 0.0], q_s_law=[0.03, -0.02, 0.01, 0.0])}


def run_family(family: str, n_sets: int, n_devices: int) -> dict:
    rng = np.random.default_rng(0)
    times = np.geomspace(30, 1e5, 5)
    hit = tot = mhit = mtot = mall = ptot = 0
    over = []
    worst, t0 = -np.inf, time.time()
    for i in range(n_sets):
        base = BASES[family]()
        entries = _params.entries_for(base)
        v = _params.values_of(base, entries) * (1 + 0.15 * rng.standard_normal(len(entries)))
        truth = _params.finalize(_params.with_values(base, entries, v))
        levels = np.linspace(0.08, 1.0, 8) * float(truth.g_max)
        data = simulate_measurements(jax.random.key(i), truth, np.repeat(levels, n_devices // 8), times)
        fit = fit_device_model(data, family)
        dnll = fit.stats["nll"] - fit_device_model(data, family, init=truth, starts=1).stats["nll"]
        worst, over = max(worst, dnll), over + [round(float(dnll), 2)] * bool(dnll > 1.0)
        print(f"{family} set {i}: NLL - NLL(started at the truth) = {dnll:.3f}", file=sys.stderr, flush=True)
        true = _params.values_of(truth, [_params.Entry(*_split(n), s) for n, s in zip(fit.names, fit.stages)])
        ok = np.isfinite(fit.stderr)
        hit += int(np.sum(np.abs(fit.values[ok] - true[ok]) <= 2 * fit.stderr[ok]))
        tot += int(ok.sum())
        lv = np.linspace(0.1, 0.9, 5) * float(truth.g_max)
        m, se = fit.mean_drift(lv)
        fin = np.isfinite(se)
        mhit += int(np.sum(np.abs(m - np.asarray(folded_mean(*truth.nu_moments(lv))))[fin] <= 2 * se[fin]))
        mtot += int(fin.sum())
        mall += lv.size
        ptot += len(fit.names) + len(fit.fixed)
    return dict(family=family, sets=n_sets, devices=n_devices, params_within_2se=hit / max(tot, 1),
                identified_params=tot, law_entries=ptot, mean_nu_within_2se=mhit / max(mtot, 1),
                mean_nu_finite=mtot, mean_nu_total=mall, worst_dnll=float(worst), dnll_above_1=over,
                seconds=time.time() - t0)


def _example(name, truth, family, g_t, times, key, **fit_kw) -> dict:
    """One worked example: the default fit against the fit started at the truth, and the
    mean drift exponent at 5 levels against the truth with its reported error."""
    data = simulate_measurements(jax.random.key(key), truth, g_t, times)
    t0 = time.time()
    fit = fit_device_model(data, family, **fit_kw)
    sec = time.time() - t0
    at_truth = fit_device_model(data, family, init=truth, starts=1, **fit_kw)
    lv = np.linspace(0.1, 0.9, 5) * float(truth.g_max)
    m, se = fit.mean_drift(lv)
    true = np.asarray(folded_mean(*[x * truth.drift_scale for x in truth.nu_moments(lv)]), np.float64)
    print(f"\n== {name}: {data.n_devices} devices, {len(times)} reads ({times[0]:.0f} s to {times[-1]:.3g} s), "
          f"fit in {sec:.1f} s")
    print(fit.summary())
    print(f"NLL(default) - NLL(started at the truth) = {fit.stats['nll'] - at_truth.stats['nll']:.3f}")
    print(f"{'g (µS)':>8}{'true E[ν]':>11}{'fit':>9}{'± SE':>10}{'(fit-true)/SE':>15}")
    for g, t, v, e in zip(lv, true, m, se):
        print(f"{g:>8.3g}{t:>11.4f}{v:>9.4f}{e:>10.4f}{(v - t) / e:>15.2f}")
    return dict(example=name, dnll=float(fit.stats["nll"] - at_truth.stats["nll"]), g=lv.tolist(),
                true=true.tolist(), fit=m.tolist(), se=se.tolist(), seconds=sec)


def run_examples() -> list:
    """The two worked examples: PCM-like devices with a drift law clipped over most levels,
    and HERMES single devices whose drift law is 0.8 of the published one."""
    out = [_example("pcm_like drift law mu_nu=(-0.02, 0.04, 0.06, 0.12)", PCMLike(1, mu_nu=(-0.02, 0.04, 0.06, 0.12)),
                    "pcm_like", np.linspace(0.04, 1.0, 1000) * 25.0, np.geomspace(30, 7 * 86400, 6), key=0)]
    truth = HermesPCM(1, drift_scale=0.8)
    out.append(_example("hermes, 1 device, drift law x 0.8", truth, "hermes", np.linspace(0.04, 1.0, 1200)
                        * float(truth.g_max), np.geomspace(30, 7 * 86400, 6), key=1, num_devices=1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", type=int, default=30)
    p.add_argument("--devices", type=int, default=400)
    p.add_argument("--families", default="pcm_like,state_independent,hermes,flexible")
    p.add_argument("--examples", action="store_true", help="run the two worked examples instead")
    a = p.parse_args()
    if a.examples:
        print(json.dumps({"bench": "fit_examples", "rows": run_examples()}))
        return
    rows = [run_family(f, a.sets, a.devices) for f in a.families.split(",")]
    print(f"{'family':<18}{'sets':>5}{'identified':>12}{'params ±2SE':>13}{'mean ν finite':>15}{'mean ν ±2SE':>13}"
          f"{'worst ΔNLL':>12}{'s':>8}")
    for r in rows:
        print(f"{r['family']:<18}{r['sets']:>5}{r['identified_params']:>5}/{r['law_entries']:<6}"
              f"{r['params_within_2se']:>13.3f}{r['mean_nu_finite']:>8}/{r['mean_nu_total']:<6}"
              f"{r['mean_nu_within_2se']:>13.3f}{r['worst_dnll']:>12.2f}{r['seconds']:>8.1f}"
              f"  ΔNLL > 1: {r['dnll_above_1']}")
    print(json.dumps({"bench": "fit_coverage", "rows": rows}))


if __name__ == "__main__":
    main()
