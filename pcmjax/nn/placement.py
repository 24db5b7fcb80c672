"""Placing a network's tiles on chip cores: one tile per core, or small tiles sharing a core.

:func:`plan` splits every analog layer's ``[rows, cols]`` matrix into tiles of at most one
core (:func:`pcmjax.nn.hwa.row_chunks`: near-equal chunks; row splits are summed
digitally, column splits concatenated) and gives each tile a *block* of a physical core:
``rows r0:r1, cols c0:c1`` of the crossbar.

**One tile per core** (``share_cores=False``, the default): tile ``i`` of the network (in
layer order, row-split major) sits alone on core ``i`` at rows ``0:r``, cols ``0:k``. This is
the placement every published figure of this package was measured with.

**Shared cores** (``share_cores=True``), as HERMES places several small layers on one core:
tiles whose row ranges *and* column ranges are disjoint can sit on one core, since a tile's
inputs drive only its rows and the ADCs convert only its columns. A set of tiles fits one
core exactly when their rows add up to at most the core's rows and their columns to at most
its columns (then they can be laid out block-diagonally), so :func:`pack_tiles` is a
first-fit on both sums: tiles in network order, each onto the first core (lowest index)
whose remaining rows and columns both suffice, stacked below and to the right of the tiles
already there; a tile that fits nowhere opens the next core. Deterministic, no sorting.
Two tiles of one layer never share a core (balanced chunks of a split dimension add up
to more than a core), so a shared core holds tiles of different layers, which take turns:
the cost model (:mod:`pcmjax.cost`) runs one MVM per layer per cycle on it.

What sharing changes physically: fewer cores are occupied (capacity: a network fits when
its *physical* cores fit), and a core's layers share its time. What the simulation keeps:
the programmed state still holds one compact array per tile (:mod:`pcmjax.chip.compact`),
so MVM results for the same keys are identical with and without sharing. What that does
not model on a shared core:

* drift compensation is computed per tile (the ``"global"`` ratio is one per tile, i.e.
  per block of columns): a core that computed one ratio over all its blocks would mix the
  drift of different layers; the ``"column"`` variant is exactly the physical one;
* the devices outside the tiles' blocks (e.g. rows of one tile under another tile's
  columns): unprogrammed, not simulated; on the chip they pass a small RESET-level
  current into columns that are not being converted in that cycle, so they do not reach
  an output;
* coupling through the shared word and bit lines: wire resistance (``cfg.parasitics``)
  makes the whole array matter (the other blocks load the lines), and the crossbar solve
  simulates each tile's own array only, so ``share_cores=True`` with parasitics raises
  ``ValueError`` rather than give a wrong answer.
"""

from __future__ import annotations

import dataclasses

from pcmjax._validate import check_bool, check_instance, check_int
from pcmjax.chip import parasitics
from pcmjax.config import ChipConfig
from pcmjax.nn.hwa import row_chunks
from pcmjax.nn.layers import analog_layers


@dataclasses.dataclass(frozen=True)
class LayerPlacement:
    """Where one analog layer sits.

    Attributes:
      name: the layer's path in the model (``"layers/0"``).
      shape: ``(rows, cols)`` of the layer's matrix.
      row_chunks, col_chunks: ``(start, stop)`` of each row / column split.
      first_core: index of the layer's first tile in the programmed state (tile
        ``(r, c)`` is entry ``first_core + r · n_cols + c``); without shared cores it is
        also the tile's global core (cores of chip ``k`` are ``k · cores_per_chip ...``).
      cores_per_chip, core_rows, core_cols: the chip geometry.
      blocks: ``(core, row0, col0)`` of every tile, row-split major: its global physical
        core and the top-left corner of its block there; ``None``: tile ``i`` alone on
        core ``first_core + i`` at ``(0, 0)``.
    """

    name: str
    shape: tuple
    row_chunks: tuple
    col_chunks: tuple
    first_core: int
    cores_per_chip: int
    core_rows: int
    core_cols: int
    blocks: tuple | None = None

    @property
    def n_tiles(self) -> int:
        return len(self.row_chunks) * len(self.col_chunks)

    @property
    def tile_slices(self) -> tuple:
        """``(a, b, c, d)`` of every tile: it holds ``W[a:b, c:d]`` of the layer."""
        return tuple((a, b, c, d) for a, b in self.row_chunks for c, d in self.col_chunks)

    @property
    def tile_blocks(self) -> tuple:
        """``(core, r0, r1, c0, c1)`` of every tile: global core, rows ``r0:r1`` and columns
        ``c0:c1`` of its crossbar."""
        origins = self.blocks or tuple((self.first_core + i, 0, 0) for i in range(self.n_tiles))
        return tuple((core, r0, r0 + b - a, c0, c0 + d - c)
                     for (core, r0, c0), (a, b, c, d) in zip(origins, self.tile_slices))

    @property
    def core_ids(self) -> tuple:
        """The global physical core of every tile."""
        return tuple(blk[0] for blk in self.tile_blocks)

    @property
    def cores(self) -> tuple:
        """``(chip, core)`` of every tile, row-split major."""
        return tuple(divmod(core, self.cores_per_chip) for core in self.core_ids)

    @property
    def utilisation(self) -> float:
        """Fraction of the devices of the layer's tiles' cores (one per tile) that hold its weights."""
        return self.shape[0] * self.shape[1] / (self.n_tiles * self.core_rows * self.core_cols)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The placement of a whole network (static, hashable).

    Attributes:
      layers: one :class:`LayerPlacement` per analog layer, in ``chip_index`` order.
      rows, cols: tile size of the programmed array (the largest tile, ≤ the core size).
      n_chips, cores_per_chip, core_rows, core_cols: the chips.
      share_cores: whether small tiles were packed onto shared cores (:func:`pack_tiles`).
    """

    layers: tuple
    rows: int
    cols: int
    n_chips: int
    cores_per_chip: int
    core_rows: int
    core_cols: int
    share_cores: bool = False

    @property
    def n_tiles(self) -> int:
        """Tiles, i.e. arrays in the programmed state."""
        return sum(lp.n_tiles for lp in self.layers)

    @property
    def n_cores(self) -> int:
        """Physical cores occupied (``n_tiles`` without shared cores)."""
        return len(self.core_table())

    @property
    def tiles(self) -> tuple:
        """``(rows, cols)`` of every tile in state order: the block each simulated array uses
        (``program_chip(..., tiles=...)`` simulates only those devices)."""
        return tuple((b - a, d - c) for lp in self.layers for a, b, c, d in lp.tile_slices)

    @property
    def utilisation(self) -> float:
        """Fraction of the occupied physical cores' devices that hold a weight."""
        w = sum(lp.shape[0] * lp.shape[1] for lp in self.layers)
        return w / (self.n_cores * self.core_rows * self.core_cols)

    def core_table(self) -> dict:
        """``{global core: ((layer index, tile slice (a, b, c, d), block (r0, r1, c0, c1)), ...)}``,
        cores in increasing order, each core's tiles in network order."""
        table: dict = {}
        for i, lp in enumerate(self.layers):
            for sl, (core, r0, r1, c0, c1) in zip(lp.tile_slices, lp.tile_blocks):
                table.setdefault(core, []).append((i, sl, (r0, r1, c0, c1)))
        return {core: tuple(table[core]) for core in sorted(table)}

    def shared(self) -> dict:
        """``{global core: (layer names, ...)}`` of the cores that hold tiles of several layers."""
        out = {}
        for core, entries in self.core_table().items():
            names = tuple(dict.fromkeys(self.layers[i].name for i, _, _ in entries))
            if len(names) > 1:
                out[core] = names
        return out

    def report(self) -> str:
        """A placement table: layer → matrix, tiles, cores, utilisation; then every tile's
        physical core, its block there and the part of the layer it holds, with each core's
        utilisation and the layers that share it."""
        lines = [f"{'layer':<24} {'matrix':>12} {'tiles':>7} {'cores':<22} {'util.':>6}"]
        for lp in self.layers:
            tiles = f"{len(lp.row_chunks)}x{len(lp.col_chunks)}"
            lines.append(f"{lp.name:<24} {lp.shape[0]:>5}x{lp.shape[1]:<6} {tiles:>7} {_span(lp.cores):<22} "
                         f"{100 * lp.utilisation:5.1f}%")
        cap = self.n_chips * self.cores_per_chip
        sharing = f" by {self.n_tiles} tiles, {len(self.shared())} shared" if self.share_cores else ""
        lines.append(f"{self.n_cores} of {cap} cores occupied{sharing} ({self.n_chips} chip(s) of "
                     f"{self.cores_per_chip} cores of {self.core_rows}x{self.core_cols}); "
                     f"{100 * self.utilisation:.1f}% of their devices hold weights")
        used = sum(r * k for r, k in self.tiles)
        lines.append(f"simulated: {used} device pairs, each tile's own block ({100 * self.utilisation:.1f}% of the "
                     "occupied cores; pcmjax.chip.compact)")
        lines += self._core_lines()
        return "\n".join(lines)

    def _core_lines(self) -> list:
        lines = ["", f"{'chip:core':<10} {'util.':>6}  {'block (rows, cols)':<24} tile of layer"]
        area = self.core_rows * self.core_cols
        for core, entries in self.core_table().items():
            util = sum((r1 - r0) * (c1 - c0) for _, _, (r0, r1, c0, c1) in entries) / area
            head = f"{core // self.cores_per_chip}:{core % self.cores_per_chip}"
            for j, (i, (a, b, c, d), (r0, r1, c0, c1)) in enumerate(entries):
                lead = f"{head:<10} {100 * util:5.1f}%" if j == 0 else " " * 17
                lines.append(f"{lead}  {f'rows {r0}:{r1}, cols {c0}:{c1}':<24} "
                             f"{self.layers[i].name}[{a}:{b}, {c}:{d}]")
        for core, names in self.shared().items():
            lines.append(f"core {core // self.cores_per_chip}:{core % self.cores_per_chip} is shared by "
                         f"{', '.join(names)} (their MVMs take turns)")
        return lines

    def __str__(self):
        return self.report()


def _span(cores) -> str:
    """``(chip, core)`` pairs as ``"chip 0: 0-3, 7; chip 1: 0"`` (runs of consecutive cores)."""
    by_chip: dict = {}
    for chip, core in cores:
        by_chip.setdefault(chip, []).append(core)
    parts = []
    for chip, cs in by_chip.items():
        runs: list = []
        for c in sorted(set(cs)):
            if runs and c == runs[-1][1] + 1:
                runs[-1][1] = c
            else:
                runs.append([c, c])
        parts.append(f"chip {chip}: " + ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs))
    return "; ".join(parts)


def pack_tiles(sizes, rows: int, cols: int) -> tuple:
    """First-fit packing of tiles onto cores, rows and columns disjoint within a core.

    Each tile, in the order given, goes to the lowest-numbered core whose unused rows and
    unused columns both suffice, at the first unused row and column there (block-diagonal
    stacking); if none has room it opens a new core.

    Args:
      sizes: ``(rows, cols)`` of every tile, each at most ``rows × cols``.
      rows, cols: the crossbar size of a core.

    Returns:
      ``(core, row0, col0)`` of every tile; cores are numbered from 0 in opening order.
    """
    used: list = []  # per open core: [rows used, cols used]
    out = []
    for r, k in sizes:
        core = next((j for j, (ur, uc) in enumerate(used) if ur + r <= rows and uc + k <= cols), len(used))
        if core == len(used):
            used.append([0, 0])
        out.append((core, used[core][0], used[core][1]))
        used[core][0] += r
        used[core][1] += k
    return tuple(out)


def plan(model, config: ChipConfig, n_chips: int = 1, *, share_cores: bool = False) -> Layout:
    """The :class:`Layout` of ``model`` on ``n_chips`` chips of ``config`` (no programming).

    Args:
      model: an ``nnx.Module`` with analog layers.
      config: :class:`pcmjax.ChipConfig` of one chip (its ``n_cores``, ``rows``, ``cols``).
      n_chips: how many such chips may be used; tiles fill chip 0 first.
      share_cores: pack tiles with disjoint rows and columns onto shared cores
        (:func:`pack_tiles`; see the module docstring for what it changes and what the
        simulation does not model). Default ``False``: one tile per core.

    Returns:
      the :class:`Layout`.

    Raises:
      ValueError: if the network needs more physical cores than ``n_chips ·
        config.n_cores`` (the message names the cores needed per layer and the chips that
        would suffice), or ``share_cores=True`` with wire resistance (``config.parasitics``).
    """
    check_instance("config", config, ChipConfig)
    check_int("n_chips", n_chips, 1)
    check_bool("share_cores", share_cores)
    if share_cores and parasitics.enabled(config):
        raise ValueError("share_cores=True is not supported with wire resistance (config.parasitics enabled): the "
                         "crossbar solve simulates each tile's own array, but on a shared core the other tiles load "
                         "the same lines; deploy with share_cores=False or without parasitics.")
    layers = analog_layers(model)
    if not layers:
        raise ValueError("model has no analog layers (pcmjax.nn.AnalogLinear / AnalogConv) to deploy.")
    geometry = dict(cores_per_chip=config.n_cores, core_rows=config.rows, core_cols=config.cols)
    placements, first = [], 0
    for path, layer in layers:
        rows, cols = (int(s) for s in layer.matrix_shape())
        lp = LayerPlacement(name="/".join(str(p) for p in path) or "<root>", shape=(rows, cols),
                            row_chunks=row_chunks(rows, config.rows), col_chunks=row_chunks(cols, config.cols),
                            first_core=first, **geometry)
        placements.append(lp)
        first += lp.n_tiles
    if share_cores:
        origins = pack_tiles([(b - a, d - c) for lp in placements for a, b, c, d in lp.tile_slices],
                             config.rows, config.cols)
        placements = [dataclasses.replace(lp, blocks=origins[lp.first_core:lp.first_core + lp.n_tiles])
                      for lp in placements]
    layout = Layout(layers=tuple(placements), rows=max(r for r, _ in _tile_sizes(placements)),
                    cols=max(k for _, k in _tile_sizes(placements)), n_chips=n_chips, share_cores=share_cores,
                    **geometry)
    cap = n_chips * config.n_cores
    if layout.n_cores > cap:
        need = ", ".join(f"{lp.name}: {lp.n_tiles}" for lp in placements)
        how = f" (its {layout.n_tiles} tiles packed onto shared cores)" if share_cores else ""
        raise ValueError(
            f"the network needs {layout.n_cores} cores of {config.rows}x{config.cols}{how} ({need} tiles) but "
            f"{n_chips} chip(s) of {config.n_cores} cores offer {cap}; use n_chips="
            f"{-(-layout.n_cores // config.n_cores)} or a smaller network."
        )
    return layout


def _tile_sizes(placements) -> list:
    return [(b - a, d - c) for lp in placements for a, b, c, d in lp.tile_slices]


__all__ = ["LayerPlacement", "Layout", "pack_tiles", "plan"]
