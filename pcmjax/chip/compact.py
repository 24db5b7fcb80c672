"""Compact cores: a tile smaller than the crossbar costs only its used rows and columns.

A network's layers rarely fill whole cores: on a 256×256 crossbar the digits MLP's
64×256 and 256×10 layers use a quarter and 4 % of their cores. ``program_chip(...,
tiles=...)`` names the block each core uses (its top-left ``rows × cols``, as
:func:`pcmjax.nn.deploy` places tiles); the chip then programs, ages, reads the
compensation reference of and calibrates only those devices. Consecutive cores with the
same block form a *group*, computed as one batched array of the block's shape.

What stays the same: the physics of the used block. Its rows are the only ones driven
(an unused row carries no charge) and its columns the only ones converted, so the
outputs of the used columns follow the same laws as on a padded core, and the
compensation reference already reads only the mapped lines. What differs:

* devices outside the block are not simulated: their conductances read 0 (a padded core
  holds RESET devices there, with the small conductance of a programmed zero), so an
  input driven on an unused row through :func:`pcmjax.mvm` sees no leakage;
* the random numbers: programming and ageing draw over every used device at once (one
  flat array, groups in core order: both are elementwise), and what works on a group's
  block as a whole (gradient-based programming targets, dead columns, the compensation
  reference read) folds the group's index into its key when there are several groups.
  The statistics are those of the padded core; the individual draws are not
  (tests/test_compact.py checks both: equal results without noise, equal error
  statistics with it). A chip whose blocks are all whole cores is one group and draws
  exactly as without ``tiles``;
* wire resistance (``cfg.parasitics``): the unused part of the array still loads the
  lines, so with parasitics on the whole cores are simulated (``tiles`` is ignored).

Shared cores (``pcmjax.nn.plan(..., share_cores=True)``) change nothing here: each tile
keeps its own array in the state, at the top-left of its block, though on the physical
core its block may sit lower and further right beside other tiles. Without wire
resistance the position does not matter; with it the whole shared array would, so
sharing is refused there (:mod:`pcmjax.nn.placement`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Group = tuple  # (first core, cores, rows, cols)


def check_tiles(tiles, shape: tuple) -> tuple | None:
    """``tiles`` as a tuple of ``(rows, cols)`` per core, or ``None``.

    Args:
      tiles: ``None`` or one ``(rows, cols)`` pair per core, each within the weights'
        ``rows × cols``.
      shape: the weights' ``(cores, rows, cols)``.

    Raises:
      ValueError / TypeError: naming ``tiles``, the value given and what is allowed.
    """
    if tiles is None:
        return None
    c, r, k = shape
    try:
        out = tuple((int(a), int(b)) for a, b in tiles)
        ok = all(float(a) == x and float(b) == y for (a, b), (x, y) in zip(tiles, out))
    except (TypeError, ValueError) as e:
        raise TypeError(f"tiles must be a sequence of (rows, cols) integer pairs, one per core, got {tiles!r}.") from e
    if not ok or len(out) != c or any(not (1 <= a <= r and 1 <= b <= k) for a, b in out):
        raise ValueError(f"tiles must hold {c} (rows, cols) pairs (one per core) with 1 <= rows <= {r} and "
                         f"1 <= cols <= {k}, got {tiles!r}.")
    return out


def core_groups(tiles, n_cores: int, rows: int, cols: int) -> tuple[Group, ...]:
    """Runs of consecutive cores with the same used block: ``((first, n, rows, cols), ...)``.

    ``tiles=None`` is one group of whole cores.
    """
    if tiles is None:
        return ((0, n_cores, rows, cols),)
    groups: list[list[int]] = []
    for i, (r, k) in enumerate(tiles):
        if groups and (groups[-1][2], groups[-1][3]) == (r, k):
            groups[-1][1] += 1
        else:
            groups.append([i, 1, r, k])
    return tuple(tuple(g) for g in groups)


def group_key(key, j: int, groups) -> jax.Array:
    """The key of group ``j``: ``key`` itself when the chip is one group, else folded with ``j``."""
    return key if len(groups) == 1 else jax.random.fold_in(key, j)


def block(a, group: Group):
    """The group's part of a per-device array ``[C, ..., R, K]``: ``[n, ..., rows, cols]``."""
    s, n, r, k = group
    return a[s:s + n, ..., :r, :k]


def block_columns(a, group: Group):
    """The group's part of a per-column array ``[C, K]``: ``[n, cols]``."""
    s, n, _, k = group
    return a[s:s + n, :k]


def flatten(blocks) -> jax.Array:
    """Every element of the per-group ``blocks`` in one flat array (for elementwise work:
    one fused computation, traced and compiled once, instead of one per group)."""
    return blocks[0].reshape(-1) if len(blocks) == 1 else jnp.concatenate([b.reshape(-1) for b in blocks])


def unflatten(flat, blocks) -> list:
    """:func:`flatten` undone: ``flat`` cut into arrays of the shapes of ``blocks``."""
    out, start = [], 0
    for b in blocks:
        out.append(flat[start:start + b.size].reshape(b.shape))
        start += b.size
    return out


def unblock(parts, rows: int, cols: int):
    """Per-group arrays ``[n, ..., r, k]`` back to one ``[C, ..., rows, cols]``, zeros elsewhere.

    A later slice of one group's block (``pcmjax.nn`` cuts each layer's cores to its tile)
    is simplified by XLA to the part itself: padding and concatenation cost nothing there.
    """
    padded = [jnp.pad(p, [(0, 0)] * (p.ndim - 2) + [(0, rows - p.shape[-2]), (0, cols - p.shape[-1])])
              for p in parts]
    return padded[0] if len(padded) == 1 else jnp.concatenate(padded, axis=0)


def unblock_columns(parts, cols: int, fill: float = 0.0):
    """Per-group arrays ``[n, k]`` back to one ``[C, cols]`` (``fill`` in unused columns)."""
    padded = [jnp.pad(p, ((0, 0), (0, cols - p.shape[-1])), constant_values=fill) for p in parts]
    return padded[0] if len(padded) == 1 else jnp.concatenate(padded, axis=0)
