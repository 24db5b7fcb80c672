"""Configuration of hardware-aware training: what the training forward pass injects.

The injection itself is in :mod:`pcmjax.nn.hwa`. A leaf module: device models are named
(``"pcm_like"``, ``"hermes"``, ``"hermes1"``) or given as instances, recognised by their
interface so that this module imports no implementation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, get_args

from pcmjax._validate import check_bool, check_choice, check_float, check_int

OutNoiseMode = Literal["relative", "absolute"]
OUT_NOISE_MODES = get_args(OutNoiseMode)
DEVICE_NAMES = ("pcm_like", "hermes", "hermes1")


def _is_device_model(v) -> bool:
    """A pcmjax device model (duck-typed: the laws HWA samples from)."""
    return all(callable(getattr(v, name, None)) for name in ("program", "drift_exponent", "at_time"))


@dataclasses.dataclass(frozen=True)
class HWAConfig:
    """What hardware-aware training injects (frozen, hashable: static under ``jit``).

    Attributes:
      prog_noise_scale: multiple of the programming noise of ``noise_device`` added to
        the weights (HERMES recipe: 2). 0 switches programming noise off.
      noise_device: device model of the programming noise: ``"pcm_like"``,
        ``"hermes"`` (two devices per sign), ``"hermes1"`` or a
        :class:`pcmjax.devices.DeviceModel`.
      drift_time: seconds after programming at which drift is injected: a number, a
        ``(t_min, t_max)`` pair sampled log-uniformly at every call, or ``None`` (no
        drift).
      drift_device: device model whose drift exponents and 1/f noise are injected.
      drift_noise: include the accumulated 1/f conductance noise at ``drift_time``.
      drift_compensation: rescale the drifted weights of a layer by the ratio of total
        conductance (global drift compensation, PHYSICS.md §5), as the chip does.
      pwm_bits: input bits including sign (HERMES: 8); ``None``: inputs only clip at ±1.
      adc_bits: output bits including sign (recipe: 8); ``None``: no output quantisation.
      out_bound: ADC full scale of one tile's output in normalised units (inputs and
        weights at most 1): ``ADCConfig.full_scale · rows`` of the chip (0.1 · 256).
      out_noise: standard deviation of additive Gaussian noise on every tile output
        (default 0.04; see "The recipe" below).
      out_noise_mode: ``"relative"``: ``out_noise`` is a fraction of the batch's largest
        |tile output|; ``"absolute"``: in normalised units.
      weight_clip: clip each kernel at ``weight_clip`` standard deviations of its
        entries (``None``: no clipping). Also applied after every optimiser step by
        :func:`pcmjax.nn.clip_weights`.
      tile_rows: crossbar rows: larger layers are split into row tiles whose partial
        sums are quantised and noised separately, then added (as on the chip).
      input_scale_momentum: momentum of the running estimate of the layer's input range.
      input_scale_quantile: quantile of ``|x|`` the input range tracks (1.0: abs-max).

    The recipe. HERMES's networks were trained (PHYSICS.md §6) with weight noise twice the
    PCM-like programming noise (``prog_noise_scale=2, noise_device="pcm_like"``), 8-bit input
    and output quantisation (``pwm_bits=adc_bits=8``), 256×256 tiles (``tile_rows=256``),
    weights clipped (here at 3 standard deviations of each kernel, ``weight_clip=3``, since
    the kernels are not normalised to 1 as HERMES's were) and additive output noise of
    "10 % of the output range". The last is ambiguous; these defaults read the output range
    as the span ``[−m, m]`` of a batch's tile outputs (``m`` = largest |output|) and the 10 %
    as the width of the noise's central ±1.25σ band, so ``σ = 0.1 · 2m / 5 = 0.04 m``
    (``out_noise=0.04``). Reading it as ``σ = 0.1 m`` is ``HWAConfig(out_noise=0.1)``.
    Beyond the recipe, drift is injected at a log-uniform time between 1 s and a year with
    the HERMES model's drift and 1/f noise, and global drift compensation
    (``drift_time``, ``drift_device``, ``drift_noise``, ``drift_compensation``), as the
    chip's own compensation will see it.
    """

    prog_noise_scale: float = 2.0
    noise_device: object = "pcm_like"
    drift_time: float | tuple | None = (1.0, 3.15e7)
    drift_device: object = "hermes"
    drift_noise: bool = True
    drift_compensation: bool = True
    pwm_bits: int | None = 8
    adc_bits: int | None = 8
    out_bound: float = 25.6
    out_noise: float = 0.04
    out_noise_mode: OutNoiseMode = "relative"
    weight_clip: float | None = 3.0
    tile_rows: int = 256
    input_scale_momentum: float = 0.95
    input_scale_quantile: float = 1.0

    def __post_init__(self):
        def num(name, lo=0.0, lo_open=False):
            check_float(f"HWAConfig.{name}", getattr(self, name), lo, lo_open=lo_open)

        num("prog_noise_scale")
        num("out_noise")
        num("out_bound", lo_open=True)
        for name in ("noise_device", "drift_device"):
            v = getattr(self, name)
            if not _is_device_model(v) and v not in DEVICE_NAMES:
                raise ValueError(f"HWAConfig.{name} must be 'pcm_like', 'hermes', 'hermes1' or a DeviceModel, "
                                 f"got {v!r}.")
        t = self.drift_time
        if t is not None:
            ts = tuple(t) if isinstance(t, (tuple, list)) else (t,)
            if len(ts) not in (1, 2) or not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                                                  for v in ts) or (len(ts) == 2 and ts[0] > ts[1]):
                raise ValueError(f"HWAConfig.drift_time must be None, seconds >= 0 or a (t_min, t_max) pair, "
                                 f"got {t!r}.")
            object.__setattr__(self, "drift_time", ts if len(ts) == 2 else float(ts[0]))
        for name in ("pwm_bits", "adc_bits"):
            if getattr(self, name) is not None:
                check_int(f"HWAConfig.{name}", getattr(self, name), 2, 16)
        check_choice("HWAConfig.out_noise_mode", self.out_noise_mode, OUT_NOISE_MODES)
        if self.weight_clip is not None:
            num("weight_clip", lo_open=True)
        check_int("HWAConfig.tile_rows", self.tile_rows, 1)
        check_bool("HWAConfig.drift_noise", self.drift_noise)
        check_bool("HWAConfig.drift_compensation", self.drift_compensation)
        check_float("HWAConfig.input_scale_momentum", self.input_scale_momentum, 0.0, 1.0, hi_open=True)
        check_float("HWAConfig.input_scale_quantile", self.input_scale_quantile, 0.0, 1.0, lo_open=True)

    def replace(self, **changes) -> HWAConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def off(cls) -> HWAConfig:
        """No noise, no quantisation, no clipping: HWA mode then equals the float forward
        (up to input clipping at the input range)."""
        return cls(prog_noise_scale=0.0, drift_time=None, pwm_bits=None, adc_bits=None, out_noise=0.0,
                   weight_clip=None)
