"""Monte Carlo runner benchmark: the default study end to end, against a Python loop, and scaling.

1. The default study (``pcmjax study``: digits MLP on a HERMES chip, 100 instances × 6
   times × 3 variants) end to end in a fresh process, including start-up and
   compilation: once with an empty compilation cache (cold) and once more with the cache
   it filled (warm). The network is trained beforehand if it is not cached yet (timed
   separately: it happens once per machine).
2. Vectorised runner vs a per-instance Python loop over the same jitted single-instance
   function (compilation excluded on both sides), on the default study, on a small
   raw-MVM study and on a tiny one (where per-instance work is so small that calls
   dominate and evaluating instances together pays off).
3. Scaling of compute time and memory with the number of instances (1 … 1024) and with
   the chunk size and vmap width, on a raw-MVM study. Memory is XLA's figure for the
   per-device program (temporaries + arguments + outputs) and the process's peak RSS.

Usage:
  python benchmarks/bench_montecarlo.py [--quick] [--skip-default] [--max-instances 1024]

The last line printed is one JSON object with ``default_study_seconds`` (cold cache, wall
clock), ``default_study_cpu_seconds`` (CPU time of that process: on a shared machine the
wall clock also measures the other jobs), ``default_study_seconds_warm``, ``loop_ratio``
(loop time / ours, default study),
``loop_ratio_small`` / ``loop_ratio_tiny`` (the raw-MVM studies), ``evals_per_s`` and the scaling tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import pcmjax as pj
from pcmjax import montecarlo as mc

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def default_study_end_to_end(tmp: Path) -> dict:
    """Run ``pcmjax study`` in fresh processes: cold and warm compilation cache."""
    t0 = time.perf_counter()
    _, ckpt = mc.default_network(log=None)  # trains once per machine
    train_s = time.perf_counter() - t0
    cache = tmp / "cache"
    (cache / "networks").mkdir(parents=True)
    shutil.copy(ckpt, cache / "networks" / ckpt.name)
    env = dict(os.environ, PCMJAX_CACHE=str(cache))
    out = {"network_ready_s": round(train_s, 2)}
    for label in ("cold", "warm"):
        folder = tmp / f"results-{label}"
        load = os.getloadavg()[0]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pcmjax.cli", "study", "-o", str(folder), "--quiet"],
                              env=env, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if proc.returncode != 0:
            raise RuntimeError(f"pcmjax study failed:\n{proc.stderr[-3000:]}")
        info = json.loads((folder / "run.json").read_text())
        out[label] = {"seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "load_average": round(load, 2),
                      "compile_s": round(info["compile_s"], 2), "prepare_s": round(info.get("prepare_s", 0.0), 2),
                      "compute_s": round(info["compute_s"], 2), "evals_per_s": round(info["evals_per_s"], 2),
                      "vmap_width": info.get("vmap_width"), "chunk_size": info.get("chunk_size")}
        print(f"default study ({label} compilation cache): {wall:.1f} s end to end, {cpu:.1f} s of CPU "
              f"(compile {info['compile_s']:.1f} s, compute {info['compute_s']:.1f} s, "
              f"{info['evals_per_s']:.1f} evals/s; load average {load:.1f} on {os.cpu_count()} CPUs)", flush=True)
    return out


def loop_ratio(study: mc.Study, label: str, **run_kw) -> dict:
    """Compute time of the runner vs a Python loop over the jitted one-instance function."""
    # No conductance histograms: the loop evaluates the metrics only, so must the runner.
    res = mc.run_study(study, None, quiet=True, plots=False, histogram_instances=0, **run_kw)
    ours = res.run_info["compute_s"]
    one = jax.jit(mc.instance_function(study))
    args = (study.workload.data(), study.device, np.uint32(study.seed), np.asarray(study.times, np.float32))
    jax.block_until_ready(one(*args, np.int32(0)))  # compile
    t0 = time.perf_counter()
    loop_vals = []
    for i in range(study.instances):
        loop_vals.append(one(*args, np.int32(i)))
    jax.block_until_ready(loop_vals)
    loop = time.perf_counter() - t0
    evals = study.instances * len(study.times) * len(study.variants)
    # The loop's program is compiled without the instance axis, so XLA may round a few
    # results differently (and flip an ADC count or a near-tie prediction): compare medians.
    loop_med = np.median(np.stack([np.asarray(v) for v in loop_vals]), axis=0)
    ours_med = np.median(res.values, axis=0)
    dev = float(np.max(np.abs(loop_med - ours_med) / np.maximum(np.abs(ours_med), 1e-6)))
    print(f"{label}: runner {ours:.2f} s ({evals / ours:.1f} evals/s, width {res.run_info['vmap_width']}), "
          f"Python loop {loop:.2f} s ({evals / loop:.1f} evals/s): loop / runner = {loop / ours:.2f}; "
          f"largest relative difference of the medians {dev:.1e}", flush=True)
    return {"runner_s": round(ours, 3), "loop_s": round(loop, 3), "ratio": round(loop / ours, 3),
            "evals_per_s": round(evals / ours, 2), "vmap_width": res.run_info["vmap_width"],
            "median_rel_diff": dev}


def small_study(instances: int, size: int = 64, batch: int = 16) -> mc.Study:
    chip = pj.ChipConfig(n_cores=2, rows=size, cols=size)
    return mc.Study(mc.MVMWorkload(cores=2, rows=size, cols=size, batch=batch, calibration_batch=batch),
                    times=mc.log_times(1.0, mc.YEAR, 6), instances=instances, chip=chip, name=f"mvm-{size}")


def scaling(max_instances: int) -> dict:
    rows = {"instances": [], "chunk": []}
    print("\nscaling (raw MVM, 2 cores of 64×64, 6 times × 3 variants)")
    print(f"{'instances':>10}{'chunk':>7}{'width':>7}{'compute s':>11}{'evals/s':>10}{'XLA MiB':>9}{'RSS MiB':>9}")
    n = 1
    while n <= max_instances:
        res = mc.run_study(small_study(n), None, quiet=True, plots=False, chunk_size=64)
        rows["instances"].append(_row(n, res))
        n *= 4 if n < 1024 else 2
    n = min(256, max_instances)
    for chunk, width in ((8, None), (32, None), (128, None), (256, None), (64, 1), (64, 2), (64, 4)):
        res = mc.run_study(small_study(n), None, quiet=True, plots=False, chunk_size=chunk, vmap_width=width)
        rows["chunk"].append(_row(n, res))
    return rows


def _row(n, res) -> dict:
    info = res.run_info
    evals = n * res.values.shape[1] * res.values.shape[2]
    mem = info.get("xla_memory_per_device", {}).get("total", 0) / 2**20
    row = {"instances": n, "chunk_size": info["chunk_size"], "vmap_width": info["vmap_width"],
           "compute_s": round(info["compute_s"], 3), "evals_per_s": round(evals / info["compute_s"], 1),
           "xla_mib": round(mem, 1), "rss_mib": round(_rss_mib(), 1)}
    print(f"{n:>10}{row['chunk_size']:>7}{row['vmap_width']:>7}{row['compute_s']:>11.3f}{row['evals_per_s']:>10.1f}"
          f"{row['xla_mib']:>9.1f}{row['rss_mib']:>9.1f}", flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer instances in the loop comparison and scaling")
    p.add_argument("--skip-default", action="store_true", help="skip the end-to-end default study")
    p.add_argument("--max-instances", type=int, default=1024)
    args = p.parse_args(argv)
    print(f"backend {jax.default_backend()}, {len(jax.devices())} device(s), {os.cpu_count()} CPU(s), "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    mc.enable_compilation_cache(Path(tempfile.mkdtemp(prefix="pcmjax-bench-xla-")))
    result = {}
    with tempfile.TemporaryDirectory(prefix="pcmjax-bench-") as tmp:
        if not args.skip_default:
            e2e = default_study_end_to_end(Path(tmp))
            result.update(default_study_seconds=e2e["cold"]["seconds"],
                          default_study_cpu_seconds=e2e["cold"]["cpu_seconds"],
                          default_study_seconds_warm=e2e["warm"]["seconds"], evals_per_s=e2e["cold"]["evals_per_s"],
                          default_study=e2e)
    sc = mc.default_study({"instances": 8 if args.quick else 24})
    d = loop_ratio(sc.study, "default study, loop comparison")
    s = loop_ratio(small_study(64 if args.quick else 256), "small raw-MVM study (2 cores of 64×64), loop comparison")
    t = loop_ratio(small_study(256 if args.quick else 1024, size=8, batch=4),
                   "tiny raw-MVM study (2 cores of 8×8), loop comparison")
    result.update(loop_ratio=d["ratio"], loop_ratio_small=s["ratio"], loop_ratio_tiny=t["ratio"], loop_default=d,
                  loop_small=s, loop_tiny=t)
    result.setdefault("evals_per_s", d["evals_per_s"])
    result["scaling"] = scaling(min(args.max_instances, 256 if args.quick else args.max_instances))
    result.update(backend=jax.default_backend(), devices=len(jax.devices()), cpus=os.cpu_count(),
                  load_average=round(os.getloadavg()[0], 2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
