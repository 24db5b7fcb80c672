"""Save and load device models as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pcmjax.devices._base import DeviceModel

FORMAT = "pcmjax.device_model/1"


def _families():
    from pcmjax.devices import _models

    families = {cls.family: cls for cls in (_models.HermesPCM, _models.PCMLike, _models.StateIndependent)}
    try:
        from pcmjax.devices import _flexible

        families[_flexible.Flexible.family] = _flexible.Flexible
    except ImportError:  # pragma: no cover - optional family
        pass
    return families


def to_dict(model: DeviceModel) -> dict:
    """A JSON-ready description of a device model (family, static options, parameters)."""
    if not isinstance(model, DeviceModel):
        raise TypeError(f"model must be a pcmjax device model, got {type(model).__name__}.")
    params = {k: _compact(v) for k, v in model.params().items()}
    out = {"format": FORMAT, "family": model.family, "num_devices": model.num_devices,
           "q_s_from": model.q_s_from, "params": params}
    extra = getattr(model, "static_options", None)
    if extra:
        out.update(extra())
    return out


def from_dict(d: dict) -> DeviceModel:
    """Rebuild a device model from :func:`to_dict` output (clear errors for bad input)."""
    if not isinstance(d, dict):
        raise TypeError(f"a device-model description must be a dict, got {type(d).__name__}.")
    families = _families()
    family = d.get("family")
    if family not in families:
        raise ValueError(f"device model 'family' must be one of {sorted(families)}, got {family!r}.")
    if d.get("format", FORMAT) != FORMAT:
        raise ValueError(f"device model 'format' must be {FORMAT!r}, got {d.get('format')!r}.")
    params = d.get("params", {})
    if not isinstance(params, dict):
        raise TypeError(f"device model 'params' must be a mapping, got {type(params).__name__}.")
    cls = families[family]
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
