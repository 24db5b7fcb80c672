"""Deploying a network on simulated chips: tiling, placement, programming, forward pass.

:func:`deploy` finds every analog layer, splits its ``[rows, cols]`` matrix into tiles of
at most one core (row splits are summed digitally, column splits concatenated), places
the tiles on consecutive cores (of one chip or of several), stacks all of them into one
``[tiles, rows, cols]`` array and programs them with ONE :func:`pcmjax.program_chip`
call: only occupied cores are simulated, an empty core costs nothing.

The :class:`DeployedModel` it returns runs the network with each analog layer on its
tiles (PWM, crossbar, ADC, digital unit, drift compensation: :func:`pcmjax.mvm`), and
every other operation (activations, pooling, batch-norm, biases, residual additions)
digitally, as the chip's digital units do.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from pcmjax._validate import check_bool, check_finite_array, check_instance, check_int, check_key
from pcmjax.chip.state import ChipState, program_chip
from pcmjax.config import ChipConfig
from pcmjax.devices import DeviceModel, HermesPCM
from pcmjax.nn import _context
from pcmjax.nn.hwa import row_chunks
from pcmjax.nn.layers import analog_layers


@dataclasses.dataclass(frozen=True)
class LayerPlacement:
    """Where one analog layer sits.

    Attributes:
      name: the layer's path in the model (``"layers/0"``).
      shape: ``(rows, cols)`` of the layer's matrix.
      row_chunks, col_chunks: ``(start, stop)`` of each row / column split.
      first_core: global index of the layer's first tile (cores of chip ``c`` are
        ``c · cores_per_chip ...``); tile ``(r, c)`` is on ``first_core + r · n_cols + c``.
      cores_per_chip, core_rows, core_cols: the chip geometry.
    """

    name: str
    shape: tuple
    row_chunks: tuple
    col_chunks: tuple
    first_core: int
    cores_per_chip: int
    core_rows: int
    core_cols: int

    @property
    def n_tiles(self) -> int:
        return len(self.row_chunks) * len(self.col_chunks)

    @property
    def cores(self) -> tuple:
        """``(chip, core)`` of every tile, row-split major."""
        return tuple(divmod(self.first_core + i, self.cores_per_chip) for i in range(self.n_tiles))

    @property
    def utilisation(self) -> float:
        """Fraction of the occupied cores' devices that hold a weight."""
        return self.shape[0] * self.shape[1] / (self.n_tiles * self.core_rows * self.core_cols)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The placement of a whole network (static, hashable).

    Attributes:
      layers: one :class:`LayerPlacement` per analog layer, in ``chip_index`` order.
      rows, cols: tile size of the programmed array (the largest tile, ≤ the core size).
      n_chips, cores_per_chip, core_rows, core_cols: the chips.
    """

    layers: tuple
    rows: int
    cols: int
    n_chips: int
    cores_per_chip: int
    core_rows: int
    core_cols: int

    @property
    def n_tiles(self) -> int:
        return sum(lp.n_tiles for lp in self.layers)

    @property
    def tiles(self) -> tuple:
        """``(rows, cols)`` of every tile in core order: the block each occupied core uses
        (``program_chip(..., tiles=...)`` simulates only those devices)."""
        return tuple((b - a, d - c) for lp in self.layers for a, b in lp.row_chunks for c, d in lp.col_chunks)

    @property
    def utilisation(self) -> float:
        w = sum(lp.shape[0] * lp.shape[1] for lp in self.layers)
        return w / (self.n_tiles * self.core_rows * self.core_cols)

    def report(self) -> str:
        """A placement table: layer → matrix, tiles, cores, utilisation."""
        def span(cores):
            by_chip = {}
            for chip, core in cores:
                by_chip.setdefault(chip, []).append(core)
            return ", ".join(f"chip {c}: {v[0]}" + (f"-{v[-1]}" if len(v) > 1 else "") for c, v in by_chip.items())

        lines = [f"{'layer':<24} {'matrix':>12} {'tiles':>7} {'cores':<22} {'util.':>6}"]
        for lp in self.layers:
            tiles = f"{len(lp.row_chunks)}x{len(lp.col_chunks)}"
            lines.append(f"{lp.name:<24} {lp.shape[0]:>5}x{lp.shape[1]:<6} {tiles:>7} {span(lp.cores):<22} "
                         f"{100 * lp.utilisation:5.1f}%")
        cap = self.n_chips * self.cores_per_chip
        lines.append(f"{self.n_tiles} of {cap} cores occupied ({self.n_chips} chip(s) of {self.cores_per_chip} "
                     f"cores of {self.core_rows}x{self.core_cols}); {100 * self.utilisation:.1f}% of their devices "
                     "hold weights")
        used = sum(r * k for r, k in self.tiles)
        lines.append(f"simulated: {used} device pairs, each tile's own block ({100 * self.utilisation:.1f}% of the "
                     "occupied cores; pcmjax.chip.compact)")
        return "\n".join(lines)

    def __str__(self):
        return self.report()


def plan(model, config: ChipConfig, n_chips: int = 1) -> Layout:
    """The :class:`Layout` of ``model`` on ``n_chips`` chips of ``config`` (no programming).

    Raises:
      ValueError: if the network needs more cores than ``n_chips · config.n_cores``; the
        message names the cores needed per layer and the chips that would suffice.
    """
    check_instance("config", config, ChipConfig)
    check_int("n_chips", n_chips, 1)
    layers = analog_layers(model)
    if not layers:
        raise ValueError("model has no analog layers (pcmjax.nn.AnalogLinear / AnalogConv) to deploy.")
    placements, core = [], 0
    for path, layer in layers:
        rows, cols = layer.matrix_shape()
        lp = LayerPlacement(name="/".join(str(p) for p in path) or "<root>", shape=(int(rows), int(cols)),
                            row_chunks=row_chunks(rows, config.rows), col_chunks=row_chunks(cols, config.cols),
                            first_core=core, cores_per_chip=config.n_cores, core_rows=config.rows,
                            core_cols=config.cols)
        placements.append(lp)
        core += lp.n_tiles
    cap = n_chips * config.n_cores
    if core > cap:
        need = ", ".join(f"{lp.name}: {lp.n_tiles}" for lp in placements)
        raise ValueError(
            f"the network needs {core} cores of {config.rows}x{config.cols} ({need}) but {n_chips} chip(s) of "
            f"{config.n_cores} cores offer {cap}; use n_chips={-(-core // config.n_cores)} or a smaller network."
        )
    t_rows = max(b - a for lp in placements for a, b in lp.row_chunks)
    t_cols = max(b - a for lp in placements for a, b in lp.col_chunks)
    return Layout(layers=tuple(placements), rows=t_rows, cols=t_cols, n_chips=n_chips,
                  cores_per_chip=config.n_cores, core_rows=config.rows, core_cols=config.cols)


def tile_weights(model, layout: Layout):
    """Every tile of the network, zero-padded and stacked: ``[n_tiles, rows, cols]``."""
    tiles = []
    for (_, layer), lp in zip(analog_layers(model), layout.layers):
        w = layer.matrix()
        for a, b in lp.row_chunks:
            for c, d in lp.col_chunks:
                tiles.append(jnp.pad(w[a:b, c:d], ((0, layout.rows - (b - a)), (0, layout.cols - (d - c)))))
    return jnp.stack(tiles)


def identity_calibration(layout: Layout) -> dict:
    """Calibration parameters that change nothing.

    Returns:
      ``{"gamma": (γ' [out] per layer), "beta": (β' [out]), "tile_gamma": ([row splits,
      out]: the gain of every core column), "input_scale": [layers]}``: ones, zeros, ones, ones.
    """
    return {
        "gamma": tuple(jnp.ones((lp.shape[1],), jnp.float32) for lp in layout.layers),
        "beta": tuple(jnp.zeros((lp.shape[1],), jnp.float32) for lp in layout.layers),
        "tile_gamma": tuple(jnp.ones((len(lp.row_chunks), lp.shape[1]), jnp.float32) for lp in layout.layers),
        "input_scale": jnp.ones((len(layout.layers),), jnp.float32),
    }


@partial(jax.jit, static_argnames=("graphdef", "layout", "record"))
def _apply(graphdef, params, layout, state, calibration, key, x, record=False):
    model = nnx.merge(graphdef, params)
    ctx = _context.ChipContext(layout=layout, state=state, calibration=calibration, key=key,
                               outputs={} if record else None)
    with _context.use(ctx):
        y = model(x)
    return (y, ctx.outputs) if record else y


class DeployedModel:
    """A network programmed on simulated chips.

    Call it like the network, with a key for the read and ADC noise: ``deployed(key, x)``.
    ``at_time(key, t)`` ages the chips;
    :func:`pcmjax.nn.calibrate` learns per-column corrections. The pure pieces
    (:meth:`program`, :meth:`apply`) are ``jit``/``vmap``-able for Monte Carlo studies
    over chip instances.

    Attributes:
      layout: the :class:`Layout` (placement of every tile).
      config: the :class:`pcmjax.ChipConfig` programmed (``n_cores`` spans all chips).
      device: the device model.
      weights: ``[n_tiles, rows, cols]`` tiles programmed.
      state: the :class:`pcmjax.ChipState` (at time ``state.t``).
      calibration: per-layer ``gamma``, ``beta`` and ``input_scale`` factors.
    """

    def __init__(self, graphdef, params, ref_graphdef, layout, config, device, weights, state, calibration):
        self.graphdef, self.params, self.ref_graphdef = graphdef, params, ref_graphdef
        self.layout, self.config, self.device = layout, config, device
        self.weights, self.state, self.calibration = weights, state, calibration
        self.calibration_losses = None  # set by pcmjax.nn.calibrate

    def replace(self, **changes) -> DeployedModel:
        """A copy with some attributes changed (``state``, ``calibration``, ...)."""
        new = object.__new__(DeployedModel)
        new.__dict__.update(self.__dict__)
        for k, v in changes.items():
            if k not in self.__dict__:
                raise TypeError(f"DeployedModel has no attribute {k!r}.")
            setattr(new, k, v)
        return new

    def _programmed_state(self) -> ChipState:
        if self.state is None:
            raise ValueError("this DeployedModel was placed with deploy(..., program=False) and holds no chip "
                             "state; program one with deployed.replace(state=deployed.program(key)).")
        return self.state

    @property
    def t(self) -> float:
        """Seconds since programming of the current state."""
        return float(self._programmed_state().t)

    def report(self) -> str:
        """The placement table (see :meth:`Layout.report`)."""
        return self.layout.report()

    # -- pure pieces --------------------------------------------------------------
    def program(self, key) -> ChipState:
        """Program a fresh chip instance with this network's tiles (vmap over keys for many)."""
        return program_chip(key, self.weights, self.config, self.device, tiles=self.layout.tiles)

    def apply(self, state, calibration, key, x, *, record: bool = False):
        """The forward pass on a given state and calibration (pure, jit/vmap-able).

        Args:
          state: a :class:`pcmjax.ChipState` holding this network's tiles.
          calibration: per-layer corrections (:func:`identity_calibration` for none).
          key: a ``jax.random`` key (read and ADC noise).
          x: a batch of inputs ``[N, ...]``. Concrete inputs with NaN or inf raise
            ``ValueError``; traced ones (inside ``jit``/``vmap``/``grad``) are not
            checked, and a non-finite value then makes non-finite outputs.
          record: also return every analog layer's output.

        Returns:
          the network's output; with ``record=True`` also a dict ``chip_index → layer
          output`` (before the activation that follows the layer).
        """
        x = check_finite_array(x, "x")
        return _apply(self.graphdef, self.params, self.layout, state, calibration, key, x, record=record)

    def reference(self, x, *, record: bool = False):
        """The digital network (same weights and input ranges, no chip) on ``x``."""
        x = check_finite_array(x, "x")
        return _apply(self.ref_graphdef, self.params, self.layout, None, None, None, x, record=record)

    # -- conveniences --------------------------------------------------------------
    def __call__(self, key, x):
        """The network on the chips at the current state and calibration.

        Args:
          key: a ``jax.random`` key (read and ADC noise).
          x: a batch of inputs ``[N, ...]`` (finite; see :meth:`apply`).

        Returns:
          the network's output for ``x``.
        """
        check_key(key)
        return self.apply(self._programmed_state(), self.calibration, key, x)

    def at_time(self, key, t) -> DeployedModel:
        """The deployed model ``t`` seconds after programming (drift, 1/f noise, compensation)."""
        return self.replace(state=self._programmed_state().at_time(key, t))


def inference_view(model):
    """A clone of ``model`` as deployed: each analog layer numbered with its ``chip_index``
    (the order of :func:`plan`), input ranges and batch-norm statistics frozen, no dropout."""
    view = nnx.clone(model)
    for i, (_, layer) in enumerate(analog_layers(view)):
        layer.chip_index = i
    view.set_attributes(use_running_average=True, deterministic=True, raise_if_not_found=False)
    return view


def _check_input_ranges(model, layout: Layout):
    """A converted layer must have a measured input range: the PWM encodes ``x / range``."""
    missing = [lp.name for lp, (_, layer) in zip(layout.layers, analog_layers(model))
               if getattr(layer, "require_input_range", False) and float(layer.input_scale[...]) <= 0]
    if missing:
        raise ValueError(f"no input range was measured for the analog layers {missing}, so their inputs cannot be "
                         "encoded; convert with pcmjax.nn.convert(model, data=x) or call "
                         "pcmjax.nn.measure_input_ranges(model, x) before deploying.")


def deploy(model, key, config: ChipConfig | None = None, *, n_chips: int = 1,
           device: DeviceModel | None = None, program: bool = True) -> DeployedModel:
    """Place every analog layer of ``model`` on chip cores and program them.

    Args:
      model: an ``nnx.Module`` with :class:`AnalogLinear` / :class:`AnalogConv` layers
        (any mode; their ``input_scale`` sets each layer's input range).
      key: a ``jax.random`` key (programming, ADC mismatch); ``None`` with
        ``program=False``, since placing a network draws no random numbers.
      config: :class:`pcmjax.ChipConfig` of one chip (default: HERMES).
      n_chips: how many such chips may be used; tiles fill chip 0 first.
      device: device model (default: ``HermesPCM(num_devices=2)``).
      program: ``False`` places the network without programming a chip: the returned
        model's ``state`` is ``None``, for templates whose chip instances are programmed
        with :meth:`DeployedModel.program` (Monte Carlo studies).

    Returns:
      a :class:`DeployedModel` at ``t = 0``.

    Raises:
      ValueError: the network needs more cores than ``n_chips · config.n_cores`` (the
        message names the cores needed), or a layer made by :func:`pcmjax.nn.convert`
        has no measured input range (the message names the layers).
    """
    config = ChipConfig() if config is None else config
    device = HermesPCM(num_devices=2) if device is None else device
    check_bool("program", program)
    if program or key is not None:
        check_key(key)
    layout = plan(model, config, n_chips)
    _check_input_ranges(model, layout)
    chip_model = inference_view(model)
    ref_model = nnx.clone(chip_model)
    for _, layer in analog_layers(chip_model):
        layer.mode = "chip"
    for _, layer in analog_layers(ref_model):
        layer.mode = "digital"
    graphdef, params = nnx.split(chip_model)
    ref_graphdef, _ = nnx.split(ref_model)
    weights = tile_weights(chip_model, layout)
    cfg = config if n_chips == 1 else config.replace(n_cores=config.n_cores * n_chips)
    state = program_chip(key, weights, cfg, device, tiles=layout.tiles) if program else None
    return DeployedModel(graphdef, params, ref_graphdef, layout, cfg, device, weights, state,
                         identity_calibration(layout))


__all__ = ["deploy", "plan", "inference_view", "DeployedModel", "Layout", "LayerPlacement", "identity_calibration",
           "tile_weights"]
