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
JAX version without the serialisation hooks), the program is compiled for that device
as well: slower to start, same machine code.
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


class MeshExecutor:
    """Runs ``fn(*args, ids)`` for a chunk of instance ids on every device of ``mesh``.

    Args:
      fn: the per-device function; its last argument is the device's ``[batch // n]``
        instance ids, its outputs have that leading axis.
      mesh: a one-dimensional :class:`jax.sharding.Mesh` named ``axis``.
      args: the other (replicated) arguments, a tuple of pytrees.
      batch: instances per chunk over all devices (a multiple of the device count).
    """

    def __init__(self, fn, mesh: Mesh, args: tuple, batch: int, axis: str = "instances"):
        self.mesh, self.batch, self.axis = mesh, batch, axis
        self.sharding = NamedSharding(mesh, PartitionSpec(axis))
        me = jax.process_index()
        self.devices = [d for d in mesh.devices.flat if d.process_index == me]
        n = mesh.devices.size
        if batch % n:
            raise ValueError(f"batch {batch} is not a multiple of the {n} devices.")
        per_device = np.zeros((batch // n,), np.int32)
        first = self.devices[0]
        self.args = {first: jax.device_put(args, first)}
        compiled = jax.jit(fn).lower(*self.args[first], jax.device_put(per_device, first)).compile()
        self.execs = {first: compiled}
        self.moved = True
        for d in self.devices[1:]:
            self.args[d] = jax.device_put(args, d)
            try:
                self.execs[d] = _load_on(compiled, d)
            except Exception:  # noqa: BLE001 - any failure: compile for the device instead
                self.moved = False
                self.execs[d] = jax.jit(fn).lower(*self.args[d], jax.device_put(per_device, d)).compile()

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
