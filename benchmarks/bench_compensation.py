"""Drift-compensation references against the exact ratio of the signal, 1 s to 1 year.

For every reference of ``ChipConfig.gdc_reference`` (``total``: the default all-equal read
of the columns' total conductance; ``one_hot``: mean |output| of one-hot inputs;
``set_devices``: the total conductance of the weight-holding devices only; ``signal``: the
exact ratio ``⟨W₀, W₀⟩ / ⟨W₀, W_t⟩`` of the stored weights, an oracle), on the default chip
(HERMES model, two devices per sign, global compensation): the mean compensation factor
and the relative MVM error ``‖y − x W‖ / ‖x W‖`` on uniform inputs, over chip instances
(same keys for every reference, so the differences are paired).

    python benchmarks/bench_compensation.py [--instances 8] [--cores 8] [--quick]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import pcmjax as pj

REFERENCES = ("total", "one_hot", "set_devices", "signal")
TIMES = (1.0, 60.0, 3600.0, 86400.0, 2.6e6, 3.15e7)
TIME_NAMES = ("1 s", "1 min", "1 h", "1 day", "1 month", "1 year")


def _run(reference: str, instances: int, cores: int, batch: int):
    cfg = pj.ChipConfig(n_cores=cores, gdc_reference=reference)
    dev = pj.devices.HermesPCM(num_devices=2)

    def one(i, t):
        key = jax.random.fold_in(jax.random.key(0), i)
        k_w, k_x, k_p, k_t, k_r = jax.random.split(key, 5)
        w = jax.random.normal(k_w, (cores, 256, 256)) / 16.0
        x = jax.random.uniform(k_x, (cores, batch, 256), minval=-1.0, maxval=1.0)
        state = pj.program_chip(k_p, w, cfg, dev).at_time(k_t, t)
        y = pj.mvm(k_r, state, x)
        ref = jnp.einsum("cbr,crk->cbk", x, w)
        return jnp.mean(state.comp), jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref)

    fn = jax.jit(lambda t: jax.lax.map(lambda i: one(i, t), jnp.arange(instances)))
    out = {}
    for t in TIMES:
        comp, err = fn(jnp.float32(t))
        out[t] = (np.asarray(comp, np.float64), np.asarray(err, np.float64))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=8)
    p.add_argument("--cores", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="2 instances of 2 cores (a smoke run)")
    a = p.parse_args(argv)
    if a.quick:
        a.instances, a.cores = 2, 2
    t0 = time.perf_counter()
    res = {r: _run(r, a.instances, a.cores, a.batch) for r in REFERENCES}
    sig = res["signal"]
    print(f"Drift compensation on ChipConfig() (HERMES, 2 devices/sign): {a.instances} instances x "
          f"{a.cores} cores, factor / MVM error (mean ± SE over instances)")
    head = f"{'time':>8} | " + " | ".join(f"{r:>22}" for r in REFERENCES) + " | total/signal - 1"
    print(head)
    print("-" * len(head))
    rows = []
    for t, name in zip(TIMES, TIME_NAMES):
        cells, row = [], {"t_s": t}
        for r in REFERENCES:
            comp, err = res[r][t]
            se = err.std(ddof=1) / np.sqrt(len(err)) if len(err) > 1 else float("nan")
            cells.append(f"{comp.mean():6.4f} / {err.mean():.4f}±{se:.4f}")
            row[r] = {"factor": float(comp.mean()), "mvm_error": float(err.mean()), "mvm_error_se": float(se)}
        bias = res["total"][t][0] / sig[t][0] - 1.0
        row["total_bias"] = float(bias.mean())
        rows.append(row)
        print(f"{name:>8} | " + " | ".join(f"{c:>22}" for c in cells) + f" | {100 * bias.mean():+.2f} %")
    print(json.dumps({"benchmark": "compensation", "instances": a.instances, "cores": a.cores,
                      "seconds": round(time.perf_counter() - t0, 1), "rows": rows}))


if __name__ == "__main__":
    main()
