"""A Monte Carlo study: what to evaluate, on which chips, when, and how often.

A :class:`Study` names a *workload* (a pure function evaluating one chip instance, see
:mod:`pcmjax.montecarlo.workloads`), a base chip configuration and device model, the
times after programming, the number of chip instances, the *variants* (named chip-config
overrides, optionally with per-column calibration) and the metrics to keep.

:meth:`Study.spec` is a JSON description of everything that determines an instance's
results; its hash guards an output folder against being resumed with a different study.
The number of instances is deliberately not part of it: instance ``i`` depends on
``(seed, i)`` alone, so a finished study can be extended with more instances.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

import numpy as np

from pcmjax._validate import check_instance, check_int
from pcmjax.config import ChipConfig
from pcmjax.devices import DeviceModel, HermesPCM
from pcmjax.devices import to_dict as device_to_dict
from pcmjax.montecarlo.variant import DEFAULT_VARIANTS, ResolvedVariant, Variant
from pcmjax.montecarlo.workloads import Workload

SPEC_FORMAT = "pcmjax.study/1"

# Named times (seconds) for labels and default grids.
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
WEEK, MONTH, YEAR = 7 * DAY, 30.4375 * DAY, 365.25 * DAY
_UNITS = (("y", YEAR), ("mo", MONTH), ("d", DAY), ("h", HOUR), ("min", MINUTE), ("s", 1.0), ("ms", 1e-3),
          ("µs", 1e-6))


def format_time(t_s: float) -> str:
    """A short human label for ``t_s`` seconds: ``1 s``, ``16.7 min``, ``11.6 d``, ``1 y``."""
    t_s = float(t_s)
    if t_s == 0:
        return "0 s"
    for unit, size in _UNITS:
        if t_s >= size * 0.9995:
            v = t_s / size
            return f"{v:.3g} {unit}"
    return f"{t_s:.3g} s"


def log_times(start_s: float = 1.0, stop_s: float = YEAR, num: int = 6) -> tuple[float, ...]:
    """``num`` log-spaced times from ``start_s`` to ``stop_s`` seconds (both included)."""
    if not (start_s > 0 and stop_s > start_s):
        raise ValueError(f"log-spaced times need 0 < start < stop, got start={start_s!r}, stop={stop_s!r}.")
    check_int("the number of log-spaced times", num, lo=2)
    return tuple(float(t) for t in np.geomspace(start_s, stop_s, num))


@dataclasses.dataclass(frozen=True, eq=False)
class Study:
    """A Monte Carlo study.

    Attributes:
      workload: a :class:`pcmjax.montecarlo.Workload` (e.g. :class:`MVMWorkload`,
        :class:`NetworkWorkload`).
      times: seconds after programming, ascending, each ≥ 0.
      instances: number of chip instances (instance ``i`` uses ``fold_in(key(seed), i)``).
      variants: :class:`Variant` s (default: none / gdc / calibrated).
      chip: base :class:`pcmjax.ChipConfig` the variants modify (default: HERMES).
      device: device model (default ``HermesPCM(num_devices=2)``; any fitted model).
      seed: integer in ``[0, 2**32)``.
      metrics: names to keep (default: all of the workload's).
      name: a label for the study (not part of its hash).
      device_file: the file a fitted ``device`` was read from, named in the header (not
        part of the hash: the model's parameters are).
    """

    workload: Any
    times: tuple = log_times()
    instances: int = 100
    variants: tuple = DEFAULT_VARIANTS
    chip: ChipConfig = ChipConfig()
    device: Any = None
    seed: int = 0
    metrics: tuple | None = None
    name: str = "study"
    device_file: str | None = None

    def __post_init__(self):
        check_instance("workload", self.workload, Workload)
        times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        if times.size == 0 or not np.all(np.isfinite(times)) or np.any(times < 0):
            raise ValueError(f"times must be a non-empty list of finite seconds >= 0, got {list(self.times)!r}.")
        if np.any(np.diff(times) <= 0):
            raise ValueError(f"times must be strictly ascending, got {list(self.times)!r}.")
        object.__setattr__(self, "times", tuple(float(t) for t in times))
        object.__setattr__(self, "instances", check_int("instances", self.instances, lo=1))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0, 2**32 - 1))
        check_instance("chip", self.chip, ChipConfig)
        device = HermesPCM(num_devices=2) if self.device is None else self.device
        object.__setattr__(self, "device", check_instance("device", device, DeviceModel))
        variants = tuple(self.variants)
        if not variants or not all(isinstance(v, Variant) for v in variants):
            raise TypeError("variants must be a non-empty sequence of pcmjax.montecarlo.Variant.")
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}.")
        object.__setattr__(self, "variants", variants)
        available = tuple(self.workload.metric_names())
        metrics = available if self.metrics is None else tuple(self.metrics)
        bad = [m for m in metrics if m not in available]
        if bad or not metrics:
            raise ValueError(f"metrics {bad or list(metrics)} are not available for this workload; "
                             f"allowed: {list(available)}.")
        object.__setattr__(self, "metrics", metrics)
        for rv in self.resolved_variants():
            try:
                self.workload.check_config(rv.config)
                self.workload.check_variant(rv)
            except (TypeError, ValueError) as e:
                raise ValueError(f"variant {rv.name!r}: {e}") from e

    # ------------------------------------------------------------------------------
    def resolved_variants(self) -> tuple[ResolvedVariant, ...]:
        return tuple(v.resolve(self.chip) for v in self.variants)

    def replace(self, **changes) -> Study:
        return dataclasses.replace(self, **changes)

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    @property
    def evaluations(self) -> int:
        """Instance × time × variant evaluations of the whole study."""
        return self.instances * len(self.times) * len(self.variants)

    def spec(self) -> dict:
        """JSON description of everything that determines an instance's results."""
        return {
            "format": SPEC_FORMAT,
            "workload": self.workload.spec(),
            "chip": self.chip.to_dict(),
            "device": device_to_dict(self.device),
            "times_s": list(self.times),
            "variants": [v.to_dict() for v in self.variants],
            "metrics": list(self.metrics),
            "seed": self.seed,
        }

    def hash(self) -> str:
        """SHA-256 (first 16 hex digits) of :meth:`spec` in canonical JSON."""
        return spec_hash(self.spec())

    def describe(self) -> str:
        lines = [
            f"study {self.name!r}: {self.instances} instances × {len(self.times)} times × "
            f"{len(self.variants)} variants ({self.evaluations} evaluations), seed {self.seed}",
            f"  workload: {self.workload.describe()}",
            f"  device:   {describe_device(self.device, self.device_file)}",
            f"  chip:     {describe_chip(self.chip)}",
            f"  times:    {', '.join(format_time(t) for t in self.times)}",
            "  variants: " + "; ".join(
                f"{v.name} ({', '.join(f'{p}={val}' for p, val in v.chip) or 'base chip'}"
                f"{', ' + v.calibration_label if v.calibrate else ''})" for v in self.variants),
            f"  metrics:  {', '.join(self.metrics)}",
        ]
        return "\n".join(lines)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def describe_chip(chip: ChipConfig) -> str:
    """The chip options that differ from ``ChipConfig()`` (HERMES defaults), ``path=value``."""
    base, mine = _flat(ChipConfig().to_dict()), _flat(chip.to_dict())
    changed = [f"{k}={_value(v)}" for k, v in mine.items() if _canonical(v) != _canonical(base.get(k))]
    return "HERMES defaults (pcmjax.ChipConfig())" if not changed else "non-default " + ", ".join(changed)


def describe_device(device: DeviceModel, file: str | None = None) -> str:
    """The device model's class and devices per sign, then the file a fitted model came
    from, or the parameters that differ from the class's defaults."""
    head = f"{type(device).__name__}(num_devices={device.num_devices})"
    if file is not None:
        return f"{head}, fitted model from {file}"
    try:
        default = type(device)(num_devices=device.num_devices)
    except (TypeError, ValueError):
        return head
    base, mine = _flat(device_to_dict(default)), _flat(device_to_dict(device))
    changed = [f"{k.removeprefix('params.')}={_value(v)}" for k, v in mine.items()
               if _canonical(v) != _canonical(base.get(k))]
    return head + (f" with {', '.join(changed)}" if changed else ", default parameters")


def _canonical(obj):
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _canonical(obj.tolist())
    return obj


def spec_hash(spec: dict) -> str:
    """SHA-256 (first 16 hex digits) of a spec in canonical JSON (sorted keys)."""
    text = json.dumps(_canonical(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted paths where two specs differ (for the "changed study" message)."""
    old, new = _canonical(old), _canonical(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if k not in old or k not in new:
                out.append(f"{prefix}{k}")
            else:
                out.extend(spec_differences(old[k], new[k], f"{prefix}{k}."))
        return out
    return [] if old == new else [prefix.rstrip(".") or "<spec>"]


__all__ = ["Study", "Variant", "ResolvedVariant", "DEFAULT_VARIANTS", "log_times", "format_time", "spec_hash",
           "describe_chip", "describe_device",
           "spec_differences", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH", "YEAR"]
