"""Chip state: the programmed chip as a pytree, and ``program_chip`` composing the stages.

The data path of DESIGN.md, one stage per module, each a pure function::

    map (mapping.py) → program (program.py, gdp.py, faults.py) → age (age.py)
        → read (read.py) → digital unit (periphery/ldpu.py)

``program_chip`` maps weights onto conductances, programs them, draws the chip instance's
ADC mismatch, calibrates its digital units and reads the drift-compensation reference;
``ChipState.at_time`` ages the state to ``t`` seconds after programming and prepares
everything an MVM (:mod:`pcmjax.chip.mvm`) needs; :func:`apply_faults` draws faults on a
programmed chip.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from pcmjax import _streams
from pcmjax._validate import check_bool, check_instance, check_key, check_weights, is_traced
from pcmjax.chip import compact, parasitics
from pcmjax.chip.age import age, computed_once, drift_exponents, error_if_negative_time
from pcmjax.chip.compensation import compensation_factor, reference_read
from pcmjax.chip.faults import fault_rates, faulty_conductances, program_faults, set_drift_exponent
from pcmjax.chip.gdp import optimise_targets
from pcmjax.chip.mapping import map_weights
from pcmjax.chip.program import program_conductances
from pcmjax.config import ChipConfig, FaultConfig
from pcmjax.devices import DeviceModel, HermesPCM
from pcmjax.devices._base import check_time
from pcmjax.periphery.adc import sample_adc_mismatch
from pcmjax.periphery.ldpu import calibrate

__all__ = ["ChipState", "program_chip", "apply_faults", "times_checked_before_tracing"]

_CHECK_TRACED_TIMES = contextvars.ContextVar("pcmjax_check_traced_times", default=True)


@contextlib.contextmanager
def times_checked_before_tracing():
    """Within this context, traced times are taken as already checked.

    ``at_time`` checks a traced ``t`` when the computation runs, with a host callback per
    evaluation; a Monte Carlo study checks its times when it is built, so its runner
    traces inside this context and its compiled program makes no callbacks (under load
    they cost about a quarter of an evaluation).
    """
    token = _CHECK_TRACED_TIMES.set(False)
    try:
        yield
    finally:
        _CHECK_TRACED_TIMES.reset(token)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ChipState:
    """A programmed chip (one instance). A pytree: ``jax.vmap`` adds instance axes.

    Shapes use ``C`` cores, ``R`` rows and ``K`` columns as programmed; ``P`` is 1 in
    one-phase mode (signed weights) and 2 in four-phase mode (per polarity).

    Attributes:
      cfg: the :class:`ChipConfig` (static).
      device: the device model (parameters are leaves).
      g_target, g_prog, nu: ``[C, 2, R, K]`` target and programmed conductance (µS) and
        drift exponent of each polarity (0 = positive, 1 = negative side).
      w_max: ``[C, 1, K]`` weight scale of the mapping.
      adc_gain, adc_offset, adc_nonlin: ``[C, K]`` ADC mismatch of this instance.
      gamma, beta: ``[C, K]`` digital-unit affine (counts → weight units).
      gdc_ref: ``[C, K]`` drift-compensation reference read after programming.
      t: seconds since programming of the prepared arrays below.
      w, var: ``[C, P, R, K]`` conductances at ``t`` and their per-read variance,
        normalised by ``g_max`` and ``g_max²``.
      comp: ``[C, K]`` drift-compensation factor at ``t``.
      tiles: ``(rows, cols)`` block each core uses (static; ``None``: whole cores), see
        :mod:`pcmjax.chip.compact`.
    """

    cfg: ChipConfig = dataclasses.field(metadata=dict(static=True))
    device: DeviceModel
    g_target: jax.Array
    g_prog: jax.Array
    nu: jax.Array
    w_max: jax.Array
    adc_gain: jax.Array
    adc_offset: jax.Array
    adc_nonlin: jax.Array
    adc_offset_est: jax.Array
    gamma: jax.Array
    beta: jax.Array
    gdc_ref: jax.Array
    t: jax.Array
    w: jax.Array
    var: jax.Array
    comp: jax.Array
    tiles: tuple | None = dataclasses.field(default=None, metadata=dict(static=True))

    def replace(self, **changes) -> ChipState:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def n_cores(self) -> int:
        return self.g_prog.shape[-4]

    @property
    def rows(self) -> int:
        return self.g_prog.shape[-2]

    @property
    def cols(self) -> int:
        return self.g_prog.shape[-1]

    @property
    def groups(self) -> tuple:
        """Runs of cores simulated as one array: ``((first core, cores, rows, cols), ...)``
        (:mod:`pcmjax.chip.compact`; whole cores with wire resistance on)."""
        tiles = None if parasitics.enabled(self.cfg) else self.tiles
        return compact.core_groups(tiles, self.n_cores, self.rows, self.cols)

    def at_time(self, key, t) -> ChipState:
        """The state ``t`` seconds after programming (drift, accumulated noise, compensation).

        Args:
          key: a ``jax.random`` key (accumulated noise and the compensation read).
          t: seconds since programming, scalar ≥ 0. A concrete ``t`` is checked here
            (``ValueError`` for a negative or non-finite time); a traced one (``at_time``
            inside ``jit``/``vmap``) is checked when the computation runs, and a negative
            or NaN time then fails the call with a ``JaxRuntimeError`` whose message says
            ``t must be >= 0 seconds after programming``.

        Returns:
          a :class:`ChipState` whose MVMs see the chip at time ``t``.
        """
        return _prepare(key, self, _checked_time(key, t))

    def conductances(self, key, t, *, effective: bool = False) -> jax.Array:
        """``[C, 2, R, K]`` conductances (µS) at ``t``, with the random numbers of ``at_time(key, t)``.

        Args:
          key: a ``jax.random`` key; the same key as ``at_time(key, t)`` gives the same
            devices (drift, accumulated 1/f noise, faults as programmed).
          t: seconds since programming, scalar ≥ 0 (checked as in :meth:`at_time`).
          effective: ``False`` (default): the physical conductance of every device at the
            configured temperature (``cfg.temperature``). ``True``: what the MVM sees,
            i.e. also the wire-resistance effective conductances (``cfg.parasitics``,
            IR drop); ``at_time(key, t).w`` is these divided by ``g_max`` (signed
            difference of the polarities in one-phase mode).

        Returns:
          ``[C, 2, R, K]`` conductances, µS (0 = positive, 1 = negative polarity).
        """
        t = _checked_time(key, t)
        return _device_conductances(key, self, t, check_bool("effective", effective))

    def adc_params(self) -> dict:
        return dict(gain=self.adc_gain, offset=self.adc_offset, nonlin=self.adc_nonlin,
                    offset_est=self.adc_offset_est)


def _checked_time(key, t):
    """The public checks of ``(key, t)``; ``t`` as a float32 scalar."""
    check_key(key)
    check_time(t)
    if jnp.ndim(t) != 0:
        raise ValueError(f"t must be a scalar number of seconds (vmap for several times), got shape {jnp.shape(t)}.")
    if is_traced(t) and _CHECK_TRACED_TIMES.get():
        error_if_negative_time(t)
    return jnp.asarray(t, jnp.float32)


def program_chip(key, weights, cfg: ChipConfig | None = None, device: DeviceModel | None = None, *,
                 tiles=None) -> ChipState:
    """Map weights onto the chip and program every core at once.

    Args:
      key: a ``jax.random`` key.
      weights: ``[cores, rows, cols]`` with ``cores ≤ cfg.n_cores``, ``rows ≤ cfg.rows``,
        ``cols ≤ cfg.cols`` (a core holds one tile; only the given cores are simulated).
      cfg: :class:`ChipConfig` (default: HERMES).
      device: device model (default: ``HermesPCM(num_devices=2)``).
      tiles: ``None`` (every core's whole ``rows × cols`` is simulated) or one
        ``(rows, cols)`` pair per core: the top-left block that holds the core's tile
        (weights outside it must be 0). Only those devices are programmed, aged, read and
        calibrated (:mod:`pcmjax.chip.compact`: same physics of the used block, other
        random draws); :func:`pcmjax.nn.deploy` passes its tiles.

    Returns:
      a :class:`ChipState` at ``t = 0`` (right after programming): its prepared arrays are
      the devices the drift-compensation reference read saw (one ageing at ``t = 0``).
    """
    check_key(key)
    cfg = check_instance("cfg", ChipConfig() if cfg is None else cfg, ChipConfig)
    device = check_instance("device", HermesPCM(num_devices=2) if device is None else device, DeviceModel)
    weights = check_weights(weights, cfg)
    return _program(key, weights, device, cfg, compact.check_tiles(tiles, weights.shape))


def _program_devices(key, k_prog, k_nu, targets, groups, device, cfg):
    """The programming stage of every group: ``(g_target, g_prog, nu)``, one list of blocks each
    (faults included).

    Writing and drift exponents are elementwise: every used device is drawn in one flat
    array (:func:`compact.flatten`). ``key`` is ``program_chip``'s: the optional effects fold
    their own named stream into it (:mod:`pcmjax._streams`), and the group's index when
    there are several groups, so switching one on changes no other random number.
    """
    if cfg.program.method == "gdp":  # targets chosen to minimise the MVM error
        targets = [optimise_targets(jax.random.fold_in(compact.group_key(key, j, groups), _streams.GDP), b, device, cfg)
                   for j, b in enumerate(targets)]
    flat = compact.flatten(targets)
    g_prog = compact.unflatten(program_conductances(k_prog, flat, device, cfg), targets)
    nu = compact.unflatten(drift_exponents(k_nu, flat, device, cfg), targets)
    if cfg.faults.enabled:  # stuck devices and dead columns (off by default)
        faulty = [program_faults(jax.random.fold_in(compact.group_key(key, j, groups), _streams.FAULTS), g, n,
                                 device, cfg) for j, (g, n) in enumerate(zip(g_prog, nu))]
        g_prog, nu = [f[0] for f in faulty], [f[1] for f in faulty]
    return targets, g_prog, nu


@partial(jax.jit, static_argnames=("cfg", "tiles"))
def _program(key, weights, device, cfg, tiles=None):
    # Closed-over weights would make every programming step a constant expression for XLA
    # to fold at compile time (minutes for a full chip); see _unfolded.
    weights = jax.lax.optimization_barrier(weights)
    k_prog, k_nu, k_adc, k_ref = jax.random.split(key, 4)
    with jax.named_scope("map"):
        g_target, w_max = map_weights(weights, device.g_max, cfg)
    n_cores, rows, cols = weights.shape
    groups = compact.core_groups(None if parasitics.enabled(cfg) else tiles, n_cores, rows, cols)
    with jax.named_scope("program"):
        parts = _program_devices(key, k_prog, k_nu, [compact.block(g_target, grp) for grp in groups], groups,
                                 device, cfg)
        g_target, g_prog, nu = (compact.unblock(p, rows, cols) for p in parts)
    with jax.named_scope("calibrate"):
        adc = sample_adc_mismatch(k_adc, cfg.adc, (n_cores, cols))
        gamma, beta = calibrate(w_max[:, 0, :], adc["gain_est"], adc["offset_est"],
                                cfg.adc.counts_per_unit(cfg.rows), cfg.read_phases == 1)
        adc, gamma, beta = computed_once((adc, gamma, beta), device.g_max)
    zeros = jnp.zeros((n_cores, cols), jnp.float32)
    state = ChipState(
        cfg=cfg, device=device, g_target=g_target, g_prog=g_prog, nu=nu, w_max=w_max,
        adc_gain=adc["gain"], adc_offset=adc["offset"], adc_nonlin=adc["nonlin"],
        adc_offset_est=adc["offset_est"], gamma=gamma, beta=beta, gdc_ref=zeros,
        t=jnp.zeros((), jnp.float32), w=jnp.zeros((n_cores, 1, 1, 1)), var=jnp.zeros((n_cores, 1, 1, 1)),
        comp=jnp.ones_like(zeros), tiles=tiles,
    )
    # The reference read right after programming and the prepared state at t = 0 see the
    # same devices at the same moment: one ageing (with exact wires, one nodal solve).
    gdc_ref, aged = _initial_reference(k_ref, state)
    _, k_read = _prepare_keys(jax.random.fold_in(k_ref, 2))
    return _prepared(k_read, state.replace(gdc_ref=gdc_ref), jnp.zeros((), jnp.float32), aged)


def _aged(key, state: ChipState, t, **kw):
    """``age`` of each group's devices: ``[(group, g, var, g_target)]``, ``[n, 2, r, k]`` each.

    The barrier keeps a closed-over (constant) state from being aged by XLA's constant
    folder at compile time (see :func:`_unfolded`)."""
    state = _unfolded(state)
    groups = state.groups
    blocks = [tuple(compact.block(a, grp) for a in (state.g_prog, state.nu, state.g_target)) for grp in groups]
    if len(groups) == 1:
        g, var = age(key, *blocks[0], state.device, state.cfg, t, **kw)
        return [(groups[0], g, var, blocks[0][2])]
    # Several groups: ageing is elementwise (no wire resistance here), so every used device
    # is aged in one flat array: one fused computation, traced and compiled once.
    targets = [b[2] for b in blocks]
    g, var = age(key, *(compact.flatten([b[i] for b in blocks]) for i in range(3)), state.device, state.cfg, t, **kw)
    return list(zip(groups, compact.unflatten(g, targets), compact.unflatten(var, targets), targets))


def _group_adc(state: ChipState, grp) -> dict:
    return {k: compact.block_columns(v, grp) for k, v in state.adc_params().items()}


def _references(key, state: ChipState, aged) -> jax.Array:
    """The compensation reference read of every group, ``[C, K]`` (0 in unused columns)."""
    refs = [reference_read(compact.group_key(key, j, state.groups), g / state.device.g_max, var,
                           _group_adc(state, grp), state.cfg, g_target)
            for j, (grp, g, var, g_target) in enumerate(aged)]
    return compact.unblock_columns(refs, state.cols)


def _unfolded(state: ChipState) -> ChipState:
    """The state with its per-device arrays behind an optimisation barrier.

    A caller's ``jit`` that closes over a programmed state (or over the weights, see
    ``_program``) hands XLA the ageing and reference reads as constant expressions, which
    its constant folder evaluates at compile time, minutes for a full chip. Behind the
    barrier they are computed at run time; the barrier itself costs nothing there.
    """
    g_prog, nu, g_target = jax.lax.optimization_barrier((state.g_prog, state.nu, state.g_target))
    return state.replace(g_prog=g_prog, nu=nu, g_target=g_target)


def _initial_reference(key, state: ChipState):
    """The drift-compensation reference read right after programming, ``[C, K]``, and the
    aged groups (:func:`_aged` at ``t = 0``) it read."""
    with jax.named_scope("reference"):
        aged = _aged(jax.random.fold_in(key, 0), state, jnp.zeros((), jnp.float32))
        return _references(jax.random.fold_in(key, 1), state, aged), aged


def _prepare_keys(key):
    """``(k_age, k_ref)`` of :func:`_prepare`: the ageing's key and the compensation read's."""
    k_age, k_ref, _ = jax.random.split(key, 3)
    return k_age, k_ref


@partial(jax.jit, static_argnames=("effective",))
def _device_conductances(key, state: ChipState, t, effective):
    k_age, _ = _prepare_keys(key)
    aged = _aged(k_age, state, t, effective=effective, variance=False)
    return compact.unblock([g for _, g, _, _ in aged], state.rows, state.cols)


@jax.jit
def _prepare(key, state: ChipState, t):
    """The state at ``t``: aged conductances in the layout of the read, compensation factor."""
    state = _unfolded(state)
    k_age, k_ref = _prepare_keys(key)
    with jax.named_scope("age"):
        aged = _aged(k_age, state, t)
    return _prepared(k_ref, state, t, aged)


def _prepared(k_ref, state: ChipState, t, aged) -> ChipState:
    """The state at ``t`` from its aged groups (:func:`_aged`): layout of the read, compensation.

    ``k_ref`` is the key of the compensation read (:func:`_prepare_keys`).
    """
    cfg = state.cfg
    if cfg.drift_compensation != "none":
        with jax.named_scope("reference"):
            comp = compensation_factor(state.gdc_ref, _references(k_ref, state, aged), cfg.drift_compensation)
            comp = computed_once(comp, state.device.g_max)
    else:
        comp = jnp.ones_like(state.gdc_ref)
    ws, vs = [], []
    for _, g, var, _ in aged:  # the layout of the read
        g_n = g / state.device.g_max
        ws.append((g_n[:, 0] - g_n[:, 1])[:, None] if cfg.read_phases == 1 else g_n)
        vs.append((var[:, 0] + var[:, 1])[:, None] if cfg.read_phases == 1 else var)
    return state.replace(t=t, w=compact.unblock(ws, state.rows, state.cols),
                         var=compact.unblock(vs, state.rows, state.cols), comp=comp)


def apply_faults(key, state: ChipState, faults: FaultConfig) -> ChipState:
    """Faults drawn on a programmed chip; the drift-compensation reference is re-read.

    The faults are taken to exist from programming on: the programmed conductances and
    drift exponents are replaced (:mod:`pcmjax.chip.faults`), the compensation reference
    is read again at ``t = 0`` and the state is prepared again at its time ``state.t``.

    Args:
      key: a ``jax.random`` key (one fault pattern per key).
      state: a :class:`ChipState` (one instance; ``jax.vmap`` for more).
      faults: a :class:`~pcmjax.FaultConfig`; its rates may be traced arrays, so
        ``jax.vmap(lambda r: apply_faults(k, state, FaultConfig(stuck_set=r)))(rates)``
        sweeps a rate in one compilation.

    Returns:
      a :class:`ChipState` with faults.
    """
    check_key(key)
    check_instance("state", state, ChipState)
    check_instance("faults", faults, FaultConfig)
    return _apply_faults(key, state, *fault_rates(faults))


@jax.jit
def _apply_faults(key, state, stuck_set, stuck_reset, dead_columns):
    k_f, k_ref, k_t = jax.random.split(key, 3)
    state = _unfolded(state)
    dev, cfg = state.device, state.cfg
    g, nu = faulty_conductances(k_f, state.g_prog, state.nu, dev.g_max, int(dev.num_devices),
                                set_drift_exponent(dev, cfg.drift), stuck_set, stuck_reset, dead_columns)
    state = state.replace(g_prog=g, nu=nu)
    return _prepare(k_t, state.replace(gdc_ref=_initial_reference(k_ref, state)[0]), state.t)
