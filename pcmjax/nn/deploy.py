"""Deploying a network on simulated chips: tiling, placement, programming, forward pass.

:func:`deploy` finds every analog layer, splits its ``[rows, cols]`` matrix into tiles of
at most one core (row splits are summed digitally, column splits concatenated), places
the tiles on consecutive cores (of one chip or of several), or packs small tiles onto
shared cores with ``share_cores=True`` (:mod:`pcmjax.nn.placement`), stacks all of them
into one ``[tiles, rows, cols]`` array and programs them with ONE
:func:`pcmjax.program_chip` call: only the tiles are simulated, an empty core costs nothing.

The :class:`DeployedModel` it returns runs the network with each analog layer on its
tiles (PWM, crossbar, ADC, digital unit, drift compensation: :func:`pcmjax.mvm`), and
every other operation (activations, pooling, batch-norm, biases, residual additions)
digitally, as the chip's digital units do.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from pcmjax._validate import check_bool, check_key
from pcmjax.chip.state import ChipState, program_chip
from pcmjax.config import ChipConfig
from pcmjax.devices import DeviceModel, HermesPCM
from pcmjax.nn import _context
from pcmjax.nn._context import model_inputs
from pcmjax.nn.layers import analog_layers, missing_input_ranges
from pcmjax.nn.placement import LayerPlacement, Layout, plan


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
      config: the :class:`pcmjax.ChipConfig` programmed (``n_cores`` spans all chips; with
        shared cores, at least one per tile, since the state holds one array per tile).
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
          x: a batch of inputs ``[N, ...]``. Integer arrays (token ids for an
            embedding) reach the model unchanged; anything else becomes float32, and
            concrete float inputs with NaN or inf raise ``ValueError`` (traced ones,
            inside ``jit``/``vmap``/``grad``, are not checked, and a non-finite value
            then makes non-finite outputs).
          record: also return every analog layer's output.

        Returns:
          the network's output; with ``record=True`` also a dict ``chip_index → layer
          output`` (before the activation that follows the layer).
        """
        x = model_inputs(x, "x")
        return _apply(self.graphdef, self.params, self.layout, state, calibration, key, x, record=record)

    def reference(self, x, *, record: bool = False):
        """The digital network (same weights and input ranges, no chip) on ``x`` (inputs as
        :meth:`apply` takes them)."""
        x = model_inputs(x, "x")
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


def _check_input_ranges(model):
    """Every analog layer must have a measured input range: the PWM encodes ``x / range``,
    and there is no default range (checked here, outside ``jit``, where it is concrete)."""
    missing = missing_input_ranges(model)
    if missing:
        raise ValueError(f"no input range was set for the analog layers {missing}, so their inputs cannot be "
                         "encoded on the chip; train the model (pcmjax.nn.train), measure the ranges on "
                         "representative inputs with pcmjax.nn.measure_input_ranges(model, x) (or "
                         "pcmjax.nn.set_input_scales), or convert with pcmjax.nn.convert(model, data=x) "
                         "before deploying.")


def deploy(model, key, config: ChipConfig | None = None, *, n_chips: int = 1,
           device: DeviceModel | None = None, program: bool = True, share_cores: bool = False) -> DeployedModel:
    """Place every analog layer of ``model`` on chip cores and program them.

    Args:
      model: an ``nnx.Module`` with analog layers (any mode); every layer's
        ``input_scale`` must hold its measured input range (see
        :func:`pcmjax.nn.missing_input_ranges`).
      key: a ``jax.random`` key (programming, ADC mismatch); ``None`` with
        ``program=False``, since placing a network draws no random numbers.
      config: :class:`pcmjax.ChipConfig` of one chip (default: HERMES).
      n_chips: how many such chips may be used; tiles fill chip 0 first.
      device: device model (default: ``HermesPCM(num_devices=2)``).
      program: ``False`` places the network without programming a chip: the returned
        model's ``state`` is ``None``, for templates whose chip instances are programmed
        with :meth:`DeployedModel.program` (Monte Carlo studies).
      share_cores: pack small tiles (rows and columns disjoint) onto shared cores, as
        HERMES places several small layers on one core (:func:`pcmjax.nn.placement.plan`):
        fewer physical cores, the same MVM results for the same keys (the state holds one
        array per tile either way). Default ``False``: one tile per core.

    Returns:
      a :class:`DeployedModel` at ``t = 0``.

    Raises:
      ValueError: the network needs more physical cores than ``n_chips · config.n_cores``
        (the message names the cores needed), ``share_cores=True`` with wire resistance
        (``config.parasitics``), or an analog layer has no input range (never
        trained or measured; the message names the layers and how to set them).
    """
    config = ChipConfig() if config is None else config
    device = HermesPCM(num_devices=2) if device is None else device
    check_bool("program", program)
    if program or key is not None:
        check_key(key)
    layout = plan(model, config, n_chips, share_cores=share_cores)
    _check_input_ranges(model)
    chip_model = inference_view(model)
    ref_model = nnx.clone(chip_model)
    for _, layer in analog_layers(chip_model):
        layer.mode = "chip"
    for _, layer in analog_layers(ref_model):
        layer.mode = "digital"
    graphdef, params = nnx.split(chip_model)
    ref_graphdef, _ = nnx.split(ref_model)
    weights = tile_weights(chip_model, layout)
    # One simulated array per tile: with shared cores there may be more tiles than cores.
    n_arrays = max(config.n_cores * n_chips, layout.n_tiles)
    cfg = config if n_arrays == config.n_cores else config.replace(n_cores=n_arrays)
    state = program_chip(key, weights, cfg, device, tiles=layout.tiles) if program else None
    return DeployedModel(graphdef, params, ref_graphdef, layout, cfg, device, weights, state,
                         identity_calibration(layout))


__all__ = ["deploy", "plan", "inference_view", "model_inputs", "DeployedModel", "Layout", "LayerPlacement",
           "identity_calibration", "tile_weights"]
