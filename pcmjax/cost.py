"""Chip cost model: cores, MVMs, latency, energy, TOPS and TOPS/W of a deployed network.

Estimates from the published HERMES figures (PHYSICS.md §6), not from a circuit model.
The model has two numbers per read mode, both taken from the first two rows of Table I of
Le Gallo et al. (the whole chip running one 8-bit MVM on all 64 cores):

* ``t_mvm``: the latency of one MVM, the same on every core because all cores run in
  parallel: 133 ns in one-phase and 520 ns in four-phase mode;
* ``e_core``: the energy of one MVM on one core, the chip's MVM energy divided by its 64
  cores: 0.86 µJ / 64 = 13.4 nJ (one-phase) and 3.38 µJ / 64 = 52.8 nJ (four-phase).

A network layer whose matrix is split into ``tiles`` cores and that runs ``mvms`` MVMs
per inference (1 for a dense layer, one per output pixel for a convolution) then costs
``mvms · t_mvm`` of latency (its tiles run in parallel; layers run one after another)
and ``mvms · tiles · e_core`` of energy. Operations count 2 per weight per MVM (a
multiply and an add), on the weights actually mapped, as Table I does.

How well this reproduces Table I (``tests/test_cost.py`` checks every figure below):

* the 64-core rows are reproduced to rounding (63.1 / 16.1 TOPS, 9.76 / 2.48 TOPS/W,
  1.55 / 0.40 TOPS/mm², 0.86 / 3.38 µJ, 133 / 520 ns);
* the TOPS of the ResNet-9-layer and LSTM-step rows follow from ``t_mvm`` and the cores
  used to within 1 % (the cores run at the full MVM rate);
* TOPS/W: within 2 % for the LSTM step (32 cores, 97 % used), but 22 % above the
  measured 6.88 / 1.74 TOPS/W for the ResNet-9 layer (8 cores, 86 %): the convolution's
  digital work (data movement between cores, activations on the 400 MHz digital units)
  is not in ``e_core``. ``energy_overhead`` scales the energy for such layers; the
  default (1.0) gives the array-and-ADC lower bound.

Shared cores (``pcmjax.nn.plan(..., share_cores=True)``): small tiles of several layers
may sit on one physical core (rows and columns disjoint). The assumption: a core runs one
MVM per cycle, so the layers on a shared core take turns (their MVMs never run in the same
cycle, even though their rows and columns are disjoint, since a layer's input is the output
of the one before); tiles of one layer on one core would run in one MVM. Hence with
sharing:

* cores, chips, area (TOPS/mm²) and utilisation count *physical* cores;
* energy counts core-MVMs: each layer's MVMs times the distinct cores it occupies, each
  charged the full ``e_core`` (the Table I figure is for fully used cores; a partly used
  core is charged in full either way), so sharing does not change the energy;
* latency (layers one after another) does not change; the pipelined rate is set by the
  busiest core, the sum of the MVMs per inference of the layers on it, so sharing can
  lower it.

What is not modelled: the global digital units (LSTM gates), off-chip I/O, data
movement for the inputs of the first layer, and idle power.

References:
  M. Le Gallo et al., "A 64-core mixed-signal in-memory compute chip based on
  phase-change memory for deep neural network inference", Nature Electronics 6, 680–693
  (2023), Table I. R. Khaddam-Aljameh et al., "HERMES-core: a 1.59-TOPS/mm² PCM on 14-nm
  CMOS in-memory compute core using 300-ps/LSB linearized CCO-based ADCs", IEEE JSSC 57,
  1027 (2022).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Literal

from pcmjax._validate import check_choice, check_float, check_int

ReadPhases = Literal[1, 4]

# --- Published figures (Le Gallo et al., Nat. Electron. 6, 680 (2023)) ------------------
HERMES_CORES = 64
HERMES_ROWS = 256
HERMES_COLS = 256
HERMES_CORE_AREA_MM2 = 0.635  # MVM area of one core (the 1.2 × 1.16 mm tile holds more)

# Table I, "MVM, 64 cores, 100 % used", 8-bit input and output: (latency ns, energy µJ).
_TABLE_I_MVM = {1: (133.0, 0.86), 4: (520.0, 3.38)}

# Table I in full, for reference and tests: case -> read_phases -> figures.
TABLE_I = {
    "mvm_64_cores": {
        "cores": 64, "utilisation": 1.00,
        1: dict(tops=63.1, tops_per_w=9.76, tops_per_mm2=1.55, energy_uj=0.86, latency_ns=133.0),
        4: dict(tops=16.1, tops_per_w=2.48, tops_per_mm2=0.40, energy_uj=3.38, latency_ns=520.0),
    },
    "resnet9_layer_8_cores": {
        "cores": 8, "utilisation": 0.86,
        1: dict(tops=6.79, tops_per_w=6.88, tops_per_mm2=1.34, energy_uj=0.97, latency_ns=1131.0),
        4: dict(tops=1.74, tops_per_w=1.74, tops_per_mm2=0.34, energy_uj=1.51, latency_ns=1518.0),
    },
    "lstm_step_32_cores": {
        "cores": 32, "utilisation": 0.97,
        1: dict(tops=30.6, tops_per_w=9.34, tops_per_mm2=1.50, energy_uj=3.46, latency_ns=1043.0),
        4: dict(tops=7.82, tops_per_w=2.37, tops_per_mm2=0.38, energy_uj=5.24, latency_ns=1430.0),
    },
}

SOURCE = "Le Gallo et al., Nat. Electron. 6, 680 (2023), Table I"


def _check_phases(read_phases) -> ReadPhases:
    check_int("read_phases", read_phases)
    return check_choice("read_phases", read_phases, (1, 4))


def mvm_latency_ns(read_phases: ReadPhases = 4) -> float:
    """Latency of one MVM (all cores in parallel), ns: 133 (one-phase) or 520 (four-phase).

    References:
      Le Gallo et al., Nat. Electron. 2023, Table I.
    """
    _check_phases(read_phases)
    return _TABLE_I_MVM[read_phases][0]


def core_mvm_energy_uj(read_phases: ReadPhases = 4) -> float:
    """Energy of one MVM on one core, µJ: the 64-core chip's MVM energy over 64.

    References:
      Le Gallo et al., Nat. Electron. 2023, Table I (0.86 µJ one-phase, 3.38 µJ four-phase).
    """
    _check_phases(read_phases)
    return _TABLE_I_MVM[read_phases][1] / HERMES_CORES


def mvm_cost(cores_used: float, utilisation: float = 1.0, read_phases: ReadPhases = 4, mvms: float = 1.0,
             energy_overhead: float = 1.0) -> dict:
    """Cost of ``mvms`` consecutive MVMs on ``cores_used`` cores running in parallel.

    Args:
      cores_used: cores that take part in each MVM (may exceed 64 for several chips).
      utilisation: fraction of those cores' weights that are mapped (0..1].
      read_phases: 1 or 4.
      mvms: consecutive MVMs.
      energy_overhead: factor on the energy (1 = arrays and ADCs only).

    Returns:
      dict with ``latency_ns``, ``energy_uj``, ``ops`` (2 per mapped weight per MVM),
      ``tops``, ``tops_per_w`` and ``tops_per_mm2`` (per MVM area of the cores used).
    """
    _check_phases(read_phases)
    check_float("cores_used", cores_used, 0.0)
    check_float("mvms", mvms, 0.0)
    check_float("utilisation", utilisation, 0.0, 1.0, lo_open=True)
    check_float("energy_overhead", energy_overhead, 0.0, lo_open=True)
    latency = mvms * mvm_latency_ns(read_phases)
    energy = mvms * cores_used * core_mvm_energy_uj(read_phases) * energy_overhead
    ops = 2.0 * HERMES_ROWS * HERMES_COLS * cores_used * utilisation * mvms
    return _rates(dict(latency_ns=latency, energy_uj=energy, ops=ops), cores_used)


def _rates(d: dict, cores: float) -> dict:
    # Guards: an empty network has zero latency and energy; report zero rates, not NaN.
    lat_s = d["latency_ns"] * 1e-9
    en_j = d["energy_uj"] * 1e-6
    d["tops"] = d["ops"] / lat_s / 1e12 if lat_s > 0 else 0.0
    d["tops_per_w"] = d["ops"] / en_j / 1e12 if en_j > 0 else 0.0
    area = cores * HERMES_CORE_AREA_MM2
    d["tops_per_mm2"] = d["tops"] / area if area > 0 else 0.0
    return d


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One analog layer as the cost model sees it.

    Attributes:
      name: label.
      rows, cols: the layer's weight matrix (inputs × outputs).
      mvms: MVMs per inference (1 for a dense layer; one per output position for a
        convolution; one per time step for a recurrent layer).
      tiles: tiles the layer is split into (default ``⌈rows/256⌉ · ⌈cols/256⌉``).
      cores: the physical core of every tile (``tiles`` labels, e.g. global core indices;
        equal labels in different layers mean a shared core); ``None``: every tile on a
        core of its own.
    """

    name: str
    rows: int
    cols: int
    mvms: float = 1.0
    tiles: int | None = None
    cores: tuple | None = None

    def __post_init__(self):
        for n in ("rows", "cols"):
            check_int(f"LayerCost {self.name!r}: {n}", getattr(self, n), 1)
        check_float(f"LayerCost {self.name!r}: mvms", self.mvms, 0.0)
        if self.tiles is None:
            object.__setattr__(self, "tiles", math.ceil(self.rows / HERMES_ROWS) * math.ceil(self.cols / HERMES_COLS))
        else:
            check_int(f"LayerCost {self.name!r}: tiles", self.tiles, 1)
        if self.cores is not None:
            cores = tuple(self.cores) if isinstance(self.cores, Sequence) and not isinstance(self.cores, str) else None
            if cores is None or len(cores) != self.tiles or not all(isinstance(c, Hashable) for c in cores):
                raise ValueError(f"LayerCost {self.name!r}: cores must hold one core label per tile "
                                 f"({self.tiles}), got {self.cores!r}.")
            object.__setattr__(self, "cores", cores)

    @property
    def weights(self) -> int:
        return self.rows * self.cols

    @property
    def n_cores(self) -> int:
        """Distinct physical cores the layer occupies (``tiles`` without sharing)."""
        return self.tiles if self.cores is None else len(set(self.cores))

    @property
    def utilisation(self) -> float:
        """The layer's weights over the devices of the cores it occupies."""
        return self.weights / (self.n_cores * HERMES_ROWS * HERMES_COLS)


def dense(name: str, in_features: int, out_features: int, mvms: float = 1.0) -> LayerCost:
    """A dense layer: ``in_features × out_features``, one MVM per inference by default."""
    return LayerCost(name, int(in_features), int(out_features), mvms)


def conv2d(name: str, in_channels: int, out_channels: int, kernel_size, out_hw) -> LayerCost:
    """A convolution as im2col MVMs: rows ``k_h·k_w·in_channels``, one MVM per output pixel.

    Args:
      kernel_size: int or ``(k_h, k_w)``.
      out_hw: int or ``(out_h, out_w)``, the output's spatial size.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    oh, ow = (out_hw, out_hw) if isinstance(out_hw, int) else tuple(out_hw)
    return LayerCost(name, int(kh * kw * in_channels), int(out_channels), float(oh * ow))


def from_layout(layout, mvms: Mapping[str, float] | None = None) -> list[LayerCost]:
    """Layers of a deployment plan (``pcmjax.nn.deploy.Layout``, duck-typed).

    Args:
      layout: an object whose ``layers`` each have ``name``, ``shape = (rows, cols)``,
        ``n_tiles`` and optionally ``core_ids`` (the physical core of every tile: layers
        placed with ``share_cores=True`` share some).
      mvms: MVMs per inference by layer name (default 1 for every layer: dense layers);
        :func:`pcmjax.nn.layer_mvms` counts them for a ``pcmjax.nn`` network.

    Returns:
      a list of :class:`LayerCost`.
    """
    mvms = {} if mvms is None else dict(mvms)
    out = []
    for lp in layout.layers:
        rows, cols = (int(s) for s in lp.shape)
        cores = getattr(lp, "core_ids", None)
        out.append(LayerCost(str(lp.name), rows, cols, float(mvms.get(lp.name, 1.0)), int(lp.n_tiles),
                             None if cores is None else tuple(int(c) for c in cores)))
    return out


def _as_layers(layers) -> list[LayerCost]:
    if hasattr(layers, "layers") and not isinstance(layers, (list, tuple)):
        return from_layout(layers)
    out = []
    for item in layers:
        if isinstance(item, LayerCost):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(LayerCost(**item))
        elif isinstance(item, Sequence) and not isinstance(item, str):
            out.append(LayerCost(*item))
        else:
            raise TypeError(f"a layer must be a LayerCost, a dict or a (name, rows, cols[, mvms[, tiles[, cores]]]) "
                            f"tuple, got {type(item).__name__}.")
    return out


def _core_labels(layers) -> list:
    """Every layer's physical core labels: its own ``cores``, or fresh ones shared with no one."""
    return [lc.cores if lc.cores is not None else tuple(("own", i, j) for j in range(lc.tiles))
            for i, lc in enumerate(layers)]


def network_cost(layers: Iterable, read_phases: ReadPhases = 4, *, cores_per_chip: int = HERMES_CORES,
                 energy_overhead: float = 1.0) -> dict:
    """Per-inference cost of a network whose layers sit on their own or on shared cores.

    Args:
      layers: :class:`LayerCost` items (or dicts / tuples of their fields, or a
        ``Layout``); layers whose ``cores`` name the same label share that core (see the
        module docstring: their MVMs take turns).
      read_phases: 1 or 4.
      cores_per_chip: for the chip count.
      energy_overhead: factor on the energy (see the module docstring).

    Returns:
      dict with ``layers`` (per-layer dicts), ``cores_used`` (physical cores),
      ``shared_cores`` (cores holding several layers), ``chips``, ``mvms_per_inference``
      (sequential MVM steps), ``core_mvms_per_inference``, ``latency_ns`` (layers one
      after another), ``throughput_ips`` (inferences per second with the layers pipelined:
      the busiest core sets the rate), ``energy_uj``, ``ops``, ``tops`` (ops / latency),
      ``tops_pipelined``, ``tops_per_w``, ``tops_per_mm2`` and ``utilisation``.
    """
    layers = _as_layers(layers)
    _check_phases(read_phases)
    t_mvm = mvm_latency_ns(read_phases)
    labels = _core_labels(layers)
    per = []
    for lc in layers:
        c = mvm_cost(lc.n_cores, lc.utilisation, read_phases, lc.mvms, energy_overhead)
        c.update(name=lc.name, rows=lc.rows, cols=lc.cols, tiles=lc.tiles, cores=lc.n_cores, mvms=lc.mvms,
                 utilisation=lc.utilisation)
        per.append(c)
    load: dict = {}  # MVMs per inference of every physical core: its layers take turns
    for lc, lab in zip(layers, labels):
        for core in set(lab):
            load[core] = load.get(core, 0.0) + lc.mvms
    owners: dict = {}
    for i, lab in enumerate(labels):
        for core in lab:
            owners.setdefault(core, set()).add(i)
    cores = len(load)
    total = dict(
        latency_ns=sum(p["latency_ns"] for p in per),
        energy_uj=sum(p["energy_uj"] for p in per),
        ops=sum(p["ops"] for p in per),
    )
    total = _rates(total, cores)
    slowest_ns = max(load.values(), default=0.0) * t_mvm
    total.update(
        layers=per,
        read_phases=read_phases,
        cores_used=cores,
        shared_cores=sum(len(o) > 1 for o in owners.values()),
        chips=max(1, math.ceil(cores / cores_per_chip)),
        mvms_per_inference=sum(lc.mvms for lc in layers),
        core_mvms_per_inference=sum(lc.mvms * lc.n_cores for lc in layers),
        throughput_ips=1e9 / slowest_ns if slowest_ns > 0 else 0.0,
        utilisation=sum(lc.weights for lc in layers) / max(cores * HERMES_ROWS * HERMES_COLS, 1),
    )
    total["tops_pipelined"] = total["ops"] * total["throughput_ips"] / 1e12
    return total


def report(layers, read_phases: ReadPhases = 4, *, accuracy: Mapping[str, float] | str | None = None,
           title: str | None = None, energy_overhead: float = 1.0, per_layer: bool = True,
           cores_per_chip: int = HERMES_CORES) -> str:
    """A plain-text cost report of a deployed network (for ``pcmjax info --network``).

    Args:
      layers: as :func:`network_cost` (a list of :class:`LayerCost`, or a ``Layout``).
      read_phases: 1 or 4 (HERMES's published accuracies use 4).
      accuracy: optional figures printed beside the cost (e.g. ``{"software": 0.9367,
        "chip, 1 day": 0.9281}``) or a preformatted string.
      title: first line.
      energy_overhead: factor on the energy (see the module docstring).
      per_layer: include one line per layer.
      cores_per_chip: for the chip count.

    Returns:
      the report, several lines, no trailing newline.
    """
    c = network_cost(layers, read_phases, energy_overhead=energy_overhead, cores_per_chip=cores_per_chip)
    mode = "one-phase" if read_phases == 1 else "four-phase"
    lines = [title or "Chip cost per inference", f"  read mode            {mode} ({mvm_latency_ns(read_phases):.0f} ns"
             f" and {core_mvm_energy_uj(read_phases) * 1e3:.1f} nJ per core-MVM)"]
    if per_layer and c["layers"]:
        lines.append(f"  {'layer':<20} {'matrix':>11} {'cores':>5} {'used':>5} {'MVMs':>7} {'ns':>9} {'µJ':>8}")
        for p in c["layers"]:
            mat = f"{p['rows']}×{p['cols']}"
            lines.append(f"  {p['name'][:20]:<20} {mat:>11} {p['cores']:>5d} {p['utilisation']:>5.0%} "
                         f"{p['mvms']:>7g} {p['latency_ns']:>9.0f} {p['energy_uj']:>8.3f}")
    lines += [
        f"  cores used           {c['cores_used']} ({c['chips']} chip{'s' if c['chips'] > 1 else ''} of "
        f"{cores_per_chip};"
        f" {c['utilisation']:.0%} of their weights mapped)"
        + (f"; {c['shared_cores']} shared by several layers, whose MVMs take turns" if c["shared_cores"] else ""),
        f"  MVMs per inference   {c['mvms_per_inference']:g} sequential, {c['core_mvms_per_inference']:g} core-MVMs",
        f"  latency              {c['latency_ns'] / 1e3:.3f} µs (layers in sequence);"
        f" {c['throughput_ips']:.3g} inferences/s pipelined",
        f"  energy               {c['energy_uj']:.3f} µJ per inference",
        f"  throughput           {c['tops']:.3g} TOPS ({c['tops_pipelined']:.3g} pipelined), "
        f"{c['tops_per_w']:.3g} TOPS/W, {c['tops_per_mm2']:.3g} TOPS/mm²",
    ]
    if accuracy is not None:
        if isinstance(accuracy, str):
            lines.append(f"  accuracy             {accuracy}")
        else:
            acc = ", ".join(f"{k} {v:.2%}" if isinstance(v, float) and v <= 1 else f"{k} {v}"
                            for k, v in accuracy.items())
            lines.append(f"  accuracy             {acc}")
    lines.append(f"  (estimates from {SOURCE}; arrays and ADCs only"
                 f"{'' if energy_overhead == 1.0 else f', energy ×{energy_overhead:g}'})")
    return "\n".join(lines)
