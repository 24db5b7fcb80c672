"""Study files (TOML) and the embedded default study.

A study file (``pcmjax study --config study.toml``)::

    [study]
    name = "digits drift"
    instances = 200
    seed = 0
    times = ["1 s", "1 h", "1 day", "1 month", "1 year"]   # or seconds, or
    # times = { start = "1 s", stop = "1 year", num = 8 }   (log-spaced)
    output = "results/digits"                               # default ./pcmjax-results
    # metrics = ["accuracy", "loss"]                        # default: all

    [workload]
    kind = "network"            # "network" or "mvm"
    checkpoint = "default"      # a pcmjax network checkpoint (.npz), or the cached digits MLP
    dataset = "digits"          # or "cifar10" with data_dir = "...", or "data.npz"
    # model = "nets.py:make_model"   # a network of your own (pcmjax.montecarlo.custom):
    # model_args = { hidden = 256 }  #   its factory, checkpoint = "params.npz" and
    # exclude = ["head"]             #   dataset = "data.npz" (x, y / token sequences x)
    eval_examples = 450
    calibration_examples = 128
    calibration = "lstsq"       # or "gradient" (calibration_steps = 200)
    # kind = "mvm": cores, rows, cols, batch, calibration_batch, weights, inputs, data_seed

    [device]
    model = "hermes"            # "hermes", "pcm_like", "state_independent"
    num_devices = 2             # other keys override model parameters (drift_scale = 1.2)
    # file = "my_fit.json"      # a fitted model (pcmjax fit / pcmjax.devices.save)

    [chip]                      # overrides of pcmjax.ChipConfig (HERMES defaults)
    # preset = "hermes-four-phase"   # a named starting point (pcmjax.ChipConfig.preset)
    read_phases = 4
    [chip.adc]
    bits = 8

    [variants.none]             # named chip-config overrides; default none / gdc / calibrated
    drift_compensation = "none"
    [variants.calibrated]
    drift_compensation = "global"
    calibrate = true            # per-column fit of every layer; "readout": then the
                                # output layer refitted for the output distribution

    [run]                       # how to run (not part of the study's identity)
    chunk_size = 32
    memory_budget = "2GiB"
    devices = 4
    vmap_width = 1              # instances per device at once (default: from the budget)
    histogram_instances = 8     # instances in the conductance histograms (0: none, faster)
    plots = true

``pcmjax study --print-config`` prints a commented template of every key.
Relative paths (``checkpoint``, ``dataset``, ``file``, ``data_dir``, a factory's ``.py``
file) are relative to the study file;
``output`` is relative to the working directory. Every error names the offending key
and the allowed values.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

from pcmjax import devices
from pcmjax._validate import check_bool, check_choice, check_int
from pcmjax.config import ChipConfig
from pcmjax.montecarlo import custom
from pcmjax.montecarlo._memory import parse_bytes
from pcmjax.montecarlo.checkpoints import default_network, load_network
from pcmjax.montecarlo.datasets import load_npz_dataset
from pcmjax.montecarlo.network import NetworkWorkload
from pcmjax.montecarlo.study import DAY, HOUR, MINUTE, MONTH, WEEK, YEAR, Study, Variant, log_times
from pcmjax.montecarlo.workloads import MVMWorkload

DEFAULT_OUTPUT = "pcmjax-results"
DEFAULT_TIMES = log_times(1.0, YEAR, 6)
DEFAULT_INSTANCES = 100

SECTIONS = ("study", "workload", "device", "chip", "variants", "run")
STUDY_KEYS = ("name", "instances", "seed", "times", "metrics", "output")
RUN_KEYS = ("chunk_size", "memory_budget", "devices", "plots", "vmap_width", "histogram_instances")
NETWORK_KEYS = ("kind", "model", "model_args", "exclude", "checkpoint", "dataset", "data_dir", "eval_examples",
                "calibration_examples", "calibration", "calibration_steps", "n_chips")
MVM_KEYS = ("kind", "cores", "rows", "cols", "batch", "calibration_batch", "weights", "inputs", "data_seed")
WORKLOAD_KINDS = ("network", "mvm")
DEVICE_MODELS = {"hermes": "HermesPCM", "pcm_like": "PCMLike", "state_independent": "StateIndependent"}

_UNIT_SECONDS = {
    "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "min": MINUTE, "minute": MINUTE, "minutes": MINUTE, "h": HOUR, "hr": HOUR, "hour": HOUR, "hours": HOUR,
    "d": DAY, "day": DAY, "days": DAY, "w": WEEK, "week": WEEK, "weeks": WEEK, "mo": MONTH, "month": MONTH,
    "months": MONTH, "y": YEAR, "yr": YEAR, "year": YEAR, "years": YEAR,
}
_TIME_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zµ]*)\s*$")


class ConfigError(ValueError):
    """A study file or option is invalid (the message names the key and what is allowed)."""


def _checked(check, name, *args):
    """``check(name, *args)`` of :mod:`pcmjax._validate`, its error as a :class:`ConfigError`."""
    try:
        return check(name, *args)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


@dataclasses.dataclass
class StudyConfig:
    """A parsed study: the :class:`Study`, its output folder and run options."""

    study: Study
    output: str = DEFAULT_OUTPUT
    run: dict = dataclasses.field(default_factory=dict)


def parse_time(value, where: str = "time") -> float:
    """Seconds from a number or a string such as ``"1 s"``, ``"30 min"``, ``"1 year"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        m = _TIME_RE.match(value.lower())
        if m and (m.group(2) or "s") in _UNIT_SECONDS:
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2) or "s"]
    raise ConfigError(f"{where}: a time must be seconds or a number with a unit such as '1 s', '30 min', '2 h', "
                      f"'1 day', '1 week', '1 month', '1 year', got {value!r}; units: {sorted(set(_UNIT_SECONDS))}.")


def parse_times(value, where: str = "[study] times") -> tuple[float, ...]:
    """A list of times, or ``{start, stop, num}`` for log-spaced times."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"start", "stop", "num"})
        if unknown or not {"start", "stop"} <= set(value):
            raise ConfigError(f"{where}: a log-spaced range needs keys start, stop and optionally num (default 6); "
                              f"got {sorted(value)}.")
        try:
            return log_times(parse_time(value["start"], where), parse_time(value["stop"], where),
                             value.get("num", 6))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e
    if isinstance(value, (list, tuple)) and value:
        return tuple(parse_time(v, where) for v in value)
    raise ConfigError(f"{where} must be a list of times or {{start, stop, num}}, got {value!r}.")


def _check_keys(table, allowed, where):
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {table!r}.")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}.")


def _path(value, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a path (string), got {value!r}.")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def build_device(d: dict, base: Path = Path(".")):
    """A device model from the ``[device]`` table."""
    d = dict(d)
    if "file" in d:
        extra = sorted(set(d) - {"file"})
        if extra:
            raise ConfigError(f"[device]: 'file' loads a complete model; remove {extra} or drop 'file'.")
        try:
            return devices.load(_path(d["file"], base, "[device] file"))
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"[device] file: {e}") from e
    model = d.pop("model", "hermes")
    try:
        check_choice("[device] model", model, tuple(sorted(DEVICE_MODELS)))
    except ValueError as e:
        raise ConfigError(f"{e} A fitted model is read with file = \"fit.json\" instead.") from e
    cls = getattr(devices, DEVICE_MODELS[model])
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[device] ({model}): {e}") from e


def build_workload(d: dict, base: Path = Path(".")):
    """A workload from the ``[workload]`` table."""
    d = dict(d)
    kind = _checked(check_choice, "[workload] kind", d.get("kind", "network"), WORKLOAD_KINDS)
    if kind == "mvm":
        _check_keys(d, MVM_KEYS, "[workload] (kind = \"mvm\")")
        d.pop("kind", None)
        try:
            return MVMWorkload(**d)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[workload] {e}") from e
    _check_keys(d, NETWORK_KEYS, "[workload] (kind = \"network\")")
    if "model" in d:
        return _custom_workload(d, base)
    for k in ("model_args", "exclude"):
        if k in d:
            raise ConfigError(f"[workload] {k} belongs to a network of your own: give model = \"module:factory\" too.")
    ckpt = d.get("checkpoint", "default")
    if ckpt == "default":
        _, path = default_network()
    else:
        path = _path(ckpt, base, "[workload] checkpoint")
    kwargs = {k: d[k] for k in ("calibration", "calibration_steps", "n_chips") if k in d}
    data_dir = _path(d["data_dir"], base, "[workload] data_dir") if "data_dir" in d else None
    dataset = d.get("dataset", "digits")
    try:
        if isinstance(dataset, str) and dataset.endswith(".npz"):
            model, arch, _ = load_network(path)
            x, y, x_cal = load_npz_dataset(_path(dataset, base, "[workload] dataset"), d.get("eval_examples"),
                                           d.get("calibration_examples", 128))
            return NetworkWorkload(model, x, y, x_cal, description=f"{path.name} on {Path(dataset).name}",
                                   spec_extra={"architecture": arch, "dataset": Path(dataset).name}, **kwargs)
        return NetworkWorkload.from_checkpoint(
            path, dataset, data_dir=data_dir, eval_examples=d.get("eval_examples"),
            calibration_examples=d.get("calibration_examples", 128), **kwargs)
    except (OSError, TypeError, ValueError) as e:
        raise ConfigError(f"[workload] {e}") from e


def _custom_workload(d: dict, base: Path):
    """A network of your own: ``model = "module:factory"``, its checkpoint and a data set."""
    if "checkpoint" not in d or d["checkpoint"] == "default":
        raise ConfigError("[workload] model = \"module:factory\" needs checkpoint = \"weights.npz\" (a file "
                          "pcmjax.montecarlo.save_network wrote, or a plain .npz of the parameters by path).")
    dataset = d.get("dataset")
    if not isinstance(dataset, str) or not dataset.endswith(".npz"):
        raise ConfigError(f"[workload] model = \"module:factory\" needs dataset = \"data.npz\" (x and y, or token "
                          f"sequences x), got {dataset!r}.")
    kwargs = {k: d[k] for k in ("calibration", "calibration_steps", "n_chips") if k in d}
    ckpt = _path(d["checkpoint"], base, "[workload] checkpoint")
    data = _path(dataset, base, "[workload] dataset")
    try:
        x, y, x_cal = load_npz_dataset(data, d.get("eval_examples"), d.get("calibration_examples", 128))
        model = custom.build_model(d["model"], d.get("model_args"), base)
        sample = x_cal[:, :-1] if y is None else np.asarray(x_cal, np.float32)
        model = custom.prepare_network(model, ckpt, sample, exclude=d.get("exclude"))
        extra = {"model": d["model"], "model_args": d.get("model_args", {}), "checkpoint": ckpt.name,
                 "dataset": data.name}
        return NetworkWorkload(model, x, y, x_cal, description=f"{d['model']} ({ckpt.name}) on {data.name}",
                               spec_extra=extra, **kwargs)
    except (OSError, TypeError, ValueError) as e:
        raise ConfigError(f"[workload] {e}") from e


def build_variants(d: dict) -> tuple[Variant, ...]:
    if not isinstance(d, dict) or not d:
        raise ConfigError(f"[variants] must hold at least one [variants.<name>] table, got {d!r}.")
    out = []
    for name, table in d.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[variants.{name}] must be a table of chip options (and calibrate = "
                              f"true/false/\"readout\"), "
                              f"got {table!r}.")
        table = dict(table)
        calibrate = table.pop("calibrate", False)
        try:
            out.append(Variant(name, table, calibrate=calibrate))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[variants.{name}] {e}") from e
    return tuple(out)


def study_from_dict(cfg: dict, base: Path = Path("."), overrides: dict | None = None) -> StudyConfig:
    """A :class:`StudyConfig` from a parsed study file.

    Args:
      cfg: the parsed TOML.
      base: directory relative paths are resolved against.
      overrides: ``[study]`` / ``[run]`` values from the command line (not None ones win).
    """
    _check_keys(cfg, SECTIONS, "study file")
    st = dict(cfg.get("study", {}))
    _check_keys(st, STUDY_KEYS, "[study]")
    run = dict(cfg.get("run", {}))
    _check_keys(run, RUN_KEYS, "[run]")
    for k, v in (overrides or {}).items():
        if v is not None:
            (run if k in RUN_KEYS else st)[k] = v
    for k, lo in (("chunk_size", 1), ("devices", 1), ("vmap_width", 1), ("histogram_instances", 0)):
        if run.get(k) is not None:
            _checked(check_int, f"[run] {k}", run[k], lo)
    if "plots" in run:
        _checked(check_bool, "[run] plots", run["plots"])
    if "memory_budget" in run:
        try:
            parse_bytes(run["memory_budget"])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[run] {e}") from e
    chip_table = cfg.get("chip", {})
    _check_keys(chip_table, ["preset", *(f.name for f in dataclasses.fields(ChipConfig))], "[chip]")
    try:
        chip = ChipConfig.from_dict(chip_table)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[chip] {e}") from e
    device = build_device(cfg.get("device", {}), base)
    device_table = cfg.get("device", {})
    if isinstance(device_table, dict) and "file" in device_table:
        kwargs_file = {"device_file": str(_path(device_table["file"], base, "[device] file"))}
    else:
        kwargs_file = {}
    workload = build_workload(cfg.get("workload", {}), base)
    kwargs = dict(kwargs_file)
    if "variants" in cfg:
        kwargs["variants"] = build_variants(cfg["variants"])
    if "metrics" in st:
        m = st["metrics"]
        kwargs["metrics"] = (m,) if isinstance(m, str) else tuple(m) if isinstance(m, (list, tuple)) else m
    times = parse_times(st["times"]) if "times" in st else DEFAULT_TIMES
    try:
        study = Study(workload, times=times, instances=st.get("instances", DEFAULT_INSTANCES), chip=chip,
                      device=device, seed=st.get("seed", 0), name=str(st.get("name", "study")), **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[study] {e}") from e
    output = st.get("output", DEFAULT_OUTPUT)
    if not isinstance(output, str) or not output:
        raise ConfigError(f"[study] output must be a folder path (string), got {output!r}.")
    return StudyConfig(study, output, run)


def load_toml(path) -> dict:
    """The parsed TOML file at ``path`` (errors as :class:`ConfigError`)."""
    if tomllib is None:  # pragma: no cover - Python < 3.11
        raise ImportError("reading study files on Python < 3.11 needs tomli: pip install tomli")
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"study file {str(path)!r} does not exist.")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e


def load_study_file(path, overrides: dict | None = None) -> StudyConfig:
    """Parse a study file (see the module docstring)."""
    path = Path(path)
    try:
        return study_from_dict(load_toml(path), path.resolve().parent, overrides)
    except ConfigError as e:
        if str(e).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {e}") from e


def default_study(overrides: dict | None = None) -> StudyConfig:
    """The embedded default study: the digits MLP (HWA-trained on first use, cached) on a
    HERMES chip, 1 s → 1 year at 6 log-spaced times, 100 instances, variants
    none / gdc / calibrated."""
    return study_from_dict({"study": {"name": "digits-mlp-hermes"}, "workload": {"kind": "network"}},
                           Path("."), overrides)
