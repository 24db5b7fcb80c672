"""Save and load device models as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pcmjax._validate import check_instance
from pcmjax.devices._base import DeviceModel
from pcmjax.devices._flexible import Flexible
from pcmjax.devices._models import HermesPCM, PCMLike, StateIndependent

FORMAT = "pcmjax.device_model/1"

FAMILIES = {cls.family: cls for cls in (HermesPCM, PCMLike, StateIndependent, Flexible)}


def to_dict(model: DeviceModel) -> dict:
    """A JSON-ready description of a device model (family, static options, parameters)."""
    check_instance("model", model, DeviceModel)
    params = {k: _compact(v) for k, v in model.params().items()}
    out = {"format": FORMAT, "family": model.family, "num_devices": model.num_devices,
           "q_s_from": model.q_s_from, "params": params}
    extra = getattr(model, "static_options", None)
    if extra:
        out.update(extra())
    return out


def from_dict(d: dict) -> DeviceModel:
    """Rebuild a device model from :func:`to_dict` output (clear errors for bad input)."""
    check_instance("a device-model description", d, dict)
    family = d.get("family")
    if family not in FAMILIES:
        raise ValueError(f"device model 'family' must be one of {sorted(FAMILIES)}, got {family!r}.")
    if d.get("format", FORMAT) != FORMAT:
        raise ValueError(f"device model 'format' must be {FORMAT!r}, got {d.get('format')!r}.")
    params = d.get("params", {})
    if not isinstance(params, dict):
        raise TypeError(f"device model 'params' must be a mapping, got {type(params).__name__}.")
    cls = FAMILIES[family]
    kwargs = {k: v for k, v in d.items() if k not in ("format", "family", "params")}
    return cls(**kwargs, **params)


def _compact(v):
    """A JSON-ready list/float; float32 values as their shortest round-tripping decimals
    (``0.06`` rather than ``0.05999999865889549``), so the file stays readable."""
    arr = np.asarray(v)
    if arr.dtype != np.float32:
        return arr.tolist()
    flat = [float(np.format_float_positional(x, unique=True, trim="-")) for x in arr.reshape(-1)]
    return np.asarray(flat).reshape(arr.shape).tolist()


def save(model: DeviceModel, path) -> Path:
    """Write ``model`` as JSON to ``path``; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(to_dict(model), indent=2) + "\n")
    return path


def load(path) -> DeviceModel:
    """Read a device model written by :func:`save` (or by ``pcmjax fit``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"device model file {str(path)!r} does not exist.")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"device model file {str(path)!r} is not valid JSON: {e}") from e
    return from_dict(d)
