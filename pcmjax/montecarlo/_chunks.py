"""How a study's instances are cut into chunks, groups and calls, and the device mesh.

A *group* is ``width`` instances one device evaluates at once (``jax.vmap``); one call of
the compiled program evaluates one group on every device; a *chunk* (the unit of
progress and of the files written) is one or more calls.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh

from pcmjax._validate import check_int

AXIS = "instances"
# Per backend: (instances vmapped together on one device, at most; about this much memory
# per group). On a CPU a group larger than the caches only adds misses (the default network
# study ran 20 % slower with 8 than with 1); an accelerator needs wide groups to fill its
# cores, up to a share of its memory (not measured here: no GPU in our test machines).
WIDTH_LIMITS = {"cpu": (8, 64 << 20), "gpu": (256, 1 << 30), "tpu": (256, 1 << 30)}
MAX_WIDTH, GROUP_TARGET_BYTES = WIDTH_LIMITS["cpu"]
GROUPS_PER_CALL = 1  # groups per device in one call of the compiled program
GROUPS_PER_CHUNK = 4  # default chunk: at least this many groups per device ...
MAX_CHUNKS = 64  # ... and more when a run would otherwise need more chunks than this,
MIN_CHUNKS = 4  # ... but split a run into at least this many chunks


def make_mesh(devices=None) -> Mesh:
    """A one-dimensional mesh named ``"instances"`` over ``devices`` (default: all).

    ``devices`` may be a number (the first ``n`` of ``jax.devices()``) or a list.
    """
    if devices is None:
        devs = jax.devices()
    elif isinstance(devices, int) and not isinstance(devices, bool):
        all_devs = jax.devices()
        devs = all_devs[:check_int("devices", devices, 1, len(all_devs))]
    else:
        devs = list(devices)
    return Mesh(np.asarray(devs), (AXIS,))


def width_limits(backend: str | None = None) -> tuple[int, int]:
    """``(largest vmap width, memory per group in bytes)`` for a backend (default: JAX's)."""
    backend = jax.default_backend() if backend is None else backend
    return WIDTH_LIMITS.get(backend, WIDTH_LIMITS["gpu"])


def choose_chunk(n_todo: int, n_devices: int, bytes_per_instance: int, budget: int,
                 chunk_size: int | None = None, n_local_devices: int | None = None,
                 width: int | None = None, backend: str | None = None) -> tuple[int, int, int]:
    """``(instances per chunk, batch of one call, vmap width)`` for ``n_todo`` instances.

    The *width* is how many instances one device evaluates at once with ``jax.vmap``:
    as many as fit in the backend's memory per group and in the device's share of
    ``budget`` (bytes per process), between 1 and the backend's largest width
    (:data:`WIDTH_LIMITS`: 8 and 64 MiB on a CPU, 256 and 1 GiB on a GPU or TPU). A call of the compiled program
    evaluates one group per device, whatever the chunk size, so one compiled program
    serves every chunk size. A chunk (the unit of progress and of
    the files written) holds ``chunk_size`` instances; by default ``GROUPS_PER_CHUNK``
    groups per device, more if the run would need more than ``MAX_CHUNKS`` chunks, fewer
    if it would have less than ``MIN_CHUNKS``.
    """
    n_local = n_devices if n_local_devices is None else n_local_devices
    if width is None:
        max_width, group_bytes = width_limits(backend)
        room = min(budget // max(1, n_local), group_bytes)
        width = int(max(1, min(max_width, room // max(1, bytes_per_instance))))
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
