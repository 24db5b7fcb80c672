"""The study runner: vmapped, chunked, sharded over devices, resumable.

One function evaluates one chip instance (:func:`instance_function`): instance ``i`` uses
``fold_in(key(seed), i)``; ``jax.vmap`` runs the workload's ``evaluate`` over the times
and, for every variant, traces it into the same computation, so the work variants share
(programming, ageing the conductances) is computed once by XLA's common-subexpression
elimination (compiling variants separately measured about three times the compile time
and more than twice the run time).

On a device, instances run in groups of ``width`` (``jax.vmap`` over instance ids; the
width is sized from a memory budget using a trace-time estimate of one instance's peak
memory, :mod:`pcmjax.montecarlo._memory`); one call of the compiled program evaluates
one group on every device.
Chunks are sharded over a one-dimensional :class:`jax.sharding.Mesh` of the devices
(instance axis ``"instances"``, ``NamedSharding(mesh, P("instances"))``); inputs are
replicated. Each chunk is written to the output folder as soon as it is done.

Reproducibility: an instance's results depend on ``(seed, i)`` and the vmap width only,
and are bit-identical for any chunk size and any number of the process's devices: one
call of the compiled program evaluates one group per device, whatever the chunk size (a
chunk is one or more calls), and every device runs the same executable
(:mod:`pcmjax.montecarlo._executor`). The width is recorded in the manifest and reused
when a run resumes. (Two processes whose XLA CPU clients have different thread counts,
e.g. started with different ``--xla_force_host_platform_device_count``, split CPU loops
differently, which can change the last bits.) A study run again in the same process
reuses its compiled program.

Several hosts: start every process with the same command after
:func:`init_distributed` (``pcmjax study --distributed``; on a cluster whose scheduler JAX
recognises, such as SLURM or Open MPI, without arguments, elsewhere with
``--coordinator HOST:PORT --num-processes N --process-id I``); the mesh then spans every
process's devices, each process runs its addressable shards, results are gathered with
``multihost_utils.process_allgather`` and only process 0 writes files. The output folder
must be on a filesystem all processes see. Results are the same as on one device
(``tests/test_montecarlo.py`` runs two processes of two CPU devices each).
"""

from __future__ import annotations

import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from pcmjax.montecarlo import _memory
from pcmjax.montecarlo._executor import MeshExecutor
from pcmjax.montecarlo.results import Results
from pcmjax.montecarlo.store import RunFolder, atomic_write_bytes, atomic_write_text
from pcmjax.montecarlo.study import Study

AXIS = "instances"
MAX_WIDTH = 8  # instances vmapped together on one device, at most ...
GROUP_TARGET_BYTES = 64 << 20  # ... and about this much memory per group: a larger group
# only adds cache misses (the default network study ran 20 % slower with 8 than with 1)
GROUPS_PER_CALL = 1  # groups per device in one call of the compiled program
GROUPS_PER_CHUNK = 4  # default chunk: at least this many groups per device ...
MAX_CHUNKS = 64  # ... and more when a run would otherwise need more chunks than this,
MIN_CHUNKS = 4  # ... but split a run into at least this many chunks
HIST_BINS = 60
HIST_INSTANCES = 8  # instances pooled in the conductance histograms


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
    """Join a multi-process run: ``jax.distributed.initialize`` with these arguments (all
    ``None``: taken from the cluster's environment). Call it before anything else uses JAX.

    CPU devices of several processes exchange data through Gloo, which is selected here
    (JAX's CPU backend has no cross-process collectives otherwise).
    """
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - a JAX without the option: GPU/TPU runs need none
        pass
    kwargs = {k: v for k, v in (("coordinator_address", coordinator), ("num_processes", num_processes),
                                ("process_id", process_id)) if v is not None}
    jax.distributed.initialize(**kwargs)


def enable_compilation_cache(path=None) -> str:
    """Cache compiled programs on disk (``$PCMJAX_CACHE/xla`` by default), so that running
    or resuming the same study again skips most of the compilation. Returns the folder."""
    from pcmjax.montecarlo.network import cache_dir

    folder = str(cache_dir() / "xla" if path is None else path)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return folder


# -- the compiled chunk function ------------------------------------------------------
def histogram_edges(study: Study) -> np.ndarray:
    """Conductance-histogram bin edges, µS: ``HIST_BINS`` bins on ``[0, 1.1 g_max]``."""
    return np.linspace(0.0, 1.1 * float(np.asarray(study.device.g_max)), HIST_BINS + 1)


def instance_function(study: Study):
    """``f(data, device, seed, times, i) → [T, V, M]``: every metric of instance ``i`` at
    every time for every variant (pure; instance ``i`` uses ``fold_in(key(seed), i)``)."""
    workload, variants, metrics = study.workload, study.resolved_variants(), study.metrics

    def one(data, device, seed, times, i):
        key = jax.random.fold_in(jax.random.key(seed), i)
        values = []
        for v in variants:
            out = jax.vmap(lambda t, v=v: workload.evaluate(data, device, key, t, v))(times)
            missing = [m for m in metrics if m not in out]
            if missing:
                raise KeyError(f"workload {workload.kind!r} did not return metric(s) {missing}; it returned "
                               f"{sorted(out)}.")
            values.append(jnp.stack([jnp.asarray(out[m], jnp.float32) for m in metrics], axis=-1))
        return jnp.stack(values, axis=1)

    return one


def histogram_function(study: Study):
    """``f(data, device, seed, times, i) → [V, T, bins]``: instance ``i``'s devices with a
    non-zero target counted by conductance (bins of :func:`histogram_edges`)."""
    workload, variants = study.workload, study.resolved_variants()
    top = float(histogram_edges(study)[-1])

    def hist(data, device, key, t, v):
        g, mask = workload.conductances(data, device, key, t, v)
        idx = jnp.clip(jnp.floor(g * (HIST_BINS / top)).astype(jnp.int32), 0, HIST_BINS - 1)
        w = (mask & (g <= top)).astype(jnp.float32)
        return jnp.zeros(HIST_BINS, jnp.float32).at[idx].add(w)

    def one(data, device, seed, times, i):
        key = jax.random.fold_in(jax.random.key(seed), i)
        return jnp.stack([jax.vmap(lambda t, v=v: hist(data, device, key, t, v))(times) for v in variants])

    return one


def make_mesh(devices=None) -> Mesh:
    """A one-dimensional mesh named ``"instances"`` over ``devices`` (default: all).

    ``devices`` may be a number (the first ``n`` of ``jax.devices()``) or a list.
    """
    if devices is None:
        devs = jax.devices()
    elif isinstance(devices, int) and not isinstance(devices, bool):
        all_devs = jax.devices()
        if not 1 <= devices <= len(all_devs):
            raise ValueError(f"devices must be between 1 and {len(all_devs)} (the devices JAX sees), got {devices}.")
        devs = all_devs[:devices]
    else:
        devs = list(devices)
    return Mesh(np.asarray(devs), (AXIS,))


def choose_chunk(n_todo: int, n_devices: int, bytes_per_instance: int, budget: int,
                 chunk_size: int | None = None, n_local_devices: int | None = None,
                 width: int | None = None) -> tuple[int, int, int]:
    """``(instances per chunk, batch of one call, vmap width)`` for ``n_todo`` instances.

    The *width* is how many instances one device evaluates at once with ``jax.vmap``:
    as many as fit in ``GROUP_TARGET_BYTES`` and in the device's share of ``budget``
    (bytes per process), between 1 and ``MAX_WIDTH``. A call of the compiled program
    evaluates one group per device, whatever the chunk size, so one compiled program
    serves every chunk size. A chunk (the unit of progress and of
    the files written) holds ``chunk_size`` instances; by default ``GROUPS_PER_CHUNK``
    groups per device, more if the run would need more than ``MAX_CHUNKS`` chunks, fewer
    if it would have less than ``MIN_CHUNKS``.
    """
    n_local = n_devices if n_local_devices is None else n_local_devices
    if width is None:
        room = min(budget // max(1, n_local), GROUP_TARGET_BYTES)
        width = int(max(1, min(MAX_WIDTH, room // max(1, bytes_per_instance))))
    unit = width * n_devices
    if chunk_size is not None:
        per_chunk = int(chunk_size)
    else:
        per_chunk = unit * max(GROUPS_PER_CHUNK, math.ceil(n_todo / MAX_CHUNKS / unit))
        per_chunk = min(per_chunk, max(unit, math.ceil(n_todo / MIN_CHUNKS / unit) * unit))
    per_chunk = max(1, min(per_chunk, max(1, n_todo)))
    return per_chunk, GROUPS_PER_CALL * width * n_devices, width


def layout_chunk(ids: np.ndarray, batch: int, n_devices: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Place a chunk's instance ids into calls of ``batch`` ids: groups of ``width`` dealt
    to the devices in turn, each device's groups first in its block; free slots hold −1.

    Returns:
      one ``(padded ids [batch], index of each placed chunk instance, its position)``
      per call, as ``(padded, (chunk_index, position))``.
    """
    block = batch // n_devices
    per_call = block // width  # groups per device and call
    groups = [np.arange(a, min(a + width, ids.size)) for a in range(0, ids.size, width)]
    by_device = [groups[k::n_devices] for k in range(n_devices)]
    calls = []
    for c in range(max(1, math.ceil(max(len(g) for g in by_device) / per_call))):
        padded = np.full(batch, -1, np.int64)
        idx, pos = [], []
        for k, dev_groups in enumerate(by_device):
            for j, g in enumerate(dev_groups[c * per_call:(c + 1) * per_call]):
                p0 = k * block + j * width
                padded[p0:p0 + g.size] = ids[g]
                idx.append(g)
                pos.append(np.arange(p0, p0 + g.size))
        calls.append((padded, (np.concatenate(idx), np.concatenate(pos))))
    return calls


def device_function(study: Study, width: int, histogram_instances: int = 0):
    """The per-device program ``f(data, device, seed, times, ids[width]) → {"values", "hist"}``:
    one group of instances, ``jax.vmap``-ed; ids < 0 are free slots (computed as instance
    0, then dropped).

    Conductance histograms (binning every device costs about as much as the evaluation
    itself) are computed only for instances ``< histogram_instances``, in a branch the
    other groups skip. (A loop over several groups inside the program would save calls,
    but XLA's CPU backend ran the loop body about 2.4 times slower than the same code
    outside a loop.)
    """
    group = jax.vmap(instance_function(study), in_axes=(None, None, None, None, 0))
    group_hist = jax.vmap(histogram_function(study), in_axes=(None, None, None, None, 0))
    n_t, n_v = len(study.times), len(study.variants)

    def per_device(data, device, seed, times, ids):
        idx = jnp.maximum(ids, 0)
        want = (ids >= 0) & (ids < histogram_instances)
        hist = jax.lax.cond(
            jnp.any(want),
            lambda: group_hist(data, device, seed, times, idx) * want[:, None, None, None],
            lambda: jnp.zeros((width, n_v, n_t, HIST_BINS), jnp.float32))
        return {"values": group(data, device, seed, times, idx), "hist": hist}

    return per_device


class _Progress:
    """tqdm bar with instance rate, evaluation rate and ETA (or a plain line per chunk)."""

    def __init__(self, total, initial, evals_per_instance, desc, quiet):
        self.quiet, self.evals = quiet, evals_per_instance
        self.t0, self.n0, self.n = time.perf_counter(), initial, initial
        self.total = total
        self.bar = None
        if not quiet:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, unit="inst", desc=desc, file=sys.stderr,
                                dynamic_ncols=True, smoothing=0.3)
            except ImportError:  # pragma: no cover - tqdm is optional
                self.bar = None

    def update(self, n):
        self.n += n
        rate = (self.n - self.n0) / max(time.perf_counter() - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{rate * self.evals:.1f} evals/s", refresh=False)
            self.bar.update(n)
        elif not self.quiet:
            eta = (self.total - self.n) / max(rate, 1e-9)
            print(f"  {self.n}/{self.total} instances, {rate * self.evals:.1f} evals/s, ETA {eta:.0f} s",
                  file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _host(x):
    if jax.process_count() > 1:  # pragma: no cover - needs several processes
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# -- the run -------------------------------------------------------------------------
def run_study(study: Study, output="pcmjax-results", *, chunk_size: int | None = None, memory_budget=None,
              devices=None, quiet: bool = False, plots: bool = True, vmap_width: int | None = None,
              histogram_instances: int = HIST_INSTANCES) -> Results:
    """Run (or resume) ``study``, writing its results into ``output``.

    Args:
      study: the :class:`Study`.
      output: output folder (created; ``None``: keep results in memory only). A folder
        holding a finished or interrupted run of the same study is resumed: only
        missing instances are computed. A folder of a different study is refused
        (:class:`StudyMismatchError`).
      chunk_size: instances per chunk (default: from ``memory_budget``).
      memory_budget: bytes (or ``"2GiB"``) one chunk may use on this process
        (default: a quarter of RAM, at most 2 GiB).
      devices: devices to shard instances over: ``None`` (all), a count, or a list.
      quiet: no progress bar or messages.
      plots: write PNG figures (needs matplotlib).
      vmap_width: instances one device evaluates at once (default: from
        ``memory_budget``, at most ``MAX_WIDTH``).
      histogram_instances: the conductance histograms pool instances ``0 …`` this − 1.

    Returns:
      the :class:`Results`; ``results.histograms`` holds the conductance histograms and
      ``results.run_info`` timings and chunking.
    """
    if not isinstance(study, Study):
        raise TypeError(f"study must be a pcmjax.montecarlo.Study, got {type(study).__name__}.")
    for name, v in (("chunk_size", chunk_size), ("vmap_width", vmap_width)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}.")
    budget = _memory.default_memory_budget() if memory_budget is None else _memory.parse_bytes(memory_budget)
    writer = jax.process_index() == 0
    log = (lambda *a: None) if quiet or not writer else (lambda *a: print(*a, file=sys.stderr, flush=True))
    t_start = time.perf_counter()

    folder = RunFolder(output) if output is not None else None
    shape = (len(study.times), len(study.variants), len(study.metrics))
    done: dict[int, tuple] = {}
    manifest: dict = {}
    if folder is not None:
        manifest = folder.open(study, write=writer)
        done = {i: v for i, v in folder.load_done(shape).items() if i < study.instances}
    todo = np.asarray([i for i in range(study.instances) if i not in done], np.int64)

    mesh = make_mesh(devices)
    n_dev = mesh.devices.size
    n_local = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
    info = {"devices": n_dev, "backend": jax.default_backend(), "instances": study.instances,
            "resumed": len(done), "computed": int(todo.size), "compile_s": 0.0, "compute_s": 0.0}
    log(study.describe())
    if folder is not None:
        log(f"  output:   {folder.path}" + (f" (resuming: {len(done)} of {study.instances} instances done)"
                                            if done else ""))

    if todo.size:
        t0 = time.perf_counter()
        data = study.workload.data()
        seed = np.uint32(study.seed)
        times = np.asarray(study.times, np.float32)
        per_instance = _memory.estimate_peak_bytes(instance_function(study), data, study.device, seed, times,
                                                   np.int32(0))
        info["prepare_s"] = time.perf_counter() - t0
        if vmap_width is None and manifest.get("vmap_width"):
            vmap_width = int(manifest["vmap_width"])  # resume bit-identically
        per_chunk, batch, width = choose_chunk(todo.size, n_dev, per_instance, budget, chunk_size, n_local,
                                               vmap_width)
        info.update(chunk_size=per_chunk, batch=batch, vmap_width=width, bytes_per_instance_estimate=per_instance,
                    memory_budget=budget)
        if folder is not None and writer and manifest.get("vmap_width") != width:
            folder.update_manifest(vmap_width=width)
        log(f"  running:  {todo.size} instances in chunks of {per_chunk} ({width} at once on each of {n_dev} "
            f"{jax.default_backend()} device(s)); ~{_memory.format_bytes(per_instance)} per instance, "
            f"budget {_memory.format_bytes(budget)}")
        per_device = device_function(study, width, histogram_instances)

        t0 = time.perf_counter()
        log(f"  compiling {len(study.variants)} variant(s) × {len(study.times)} time(s) ...")
        run_chunk = MeshExecutor(per_device, mesh, (data, study.device, seed, times), batch, AXIS,
                                 program_key=(study.hash(), width, histogram_instances))
        info["compile_s"] = time.perf_counter() - t0
        info["xla_memory_per_device"] = run_chunk.memory_bytes()
        log(f"  compiled in {info['compile_s']:.1f} s")

        progress = _Progress(study.instances, len(done), shape[0] * shape[1], study.name, quiet or not writer)
        t0 = time.perf_counter()
        chunks = [todo[a:a + per_chunk] for a in range(0, todo.size, per_chunk)]
        pending = None  # dispatch the next chunk before fetching the previous one
        try:
            for ids in [*chunks, None]:
                nxt = None
                if ids is not None:
                    nxt = (ids, [(where, run_chunk(padded)) for padded, where in
                                 layout_chunk(ids, batch, n_dev, width)])
                if pending is not None:
                    p_ids, calls = pending
                    values = np.empty((p_ids.size, *shape), np.float32)
                    hist = np.empty((p_ids.size, len(study.variants), len(study.times), HIST_BINS), np.float32)
                    for (idx, pos), out in calls:
                        values[idx] = _host(out["values"])[pos]
                        hist[idx] = _host(out["hist"])[pos]
                    keep = p_ids < histogram_instances
                    if folder is not None and writer:
                        folder.write_chunk(p_ids, values, hist[keep], p_ids[keep])
                    done.update((i, (v, h if i < histogram_instances else None))
                                for i, v, h in zip(p_ids.tolist(), values, hist))
                    progress.update(p_ids.size)
                pending = nxt
        finally:
            progress.close()
        info["compute_s"] = time.perf_counter() - t0

    values = np.stack([done[i][0] for i in range(study.instances)])
    meta = {"name": study.name, "study_hash": study.hash(), "seed": study.seed, "workload": study.workload.kind}
    reference = manifest.get("reference")  # the digital network's metrics (kept from the first run)
    if reference is None:
        reference = {m: v for m, v in study.workload.reference_metrics(study.workload.data()).items()
                     if m in study.metrics}
        if folder is not None and writer:
            folder.update_manifest(reference=reference)
    if reference:
        meta["reference"] = reference
    results = Results(values, study.times, study.variant_names, study.metrics, meta)
    hists = [done[i][1] for i in range(study.instances) if done[i][1] is not None]
    results.histograms = None if not hists else {
        "edges": histogram_edges(study), "counts": np.sum(hists, axis=0), "instances": len(hists),
        "times_s": np.asarray(study.times), "variants": study.variant_names,
        "g_max": float(np.asarray(study.device.g_max))}
    if folder is not None and writer:
        results.save(folder.path)
        if results.histograms is not None:
            h = results.histograms
            atomic_write_bytes(folder.path / "conductances.npz", lambda f: np.savez(
                f, edges_uS=h["edges"], counts=h["counts"], times_s=h["times_s"],
                variants=np.asarray(h["variants"]), instances=h["instances"], g_max_uS=h["g_max"]))
        if plots:
            try:
                from pcmjax import plots as _plots

                info["figures"] = [str(p) for p in _plots.study_figures(results, folder.path / "figures")]
            except ImportError as e:  # pragma: no cover - matplotlib is optional
                log(f"  no figures: {e}")
    info["total_s"] = time.perf_counter() - t_start
    info["evals_per_s"] = (info["computed"] * shape[0] * shape[1]) / max(info["compute_s"], 1e-9)
    if folder is not None and writer:
        atomic_write_text(folder.path / "run.json", json.dumps(info, indent=2, default=str) + "\n")
        log(f"  wrote {folder.path}: results.npz, summary.json, summary.csv, conductances.npz"
            + (", figures/" if plots else ""))
    results.run_info = info
    return results
