"""Chip state: programmed conductances, drift exponents and per-column periphery.

``program_chip`` maps weights onto conductances, programs them, draws the chip
instance's ADC mismatch and calibrates its digital units; ``ChipState.at_time`` ages the
state to ``t`` seconds after programming and prepares everything an MVM needs.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import struct

from pcmjax._validate import check_key, check_weights
from pcmjax.chip import compensation
from pcmjax.config import ChipConfig
from pcmjax.chip.mapping import weight_scale, weights_to_targets
from pcmjax.chip.program import program_conductances
from pcmjax.devices import DeviceModel, HermesPCM
from pcmjax.devices._base import check_time


@struct.dataclass
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
    """

    cfg: ChipConfig = struct.field(pytree_node=False)
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

    @property
    def n_cores(self) -> int:
        return self.g_prog.shape[-4]

    @property
    def rows(self) -> int:
        return self.g_prog.shape[-2]

    @property
    def cols(self) -> int:
        return self.g_prog.shape[-1]

    def at_time(self, key, t) -> "ChipState":
        """The state ``t`` seconds after programming (drift, accumulated noise, compensation).

        Args:
          key: a ``jax.random`` key (accumulated noise and the compensation read).
          t: seconds since programming, scalar ≥ 0.

        Returns:
          a :class:`ChipState` whose MVMs see the chip at time ``t``.
        """
        check_key(key)
        check_time(t)
        if jnp.ndim(t) != 0:
            raise ValueError(f"t must be a scalar number of seconds (vmap for several times), got shape {jnp.shape(t)}.")
        return _at_time(self, key, jnp.asarray(t, jnp.float32))

    def conductances(self, key, t, *, effective: bool = False) -> jax.Array:
        """``[C, 2, R, K]`` conductances (µS) at ``t``, with the random numbers of ``at_time(key, t)``.

        Args:
          key: a ``jax.random`` key; the same key as ``at_time(key, t)`` gives the same
            devices (drift, accumulated 1/f noise, faults as programmed).
          t: seconds since programming, scalar ≥ 0.
          effective: ``False`` (default): the physical conductance of every device at the
            configured temperature (``cfg.temperature``). ``True``: what the MVM sees,
            i.e. also the wire-resistance effective conductances (``cfg.parasitics``,
            IR drop); ``at_time(key, t).w`` is these divided by ``g_max`` (signed
            difference of the polarities in one-phase mode).

        Returns:
          ``[C, 2, R, K]`` conductances, µS (0 = positive, 1 = negative polarity).
        """
        check_key(key)
        check_time(t)
        if jnp.ndim(t) != 0:
            raise ValueError(f"t must be a scalar number of seconds (vmap for several times), got shape "
                             f"{jnp.shape(t)}.")
        if not isinstance(effective, bool):
            raise TypeError(f"effective must be a bool, got {effective!r}.")
        return _device_conductances(self, key, jnp.asarray(t, jnp.float32), effective)

    def adc_params(self) -> dict:
        return dict(gain=self.adc_gain, offset=self.adc_offset, nonlin=self.adc_nonlin,
                    offset_est=self.adc_offset_est)


def program_chip(key, weights, cfg: ChipConfig | None = None, device: DeviceModel | None = None) -> ChipState:
    """Map weights onto the chip and program every core at once.

    Args:
      key: a ``jax.random`` key.
      weights: ``[cores, rows, cols]`` with ``cores ≤ cfg.n_cores``, ``rows ≤ cfg.rows``,
        ``cols ≤ cfg.cols`` (a core holds one tile; only the given cores are simulated).
      cfg: :class:`ChipConfig` (default: HERMES).
      device: device model (default: ``HermesPCM(num_devices=2)``).

    Returns:
      a :class:`ChipState` at ``t = 0`` (right after programming).
    """
    cfg = ChipConfig() if cfg is None else cfg
    if not isinstance(cfg, ChipConfig):
        raise TypeError(f"cfg must be a ChipConfig, got {type(cfg).__name__}.")
    device = HermesPCM(num_devices=2) if device is None else device
    if not isinstance(device, DeviceModel):
        raise TypeError(f"device must be a pcmjax device model, got {type(device).__name__}.")
    check_key(key)
    weights = check_weights(weights, cfg)
    return _program(key, weights, device, cfg)


@partial(jax.jit, static_argnames=("cfg",))
def _program(key, weights, device, cfg):
    k_prog, k_nu, k_adc, k_ref = jax.random.split(key, 4)
    w_max = weight_scale(weights, cfg)
    g_target = weights_to_targets(weights, w_max, device.g_max)
    if cfg.program.method == "gdp":  # targets chosen to minimise the MVM error (chip/gdp.py)
        from pcmjax.chip.gdp import GDP_STREAM, optimise_targets

        g_target = optimise_targets(jax.random.fold_in(key, GDP_STREAM), g_target, device, cfg)
    g_prog = program_conductances(k_prog, g_target, device, cfg)
    if cfg.drift:
        nu = device.drift_exponent(k_nu, g_target)
    else:
        nu = jnp.zeros_like(g_target)
    if cfg.faults.enabled:  # stuck devices and dead columns (off by default)
        from pcmjax.chip.faults import FAULT_STREAM, program_faults

        g_prog, nu = program_faults(jax.random.fold_in(key, FAULT_STREAM), g_prog, nu, device, cfg)
    n_cores, cols = weights.shape[0], weights.shape[2]
    from pcmjax.periphery.adc import sample_adc_mismatch

    adc = sample_adc_mismatch(k_adc, cfg.adc, (n_cores, cols))
    a = cfg.adc.counts_per_unit(cfg.rows)
    gamma = w_max[:, 0, :] / (a * adc["gain_est"])
    beta = -gamma * adc["offset_est"] if cfg.read_phases == 1 else jnp.zeros_like(gamma)
    zeros = jnp.zeros((n_cores, cols), jnp.float32)
    state = ChipState(
        cfg=cfg, device=device, g_target=g_target, g_prog=g_prog, nu=nu, w_max=w_max,
        adc_gain=adc["gain"], adc_offset=adc["offset"], adc_nonlin=adc["nonlin"],
        adc_offset_est=adc["offset_est"], gamma=gamma, beta=beta, gdc_ref=zeros,
        t=jnp.zeros((), jnp.float32), w=jnp.zeros((n_cores, 1, 1, 1)), var=jnp.zeros((n_cores, 1, 1, 1)),
        comp=jnp.ones_like(zeros),
    )
    # The reference read right after programming, then the prepared state at t = 0.
    state = state.replace(gdc_ref=_initial_reference(state, k_ref))
    return _at_time(state, jax.random.fold_in(k_ref, 2), jnp.zeros((), jnp.float32))


def _initial_reference(state: ChipState, key):
    """The drift-compensation reference read right after programming, ``[C, K]``."""
    g0, var0 = _aged(state, jax.random.fold_in(key, 0), jnp.zeros((), jnp.float32))
    return compensation.reference_read(jax.random.fold_in(key, 1), g0, var0, state.device.g_max,
                                       state.adc_params(), state.cfg, state.g_target)


def _conductances(state: ChipState, key, t):
    cfg, dev = state.cfg, state.device
    if cfg.drift_noise:
        g_target = state.g_target if dev.q_s_from == "target" else None
        return dev.at_time(key, state.g_prog, state.nu, t, g_target=g_target)
    return state.g_prog * dev.drift_factor(state.nu, t)


@partial(jax.jit, static_argnames=("effective",))
def _device_conductances(state: ChipState, key, t, effective):
    k_age, _, _ = jax.random.split(key, 3)  # the split of _at_time
    g, _ = _aged(state, k_age, t, effective=effective, variance=False)
    return g


def _aged(state: ChipState, key, t, *, effective: bool = True, variance: bool = True):
    """Conductances at ``t`` and their normalised per-read variance, ``[C, 2, R, K]`` each.

    ``effective=False`` leaves out the wire resistance (the devices' own conductances);
    ``variance=False`` skips the read-noise variance (zeros are returned).
    """
    dev, cfg = state.device, state.cfg
    g = _conductances(state, key, t)
    if cfg.read_noise and variance:
        g_target = state.g_target if dev.q_s_from == "target" else None
        var = (dev.read_sigma(g, cfg.read_interval_s, g_target=g_target) / dev.g_max) ** 2
    else:
        var = jnp.zeros_like(g)
    if cfg.temperature.enabled:  # away from the reference temperature (chip/temperature.py)
        from pcmjax.chip import temperature

        g, var = temperature.apply(g, var, state.g_target, state.nu, t, dev.t0, dev.g_max, cfg.temperature)
    if cfg.parasitics.enabled and effective:  # wire resistance: the array's effective conductances
        from pcmjax.chip.parasitics import effective_conductances

        g = effective_conductances(g, cfg)
    return g, var


@jax.jit
def _at_time(state: ChipState, key, t):
    cfg = state.cfg
    k_age, k_ref, _ = jax.random.split(key, 3)
    g, var = _aged(state, k_age, t)
    if cfg.drift_compensation != "none":
        ref_t = compensation.reference_read(k_ref, g, var, state.device.g_max, state.adc_params(), cfg,
                                            state.g_target)
        comp = compensation.compensation_factor(state.gdc_ref, ref_t, cfg.drift_compensation)
    else:
        comp = jnp.ones_like(state.gdc_ref)
    g_n = g / state.device.g_max
    if cfg.read_phases == 1:
        w = (g_n[:, 0] - g_n[:, 1])[:, None]
        var = (var[:, 0] + var[:, 1])[:, None]
    else:
        w = g_n
    return state.replace(t=t, w=w, var=var, comp=comp)
