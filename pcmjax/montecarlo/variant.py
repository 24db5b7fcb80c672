"""Variants of a study: named chip-configuration overrides, optionally calibrated.

A :class:`Variant` is what a user writes (``Variant("none", {"drift_compensation":
"none"})``); :class:`ResolvedVariant` is what a workload's ``evaluate`` receives: the
variant applied to the study's base :class:`pcmjax.ChipConfig` (static under ``jit``).
This module imports no workload or study, so both can import it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pcmjax._validate import check_bool
from pcmjax.config import ChipConfig

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _nest(items) -> dict:
    out: dict = {}
    for path, v in items:
        node = out
        *heads, last = path.split(".")
        for h in heads:
            node = node.setdefault(h, {})
        node[last] = v
    return out


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named variation of the study's chip configuration.

    Attributes:
      name: label in results, tables and legends (letters, digits, ``_ . + -``).
      chip: chip-config overrides, a (possibly nested) mapping such as
        ``{"drift_compensation": "none", "adc": {"bits": 8}}``; stored as sorted
        ``(dotted path, value)`` pairs so the variant is hashable.
      calibrate: fit a per-column affine correction (``γ y + β``) on calibration inputs at
        each time after ageing, on top of the overrides (the "calibrated" case).
    """

    name: str
    chip: Any = ()
    calibrate: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"variant name must be a non-empty string of letters, digits and '_.+-', "
                             f"got {self.name!r}.")
        chip = self.chip
        if isinstance(chip, dict):
            chip = _flatten(chip)
        try:
            chip = tuple(sorted((str(p), v) for p, v in chip))
        except (TypeError, ValueError) as e:
            raise TypeError(f"variant {self.name!r}: chip overrides must be a mapping of option -> value, "
                            f"got {self.chip!r}.") from e
        for path, v in chip:
            if isinstance(v, (list, tuple, dict, set)):
                raise TypeError(f"variant {self.name!r}: chip option {path!r} must be a scalar, got {v!r}.")
        object.__setattr__(self, "chip", chip)
        check_bool(f"variant {self.name!r}: calibrate", self.calibrate)

    def overrides(self) -> dict:
        """The chip overrides as a nested mapping."""
        return _nest(self.chip)

    def resolve(self, base: ChipConfig) -> ResolvedVariant:
        """This variant applied to ``base`` (errors name the variant and the option)."""
        try:
            cfg = base.update(self.overrides())
        except (TypeError, ValueError) as e:
            raise ValueError(f"variant {self.name!r}: {e}") from e
        return ResolvedVariant(self.name, cfg, self.calibrate)

    def to_dict(self) -> dict:
        return {"name": self.name, "chip": self.overrides(), "calibrate": self.calibrate}


@dataclasses.dataclass(frozen=True)
class ResolvedVariant:
    """What a workload's ``evaluate`` receives (static under ``jit``): a name, the full
    :class:`pcmjax.ChipConfig` of the variant and whether to calibrate."""

    name: str
    config: ChipConfig
    calibrate: bool = False


DEFAULT_VARIANTS = (
    Variant("none", {"drift_compensation": "none"}),
    Variant("gdc", {"drift_compensation": "global"}),
    Variant("calibrated", {"drift_compensation": "global"}, calibrate=True),
)
