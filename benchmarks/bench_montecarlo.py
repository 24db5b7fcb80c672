"""Monte Carlo runner benchmark: efficiency against the floor, start-up, and the runner at scale.

1. Efficiency (always): the digits MLP study (64-256-256-10, HERMES model, GDC, 100
   instances × 5 times from 1 s to 1 year, 360 evaluation images) and the same study on a
   digits CNN (``SmallCNN`` 16-32-64, trained once and cached). Measured in one process:

   * ``eval_ms``: the runner's compute per instance × time × variant evaluation
     (compilation excluded, no conductance histograms);
   * ``floor_ms``: a plain jitted float forward pass of the network over the evaluation
     examples, plus every analog layer's per-read-noise variance contraction over its used
     rows and columns, plus one standard normal per used device (2 polarities × 2 devices
     per weight);
   * ``efficiency = floor_ms / eval_ms``; ``efficiency_best``: the same ratio of the best
     of interleaved calls of the floor and of the study's compiled per-device program
     (both minima see the same load: steadier on a shared machine); ``efficiency_cpu``:
     the ratio of their process CPU times in the same interleaved calls (what preemption
     on a loaded machine does not inflate);
   * with ``--profile``: the per-device program's operation time split by stage of the
     data path (``jax.profiler`` events joined with the optimised HLO's named scopes).

2. Start-up (always): ``pcmjax study`` on the MLP efficiency study in fresh processes,
   with an empty compile cache, then with the cache it filled (the compiled program from
   the program store), then with the program store emptied (JAX's cache alone):
   ``startup_s`` (process start to the study's compilation) and ``compile_s``, in wall
   and CPU seconds (``*_cpu_s``, steadier on a shared machine), and what the caches
   served (``compile_cache``). Alone: ``python -c "import bench_montecarlo as b, pathlib,
   tempfile; print(b.startup('mlp', pathlib.Path(tempfile.mkdtemp())))"`` in benchmarks/.

3. With ``--full``: the embedded default study end to end (cold and warm cache), the
   runner against a per-instance Python loop, and scaling with instances, chunk size and
   vmap width on a raw-MVM study.

Usage:
  python benchmarks/bench_montecarlo.py [--instances 100] [--profile] [--full [--quick] [--max-instances 1024]]

The last line printed is one JSON object: ``floor_ms``, ``eval_ms``, ``efficiency``,
``startup_s``, ``compile_s`` (MLP study), ``efficiency_cnn``, the per-study details
(``studies``: widths, bytes per instance, load averages) and, with ``--full``, the
earlier figures (``default_study_seconds``, ``loop_ratio``, ``scaling`` ...).
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
import jax.numpy as jnp
import numpy as np

import pcmjax as pj
from pcmjax import _random
from pcmjax import montecarlo as mc
from pcmjax import nn as pnn
from pcmjax.data import load_digits
from pcmjax.montecarlo import _executor
from pcmjax.montecarlo import config as mcc

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


# -- efficiency: study compute against its floor -------------------------------------
TIMES5 = {"start": "1 s", "stop": "1 year", "num": 5}
CNN_ARCH = {"kind": "small_cnn", "in_features": 1, "channels": [16, 32, 64], "num_classes": 10, "image_size": 8}


def cnn_checkpoint(log=print) -> Path:
    """A digits CNN (``SmallCNN``), hardware-aware trained once and cached beside the MLP."""
    path = mc.cache_dir() / "networks" / "digits-small-cnn-16-32-64-hwa-bench-v1.npz"
    if path.exists():
        return path
    ds = load_digits()
    model = mc.build_network(CNN_ARCH, seed=0)
    log(f"training the digits CNN (first use; cached in {path}) ...")
    pnn.train(jax.random.key(0), model, ds.x_train.reshape(-1, 8, 8, 1), ds.y_train, mode="hwa", epochs=15,
              batch_size=64, learning_rate=3e-3)
    acc = pnn.accuracy(model, ds.x_test.reshape(-1, 8, 8, 1), ds.y_test, mode="digital")
    log(f"  digital test accuracy {100 * acc:.2f} %")
    path.parent.mkdir(parents=True, exist_ok=True)
    mc.save_network(path, model, CNN_ARCH, dataset="digits", test_accuracy=acc)
    return path


def efficiency_study_dict(kind: str, instances: int = 100) -> dict:
    """The efficiency studies: 100 instances × 5 times (1 s … 1 year), HERMES model, GDC, 360 images."""
    workload = {"kind": "network", "eval_examples": 360}
    if kind == "cnn":
        workload.update(checkpoint=str(cnn_checkpoint()), dataset="digits")
    return {"study": {"name": f"digits-{kind}-efficiency", "instances": instances, "times": TIMES5},
            "workload": workload, "variants": {"gdc": {"drift_compensation": "global"}}}


def floor_function(workload: mc.NetworkWorkload, num_devices: int):
    """The floor of one evaluation: the network's float forward pass over the evaluation
    examples, the per-read-noise variance contraction of every analog layer's used rows and
    columns (``q² @ σ²`` over the layer's MVMs), and one standard normal per used device
    (``2 polarities × num_devices`` per weight: what ageing the used devices draws).

    Returns:
      ``(jitted floor(x, qs, vs, key), its arguments, used devices)``.
    """
    data = workload.data()
    dep = workload._deployed().replace(params=data["params"])
    x = data["x"]
    mvms = pnn.layer_mvms(workload.model, dep.layout, x.shape[1:])
    rng = np.random.default_rng(0)
    qs, vs = [], []
    for lp in dep.layout.layers:
        rows, cols = lp.shape
        qs.append(jnp.asarray(rng.uniform(-1, 1, (int(round(mvms[lp.name] * x.shape[0])), rows)), jnp.float32))
        vs.append(jnp.asarray(rng.uniform(0, 1e-4, (rows, cols)), jnp.float32))
    used = 2 * num_devices * sum(lp.shape[0] * lp.shape[1] for lp in dep.layout.layers)

    @jax.jit
    def floor(x, qs, vs, key):
        y = dep.reference(x)  # the float network (analog layers computed digitally)
        var = sum(jnp.sum((q * q) @ v) for q, v in zip(qs, vs))
        return y, var + jnp.sum(_random.normal(key, (used,)))

    return floor, (x, tuple(qs), tuple(vs), jax.random.key(0)), used


def _best_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def efficiency(kind: str, instances: int, repeats: int = 20, profile: bool = False) -> dict:
    """``floor_ms``, ``eval_ms`` and their ratio for one study, measured in this process.

    ``eval_ms`` is the runner's compute time (compilation excluded, no conductance
    histograms) per instance × time × variant; the floor is timed right after (best of
    ``repeats``), so both see the same load."""
    sc = mcc.study_from_dict(efficiency_study_dict(kind, instances))
    study = sc.study
    load0 = os.getloadavg()[0]
    res = mc.run_study(study, None, quiet=True, plots=False, histogram_instances=0)
    info = res.run_info
    evals = study.instances * len(study.times) * len(study.variants)
    eval_ms = info["compute_s"] / evals * 1e3
    floor, args, used = floor_function(study.workload, int(study.device.num_devices))
    floor_ms = _best_ms(floor, args, repeats)
    # The same compiled per-device program, called again interleaved with the floor (best of
    # each): both minima see the same load, a steadier ratio on a shared machine.
    exe = list(_executor._COMPILED.values())[-1]
    ev_args = jax.device_put((study.workload.data(), study.device, np.uint32(study.seed),
                              np.asarray(study.times, np.float32), np.arange(info["vmap_width"], dtype=np.int32)))
    jax.block_until_ready(exe(*ev_args))
    per_call = info["vmap_width"] * len(study.times) * len(study.variants)
    best_floor = best_eval = float("inf")
    cpu_floor = cpu_eval = 0.0  # process CPU seconds: what a loaded machine's preemption does not inflate
    for _ in range(max(3, repeats // 4)):
        c0 = _cpu_s()
        best_floor = min(best_floor, _best_ms(floor, args, 1))
        c1 = _cpu_s()
        t0 = time.perf_counter()
        jax.block_until_ready(exe(*ev_args))
        best_eval = min(best_eval, (time.perf_counter() - t0) * 1e3 / per_call)
        cpu_floor, cpu_eval = cpu_floor + (c1 - c0) / 2, cpu_eval + (_cpu_s() - c1) / per_call  # _best_ms calls twice
    out = {"study": kind, "instances": study.instances, "times": len(study.times), "variants": len(study.variants),
           "eval_examples": int(study.workload.x_eval.shape[0]), "used_devices": used,
           "floor_ms": round(floor_ms, 3), "eval_ms": round(eval_ms, 3), "efficiency": round(floor_ms / eval_ms, 3),
           "floor_best_ms": round(best_floor, 3), "eval_best_ms": round(best_eval, 3),
           "efficiency_best": round(best_floor / best_eval, 3), "efficiency_cpu": round(cpu_floor / cpu_eval, 3),
           "compile_s": round(info["compile_s"], 2), "vmap_width": info["vmap_width"],
           "chunk_size": info["chunk_size"], "bytes_per_instance": info["bytes_per_instance_estimate"],
           "xla_bytes_per_device": info.get("xla_memory_per_device", {}).get("total"),
           "load_average": round((load0 + os.getloadavg()[0]) / 2, 2)}
    if profile:
        out["profile_ms"] = profile_split(exe, ev_args, per_call)
    return out


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _stage(op_name: str) -> str:
    """The stage of the data path an XLA operation belongs to, from its ``op_name`` (named scopes)."""
    if "_program" in op_name:
        return "programming: reference read at t=0" if "/reference/" in op_name else "programming"
    if "_prepare" in op_name:
        return "per time: reference read" if "/reference/" in op_name else "per time: ageing"
    if "/read/" in op_name:
        return "per time: MVM read (PWM, contractions, noise, ADC)"
    if "/digital_unit/" in op_name:
        return "per time: digital unit"
    return "per time: network (activations, calibration scales) and metrics"


def profile_split(exe, args, per_call: int, calls: int = 3) -> dict:
    """Operation time of the compiled per-device program by stage (``jax.profiler`` events
    joined with the optimised HLO's ``op_name``), ms per evaluation, summed over threads."""
    import collections
    import re

    from jax.profiler import ProfileData
    names = dict(re.findall(r'%([\w.-]+) = \S+ [\w-]+\(.*?op_name="([^"]*)"', exe.as_text()))
    with tempfile.TemporaryDirectory(prefix="pcmjax-profile-") as d:
        jax.profiler.start_trace(d)
        for _ in range(calls):
            jax.block_until_ready(exe(*args))
        jax.profiler.stop_trace()
        pd = ProfileData.from_file(str(next(Path(d).rglob("*.xplane.pb"))))
    split = collections.Counter()
    for plane in pd.planes:
        for line in plane.lines:
            for ev in line.events:
                if line.name.startswith("tf_XLA") and ev.name in names:
                    split[_stage(names[ev.name])] += ev.duration_ns / 1e6 / calls / per_call
    total = sum(split.values())
    print(f"profile (ms per evaluation, all threads; {total:.2f} in total):")
    for k, v in split.most_common():
        print(f"  {v:7.3f}  {100 * v / total:5.1f} %  {k}")
    return {k: round(v, 3) for k, v in split.most_common()}


def startup(kind: str, tmp: Path) -> dict:
    """``pcmjax study`` on the efficiency study in fresh processes: start-up (process start to
    the study's compilation) and compile time, with an empty and then a warm compile cache
    (the command's default cache, in a fresh folder), then warm with the program store
    emptied (JAX's cache alone). Wall times and, steadier on a shared machine, the
    process's CPU seconds."""
    cache = tmp / f"cache-{kind}"
    (cache / "networks").mkdir(parents=True, exist_ok=True)
    if kind == "mlp":
        _, ckpt = mc.default_network(log=None)
        shutil.copy(ckpt, cache / "networks" / ckpt.name)
    spec = efficiency_study_dict(kind)
    (tmp / f"{kind}.toml").write_text(_toml(spec))
    env = dict(os.environ, PCMJAX_CACHE=str(cache))
    env.pop("PCMJAX_COMPILE_CACHE", None)
    out = {}
    for label in ("cold", "warm", "warm_jax_cache_only"):
        if label == "warm_jax_cache_only":
            shutil.rmtree(cache / "xla" / "pcmjax-programs", ignore_errors=True)
        folder = tmp / f"results-{kind}-{label}"
        load = os.getloadavg()[0]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t_launch = time.time()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pcmjax.cli", "study", "--config", str(tmp / f"{kind}.toml"),
                               "-o", str(folder), "--quiet", "--no-plots"], env=env, cwd=tmp, capture_output=True,
                              text=True)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"pcmjax study failed:\n{proc.stderr[-3000:]}")
        info = json.loads((folder / "run.json").read_text())
        s = info["compile_started_unix"] - t_launch
        out[label] = {"startup_s": round(s, 2), "compile_s": round(info["compile_s"], 2),
                      "startup_plus_compile_s": round(s + info["compile_s"], 2),
                      "startup_cpu_s": round(info["compile_started_cpu_s"], 2),
                      "compile_cpu_s": round(info["compile_cpu_s"], 2),
                      "startup_plus_compile_cpu_s": round(info["compile_started_cpu_s"] + info["compile_cpu_s"], 2),
                      "prepare_s": round(info.get("prepare_s", 0.0), 2), "compile_cache": info["compile_cache"],
                      "seconds": round(wall, 2), "cpu_seconds": round((r1.ru_utime - r0.ru_utime)
                                                                      + (r1.ru_stime - r0.ru_stime), 2),
                      "compute_s": round(info["compute_s"], 2), "load_average": round(load, 2)}
        o = out[label]
        print(f"pcmjax study ({kind}, {label}): start-up {o['startup_s']:.2f} s ({o['startup_cpu_s']:.2f} s CPU), "
              f"compile {o['compile_s']:.2f} s ({o['compile_cpu_s']:.2f} s CPU), cache {o['compile_cache']}; "
              f"load average {load:.1f}", flush=True)
    return out


def _toml(d: dict) -> str:
    """A study dict as TOML (the subset the efficiency studies use)."""
    def val(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    lines = []
    for section, body in d.items():
        tables = {k: v for k, v in body.items() if section == "variants"}
        if tables:
            for name, t in tables.items():
                lines += [f"[{section}.{name}]", *(f"{k} = {val(v)}" for k, v in t.items())]
            continue
        lines += [f"[{section}]", *(f"{k} = {val(v)}" for k, v in body.items())]
    return "\n".join(lines) + "\n"


def efficiency_table(rows: list[dict]) -> None:
    print(f"\n{'study':<6}{'floor ms':>10}{'eval ms':>10}{'efficiency':>12}{'best':>7}{'cpu':>6}{'startup s':>11}"
          f"{'compile s':>11}{'warm s':>8}{'MiB/inst':>10}{'load':>7}")
    for r in rows:
        st = r.get("startup", {})
        cold, warm = st.get("cold", {}), st.get("warm", {})
        print(f"{r['study']:<6}{r['floor_ms']:>10.2f}{r['eval_ms']:>10.2f}{r['efficiency']:>12.2f}"
              f"{r['efficiency_best']:>7.2f}{r['efficiency_cpu']:>6.2f}"
              f"{cold.get('startup_s', float('nan')):>11.2f}{cold.get('compile_s', float('nan')):>11.2f}"
              f"{warm.get('startup_plus_compile_s', float('nan')):>8.2f}{r['bytes_per_instance'] / 2**20:>10.1f}"
              f"{r['load_average']:>7.1f}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=100, help="instances of the efficiency studies")
    p.add_argument("--skip-startup", action="store_true", help="skip the start-up measurement")
    p.add_argument("--skip-cnn", action="store_true", help="skip the digits-CNN efficiency study")
    p.add_argument("--full", action="store_true", help="also the default study end to end, loop ratios, scaling")
    p.add_argument("--quick", action="store_true", help="with --full: fewer instances in the loop and scaling")
    p.add_argument("--max-instances", type=int, default=1024)
    p.add_argument("--profile", action="store_true", help="also split the per-device program's time by stage")
    args = p.parse_args(argv)
    print(f"backend {jax.default_backend()}, {len(jax.devices())} device(s), {os.cpu_count()} CPU(s), "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    mc.enable_compilation_cache(Path(tempfile.mkdtemp(prefix="pcmjax-bench-xla-")))
    result, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="pcmjax-bench-") as tmp:
        for kind in ("mlp",) if args.skip_cnn else ("mlp", "cnn"):
            row = efficiency(kind, args.instances, profile=args.profile)
            if kind == "mlp" and not args.skip_startup:
                row["startup"] = startup(kind, Path(tmp))
            rows.append(row)
        efficiency_table(rows)
        mlp = rows[0]
        result.update(floor_ms=mlp["floor_ms"], eval_ms=mlp["eval_ms"], efficiency=mlp["efficiency"],
                      efficiency_best=mlp["efficiency_best"], efficiency_cpu=mlp["efficiency_cpu"])
        if "startup" in mlp:
            cold, warm = mlp["startup"]["cold"], mlp["startup"]["warm"]
            result.update(startup_s=cold["startup_s"], compile_s=cold["compile_s"],
                          startup_plus_compile_s=cold["startup_plus_compile_s"],
                          warm_startup_plus_compile_s=warm["startup_plus_compile_s"],
                          startup_plus_compile_cpu_s=cold["startup_plus_compile_cpu_s"],
                          warm_startup_plus_compile_cpu_s=warm["startup_plus_compile_cpu_s"])
        if len(rows) > 1:
            result.update(efficiency_cnn=rows[1]["efficiency"], efficiency_best_cnn=rows[1]["efficiency_best"],
                          efficiency_cpu_cnn=rows[1]["efficiency_cpu"])
        result["studies"] = rows
        if args.full:
            full(args, Path(tmp), result)
    result.update(backend=jax.default_backend(), devices=len(jax.devices()), cpus=os.cpu_count(),
                  load_average=round(os.getloadavg()[0], 2))
    print(json.dumps(result))


def full(args, tmp: Path, result: dict) -> None:
    """The embedded default study end to end, loop ratios and scaling (``--full``)."""
    e2e = default_study_end_to_end(tmp)
    result.update(default_study_seconds=e2e["cold"]["seconds"], default_study_cpu_seconds=e2e["cold"]["cpu_seconds"],
                  default_study_seconds_warm=e2e["warm"]["seconds"], evals_per_s=e2e["cold"]["evals_per_s"],
                  default_study=e2e)
    sc = mc.default_study({"instances": 8 if args.quick else 24})
    d = loop_ratio(sc.study, "default study, loop comparison")
    s = loop_ratio(small_study(64 if args.quick else 256), "small raw-MVM study (2 cores of 64×64), loop comparison")
    t = loop_ratio(small_study(256 if args.quick else 1024, size=8, batch=4),
                   "tiny raw-MVM study (2 cores of 8×8), loop comparison")
    result.update(loop_ratio=d["ratio"], loop_ratio_small=s["ratio"], loop_ratio_tiny=t["ratio"], loop_default=d,
                  loop_small=s, loop_tiny=t)
    result["scaling"] = scaling(min(args.max_instances, 256 if args.quick else args.max_instances))

if __name__ == "__main__":
    main()
