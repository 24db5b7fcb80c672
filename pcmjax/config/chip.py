"""Chip configuration: frozen, hashable dataclasses (static under ``jit``).

A leaf module: it imports no implementation, so every implementation module may import it."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

from pcmjax._validate import check_bool, check_choice, check_float, check_instance, check_int
from pcmjax.config.faults import FaultConfig
from pcmjax.config.gdp import GDPConfig
from pcmjax.config.parasitics import ParasiticsConfig
from pcmjax.config.periphery import ACTIVATION_NAMES, Activation, ADCConfig, PWMConfig
from pcmjax.config.temperature import TemperatureConfig

ProgramMethod = Literal["one_shot", "verify", "gdp"]
WMaxMode = Literal["tile", "column"]
CompensationMode = Literal["none", "global", "column"]
ReadMode = Literal["four_phase", "one_phase"]
GDCReference = Literal["total", "one_hot", "set_devices", "signal"]
GDC_REFERENCES = get_args(GDCReference)
HermesProgramming = Literal["fitted", "verify"]
# Study-file names of the presets (``[chip] preset = "hermes-four-phase"``).
PRESETS = {"hermes-four-phase": ("four_phase", "fitted"), "hermes-one-phase": ("one_phase", "fitted"),
           "hermes-four-phase-verify": ("four_phase", "verify"), "hermes-one-phase-verify": ("one_phase", "verify")}
PROGRAM_METHODS = get_args(ProgramMethod)
W_MAX_MODES = get_args(WMaxMode)
COMPENSATION_MODES = get_args(CompensationMode)

# Every non-ideality, and the fields that switch it off (field path -> "off" value).
NONIDEALITIES: dict[str, tuple[tuple[str, Any], ...]] = {
    "programming_noise": (("programming_noise", False),),
    "drift": (("drift", False),),
    "drift_noise": (("drift_noise", False),),
    "read_noise": (("read_noise", False),),
    "pwm": (("pwm.enabled", False),),
    "adc_quantization": (("adc.enabled", False),),
    "adc_gain": (("adc.gain_std", 0.0), ("adc.cal_gain_error", 0.0)),
    "adc_offset": (("adc.offset_std", 0.0), ("adc.cal_offset_error", 0.0)),
    "adc_nonlinearity": (("adc.nonlinearity", 0.0), ("adc.nonlinearity_std", 0.0)),
    "adc_noise": (("adc.noise_std", 0.0),),
    "polarity_asymmetry": (("polarity_asymmetry", 0.0),),
    "faults": (("faults.stuck_set", 0.0), ("faults.stuck_reset", 0.0), ("faults.dead_columns", 0.0)),
    "ir_drop": (("parasitics.r_word_line", 0.0), ("parasitics.r_bit_line", 0.0)),
    # The reference temperature (the device statistics') changes nothing.
    "temperature": (("temperature.temperature_k", None), ("temperature.read_temperature_k", None)),
}


@dataclasses.dataclass(frozen=True)
class ProgramConfig:
    """Programming algorithm (PHYSICS.md §3).

    Program-and-verify (``method="verify"``, :mod:`pcmjax.chip.verify`) follows HERMES: SET,
    then up to ``iterations`` verify reads counted in ADC counts, stopping when the integer
    read is within ``tolerance_counts`` of the target, with SET pulses aimed by the read
    error in between. Its defaults are calibrated (``benchmarks/calibrate_verify.py``) so
    that, on ``HermesPCM(num_devices=1)`` and ``(2)``, the programmed spread reproduces the
    HERMES-fitted σ_prog(g_T) within 10 % at every level from 0.1 to 1.0 ``g_max``.

    Attributes:
      method: ``"one_shot"`` (the device model's programming noise), ``"verify"``
        (program-and-verify, vectorised with masked updates) or ``"gdp"``.
      iterations: verify reads at most (HERMES: 30).
      counts_per_device: verify-read counts of one device's share of ``g_max``, ``g_max / n``
        (HERMES: ``G_max`` = 80 counts with one device per sign, 160 with two).
      tolerance_counts: stop when the integer verify read is less than this many counts from
        the target (HERMES: 5).
      verify_read_s: verify-read pulse, seconds (HERMES: 512 ns at 0.2 V): the 1/f band of the
        device model's read fluctuation ``device.read_sigma(g, verify_read_s)``.
      verify_adc_noise: rms noise of the verify conversion, counts (before rounding; a
        half count, not calibrated).
      step: fraction of the read error by which the next pulse's aim moves (the pulse
        current is updated in proportion to the error); below 1 the loop approaches from the
        SET side and stops at the band's upper edge, a bias the fitted model does not have.
      pulse_spread: saturated spread of a pulse's conductance response, fraction of one
        device's ``g_max / n``: ``σ_p(g) = pulse_spread · g_dev · (1 − exp(−g / (s · g_dev)))``
        with ``s = pulse_spread_scale`` (calibrated).
      pulse_spread_scale: conductance scale ``s`` of that saturation, fraction of ``g_dev``
        (calibrated).
      relax_fraction: share of a pulse's response variance that develops after its verify
        read (relaxation before the first read at ``t0``; calibrated).
      set_relax_fraction: the same for a device left at its SET conductance by the
        two-device strategy, whose relaxation the loop partly sees (calibrated).
      set_level: mean SET conductance of one device, in units of ``g_dev``: 1.3 puts the
        mapping's ``G_max`` where 99 % of devices reach it with ``set_spread = 0.1``.
      set_spread: relative device-to-device spread of the SET conductance.
      gdp: :class:`GDPConfig` of ``method="gdp"`` (targets chosen by gradient descent on
        the MVM error, then written with ``gdp.write``; :mod:`pcmjax.chip.gdp`).
    """

    method: ProgramMethod = "one_shot"
    iterations: int = 30
    counts_per_device: float = 80.0
    tolerance_counts: float = 5.0
    verify_read_s: float = 512e-9
    verify_adc_noise: float = 0.5
    step: float = 1.0
    pulse_spread: float = 0.122
    pulse_spread_scale: float = 0.341
    relax_fraction: float = 0.625
    set_relax_fraction: float = 0.276
    set_level: float = 1.3
    set_spread: float = 0.1
    gdp: GDPConfig = GDPConfig()

    def __post_init__(self):
        check_choice("program.method", self.method, PROGRAM_METHODS)
        check_int("program.iterations", self.iterations, 1, 1000)
        check_float("program.counts_per_device", self.counts_per_device, 0.0, 1e6, lo_open=True)
        check_float("program.tolerance_counts", self.tolerance_counts, 0.0, 1e6, lo_open=True)
        check_float("program.verify_read_s", self.verify_read_s, 0.0, 1.0, lo_open=True)
        check_float("program.verify_adc_noise", self.verify_adc_noise, 0.0, 1e3)
        check_float("program.step", self.step, 0.0, 2.0, lo_open=True)
        check_float("program.pulse_spread", self.pulse_spread, 0.0, 1.0)
        check_float("program.pulse_spread_scale", self.pulse_spread_scale, 0.0, 10.0, lo_open=True)
        check_float("program.relax_fraction", self.relax_fraction, 0.0, 1.0)
        check_float("program.set_relax_fraction", self.set_relax_fraction, 0.0, 1.0)
        check_float("program.set_level", self.set_level, 0.5, 5.0)
        check_float("program.set_spread", self.set_spread, 0.0, 0.5)
        if isinstance(self.gdp, dict):  # from to_dict() / TOML
            object.__setattr__(self, "gdp", GDPConfig(**self.gdp))
        check_instance("program.gdp", self.gdp, GDPConfig)


@dataclasses.dataclass(frozen=True)
class ChipConfig:
    """A HERMES-class chip: geometry, mapping, programming, periphery and compensation.

    Defaults are the HERMES chip (64 cores of 256×256, 8-bit PWM, CCO ADC, one-phase
    reads, global drift compensation). Every non-ideality can be switched off alone with
    :meth:`without`; :meth:`ideal` switches all of them off, so ``mvm == x @ W``.

    Attributes:
      n_cores, rows, cols: core count and crossbar size.
      w_max: ``"tile"`` (one scale per core) or ``"column"`` (one per column).
      w_clip_sigma: if set, ``w_max = min(abs-max, k·std)`` of the tile/column.
      programming_noise: apply programming error (one-shot noise or verify residual).
      program: :class:`ProgramConfig`.
      drift: conductance drift.
      drift_noise: accumulated 1/f noise of the conductance state.
      read_noise: fresh per-read noise in every MVM (PHYSICS.md §2.4).
      read_interval_s: time between consecutive reads that sets the per-read 1/f band.
      pwm: :class:`PWMConfig`.
      adc: :class:`ADCConfig`.
      read_phases: 1 (one-phase) or 4 (four-phase) read mode (§4.2b).
      polarity_asymmetry: relative gain difference of positive and negative input
        paths in one-phase mode (positive inputs ×(1+α), negative ×(1−α)).
      activation: activation applied by the digital unit.
      drift_compensation: ``"none"``, ``"global"`` (one ratio per core) or
        ``"column"`` (one per column), PHYSICS.md §5.
      gdc_input: amplitude of the all-equal reference input read for drift
        compensation, as a fraction of the ADC's full scale.
      gdc_reference: what the drift-compensation reference measures (PHYSICS.md §5,
        :mod:`pcmjax.chip.compensation`): ``"total"`` (default: the all-equal input read
        against each polarity, the columns' total conductance), ``"one_hot"`` (mean
        |output| of one-hot inputs, one per mapped row), ``"set_devices"`` (the total
        conductance of the devices that hold weight only, leaving out RESET partners: a
        designer's upper bound on what a better read could do) or ``"signal"`` (the exact
        drift of the stored weights, ``⟨W₀, W_t⟩``: an oracle to compare the others with).
      faults: :class:`FaultConfig` (stuck devices, dead columns; default: none).
      parasitics: :class:`ParasiticsConfig` (wire resistance, IR drop; default: none).
      temperature: :class:`TemperatureConfig` (default: the reference temperature).
    """

    n_cores: int = 64
    rows: int = 256
    cols: int = 256
    w_max: WMaxMode = "tile"
    w_clip_sigma: float | None = None
    programming_noise: bool = True
    program: ProgramConfig = ProgramConfig()
    drift: bool = True
    drift_noise: bool = True
    read_noise: bool = True
    read_interval_s: float = 1e-6
    pwm: PWMConfig = PWMConfig()
    adc: ADCConfig = ADCConfig()
    read_phases: Literal[1, 4] = 1
    polarity_asymmetry: float = 0.01
    activation: Activation = "identity"
    drift_compensation: CompensationMode = "global"
    gdc_input: float = 0.5
    gdc_reference: GDCReference = "total"
    faults: FaultConfig = FaultConfig()
    parasitics: ParasiticsConfig = ParasiticsConfig()
    temperature: TemperatureConfig = TemperatureConfig()

    def __post_init__(self):
        check_int("n_cores", self.n_cores, 1, 4096)
        check_int("rows", self.rows, 1, 4096)
        check_int("cols", self.cols, 1, 4096)
        check_choice("w_max", self.w_max, W_MAX_MODES)
        if self.w_clip_sigma is not None:
            check_float("w_clip_sigma", self.w_clip_sigma, 0.0, lo_open=True)
        for name in ("programming_noise", "drift", "drift_noise", "read_noise"):
            check_bool(name, getattr(self, name))
        for name, cls in (("program", ProgramConfig), ("pwm", PWMConfig), ("adc", ADCConfig),
                          ("faults", FaultConfig), ("parasitics", ParasiticsConfig),
                          ("temperature", TemperatureConfig)):
            check_instance(name, getattr(self, name), cls)
        check_float("read_interval_s", self.read_interval_s, 0.0, lo_open=True)
        if isinstance(self.read_phases, bool):
            raise ValueError(f"read_phases must be one of (1, 4), got {self.read_phases!r}.")
        check_choice("read_phases", self.read_phases, (1, 4))
        check_float("polarity_asymmetry", self.polarity_asymmetry, 0.0, 0.5)
        check_choice("activation", self.activation, ACTIVATION_NAMES)
        check_choice("drift_compensation", self.drift_compensation, COMPENSATION_MODES)
        check_float("gdc_input", self.gdc_input, 0.0, 1.0, lo_open=True)
        check_choice("gdc_reference", self.gdc_reference, GDC_REFERENCES)

    # ------------------------------------------------------------------------------
    @classmethod
    def hermes(cls, mode: ReadMode = "four_phase", *, programming: HermesProgramming = "fitted",
               **overrides) -> ChipConfig:
        """The operating point of HERMES's published accuracies (Le Gallo et al., Nat. Electron. 2023).

        Field by field (PHYSICS.md sections in brackets):

        * ``n_cores=64, rows=cols=256``: the chip's 64 cores of 256×256 unit cells (§6);
        * ``read_phases=4`` for ``mode="four_phase"``, the mode of every published accuracy: the
          four (±input × ±weight) combinations in separate windows, which cancels the polarity
          asymmetry of the current paths at four times the latency (§4.2b); ``"one_phase"``
          gives ``read_phases=1`` with the 1 % path asymmetry of :class:`ChipConfig`;
        * ``pwm=PWMConfig(bits=8)``: 8-bit (7-bit magnitude and sign) pulse-width inputs of
          1 ns units (§4.1);
        * ``adc=ADCConfig(bits=9, max_count=422, ...)``: the CCO ADC counts at most about 422
          toggles per sign in its 128 ns window (peak ~3.3 GHz, "more than 420 levels"); the
          4-bit trim leaves a 7 % gain spread that the digital unit removes; full scale is a
          tenth of the worst-case column charge, as HERMES keeps bit-line currents under
          ~100 µA (§4.2);
        * ``programming="fitted"`` (default): ``ProgramConfig(method="one_shot")`` with a
          HERMES-fitted device model draws from the *measured outcome* of HERMES's
          program-and-verify (§2, §3: the fitted programming noise was measured on devices
          programmed that way); ``"verify"`` simulates the loop itself
          (``ProgramConfig(method="verify", iterations=30)``, §3, :mod:`pcmjax.chip.verify`),
          calibrated to reproduce that law within 7 % at every level, at the cost of 30
          iterations of programming;
        * ``drift_compensation="global"``: one ratio per core from a reference read (§5);
        * ``w_max="tile"``: one weight scale per core, ``G = W · G_max / W_max`` (§6).

        The published networks were trained hardware-aware (:class:`HWAConfig`, the HERMES
        recipe); that is a property of the weights, not of the chip. Use the device model
        ``pcmjax.devices.HermesPCM(num_devices=2)`` (or 1 for one device per sign).

        Args:
          mode: ``"four_phase"`` (published accuracies) or ``"one_phase"``.
          programming: ``"fitted"`` or ``"verify"`` (see above).
          **overrides: top-level fields changed afterwards (e.g. ``n_cores=4`` for tests).
        """
        check_choice("mode", mode, get_args(ReadMode))
        check_choice("programming", programming, get_args(HermesProgramming))
        program = (ProgramConfig(method="verify", iterations=30) if programming == "verify"
                   else ProgramConfig(method="one_shot"))
        cfg = cls(n_cores=64, rows=256, cols=256, w_max="tile", program=program, pwm=PWMConfig(bits=8),
                  adc=ADCConfig(bits=9, max_count=422), read_phases=4 if mode == "four_phase" else 1,
                  drift_compensation="global")
        return cfg.replace(**overrides) if overrides else cfg

    @classmethod
    def ideal(cls, **overrides) -> ChipConfig:
        """Every non-ideality off and no compensation: ``mvm(x) == x @ W``.

        ``overrides`` are applied first, so a non-ideality given there is switched off too
        (``ideal(faults=FaultConfig(stuck_set=0.1))`` has no faults); geometry, mapping and
        read mode are kept. To study one effect on an otherwise ideal chip, switch it on
        afterwards: ``ChipConfig.ideal().replace(faults=FaultConfig(stuck_set=0.1))``.
        """
        return cls(**overrides).without(*NONIDEALITIES).replace(drift_compensation="none")

    def replace(self, **changes) -> ChipConfig:
        """A copy with top-level fields changed (unknown names raise ``TypeError``)."""
        return _replace(self, changes, "ChipConfig")

    def without(self, *names: str) -> ChipConfig:
        """A copy with the named non-idealities switched off (see ``NONIDEALITIES``)."""
        cfg = self
        for name in names:
            if name not in NONIDEALITIES:
                raise ValueError(f"unknown non-ideality {name!r}; allowed: {sorted(NONIDEALITIES)}.")
            for path, off in NONIDEALITIES[name]:
                cfg = cfg.set(path, off)
        return cfg

    def only(self, *names: str) -> ChipConfig:
        """A copy with every non-ideality off except ``names`` (kept at this config's values);
        drift compensation is kept as configured."""
        unknown = [n for n in names if n not in NONIDEALITIES]
        if unknown:
            raise ValueError(f"unknown non-ideality {unknown}; allowed: {sorted(NONIDEALITIES)}.")
        return self.without(*(n for n in NONIDEALITIES if n not in names))

    def set(self, path: str, value) -> ChipConfig:
        """A copy with one (possibly nested, ``"adc.bits"``, ``"program.gdp.steps"``) field changed."""
        head, _, rest = path.partition(".")
        if not rest:
            return self.replace(**{head: value})
        if not dataclasses.is_dataclass(getattr(self, head, None)):
            raise ValueError(f"unknown option {path!r}; nested sections are {_sections()}.")
        nested = value
        for part in reversed(rest.split(".")):
            nested = {part: nested}
        return self.update({head: nested})

    @classmethod
    def preset(cls, name: str) -> ChipConfig:
        """A named operating point: ``"hermes-four-phase"``, ``"hermes-one-phase"`` (and their
        ``"-verify"`` variants, see :meth:`hermes`)."""
        check_choice("preset", name, tuple(PRESETS))
        mode, programming = PRESETS[name]
        return cls.hermes(mode, programming=programming)

    @classmethod
    def from_dict(cls, d: dict) -> ChipConfig:
        """Build from a (possibly nested) mapping, e.g. parsed TOML; unknown keys are errors.

        A top-level ``preset`` entry (see :meth:`preset`) is the starting point that the other
        entries change; without it the start is ``ChipConfig()``.
        """
        if isinstance(d, dict) and "preset" in d:
            d = dict(d)
            return cls.preset(d.pop("preset")).update(d)
        return cls().update(d)

    def update(self, d: dict, prefix: str = "") -> ChipConfig:
        """A copy with the (possibly nested) entries of ``d`` applied.

        The entries of one section are applied together, so a valid result is reached even
        where one entry alone would not be valid (``{"adc": {"bits": 8, "max_count": 200}}``
        on a config whose ``max_count`` is 422).
        """
        if not isinstance(d, dict):
            raise TypeError(f"chip options must be a mapping, got {type(d).__name__}.")
        cfg = self
        for key, value in d.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                sub = getattr(cfg, key, None)
                if not dataclasses.is_dataclass(sub):
                    raise ValueError(f"unknown chip option section {path!r}; sections: {_sections()}.")
                cfg = cfg.replace(**{key: _replace_nested(sub, value, path)})
            else:
                cfg = cfg.set(path, value)
        return cfg

    def to_dict(self) -> dict:
        """A nested, JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @property
    def capacity(self) -> int:
        """Weights the chip holds: ``n_cores · rows · cols``."""
        return self.n_cores * self.rows * self.cols


def _sections() -> list[str]:
    """Names of the nested sections of :class:`ChipConfig` (its dataclass-valued fields)."""
    return [f.name for f in dataclasses.fields(ChipConfig) if dataclasses.is_dataclass(f.default)]


def _replace_nested(obj, changes: dict, name: str):
    """``obj`` with ``changes`` applied in one step; a mapping given for a nested section changes it."""
    changes = {k: (_replace_nested(getattr(obj, k), v, f"{name}.{k}")
                   if isinstance(v, dict) and dataclasses.is_dataclass(getattr(obj, k, None)) else v)
               for k, v in changes.items()}
    return _replace(obj, changes, name)


def _replace(obj, changes: dict, name: str):
    fields = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise TypeError(f"{name} has no option(s) {unknown}; allowed: {sorted(fields)}.")
    return dataclasses.replace(obj, **changes)
