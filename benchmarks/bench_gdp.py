"""MVM error of gradient-based programming (GDP) against one-shot and program-and-verify.

The same weights, the same programming key, and the same keys for aging and for every
MVM are used for each method; only ``ChipConfig.program`` changes. For each method and
time after programming (1 s, 1 h, 1 day) two errors are printed:

* ``chip``: the relative MVM error of the whole HERMES pipeline (PWM, per-read noise, ADC,
  digital unit, global drift compensation) on random inputs uniform in [−1, 1],
  ``‖y − x W‖ / ‖x W‖``, averaged over ``--repeats`` aging/read keys;
* ``array``: the same for the programmed array alone (conductances at ``t`` times the
  compensation factor, against the mapped weights; what GDP optimises), which is the
  expected MVM error over independent inputs without the periphery's noise.

GDP variants: targets optimised for the mean error over (1 s, 1 h, 1 day) and written
with one-shot programming (``gdp``) or with program-and-verify (``gdp_verify``); with
``--per-time`` also one one-shot GDP per time, optimised for that time alone.

Usage:
  python benchmarks/bench_gdp.py [--cores 1] [--steps 300] [--repeats 4] [--per-time]

The last line printed is a JSON object with every error and the ratios
``gdp / one_shot``, ``gdp / verify`` and ``gdp_verify / verify`` per time.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

import pcmjax as pj
from pcmjax.config import GDPConfig

TIMES = (1.0, 3600.0, 86400.0)
LABELS = {1.0: "1 s", 3600.0: "1 h", 86400.0: "1 day"}


def errors(state, W, x, key, times, repeats):
    ref = jnp.einsum("cbr,crk->cbk", x, W)
    w_n = W / state.w_max
    out = {}
    for t in times:
        chip, array = [], []
        for r in range(repeats):
            k_t, k_m = jax.random.split(jax.random.fold_in(key, r))
            st = state.at_time(k_t, t)
            y = pj.mvm(k_m, st, x)
            chip.append(float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref)))
            w_t = st.w[:, 0] * st.comp[:, None, :]
            array.append(float(jnp.linalg.norm(w_t - w_n) / jnp.linalg.norm(w_n)))
        out[t] = (sum(chip) / repeats, sum(array) / repeats)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-time", action="store_true")
    p.add_argument("--no-verify-gdp", action="store_true", help="skip GDP written with program-and-verify (slow)")
    args = p.parse_args(argv)

    base = pj.ChipConfig(n_cores=args.cores)
    k_w, k_p, k_x, k_e = jax.random.split(jax.random.key(args.seed), 4)
    W = jax.random.normal(k_w, (args.cores, base.rows, base.cols)) * 0.05
    x = jax.random.uniform(k_x, (args.cores, args.batch, base.rows), minval=-1.0, maxval=1.0)

    def gdp(write, times):
        g = GDPConfig(steps=args.steps, samples=args.samples, times_s=times, write=write)
        return base.set("program.method", "gdp").set("program.gdp", g)

    methods = {"one_shot": base, "verify": base.set("program.method", "verify"), "gdp": gdp("one_shot", TIMES)}
    if not args.no_verify_gdp:
        methods["gdp_verify"] = gdp("verify", TIMES)
    if args.per_time:
        for t in TIMES:
            methods[f"gdp@{LABELS[t].replace(' ', '')}"] = gdp("one_shot", (t,))

    results, seconds = {}, {}
    print(f"{args.cores} core(s) of 256×256, N(0, 0.05²) weights, GDP {args.steps} steps × {args.samples} samples")
    print(f"{'method':<14} {'program s':>9}  " + "  ".join(f"{'chip ' + LABELS[t]:>11} {'array ' + LABELS[t]:>12}"
                                                      for t in TIMES))
    for name, cfg in methods.items():
        t0 = time.perf_counter()
        st = pj.program_chip(k_p, W, cfg)
        jax.block_until_ready(st.w)
        seconds[name] = time.perf_counter() - t0
        results[name] = errors(st, W, x, k_e, TIMES, args.repeats)
        print(f"{name:<14} {seconds[name]:>9.1f}  " + "  ".join(
            f"{results[name][t][0]:>11.4f} {results[name][t][1]:>12.4f}" for t in TIMES), flush=True)

    ratios = {}
    pairs = [("gdp", "one_shot"), ("gdp", "verify")] + ([("gdp_verify", "verify")] if "gdp_verify" in results else [])
    for a, b in pairs:
        for i, kind in enumerate(("chip", "array")):
            ratios[f"{a}/{b} {kind}"] = {LABELS[t]: round(results[a][t][i] / results[b][t][i], 4) for t in TIMES}
    for k, v in ratios.items():
        print(f"{k:<26} " + "  ".join(f"{lab} {r:.3f}" for lab, r in v.items()))
    print(json.dumps({"errors": {m: {LABELS[t]: {"chip": round(c, 5), "array": round(a, 5)}
                                     for t, (c, a) in r.items()} for m, r in results.items()},
                      "ratios": ratios, "program_seconds": {k: round(v, 1) for k, v in seconds.items()},
                      "args": vars(args)}))


if __name__ == "__main__":
    main()
