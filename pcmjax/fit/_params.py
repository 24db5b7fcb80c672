"""Which device-model fields a fit estimates, and the flat parameter vectors of each stage.

A fit estimates the entries of the family's law fields (the HERMES thresholds and every
time, g_max and scale factor are held fixed); each entry belongs to one stage of the
likelihood: programming (σ_prog), drift (μ_ν, σ_ν) or read noise (Q_s). Entries that the
data cannot inform (zero score on every device, e.g. a clip bound no device reaches) are
found numerically and held at their starting values.
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pcmjax._validate import check_instance
from pcmjax.devices import DeviceModel, Flexible, HermesPCM, PCMLike, StateIndependent

STAGES = ("noise", "drift", "prog")
FAMILIES = ("hermes", "pcm_like", "state_independent", "flexible")

_HERMES_FREE = (0, 1, 5, 6, 7, 8)  # log-segment and cubic coefficients (clip bounds, threshold held)

# family -> (field, stage, free indices or None for all entries)
SPECS = {
    "hermes": (("q_s_law", "noise", _HERMES_FREE), ("mu_nu", "drift", _HERMES_FREE),
               ("sigma_nu", "drift", _HERMES_FREE), ("prog_coeffs", "prog", None)),
    "pcm_like": (("q_s_law", "noise", None), ("mu_nu", "drift", None), ("sigma_nu", "drift", None),
                 ("prog_coeffs", "prog", None)),
    "state_independent": (("q_s_const", "noise", None), ("mu_nu", "drift", None), ("sigma_nu", "drift", None),
                          ("sigma_prog", "prog", None)),
    "flexible": (("q_s_law", "noise", None), ("mu_nu", "drift", None), ("sigma_nu", "drift", None),
                 ("prog_coeffs", "prog", None)),
}

# Clip bounds of the PCM-like laws and a value that takes each out of play. A bound is
# identified only if the data need it: moving it there must raise the NLL by at least
# BOUND_DNLL (−2ΔlogL = 4, about two standard errors); otherwise only a one-sided limit is known.
CLIP_BOUNDS = {"pcm_like": {("mu_nu", 2): -1e3, ("mu_nu", 3): 1e3, ("sigma_nu", 2): -1e3, ("sigma_nu", 3): 1e3,
                            ("q_s_law", 2): 1e3}}
BOUND_DNLL = 2.0

CLASSES = {"hermes": HermesPCM, "pcm_like": PCMLike, "state_independent": StateIndependent, "flexible": Flexible}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One scalar parameter: ``field[index]`` (index None for a scalar field)."""

    field: str
    index: int | None
    stage: str

    @property
    def name(self) -> str:
        return self.field if self.index is None else f"{self.field}[{self.index}]"


def entries_for(model: DeviceModel, spec=None) -> list[Entry]:
    """All candidate free entries of ``model`` in stage order (noise, drift, prog)."""
    spec = SPECS[model.family] if spec is None else spec
    out = []
    for stage in STAGES:
        for field, st, idx in spec:
            if st != stage:
                continue
            arr = np.asarray(getattr(model, field))
            if arr.ndim == 0:
                out.append(Entry(field, None, stage))
            else:
                for i in range(arr.shape[0]) if idx is None else idx:
                    out.append(Entry(field, int(i), stage))
    return out


def values_of(model: DeviceModel, entries) -> np.ndarray:
    vals = []
    for e in entries:
        arr = np.asarray(getattr(model, e.field), np.float64)
        vals.append(arr if e.index is None else arr[e.index])
    return np.asarray(vals, np.float64)


def as_float64(model: DeviceModel) -> DeviceModel:
    """A copy whose float leaves are float64 NumPy arrays (use inside ``jax.enable_x64``)."""
    out = copy.copy(model)
    for name, v in model.params().items():
        object.__setattr__(out, name, np.asarray(v, np.float64))
    return out


def with_values(model: DeviceModel, entries, theta) -> DeviceModel:
    """``model`` with the given entries replaced by ``theta`` (traceable; no validation).

    Concrete values are set with NumPy (no JAX dispatch). Traced ones make each field
    ``held · keep + M @ theta`` with constant 0/1 arrays ``keep`` and ``M``: one matmul
    per field, cheap to compile and to differentiate.
    """
    out = copy.copy(model)
    traced = isinstance(theta, jax.core.Tracer)
    if not traced:
        theta = np.asarray(theta, np.float64)
    by_field: dict = {}
    for k, e in enumerate(entries):
        by_field.setdefault(e.field, []).append((k, e.index))
    for name, items in by_field.items():
        cur = getattr(model, name)
        if not traced and not isinstance(cur, jax.core.Tracer):
            arr = np.array(cur, np.float64)
            if arr.ndim == 0:
                arr = np.asarray(theta[items[0][0]])
            else:
                for k, i in items:
                    arr[i] = theta[k]
            object.__setattr__(out, name, arr)
            continue
        held = jnp.asarray(cur, theta.dtype)
        if held.ndim == 0:
            (k, _), = items
            object.__setattr__(out, name, theta[k])
            continue
        keep = np.ones(held.shape[0])
        M = np.zeros((held.shape[0], theta.shape[0]))
        for k, i in items:
            keep[i], M[i, k] = 0.0, 1.0
        object.__setattr__(out, name, held * jnp.asarray(keep, theta.dtype) + jnp.asarray(M, theta.dtype) @ theta)
    return out


def finalize(model: DeviceModel) -> DeviceModel:
    """Rebuild through the family's constructor (float32 leaves, validated)."""
    cls = type(model)
    params = {k: np.asarray(v, np.float64) for k, v in model.params().items()}
    kwargs = dict(num_devices=model.num_devices, q_s_from=model.q_s_from)
    if hasattr(model, "static_options"):
        kwargs.update(model.static_options())
    return cls(**kwargs, **params)


def template(family: str, num_devices: int, q_s_from: str, basis: str = "poly", degree: int = 3,
             g_max=None, t0=None, t_read=None, init: DeviceModel | None = None) -> DeviceModel:
    """The starting model of a fit: ``init`` if given, else the family's published values."""
    if init is not None:
        check_instance("init", init, DeviceModel)
        if init.family != family:
            raise ValueError(f"init is a {init.family!r} model but family={family!r}.")
        model = init
    elif family == "flexible":
        n = degree + 1
        if basis == "spline" and n < 4:
            raise ValueError(f"a spline needs degree >= 3 (>= 4 coefficients), got degree={degree}.")
        const = lambda c: (c,) + (0.0,) * (n - 1) if basis == "poly" else (c,) * n  # noqa: E731
        model = Flexible(num_devices, basis=basis, q_s_from=q_s_from, prog_coeffs=const(0.5),
                         mu_nu=const(0.06), sigma_nu=const(0.02), q_s_law=const(0.02))
    else:
        model = CLASSES[family](num_devices=num_devices, q_s_from=q_s_from)
    changes = {k: v for k, v in (("g_max", g_max), ("t0", t0), ("t_read", t_read)) if v is not None}
    if family == "hermes" and g_max is not None:
        changes["g_max_char"] = g_max  # fitted σ_prog coefficients are absolute at this g_max
    if changes:
        model = finalize(with_values(model, [Entry(k, None, "") for k in changes], list(changes.values())))
    return model
