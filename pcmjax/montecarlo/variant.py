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

import numpy as np

from pcmjax.config import ChipConfig

#: Values of a variant's ``calibrate``: none, the per-column fit of every layer, or that
#: fit followed by the read-out refit of the network's output layer.
CALIBRATE_CHOICES = (False, True, "readout")
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


def check_calibrate(name: str, value) -> bool | str:
    """``value`` if it is one of :data:`CALIBRATE_CHOICES`, else a ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value == "readout":
        return value
    error = ValueError if isinstance(value, str) else TypeError
    raise error(f"{name} must be false, true (the per-column fit of every layer) or \"readout\" (the per-column "
                f"fit, then the read-out refit of the output layer), got {value!r}.")


def calibration_label(calibrate) -> str:
    """``"calibrated"``, ``"calibrated + read-out refit"`` or ``""``."""
    return "calibrated + read-out refit" if calibrate == "readout" else "calibrated" if calibrate else ""


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named variation of the study's chip configuration.

    Attributes:
      name: label in results, tables and legends (letters, digits, ``_ . + -``).
      chip: chip-config overrides, a (possibly nested) mapping such as
        ``{"drift_compensation": "none", "adc": {"bits": 8}}``; stored as sorted
        ``(dotted path, value)`` pairs so the variant is hashable.
      calibrate: ``False``; ``True``: fit a per-column affine correction (``γ y + β``) of
        every layer on calibration inputs at each time after ageing, on top of the
        overrides (the "calibrated" case); ``"readout"``: that fit, then the read-out
        refit of a network's output layer (:func:`pcmjax.nn.fit_readout`: its per-column
        ``γ'``, ``β'`` fitted for the KL divergence of the chip's output distribution,
        next-token or class, from the digital network's; network workloads only).
    """

    name: str
    chip: Any = ()
    calibrate: bool | str = False

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
        object.__setattr__(self, "calibrate", check_calibrate(f"variant {self.name!r}: calibrate", self.calibrate))

    @property
    def readout(self) -> bool:
        """Whether the variant adds the read-out refit to the per-column calibration."""
        return self.calibrate == "readout"

    @property
    def calibration_label(self) -> str:
        """The calibration in words, for headers (empty if none)."""
        return calibration_label(self.calibrate)

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
    :class:`pcmjax.ChipConfig` of the variant and its calibration (``False``, ``True``
    or ``"readout"``, as :class:`Variant`)."""

    name: str
    config: ChipConfig
    calibrate: bool | str = False

    @property
    def readout(self) -> bool:
        """Whether the variant adds the read-out refit to the per-column calibration."""
        return self.calibrate == "readout"


DEFAULT_VARIANTS = (
    Variant("none", {"drift_compensation": "none"}),
    Variant("gdc", {"drift_compensation": "global"}),
    Variant("calibrated", {"drift_compensation": "global"}, calibrate=True),
)
