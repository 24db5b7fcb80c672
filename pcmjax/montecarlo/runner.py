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

import dataclasses
import json
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from pcmjax import plots as study_plots
from pcmjax._validate import check_bool, check_instance, check_int
from pcmjax.chip.state import times_checked_before_tracing
from pcmjax.montecarlo import _executor, _memory
from pcmjax.montecarlo._cache import CacheEvents, ProgramStore, compile_cache_folder
from pcmjax.montecarlo._chunks import AXIS, choose_chunk, layout_chunk, make_mesh
from pcmjax.montecarlo._executor import MeshExecutor
from pcmjax.montecarlo._programs import HIST_BINS, device_function, histogram_edges
from pcmjax.montecarlo._progress import Progress
from pcmjax.montecarlo.results import Results
from pcmjax.montecarlo.store import RunFolder, atomic_write_bytes, atomic_write_text
from pcmjax.montecarlo.study import Study

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


def _host(x):
    if jax.process_count() > 1:  # pragma: no cover - needs several processes
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


@dataclasses.dataclass
class _Run:
    """A study resolved against its output folder and devices: what is done, what is left."""

    study: Study
    folder: RunFolder | None
    writer: bool  # this process writes files (process 0)
    log: object
    manifest: dict
    done: dict  # instance id → (values [T, V, M], histogram [V, T, bins] or None)
    todo: np.ndarray  # instance ids still to compute
    mesh: Mesh
    histogram_instances: int
    info: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.study.times), len(self.study.variants), len(self.study.metrics)


# -- resolve ------------------------------------------------------------------------
def _resolve(study: Study, output, devices, quiet: bool, histogram_instances: int) -> _Run:
    """Open (or resume) the output folder and the device mesh; list the instances to compute."""
    writer = jax.process_index() == 0
    log = (lambda *a: None) if quiet or not writer else (lambda *a: print(*a, file=sys.stderr, flush=True))
    folder = RunFolder(output) if output is not None else None
    shape = (len(study.times), len(study.variants), len(study.metrics))
    done: dict[int, tuple] = {}
    manifest: dict = {}
    if folder is not None:
        manifest = folder.open(study, write=writer)
        done = {i: v for i, v in folder.load_done(shape).items() if i < study.instances}
    todo = np.asarray([i for i in range(study.instances) if i not in done], np.int64)
    mesh = make_mesh(devices)
    info = {"devices": mesh.devices.size, "backend": jax.default_backend(), "instances": study.instances,
            "resumed": len(done), "computed": int(todo.size), "compile_s": 0.0, "compute_s": 0.0}
    log(study.describe())
    if folder is not None:
        log(f"  output:   {folder.path}" + (f" (resuming: {len(done)} of {study.instances} instances done)"
                                            if done else ""))
    return _Run(study, folder, writer, log, manifest, done, todo, mesh, histogram_instances, info)


# -- run chunks ---------------------------------------------------------------------
def _program_store(run: _Run):
    """The on-disk store of compiled study programs, when it applies: the compilation
    cache is on and the run uses one device of one process (``None`` otherwise)."""
    folder = compile_cache_folder()
    if folder is None or jax.process_count() > 1 or run.mesh.devices.size != 1:
        return None
    return ProgramStore(folder, f"{run.study.hash()};{run.histogram_instances}")


def _build(run: _Run, store, args, per_device, width: int, batch: int, per_instance: int):
    """The mesh executor of ``per_device`` (compiled, from the program store or JAX's
    compilation cache); records what the caches served in ``run.info["compile_cache"]``."""
    program_key = (run.study.hash(), width, run.histogram_instances)
    device = run.mesh.devices.flat[0]
    loaded = None if store is None else store.load(width, device)
    if loaded is not None:  # the executor finds it among the programs compiled in this process
        _executor._remember((program_key, batch // run.mesh.devices.size), device, loaded)
    with CacheEvents() as cache:
        run_call = MeshExecutor(per_device, run.mesh, args, batch, AXIS, program_key=program_key)
    stored = "off" if store is None else "hit" if loaded is not None else "miss"
    if stored == "miss" and run_call.compiled_here and not cache.hits:  # freshly compiled: keep it
        stored = "saved" if store.save(width, run_call.execs[device], per_instance) else "miss"
    run.info["compile_cache"] = {**cache.summary(), "program_store": stored}
    return run_call


def _compile(run: _Run, chunk_size, budget: int, vmap_width):
    """Size the chunks from the memory budget and compile the per-device program.

    The program is traced once: the memory estimate walks the jaxpr of the one-instance
    program (``width`` 1), and compiling that width reuses the same trace (JAX caches it
    by function and argument types); another width traces its own program. A program
    from the program store (:class:`ProgramStore`) needs no tracing at all.

    Returns:
      ``(run_call, chunk size, batch of one call, vmap width)``.
    """
    study, info, log = run.study, run.info, run.log
    n_dev = run.mesh.devices.size
    n_local = sum(1 for d in run.mesh.devices.flat if d.process_index == jax.process_index())
    t0 = time.perf_counter()
    data = study.workload.data()
    args = (data, study.device, np.uint32(study.seed), np.asarray(study.times, np.float32))
    store = _program_store(run)
    per_device = device_function(study, 1, run.histogram_instances)
    per_instance = None if store is None else store.estimate()
    if per_instance is None:
        traced = jax.jit(per_device).trace(*args, np.zeros((1,), np.int32))
        per_instance = _memory.jaxpr_peak_bytes(traced.jaxpr)
    info["prepare_s"] = time.perf_counter() - t0
    if vmap_width is None and run.manifest.get("vmap_width"):
        vmap_width = int(run.manifest["vmap_width"])  # resume bit-identically
    per_chunk, batch, width = choose_chunk(run.todo.size, n_dev, per_instance, budget, chunk_size, n_local,
                                           vmap_width, backend=run.mesh.devices.flat[0].platform)
    info.update(chunk_size=per_chunk, batch=batch, vmap_width=width, bytes_per_instance_estimate=per_instance,
                memory_budget=budget)
    if run.folder is not None and run.writer and run.manifest.get("vmap_width") != width:
        run.folder.update_manifest(vmap_width=width)
    log(f"  running:  {run.todo.size} instances in chunks of {per_chunk} ({width} at once on each of {n_dev} "
        f"{jax.default_backend()} device(s)); ~{_memory.format_bytes(per_instance)} per instance, "
        f"budget {_memory.format_bytes(budget)}")
    if width != 1:
        per_device = device_function(study, width, run.histogram_instances)
    t0 = time.perf_counter()
    info["compile_started_unix"] = time.time()  # start-up of a process = this − its start
    info["compile_started_cpu_s"] = time.process_time()  # this process's CPU time so far
    log(f"  compiling {len(study.variants)} variant(s) × {len(study.times)} time(s) ...")
    run_call = _build(run, store, args, per_device, width, batch, per_instance)
    info["compile_s"] = time.perf_counter() - t0
    info["compile_cpu_s"] = time.process_time() - info["compile_started_cpu_s"]
    info["xla_memory_per_device"] = run_call.memory_bytes()
    cache = info["compile_cache"]
    source = (" (compiled program from the program store)" if cache["program_store"] == "hit" else
              " (from the compilation cache)" if cache["hits"] and cache["hits"] >= run_call.compiled_here else "")
    log(f"  compiled in {info['compile_s']:.1f} s{source}")
    return run_call, per_chunk, batch, width


def _collect(run: _Run, ids: np.ndarray, calls) -> None:
    """Fetch one dispatched chunk, write its file and record its instances as done."""
    values = np.empty((ids.size, *run.shape), np.float32)
    hist = np.empty((ids.size, len(run.study.variants), len(run.study.times), HIST_BINS), np.float32)
    for (idx, pos), out in calls:
        values[idx] = _host(out["values"])[pos]
        hist[idx] = _host(out["hist"])[pos]
    keep = ids < run.histogram_instances
    if run.folder is not None and run.writer:
        run.folder.write_chunk(ids, values, hist[keep], ids[keep])
    run.done.update((i, (v, h if i < run.histogram_instances else None))
                    for i, v, h in zip(ids.tolist(), values, hist))


def _run_chunks(run: _Run, chunk_size, budget: int, vmap_width, quiet: bool) -> None:
    """Compute every missing instance, chunk after chunk, each chunk written when done.

    The next chunk is dispatched before the previous one is fetched, so the devices never
    wait for the host."""
    with times_checked_before_tracing():  # the study checked its times (no callbacks in the program)
        run_call, per_chunk, batch, width = _compile(run, chunk_size, budget, vmap_width)
    n_dev = run.mesh.devices.size
    progress = Progress(run.study.instances, len(run.done), run.shape[0] * run.shape[1], run.study.name,
                        quiet or not run.writer)
    t0 = time.perf_counter()
    chunks = [run.todo[a:a + per_chunk] for a in range(0, run.todo.size, per_chunk)]
    pending = None
    try:
        for ids in [*chunks, None]:
            nxt = None
            if ids is not None:
                nxt = (ids, [(where, run_call(padded)) for padded, where in layout_chunk(ids, batch, n_dev, width)])
            if pending is not None:
                _collect(run, *pending)
                progress.update(pending[0].size)
            pending = nxt
    finally:
        progress.close()
    run.info["compute_s"] = time.perf_counter() - t0


# -- assemble -----------------------------------------------------------------------
def _assemble(run: _Run) -> Results:
    """Every instance's values, the digital reference and the pooled conductance histograms."""
    study = run.study
    values = np.stack([run.done[i][0] for i in range(study.instances)])
    meta = {"name": study.name, "study_hash": study.hash(), "seed": study.seed, "workload": study.workload.kind}
    reference = run.manifest.get("reference")  # the digital network's metrics (kept from the first run)
    if reference is None:
        reference = {m: v for m, v in study.workload.reference_metrics(study.workload.data()).items()
                     if m in study.metrics}
        if run.folder is not None and run.writer:
            run.folder.update_manifest(reference=reference)
    if reference:
        meta["reference"] = reference
    results = Results(values, study.times, study.variant_names, study.metrics, meta)
    hists = [run.done[i][1] for i in range(study.instances) if run.done[i][1] is not None]
    results.histograms = None if not hists else {
        "edges": histogram_edges(study), "counts": np.sum(hists, axis=0), "instances": len(hists),
        "times_s": np.asarray(study.times), "variants": study.variant_names,
        "g_max": float(np.asarray(study.device.g_max))}
    return results


# -- write --------------------------------------------------------------------------
def _write(run: _Run, results: Results, with_plots: bool) -> None:
    """``results.npz``, the summaries, ``conductances.npz`` and the figures."""
    path = run.folder.path
    results.save(path)
    if results.histograms is not None:
        h = results.histograms
        atomic_write_bytes(path / "conductances.npz", lambda f: np.savez(
            f, edges_uS=h["edges"], counts=h["counts"], times_s=h["times_s"],
            variants=np.asarray(h["variants"]), instances=h["instances"], g_max_uS=h["g_max"]))
    if with_plots:
        try:
            run.info["figures"] = [str(p) for p in study_plots.study_figures(results, path / "figures")]
        except ImportError as e:  # pragma: no cover - matplotlib is optional
            run.log(f"  no figures: {e}")


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
        ``memory_budget``, at most the backend's largest width, ``_chunks.WIDTH_LIMITS``).
      histogram_instances: the conductance histograms pool instances ``0 …`` this − 1.

    Returns:
      the :class:`Results` (values ``[instances, times, variants, metrics]``);
      ``results.histograms`` holds the conductance histograms and ``results.run_info``
      timings and chunking.
    """
    check_instance("study", study, Study)
    for name, v in (("chunk_size", chunk_size), ("vmap_width", vmap_width)):
        if v is not None:
            check_int(name, v, lo=1)
    check_int("histogram_instances", histogram_instances, lo=0)
    check_bool("quiet", quiet)
    check_bool("plots", plots)
    budget = _memory.default_memory_budget() if memory_budget is None else _memory.parse_bytes(memory_budget)
    t_start = time.perf_counter()
    run = _resolve(study, output, devices, quiet, histogram_instances)
    if run.todo.size:
        _run_chunks(run, chunk_size, budget, vmap_width, quiet)
    results = _assemble(run)
    writing = run.folder is not None and run.writer
    if writing:
        _write(run, results, plots)
    info = run.info
    info["total_s"] = time.perf_counter() - t_start
    info["evals_per_s"] = (info["computed"] * run.shape[0] * run.shape[1]) / max(info["compute_s"], 1e-9)
    if writing:
        atomic_write_text(run.folder.path / "run.json", json.dumps(info, indent=2, default=str) + "\n")
        run.log(f"  wrote {run.folder.path}: results.npz, summary.json, summary.csv, conductances.npz"
                + (", figures/" if plots else ""))
    results.run_info = info
    return results
