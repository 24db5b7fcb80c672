"""Calibrate program-and-verify to the HERMES-fitted programming noise σ_prog(g_T).

The HERMES-fitted σ_prog (PHYSICS.md §2.1) is the measured outcome of HERMES's
program-and-verify, so the simulated loop (:mod:`pcmjax.chip.verify`) with HERMES's
parameters (80 counts per device, a 5-count tolerance, 30 iterations, the device's 1/f read
noise over a 512 ns read) must reproduce it. Its free physics is the pulse response: the
spread law ``pulse_spread · g_dev · (1 − exp(−g / (pulse_spread_scale · g_dev)))`` and the
share of it that develops after the verify read (``relax_fraction``, and
``set_relax_fraction`` for a device left SET by the two-device strategy).

For ``HermesPCM(num_devices=1)`` and ``(2)``, ``--devices`` polarities are programmed at each
of 10 levels from 0.1 to 1.0 ``g_max`` with a fixed key, and ``std(G − G_T) / g_max`` is
compared with ``device.prog_sigma(G_T) / g_max``. The sampling error of a standard deviation
from ``N`` Gaussian samples is ``σ / sqrt(2N)`` (0.35 % of σ at the default 40,000).

With ``--fit`` the four parameters are fitted first (Nelder–Mead on the largest
``|log(simulated / fitted)|`` over the 20 levels plus a fifth of their rms; fixed keys make
the objective deterministic), starting from ``ProgramConfig``'s defaults.

Usage:
  python benchmarks/calibrate_verify.py [--devices 40000] [--fit] [--evals 250]

Prints a table of simulated and fitted σ per level; the last line is a JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize

from pcmjax.chip.verify import program_verify
from pcmjax.config import ProgramConfig
from pcmjax.devices import HermesPCM

LEVELS = np.round(np.linspace(0.1, 1.0, 10), 2)
FREE = ("pulse_spread", "pulse_spread_scale", "relax_fraction", "set_relax_fraction")
# Bounds of the fit (a logistic map keeps every trial inside them).
BOUNDS = {"pulse_spread": (0.02, 0.4), "pulse_spread_scale": (0.05, 1.5), "relax_fraction": (0.0, 1.0),
          "set_relax_fraction": (0.0, 1.0)}


def simulator(n, devices, seed):
    """A jitted ``theta -> std(G − G_T)`` per level for ``HermesPCM(num_devices=n)``, and the fitted σ."""
    dev = HermesPCM(num_devices=n)
    g_max = float(dev.g_max)
    g_t = jnp.asarray(np.repeat(LEVELS[:, None], devices, axis=1) * g_max, jnp.float32)
    fitted = np.asarray(dev.prog_sigma(g_t[:, 0]), np.float64) / g_max
    base = dataclasses.asdict(ProgramConfig(method="verify"))

    @jax.jit
    def run(theta):
        # A namespace, not a ProgramConfig: the fitted fields are traced, the rest static.
        p = types.SimpleNamespace(**{**base, **dict(zip(FREE, theta))})
        g = program_verify(jax.random.key(seed), g_t, dev, types.SimpleNamespace(program=p))
        err = (g - g_t) / g_max
        return jnp.std(err, axis=1), jnp.mean(err, axis=1)

    return run, fitted


def to_theta(z):
    lo, hi = np.array([BOUNDS[k] for k in FREE]).T
    return lo + (hi - lo) / (1.0 + np.exp(-np.asarray(z)))


def to_z(theta):
    lo, hi = np.array([BOUNDS[k] for k in FREE]).T
    u = (np.asarray(theta) - lo) / (hi - lo)
    u = np.clip(u, 1e-4, 1 - 1e-4)
    return np.log(u / (1.0 - u))


def fit(sims, theta0, evals):
    def objective(z):
        logs = np.concatenate([np.log(np.asarray(run(jnp.asarray(to_theta(z), jnp.float32))[0]) / f)
                               for run, f in sims.values()])
        return float(np.max(np.abs(logs)) + 0.2 * np.sqrt(np.mean(logs**2)))

    res = minimize(objective, to_z(theta0), method="Nelder-Mead",
                   options=dict(maxfev=evals, xatol=1e-3, fatol=1e-5))
    return to_theta(res.x), res.fun


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=40000, help="polarities per level and configuration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit", action="store_true", help="fit the four pulse-response parameters first")
    ap.add_argument("--evals", type=int, default=250, help="objective evaluations of the fit")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    defaults = ProgramConfig()
    theta = np.array([getattr(defaults, k) for k in FREE], np.float64)
    sims = {n: simulator(n, args.devices, args.seed) for n in (1, 2)}
    objective = None
    if args.fit:
        theta, objective = fit(sims, theta, args.evals)
        print("fitted: " + ", ".join(f"{k}={v:.4f}" for k, v in zip(FREE, theta)) + f" (objective {objective:.4f})")
    else:
        print("ProgramConfig defaults: " + ", ".join(f"{k}={v:g}" for k, v in zip(FREE, theta)))

    out = {}
    print(f"{args.devices} polarities per level; σ(G − G_T) / g_max in %; ratio = simulated / fitted")
    print(f"{'g_T/g_max':>9} | {'1 dev sim':>9} {'fitted':>7} {'ratio':>6} {'bias':>6} | "
          f"{'2 dev sim':>9} {'fitted':>7} {'ratio':>6} {'bias':>6}")
    for n, (run, fitted) in sims.items():
        sd, mean = (np.asarray(a, np.float64) for a in run(jnp.asarray(theta, jnp.float32)))
        out[n] = dict(simulated=sd, fitted=fitted, ratio=sd / fitted, bias=mean)
    for i, lev in enumerate(LEVELS):
        cells = [f"{100 * out[n]['simulated'][i]:>9.2f} {100 * out[n]['fitted'][i]:>7.2f} "
                 f"{out[n]['ratio'][i]:>6.3f} {100 * out[n]['bias'][i]:>6.2f}" for n in (1, 2)]
        print(f"{lev:>9.1f} | {cells[0]} | {cells[1]}")
    worst = max(float(np.max(np.abs(out[n]["ratio"] - 1.0))) for n in (1, 2))
    print(f"largest |simulated / fitted − 1|: {worst:.3f}; sampling error of each σ: "
          f"{100 / np.sqrt(2 * args.devices):.2f} % of σ; {time.perf_counter() - t0:.0f} s")
    print(json.dumps({
        "params": {k: round(float(v), 4) for k, v in zip(FREE, theta)}, "objective": objective,
        "levels": LEVELS.tolist(), "worst_relative_deviation": round(worst, 4),
        **{f"{n}_device": {k: [round(float(x), 5) for x in v] for k, v in out[n].items()} for n in (1, 2)},
        "args": vars(args)}))


if __name__ == "__main__":
    main()
