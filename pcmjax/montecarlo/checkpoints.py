"""Network checkpoints: build a network from its description, save and load it, fingerprint
its parameters, and the default study's network (a digits MLP, trained once and cached).

A checkpoint is one ``.npz`` file: a JSON header (format, architecture, extras such as
the training accuracy) and every parameter, batch statistic and random-number state of
the ``nnx`` module, under its path in the module (``param/layers/0/kernel``). Any
module can be saved: without an architecture description (a network of your own), the
module is rebuilt by your factory and the file's arrays are loaded into it with
:func:`pcmjax.montecarlo.custom.load_params`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pcmjax import nn as pnn
from pcmjax.data import load_digits
from pcmjax.montecarlo._cache import cache_dir
from pcmjax.montecarlo.store import atomic_write_bytes

CHECKPOINT_FORMAT = "pcmjax.network/1"
ARCHITECTURES = ("mlp", "small_cnn")


def build_network(architecture: dict, seed: int = 0):
    """A fresh (untrained) network from an architecture description.

    ``{"kind": "mlp", "in_features": 64, "hidden": [256, 256], "out_features": 10}`` or
    ``{"kind": "small_cnn", "in_features": 1, "channels": [16, 32, 64], "num_classes": 10,
    "image_size": 8}``.
    """
    if not isinstance(architecture, dict) or architecture.get("kind") not in ARCHITECTURES:
        kind = architecture.get("kind") if isinstance(architecture, dict) else architecture
        raise ValueError(f"network architecture 'kind' must be one of {list(ARCHITECTURES)}, got {kind!r}.")
    a = dict(architecture)
    kind = a.pop("kind")
    rngs = nnx.Rngs(seed)
    try:
        if kind == "mlp":
            return pnn.MLP(int(a.pop("in_features", 64)), tuple(a.pop("hidden", (256, 256))),
                           int(a.pop("out_features", 10)), rngs=rngs, **a)
        return pnn.SmallCNN(int(a.pop("in_features", 1)), tuple(a.pop("channels", (16, 32, 64))),
                            int(a.pop("num_classes", 10)), int(a.pop("image_size", 8)), rngs=rngs, **a)
    except TypeError as e:
        raise ValueError(f"network architecture {architecture!r}: {e}") from e


def _flat_state(model):
    return nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))


def save_network(path, model, architecture: dict | None = None, **info) -> Path:
    """Write a network checkpoint (``.npz``): architecture, parameters and statistics.

    Args:
      path: file to write.
      model: the network: any ``nnx.Module`` (its ``nnx.Param`` and ``nnx.BatchStat``
        variables, including analog layers' input ranges, are stored).
      architecture: for a network made by :func:`build_network`, its description, so
        :func:`load_network` can rebuild it; ``None`` for any other module (a study
        rebuilds it with its ``[workload] model`` factory).
      **info: JSON-able extras stored with it (training accuracy, ...).

    Returns:
      the path written.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}.")
    if architecture is not None and not isinstance(architecture, dict):
        raise TypeError(f"architecture must be a dict (see build_network) or None, got {architecture!r}.")
    arrays = {"param/" + "/".join(map(str, p)): np.asarray(v.get_value()) for p, v in _flat_state(model)}
    for p, v in nnx.to_flat_state(nnx.state(model, nnx.RngState)):
        value = v.get_value()
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            arrays["rngkey/" + "/".join(map(str, p))] = np.asarray(jax.random.key_data(value))
        else:
            arrays["rng/" + "/".join(map(str, p))] = np.asarray(value)
    header = {"format": CHECKPOINT_FORMAT, "architecture": architecture, "info": info}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda f: np.savez(f, header=np.asarray(json.dumps(header)), **arrays))
    return path


def load_network(path):
    """``(model, architecture, info)`` from a checkpoint written by :func:`save_network`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"network checkpoint {str(path)!r} does not exist.")
    try:
        with np.load(path) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: z[k] for k in z.files if k != "header"}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{str(path)!r} is not a pcmjax network checkpoint ({e}).") from e
    if header.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r}: checkpoint format must be {CHECKPOINT_FORMAT!r}, "
                         f"got {header.get('format')!r}.")
    if header.get("architecture") is None:
        raise ValueError(f"{str(path)!r} holds a network of your own (saved without an architecture): rebuild it "
                         "with its factory and load the weights with pcmjax.montecarlo.custom.load_params(model, "
                         "path), or name the factory in a study file ([workload] model = \"module:factory\").")
    # Build the network abstractly (no initialiser runs) and fill in the stored values.
    model = nnx.eval_shape(lambda: build_network(header["architecture"]))
    state = nnx.state(model)
    flat = nnx.to_flat_state(state)
    for p, v in flat:
        key = "/".join(map(str, p))
        want = v.get_value()
        if isinstance(v, nnx.RngState):
            if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
                data = arrays.get(f"rngkey/{key}")
                value = jax.random.wrap_key_data(np.asarray(data if data is not None else [0, 0], np.uint32))
            else:
                value = jnp.asarray(arrays.get(f"rng/{key}", np.zeros(want.shape, want.dtype)))
        else:
            if f"param/{key}" not in arrays:
                raise ValueError(f"{str(path)!r}: checkpoint lacks parameter {key!r} of its architecture.")
            value = arrays[f"param/{key}"]
            if value.shape != tuple(want.shape):
                raise ValueError(f"{str(path)!r}: parameter {key!r} has shape {value.shape}, the architecture "
                                 f"needs {tuple(want.shape)}.")
            value = jnp.asarray(value, want.dtype)
        v.set_value(value)
    nnx.update(model, nnx.from_flat_state(flat))
    return model, header["architecture"], header.get("info", {})


DEFAULT_ARCHITECTURE = {"kind": "mlp", "in_features": 64, "hidden": [256, 256], "out_features": 10}
DEFAULT_TRAINING = {"mode": "hwa", "epochs": 30, "batch_size": 64, "learning_rate": 3e-3, "seed": 0}


def default_network_path() -> Path:
    # v2: example order and HWA noise drawn from jax.random keys (pcmjax.nn.train(key, ...)).
    return cache_dir() / "networks" / "digits-mlp-64-256-256-10-hwa-v2.npz"


def default_network(path=None, *, log=print):
    """The default study's network: a digits MLP 64-256-256-10, hardware-aware trained
    on first use (about ten seconds) and cached (:func:`cache_dir`).

    Returns:
      ``(model, path)``.
    """
    path = Path(path) if path is not None else default_network_path()
    if path.exists():
        model, _, _ = load_network(path)
        return model, path
    ds = load_digits()
    model = build_network(DEFAULT_ARCHITECTURE, seed=DEFAULT_TRAINING["seed"])
    if log:
        log(f"training the default digits MLP (first use; cached in {path}) ...")
    hist = pnn.train(jax.random.key(DEFAULT_TRAINING["seed"]), model, ds.x_train, ds.y_train,
                     mode=DEFAULT_TRAINING["mode"], epochs=DEFAULT_TRAINING["epochs"],
                     batch_size=DEFAULT_TRAINING["batch_size"], learning_rate=DEFAULT_TRAINING["learning_rate"])
    acc = pnn.accuracy(model, ds.x_test, ds.y_test, mode="digital")
    if log:
        log(f"  trained in {hist['seconds']:.1f} s; digital test accuracy {100 * acc:.2f} %")
    save_network(path, model, DEFAULT_ARCHITECTURE, dataset="digits", test_accuracy=acc,
                 training=DEFAULT_TRAINING)
    return model, path


def params_fingerprint(model) -> str:
    """A short SHA-256 of a network's parameters and statistics (the ``params_sha256`` of
    a network study's spec, so a study folder can be matched to its network)."""
    return array_fingerprint(*(v.get_value() for _, v in _flat_state(model)))


def array_fingerprint(*arrays) -> str:
    """A short SHA-256 of arrays: their dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
