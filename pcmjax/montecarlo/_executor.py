"""One compiled program, run on every device of the instance mesh.

Why not an SPMD (``shard_map``) compilation over the mesh? XLA optimises a program
partitioned over several devices through a different pass pipeline than a single-device
one (for example, it reassociates products with constants at a different stage), so the
same instance computed on one device or on four differs in the last bits of some
results. Here the per-device program (a ``lax.map`` over groups of ``width`` vmapped
instances) is compiled ONCE, for one device, and the same executable is loaded on every
other device (serialise, then deserialise with that device's assignment). Every instance
then runs the identical machine code whatever the number of devices, and its results
are bit-identical.

The mesh still defines the layout: a chunk's instance ids form a global array sharded
with ``NamedSharding(mesh, P("instances"))``; each process runs the program on its
addressable shards (asynchronously, so devices work in parallel), and the outputs are
reassembled into arrays with the same sharding. If an executable cannot be moved (a
JAX version without the serialisation hooks, or an executable that came from the
persistent compilation cache, which does not serialise completely), the program is
compiled for that device as well: slower to start, same machine code.
"""

from __future__ import annotations

import io

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def _load_on(compiled, device):
    """``compiled`` (a single-device executable) loaded on ``device`` without recompiling."""
    from jax._src import compiler
    from jax.experimental import serialize_executable as se

    payload, in_tree, out_tree = se.serialize(compiled)

    class _Retarget(se._JaxPjrtUnpickler):  # every device reference → ``device``
        def persistent_load(self, pid):
            if pid[0] == "device":
                return device
            if pid[0] == "exec":
                opts = compiler.get_compile_options(1, 1, device_assignment=np.asarray([[device]]),
                                                    backend=self.backend)
                return self.backend.deserialize_executable(pid[1], executable_devices=self.execution_devices,
                                                           compile_options=opts)
            return super().persistent_load(pid)

    unloaded, args_info_flat, no_kwargs = _Retarget(io.BytesIO(payload), device.client, [device]).load()
    return jax.stages.Compiled(unloaded.load(), [], in_tree.unflatten(args_info_flat), out_tree,
                               no_kwargs=no_kwargs)


def _persistent_cache_on() -> bool:
    return bool(jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir)


_COMPILED: dict = {}  # (program key, device id) → executable: reused when a study runs again
_COMPILED_KEPT = 16  # in the same process (to extend it, with another chunk size or mesh)


def _remember(key, device, executable):
    if key is None:
        return executable
    while len(_COMPILED) >= _COMPILED_KEPT:
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[(key, device.id)] = executable
    return executable


class MeshExecutor:
    """Runs ``fn(*args, ids)`` for a chunk of instance ids on every device of ``mesh``.

    Args:
      fn: the per-device function; its last argument is the device's ``[batch // n]``
        instance ids, its outputs have that leading axis.
      mesh: a one-dimensional :class:`jax.sharding.Mesh` named ``axis``.
      args: the other (replicated) arguments, a tuple of pytrees.
      batch: instances per chunk over all devices (a multiple of the device count).
      program_key: identifies ``fn``'s program for a per-device batch of ``batch // n``
        (compiled programs are kept and reused under it); ``None``: always compile.
    """

    def __init__(self, fn, mesh: Mesh, args: tuple, batch: int, axis: str = "instances", program_key=None):
        self.mesh, self.batch, self.axis = mesh, batch, axis
        self.sharding = NamedSharding(mesh, PartitionSpec(axis))
        me = jax.process_index()
        self.devices = [d for d in mesh.devices.flat if d.process_index == me]
        n = mesh.devices.size
        if batch % n:
            raise ValueError(f"batch {batch} is not a multiple of the {n} devices.")
        per_device = np.zeros((batch // n,), np.int32)
        key = None if program_key is None else (program_key, batch // n)
        self.args, self.execs = {}, {}
        self.compiled_here = 0
        source = None  # a freshly compiled executable that can be moved to other devices
        # An executable read back from the persistent compilation cache does not serialise
        # completely (its kernels are missing when reloaded), so with that cache on, the
        # program is compiled for each device instead (and cached for the next run).
        movable = not _persistent_cache_on()
        for d in self.devices:
            self.args[d] = jax.device_put(args, d)
            if key is not None and (key, d.id) in _COMPILED:
                self.execs[d] = _COMPILED[(key, d.id)]
                continue
            if source is None and movable:
                source = next((_COMPILED[(key, o.id)] for o in self.devices if key is not None
                               and (key, o.id) in _COMPILED), None)
            if source is not None:
                try:
                    self.execs[d] = _remember(key, d, _load_on(source, d))
                    continue
                except Exception:  # noqa: BLE001 - any failure: compile for the device instead
                    movable = False
            self.execs[d] = _remember(key, d, jax.jit(fn).lower(*self.args[d], jax.device_put(per_device, d)).compile())
            self.compiled_here += 1
            if movable:
                source = self.execs[d]

    def memory_bytes(self) -> dict:
        """XLA's memory figures of the per-device program (bytes), if it reports them."""
        try:
            m = self.execs[self.devices[0]].memory_analysis()
            out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("temp", "argument", "output")}
        except Exception:  # noqa: BLE001 - not every backend reports memory
            return {}
        out["total"] = sum(out.values())
        return out

    def __call__(self, ids: np.ndarray):
        """Dispatch one chunk (``[batch]`` int ids); returns the outputs as global arrays
        sharded over the mesh (asynchronously: fetching them waits)."""
        ids = np.asarray(ids, np.int32)
        global_ids = jax.make_array_from_callback((self.batch,), self.sharding, lambda idx: ids[idx])
        outs = [(s.device, self.execs[s.device](*self.args[s.device], s.data))
                for s in global_ids.addressable_shards]
        leaves = [jax.tree.leaves(o) for _, o in outs]
        treedef = jax.tree.structure(outs[0][1])
        assembled = []
        for j in range(len(leaves[0])):
            parts = [lv[j] for lv in leaves]
            shape = (self.batch, *parts[0].shape[1:])
            assembled.append(jax.make_array_from_single_device_arrays(shape, self.sharding, parts))
        return jax.tree.unflatten(treedef, assembled)
