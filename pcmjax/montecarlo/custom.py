"""Networks of your own in studies: a factory, its weights, its data.

A study file names the network by the function that builds it::

    [workload]
    model = "mypackage.nets:make_model"     # or "nets.py:make_model", relative to the study file
    model_args = { hidden = 256 }           # keyword arguments of the factory
    checkpoint = "params.npz"               # its weights
    dataset = "data.npz"                    # x and y, or token sequences x alone
    # exclude = ["head"]                    # layers kept digital (pcmjax.nn.convert)

The factory returns a Flax NNX module. If it holds no analog layer it is converted with
:func:`pcmjax.nn.convert` (every ``nnx.Linear``, ``Conv``, ``LinearGeneral``, ``Einsum``
and recurrent cell becomes analog). Its weights are then loaded from the checkpoint: a
file :func:`pcmjax.montecarlo.save_network` wrote for any module, or a plain ``.npz``
whose arrays are named by their path in the module (``layers/0/kernel``, or with dots).
Every parameter (and batch statistic) of the module must be in the file with its shape,
and nothing else may be; input ranges (``input_scale``, saved from a converted,
hardware-aware-trained model) are taken when present and otherwise measured on the
calibration inputs: the data set's first examples.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pcmjax.montecarlo.checkpoints import CHECKPOINT_FORMAT
from pcmjax.nn.convert import convert, measure_input_ranges
from pcmjax.nn.layers import InputScale, analog_layers

_LIST_MAX = 12  # names listed per kind of mismatch


def import_factory(spec: str, base: Path = Path(".")):
    """The function named by ``"package.module:factory"`` or ``"file.py:factory"``.

    Args:
      spec: ``module:function`` (``function`` may be dotted, e.g. ``Net.create``); a module
        ending in ``.py`` is a file, relative to ``base`` unless absolute.
      base: folder relative files are found in (the study file's).

    Raises:
      ValueError: the spec is malformed, the module cannot be imported or lacks the name,
        or the name is not callable (the message says which and why).
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"[workload] model must be 'package.module:factory' or 'file.py:factory', got {spec!r}.")
    module_name, attr = spec.split(":")
    try:
        module = _import(module_name, base)
    except Exception as e:  # noqa: BLE001 - any failure while importing the user's module is reported
        raise ValueError(f"[workload] model {spec!r}: cannot import {module_name!r}: {type(e).__name__}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ValueError(f"[workload] model {spec!r}: module {module_name!r} has no {attr!r}; its callables: "
                             f"{names}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"[workload] model {spec!r}: {attr!r} is a {type(obj).__name__}, not a function.")
    return obj


def _import(module_name: str, base: Path):
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise FileNotFoundError(f"no file {str(path)!r}")
        name = f"_pcmjax_factory_{path.stem}_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    return importlib.import_module(module_name)


def build_model(spec: str, kwargs: dict | None = None, base: Path = Path(".")) -> nnx.Module:
    """``factory(**kwargs)`` of :func:`import_factory`, checked to be an ``nnx.Module``."""
    factory = import_factory(spec, base)
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"[workload] model_args must be a table of the factory's keyword arguments, got {kwargs!r}.")
    try:
        model = factory(**(kwargs or {}))
    except Exception as e:  # noqa: BLE001 - the user's factory failed: say so, with its message
        raise ValueError(f"[workload] model {spec!r} with model_args {kwargs or {}}: the factory raised "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(model, nnx.Module):
        raise ValueError(f"[workload] model {spec!r} returned a {type(model).__name__}, not a flax.nnx.Module.")
    return model


def _read_arrays(path: Path) -> dict:
    """Name → array of a checkpoint: ``save_network``'s ``param/`` entries or a plain ``.npz``."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint {str(path)!r} is not a readable .npz file ({e}).") from e
    if "header" in arrays:
        if CHECKPOINT_FORMAT not in str(arrays["header"]):
            raise ValueError(f"checkpoint {str(path)!r}: its header is not a {CHECKPOINT_FORMAT!r} header.")
        return {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    return {k.replace(".", "/"): v for k, v in arrays.items()}


def _listing(items) -> str:
    items = list(items)
    more = f" ... and {len(items) - _LIST_MAX} more" if len(items) > _LIST_MAX else ""
    return ", ".join(items[:_LIST_MAX]) + more


def load_params(model: nnx.Module, path) -> nnx.Module:
    """Load a checkpoint's arrays into ``model`` in place (see the module docstring).

    Args:
      model: the module built by the factory (converted if it had no analog layer).
      path: a :func:`pcmjax.montecarlo.save_network` file or a plain ``.npz`` of arrays
        named by their path in the module.

    Returns:
      ``model``.

    Raises:
      ValueError: the file's arrays do not match the module's parameters; the message
        lists the missing, unexpected and mis-shaped names with their shapes.
    """
    path = Path(path)
    arrays = _read_arrays(path)
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
    want = {"/".join(map(str, p)): v for p, v in flat}
    optional = {n for n, v in want.items() if isinstance(v, InputScale)}
    missing = [f"{n} {tuple(v.get_value().shape)}" for n, v in want.items() if n not in arrays and n not in optional]
    unexpected = [f"{n} {tuple(a.shape)}" for n, a in arrays.items() if n not in want]
    shapes = [f"{n}: file {tuple(arrays[n].shape)}, model {tuple(v.get_value().shape)}" for n, v in want.items()
              if n in arrays and tuple(arrays[n].shape) != tuple(v.get_value().shape)]
    bad_dtype = [f"{n} ({arrays[n].dtype})" for n in want if n in arrays and not np.issubdtype(arrays[n].dtype,
                                                                                               np.number)]
    if missing or unexpected or shapes or bad_dtype:
        parts = [f"{label}: {_listing(v)}" for label, v in (("missing", missing), ("unexpected", unexpected),
                                                             ("wrong shape", shapes), ("not numeric", bad_dtype)) if v]
        expected = _listing(f"{n} {tuple(v.get_value().shape)}" for n, v in want.items())
        raise ValueError(f"checkpoint {str(path)!r} does not match the model's parameters; " + "; ".join(parts)
                         + f". The model's parameters are: {expected}.")
    for name, v in want.items():
        if name in arrays:
            v.set_value(jnp.asarray(arrays[name], v.get_value().dtype))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def prepare_network(model: nnx.Module, checkpoint, x_sample, *, exclude=None) -> nnx.Module:
    """The study's analog network: ``model`` converted (if it has no analog layer), its
    weights loaded from ``checkpoint``, input ranges measured on ``x_sample`` unless the
    checkpoint held them.

    Args:
      model: the factory's module.
      checkpoint: path of its weights (see :func:`load_params`).
      x_sample: inputs as ``model`` takes them (the data set's first examples).
      exclude: layers to keep digital (see :func:`pcmjax.nn.convert`).
    """
    if not analog_layers(model):
        model = convert(model, exclude=exclude)
    elif exclude is not None:
        raise ValueError("[workload] exclude applies to a model that is converted here; this factory's model "
                         "already has analog layers.")
    load_params(model, checkpoint)
    if any(float(layer.input_scale[...]) <= 0 for _, layer in analog_layers(model)):
        measure_input_ranges(model, jnp.asarray(x_sample))
    return model


__all__ = ["import_factory", "build_model", "load_params", "prepare_network"]
