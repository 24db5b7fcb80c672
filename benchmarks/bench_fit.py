"""Device-fit coverage: synthetic data sets from randomly perturbed parameters per family.

For each data set: the default fit and the fit started at the truth; prints per family the
fraction of identified parameters and of mean drift exponents at 5 levels within ±2
reported standard errors, the worst NLL difference (default − truth start) and the time,
then one JSON line. Usage: ``python benchmarks/bench_fit.py [--sets 30] [--devices 400]
[--families pcm_like,state_independent,hermes]``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from pcmjax.devices import HermesPCM, PCMLike, StateIndependent
from pcmjax.fit import _params, fit_device_model, simulate_measurements
from pcmjax.fit._derived import _split, folded_mean

BASES = {"pcm_like": lambda: PCMLike(1), "state_independent": StateIndependent, "hermes": lambda: HermesPCM(2)}


def run_family(family: str, n_sets: int, n_devices: int) -> dict:
    rng = np.random.default_rng(0)
    times = np.geomspace(30, 1e5, 5)
    hit = tot = mhit = mtot = 0
    worst, t0 = -np.inf, time.time()
    for i in range(n_sets):
        base = BASES[family]()
        entries = _params.entries_for(base)
        v = _params.values_of(base, entries) * (1 + 0.15 * rng.standard_normal(len(entries)))
        truth = _params.finalize(_params.with_values(base, entries, v))
        levels = np.linspace(0.08, 1.0, 8) * float(truth.g_max)
        data = simulate_measurements(jax.random.key(i), truth, np.repeat(levels, n_devices // 8), times)
        fit = fit_device_model(data, family)
        worst = max(worst, fit.stats["nll"] - fit_device_model(data, family, init=truth, starts=1).stats["nll"])
        true = _params.values_of(truth, [_params.Entry(*_split(n), s) for n, s in zip(fit.names, fit.stages)])
        ok = np.isfinite(fit.stderr)
        hit += int(np.sum(np.abs(fit.values[ok] - true[ok]) <= 2 * fit.stderr[ok]))
        tot += int(ok.sum())
        lv = np.linspace(0.1, 0.9, 5) * float(truth.g_max)
        m, se = fit.mean_drift(lv)
        mhit += int(np.sum(np.abs(m - np.asarray(folded_mean(*truth.nu_moments(lv)))) <= 2 * se))
        mtot += lv.size
    return dict(family=family, sets=n_sets, devices=n_devices, params_within_2se=hit / max(tot, 1),
                identified_params=tot, mean_nu_within_2se=mhit / mtot, worst_dnll=float(worst),
                seconds=time.time() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", type=int, default=30)
    p.add_argument("--devices", type=int, default=400)
    p.add_argument("--families", default="pcm_like,state_independent,hermes")
    a = p.parse_args()
    rows = [run_family(f, a.sets, a.devices) for f in a.families.split(",")]
    print(f"{'family':<18}{'sets':>5}{'params ±2SE':>13}{'mean ν ±2SE':>13}{'worst ΔNLL':>12}{'s':>8}")
    for r in rows:
        print(f"{r['family']:<18}{r['sets']:>5}{r['params_within_2se']:>13.3f}{r['mean_nu_within_2se']:>13.3f}"
              f"{r['worst_dnll']:>12.2f}{r['seconds']:>8.1f}")
    print(json.dumps({"bench": "fit_coverage", "rows": rows}))


if __name__ == "__main__":
    main()
