"""Property-based tests of the configuration dataclasses (``pcmjax.config``).

Random valid configurations survive ``to_dict``/``from_dict`` (also through JSON) unchanged;
invalid field values raise errors that name the field and show the value; ``replace``,
``set``, ``without`` and ``only`` change exactly what they say.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import pcmjax as pj
from pcmjax.config import (
    ACTIVATION_NAMES,
    COMPENSATION_MODES,
    NONIDEALITIES,
    PRESETS,
    PROGRAM_METHODS,
    W_MAX_MODES,
    WRITE_METHODS,
    ADCConfig,
    ChipConfig,
    FaultConfig,
    GDPConfig,
    ParasiticsConfig,
    ProgramConfig,
    PWMConfig,
    TemperatureConfig,
)

SETTINGS = settings(max_examples=50, deadline=None)


def floats(lo, hi, *, lo_open=False, hi_open=False):
    return st.floats(lo, hi, exclude_min=lo_open, exclude_max=hi_open, allow_nan=False, allow_infinity=False)


# -- random valid configurations ------------------------------------------------------------
gdp_configs = st.builds(
    GDPConfig, steps=st.integers(0, 100_000), learning_rate=floats(0.0, 1.0, lo_open=True),
    samples=st.integers(1, 1024), times_s=st.lists(floats(0.0, 3.2e7), min_size=1, max_size=4).map(tuple),
    input_batch=st.integers(0, 1 << 16), write=st.sampled_from(WRITE_METHODS),
)
program_configs = st.builds(
    ProgramConfig, method=st.sampled_from(PROGRAM_METHODS), iterations=st.integers(1, 1000),
    tolerance_counts=floats(0.0, 100.0, lo_open=True), step=floats(0.0, 2.0, lo_open=True),
    pulse_spread=floats(0.0, 1.0), relax_fraction=floats(0.0, 1.0), set_spread=floats(0.0, 0.5), gdp=gdp_configs,
)
pwm_configs = st.builds(PWMConfig, enabled=st.booleans(), bits=st.integers(2, 16))


@st.composite
def adc_configs(draw):
    bits = draw(st.integers(2, 16))
    return ADCConfig(
        enabled=draw(st.booleans()), bits=bits, max_count=draw(st.none() | st.integers(1, 2**bits - 1)),
        full_scale=draw(floats(0.0, 1.0, lo_open=True)), gain_std=draw(floats(0.0, 0.5, hi_open=True)),
        **{name: draw(floats(0.0, 100.0)) for name in ("offset_std", "nonlinearity", "nonlinearity_std",
                                                          "noise_std", "cal_gain_error", "cal_offset_error")},
    )


@st.composite
def fault_configs(draw):
    stuck_set = draw(floats(0.0, 1.0))
    return FaultConfig(stuck_set=stuck_set, stuck_reset=draw(floats(0.0, 1.0 - stuck_set)),
                       dead_columns=draw(floats(0.0, 1.0)))


kelvin = floats(0.0, 2000.0, lo_open=True, hi_open=True)
temperature_configs = st.builds(
    TemperatureConfig, temperature_k=st.none() | kelvin, read_temperature_k=st.none() | kelvin,
    reference_k=kelvin, ea_reset_ev=floats(0.0, 5.0), ea_set_ev=floats(0.0, 5.0), noise_exponent=floats(0.0, 5.0),
)
parasitics_configs = st.builds(ParasiticsConfig, r_word_line=floats(0.0, 1e3), r_bit_line=floats(0.0, 1e3),
                               iterations=st.integers(1, 100))
chip_configs = st.builds(
    ChipConfig, n_cores=st.integers(1, 4096), rows=st.integers(1, 4096), cols=st.integers(1, 4096),
    w_max=st.sampled_from(W_MAX_MODES), w_clip_sigma=st.none() | floats(0.0, 10.0, lo_open=True),
    programming_noise=st.booleans(), program=program_configs, drift=st.booleans(), drift_noise=st.booleans(),
    read_noise=st.booleans(), read_interval_s=floats(0.0, 1.0, lo_open=True), pwm=pwm_configs, adc=adc_configs(),
    read_phases=st.sampled_from([1, 4]), polarity_asymmetry=floats(0.0, 0.5),
    activation=st.sampled_from(ACTIVATION_NAMES), drift_compensation=st.sampled_from(COMPENSATION_MODES),
    gdc_input=floats(0.0, 1.0, lo_open=True), faults=fault_configs(), parasitics=parasitics_configs,
    temperature=temperature_configs,
)


def get(cfg, path: str):
    return functools.reduce(getattr, path.split("."), cfg)


def leaf_paths(cfg, prefix=""):
    """Every non-dataclass field of ``cfg`` as a dotted path."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaf_paths(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


# -- round trips ----------------------------------------------------------------------------
@SETTINGS
@given(cfg=chip_configs)
def test_from_dict_inverts_to_dict(cfg):
    d = cfg.to_dict()
    back = ChipConfig.from_dict(d)
    assert back == cfg and hash(back) == hash(cfg)  # hashable: a static argument under jit
    assert ChipConfig.from_dict(json.loads(json.dumps(d))) == cfg  # JSON turns tuples into lists


@SETTINGS
@given(cfg=chip_configs, preset=st.sampled_from(sorted(PRESETS)))
def test_preset_entry_is_the_starting_point(cfg, preset):
    # A section's entries are applied one at a time, so adc.bits < 9 meets the presets' max_count=422
    # before the mapping's own max_count (test_section_entries_apply_together below).
    assume(cfg.adc.bits >= 9)
    d = cfg.to_dict()
    assert ChipConfig.from_dict({"preset": preset, **d}) == cfg  # every field given: the preset is overridden
    assert ChipConfig.from_dict({"preset": preset}) == ChipConfig.preset(preset)
    partial = {"n_cores": cfg.n_cores, "adc": {"noise_std": cfg.adc.noise_std}}
    expected = ChipConfig.preset(preset).replace(n_cores=cfg.n_cores).set("adc.noise_std", cfg.adc.noise_std)
    assert ChipConfig.from_dict({"preset": preset, **partial}) == expected


def test_section_entries_apply_together():
    cfg = ChipConfig.from_dict({"preset": "hermes-four-phase", "adc": {"bits": 8, "max_count": 200}})
    assert (cfg.adc.bits, cfg.adc.max_count) == (8, 200)


def test_set_reaches_every_level():
    cfg = ChipConfig().set("program.gdp.steps", 7)
    assert cfg.program.gdp.steps == 7 and cfg.program.gdp.learning_rate == ChipConfig().program.gdp.learning_rate
    with pytest.raises(TypeError, match="has no option"):
        ChipConfig().set("program.gdp.nope", 1)


def test_default_configuration_round_trips():
    for cfg in (ChipConfig(), ChipConfig.ideal(), ChipConfig.hermes(), pj.ChipConfig.hermes("one_phase")):
        assert ChipConfig.from_dict(cfg.to_dict()) == cfg


# -- invalid values -------------------------------------------------------------------------
# (path, strategy of values that path must refuse)
_not_int = st.one_of(st.booleans(), st.floats(allow_nan=False), st.text(max_size=3), st.none())
_not_number = st.one_of(st.booleans(), st.sampled_from([float("nan"), float("inf")]), st.text(max_size=3))
_not_bool = st.one_of(st.integers(0, 1), st.text(max_size=3), st.none())
INVALID = {
    "n_cores": st.integers(max_value=0) | st.integers(min_value=4097) | _not_int,
    "rows": st.integers(max_value=0) | _not_int,
    "cols": st.integers(min_value=4097) | _not_int,
    "w_max": st.text(max_size=6).filter(lambda s: s not in W_MAX_MODES),
    "w_clip_sigma": floats(-10.0, 0.0) | _not_number,
    "programming_noise": _not_bool,
    "drift": _not_bool,
    "read_noise": _not_bool,
    "read_interval_s": floats(-1.0, 0.0) | _not_number,
    "read_phases": st.integers().filter(lambda n: n not in (1, 4)) | st.booleans() | st.just("4"),
    "polarity_asymmetry": floats(0.5, 10.0, lo_open=True) | floats(-1.0, 0.0, hi_open=True) | _not_number,
    "activation": st.text(max_size=6).filter(lambda s: s not in ACTIVATION_NAMES),
    "drift_compensation": st.text(max_size=6).filter(lambda s: s not in COMPENSATION_MODES),
    "gdc_input": floats(1.0, 10.0, lo_open=True) | floats(-1.0, 0.0) | _not_number,
    "program.method": st.text(max_size=6).filter(lambda s: s not in PROGRAM_METHODS),
    "program.iterations": st.integers(max_value=0) | st.integers(min_value=1001) | _not_int,
    "program.tolerance_counts": floats(-1.0, 0.0),
    "program.gdp.steps": st.integers(max_value=-1) | _not_int,
    "program.gdp.samples": st.integers(max_value=0) | st.integers(min_value=1025),
    "program.gdp.write": st.text(max_size=6).filter(lambda s: s not in WRITE_METHODS),
    "pwm.enabled": _not_bool,
    "pwm.bits": st.integers(max_value=1) | st.integers(min_value=17) | _not_int,
    "adc.bits": st.integers(max_value=1) | st.integers(min_value=17) | _not_int,
    "adc.max_count": st.integers(max_value=0) | st.integers(min_value=512) | st.floats(1, 100),
    "adc.full_scale": floats(-1.0, 0.0) | floats(1.0, 5.0, lo_open=True) | _not_number,
    "adc.gain_std": floats(0.5, 5.0) | floats(-1.0, 0.0, hi_open=True),
    "adc.noise_std": floats(-10.0, 0.0, hi_open=True) | _not_number,
    "faults.stuck_set": floats(1.0, 5.0, lo_open=True) | floats(-1.0, 0.0, hi_open=True),
    "faults.dead_columns": floats(1.0, 5.0, lo_open=True) | floats(-1.0, 0.0, hi_open=True) | st.booleans(),
    "parasitics.r_bit_line": floats(-1e3, 0.0, hi_open=True) | _not_number,
    "parasitics.iterations": st.integers(max_value=0) | st.integers(min_value=101),
    "temperature.temperature_k": floats(-100.0, 0.0) | floats(2000.0, 1e4) | _not_number,
    "temperature.ea_set_ev": floats(-1.0, 0.0, hi_open=True) | floats(5.0, 50.0, lo_open=True),
}


@SETTINGS
@given(path=st.sampled_from(sorted(INVALID)), data=st.data())
def test_invalid_value_names_the_field_and_the_value(path, data):
    value = data.draw(INVALID[path], label=path)
    head, *rest = path.split(".")
    nested = value
    for part in reversed(rest):
        nested = {part: nested}
    attempts = [lambda: ChipConfig.from_dict({head: nested})]  # as from a study file
    if len(rest) <= 1:
        attempts.append(lambda: ChipConfig().set(path, value))
    for attempt in attempts:
        with pytest.raises((ValueError, TypeError)) as info:
            attempt()
        msg = str(info.value)
        assert msg.startswith(path + " ") and repr(value) in msg, msg


@SETTINGS
@given(stuck_set=floats(0.0, 1.0), excess=floats(1e-6, 1.0))
def test_stuck_rates_must_leave_room_for_working_devices(stuck_set, excess):
    stuck_reset = 1.0 - stuck_set + excess
    assume(stuck_reset <= 1.0 and stuck_set + stuck_reset > 1.0)
    with pytest.raises(ValueError, match=r"faults\.stuck_set \+ faults\.stuck_reset must be <= 1"):
        FaultConfig(stuck_set=stuck_set, stuck_reset=stuck_reset)


@SETTINGS
@given(name=st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True), section=st.sampled_from(["", "adc.", "program."]))
def test_unknown_option_is_an_error_naming_it(name, section):
    cfg = ChipConfig()
    assume(name not in {f.name for f in dataclasses.fields(get(cfg, section[:-1]) if section else cfg)})
    with pytest.raises(TypeError, match=f"no option.*'{name}'"):
        cfg.set(section + name, 1)
    with pytest.raises(TypeError, match=f"no option.*'{name}'"):
        ChipConfig.from_dict({section[:-1]: {name: 1}} if section else {name: 1})


# -- replace / set / without / only ---------------------------------------------------------
@SETTINGS
@given(cfg=chip_configs, other=chip_configs, data=st.data())
def test_replace_changes_exactly_the_given_fields(cfg, other, data):
    names = data.draw(st.sets(st.sampled_from([f.name for f in dataclasses.fields(ChipConfig)]), max_size=6))
    changes = {n: getattr(other, n) for n in names}
    before = cfg.to_dict()
    new = cfg.replace(**changes)
    for f in dataclasses.fields(ChipConfig):
        assert getattr(new, f.name) == (changes[f.name] if f.name in changes else getattr(cfg, f.name)), f.name
    assert cfg.to_dict() == before  # the original is untouched


@SETTINGS
@given(cfg=chip_configs, other=chip_configs, data=st.data())
def test_set_changes_one_leaf(cfg, other, data):
    path = data.draw(st.sampled_from(sorted(p for p in leaf_paths(cfg) if p.count(".") <= 1)))
    value = get(other, path)
    if path == "adc.max_count" and value is not None:
        assume(value <= 2**cfg.adc.bits - 1)
    if path == "adc.bits" and cfg.adc.max_count is not None:
        assume(cfg.adc.max_count <= 2**value - 1)
    if path.startswith("faults.stuck_"):
        partner = "faults.stuck_reset" if path == "faults.stuck_set" else "faults.stuck_set"
        assume(value + get(cfg, partner) <= 1.0)
    new = cfg.set(path, value)
    assert get(new, path) == value
    changed = [p for p in leaf_paths(cfg) if get(new, p) != get(cfg, p)]
    assert changed in ([], [path])


@SETTINGS
@given(cfg=chip_configs, names=st.lists(st.sampled_from(sorted(NONIDEALITIES)), unique=True, max_size=5))
def test_without_switches_off_exactly_the_named_nonidealities(cfg, names):
    new = cfg.without(*names)
    off_paths = {path for n in names for path, _ in NONIDEALITIES[n]}
    for n in names:
        for path, off in NONIDEALITIES[n]:
            assert get(new, path) == off, path
    for path in leaf_paths(cfg):
        if path not in off_paths:
            assert get(new, path) == get(cfg, path), path
    assert new.without(*names) == new  # idempotent
    assert cfg.without(*reversed(names)) == new  # order does not matter


@SETTINGS
@given(cfg=chip_configs, names=st.lists(st.sampled_from(sorted(NONIDEALITIES)), unique=True, max_size=4))
def test_only_keeps_the_named_nonidealities(cfg, names):
    new = cfg.only(*names)
    kept = {path for n in names for path, _ in NONIDEALITIES[n]}
    for entries in NONIDEALITIES.values():
        for path, off in entries:
            assert get(new, path) == (get(cfg, path) if path in kept else off), path
    assert new.drift_compensation == cfg.drift_compensation


@SETTINGS
@given(name=st.text(max_size=10).filter(lambda s: s not in NONIDEALITIES))
def test_unknown_nonideality_is_named(name):
    with pytest.raises(ValueError, match="unknown non-ideality") as info:
        ChipConfig().without(name)
    assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="unknown non-ideality") as info:
        ChipConfig().only(name)
    assert repr(name) in str(info.value)


@SETTINGS
@given(cfg=chip_configs)
def test_ideal_has_every_nonideality_off(cfg):
    ideal = ChipConfig.ideal(n_cores=cfg.n_cores, rows=cfg.rows, cols=cfg.cols, read_phases=cfg.read_phases)
    for entries in NONIDEALITIES.values():
        for path, off in entries:
            assert get(ideal, path) == off, path
    assert ideal.drift_compensation == "none"
    assert (ideal.n_cores, ideal.rows, ideal.cols, ideal.read_phases) == (cfg.n_cores, cfg.rows, cfg.cols,
                                                                          cfg.read_phases)
