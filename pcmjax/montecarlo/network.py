"""The network workload: a Flax network deployed on each chip instance, and checkpoints.

Built on :mod:`pcmjax.nn`: :func:`pcmjax.nn.plan` / :func:`pcmjax.nn.deploy` give the
tile layout and the pure forward pass (``DeployedModel.apply``); every chip instance
programs the network's tiles from its own key, ages to ``t`` and runs the evaluation
set. Metrics: ``accuracy``, ``loss`` (mean cross-entropy) and, per analog layer,
``layer_error/<layer>``: the relative error ``‖y_chip − y_digital‖ / ‖y_digital‖`` of the
layer's output (before its activation) on the evaluation set, with the chip's errors
accumulated through the preceding layers, as the network experiences them.

Calibration (variants with ``calibrate = true``) sets the digital units' per-column
``γ'``, ``β'`` of each layer at time ``t`` from a small unlabelled calibration set:

* ``"lstsq"`` (default): layer after layer, a per-column least-squares fit of the
  chip's layer output to the digital one, each layer seeing the already calibrated
  earlier layers. Closed form, a few forward passes: cheap enough for thousands of
  instances.
* ``"gradient"``: :func:`pcmjax.nn.make_calibrator` (Adam through the simulated chip,
  also learning input ranges); more accurate, about ``steps`` times the cost.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pcmjax.config import ChipConfig
from pcmjax.chip.state import program_chip
from pcmjax.montecarlo.workloads import Workload, fit_column_affine, relative_error, state_conductances

CHECKPOINT_FORMAT = "pcmjax.network/1"
CALIBRATION_METHODS = ("lstsq", "gradient")
DATASETS = ("digits", "cifar10")
ARCHITECTURES = ("mlp", "small_cnn")


def _nn():
    try:
        from pcmjax import nn as pnn
    except ImportError as e:  # pragma: no cover - nn is part of the package
        raise NotImplementedError(f"the network workload needs pcmjax.nn ({e}).") from e
    return pnn


# -- checkpoints -------------------------------------------------------------------
def build_network(architecture: dict, seed: int = 0):
    """A fresh (untrained) network from an architecture description.

    ``{"kind": "mlp", "in_features": 64, "hidden": [256, 256], "out_features": 10}`` or
    ``{"kind": "small_cnn", "in_features": 1, "channels": [16, 32, 64], "num_classes": 10,
    "image_size": 8}``.
    """
    from flax import nnx

    pnn = _nn()
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
    from flax import nnx

    return nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))


def save_network(path, model, architecture: dict, **info) -> Path:
    """Write a network checkpoint (``.npz``): architecture, parameters and statistics.

    Args:
      path: file to write.
      model: the network (an ``nnx.Module`` made by :func:`build_network` from
        ``architecture``).
      architecture: its description (see :func:`build_network`).
      **info: JSON-able extras stored with it (training accuracy, ...).
    """
    from pcmjax.montecarlo.store import atomic_write_bytes

    from flax import nnx

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
    from flax import nnx

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


def cache_dir() -> Path:
    """``$PCMJAX_CACHE``, else ``$XDG_CACHE_HOME/pcmjax``, else ``~/.cache/pcmjax``."""
    if os.environ.get("PCMJAX_CACHE"):
        return Path(os.environ["PCMJAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "pcmjax"


DEFAULT_ARCHITECTURE = {"kind": "mlp", "in_features": 64, "hidden": [256, 256], "out_features": 10}
DEFAULT_TRAINING = {"mode": "hwa", "epochs": 30, "batch_size": 64, "learning_rate": 3e-3, "seed": 0}


def default_network_path() -> Path:
    return cache_dir() / "networks" / "digits-mlp-64-256-256-10-hwa-v1.npz"


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
    pnn = _nn()
    from pcmjax.data import load_digits

    ds = load_digits()
    model = build_network(DEFAULT_ARCHITECTURE, seed=DEFAULT_TRAINING["seed"])
    if log:
        log(f"training the default digits MLP (first use; cached in {path}) ...")
    hist = pnn.train(model, ds.x_train, ds.y_train, mode=DEFAULT_TRAINING["mode"],
                     epochs=DEFAULT_TRAINING["epochs"], batch_size=DEFAULT_TRAINING["batch_size"],
                     learning_rate=DEFAULT_TRAINING["learning_rate"], seed=DEFAULT_TRAINING["seed"])
    acc = pnn.accuracy(model, ds.x_test, ds.y_test, mode="digital")
    if log:
        log(f"  trained in {hist['seconds']:.1f} s; digital test accuracy {100 * acc:.2f} %")
    save_network(path, model, DEFAULT_ARCHITECTURE, dataset="digits", test_accuracy=acc,
                 training=DEFAULT_TRAINING)
    return model, path


def load_dataset(name: str, data_dir=None, eval_examples=None, calibration_examples=128, input_shape=None):
    """``(x_eval, y_eval, x_cal)``: the test split and the first calibration examples of
    the training split (``"digits"``, or ``"cifar10"`` from ``data_dir``)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {name!r}.")
    from pcmjax import data as pdata

    if name == "digits":
        as_images = input_shape is not None and len(input_shape) == 3
        ds = _cached_digits(as_images)
    else:
        ds = pdata.load_cifar10(data_dir, normalize=True)
    n_eval = ds.x_test.shape[0] if eval_examples is None else min(int(eval_examples), ds.x_test.shape[0])
    n_cal = min(int(calibration_examples), ds.x_train.shape[0])
    return ds.x_test[:n_eval], ds.y_test[:n_eval], ds.x_train[:n_cal]


def _cached_digits(as_images: bool):
    """The digits split of :func:`pcmjax.data.load_digits`, cached as ``.npz`` (importing
    scikit-learn takes seconds; the split is deterministic)."""
    from pcmjax import data as pdata
    from pcmjax.montecarlo.store import atomic_write_bytes

    path = cache_dir() / "datasets" / f"digits-split0-test0.25{'-images' if as_images else ''}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return pdata.Dataset(z["x_train"], z["y_train"], z["x_test"], z["y_test"], int(z["num_classes"]),
                                     tuple(int(d) for d in z["input_shape"]))
        except (OSError, ValueError, KeyError):
            pass  # unreadable: rebuild it
    ds = pdata.load_digits(as_images=as_images)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, lambda f: np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                                                    y_test=ds.y_test, num_classes=ds.num_classes,
                                                    input_shape=np.asarray(ds.input_shape)))
    except OSError:  # a read-only cache: fine, just slower next time
        pass
    return ds


def params_fingerprint(model) -> str:
    """A short SHA-256 of a network's parameters and statistics (the ``params_sha256`` of
    a network study's spec, so a study folder can be matched to its network)."""
    return _sha(*(v.get_value() for _, v in _flat_state(model)))


def _sha(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# -- the workload --------------------------------------------------------------------
class NetworkWorkload(Workload):
    """A trained network deployed on each chip instance.

    Args:
      model: an ``nnx.Module`` with :class:`pcmjax.nn.AnalogLinear` / ``AnalogConv`` layers.
      x_eval, y_eval: evaluation inputs and integer labels.
      x_cal: unlabelled calibration inputs (for calibrated variants; default: the first
        128 evaluation inputs).
      calibration: ``"lstsq"`` or ``"gradient"`` (see the module docstring).
      calibration_steps: optimiser steps of ``"gradient"`` calibration.
      n_chips: chips the network may span.
      description: a label (e.g. the checkpoint and data set) for logs.
      spec_extra: JSON-able facts about the network/data for the study hash (the
        parameters and data are hashed in any case).
    """

    kind = "network"

    def __init__(self, model, x_eval, y_eval, x_cal=None, *, calibration: str = "lstsq",
                 calibration_steps: int = 200, n_chips: int = 1, description: str = "network",
                 spec_extra: dict | None = None):
        pnn = _nn()
        if not pnn.analog_layers(model):
            raise ValueError("the network has no analog layers (pcmjax.nn.AnalogLinear / AnalogConv) to deploy.")
        if calibration not in CALIBRATION_METHODS:
            raise ValueError(f"calibration must be one of {list(CALIBRATION_METHODS)}, got {calibration!r}.")
        x_eval = np.asarray(x_eval, np.float32)
        y_eval = np.asarray(y_eval, np.int32)
        if x_eval.shape[0] != y_eval.shape[0] or x_eval.shape[0] < 1:
            raise ValueError(f"x_eval and y_eval must hold the same number (>= 1) of examples, got "
                             f"{x_eval.shape[0]} and {y_eval.shape[0]}.")
        self.model, self.x_eval, self.y_eval = model, x_eval, y_eval
        self.x_cal = x_eval[:128] if x_cal is None else np.asarray(x_cal, np.float32)
        self.calibration, self.calibration_steps = calibration, int(calibration_steps)
        self.n_chips, self.description, self.spec_extra = int(n_chips), description, dict(spec_extra or {})
        self._template = None
        self._geometry = None
        self._data = None
        self._calibrator = None

    # -- setup -------------------------------------------------------------------
    def check_config(self, cfg: ChipConfig) -> None:
        geometry = (cfg.n_cores, cfg.rows, cfg.cols)
        if self._geometry is None:
            layout = _nn().plan(self.model, cfg, self.n_chips)  # raises if the network does not fit
            self._geometry, self._layout_cfg = geometry, cfg
            self._layout = layout
        elif geometry != self._geometry:
            raise ValueError(f"every variant must keep the chip geometry (n_cores, rows, cols) = {self._geometry} "
                             f"the network was placed on, got {geometry}.")

    def _deployed(self):
        """A deployed model used as a template (layout, graph, tiles); its own chip state is
        never used (every instance programs its own), so it is not programmed."""
        if self._template is None:
            if self._geometry is None:
                self.check_config(ChipConfig())
            self._template = _nn().deploy(self.model, jax.random.key(0), self._layout_cfg, n_chips=self.n_chips,
                                          program=False)
        return self._template

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Paths of the analog layers, in chip order (as :func:`pcmjax.nn.plan` names them)."""
        return tuple("/".join(str(p) for p in path) or "<root>" for path, _ in _nn().analog_layers(self.model))

    def _layer_shapes(self):
        return [tuple(int(d) for d in layer.matrix().shape) for _, layer in _nn().analog_layers(self.model)]

    def metric_names(self):
        return ("accuracy", "loss", *(f"layer_error/{n}" for n in self.layer_names))

    def data(self):
        if self._data is None:
            dep = self._deployed()
            n_eval = self.x_eval.shape[0]
            _, ref_all = dep.reference(jnp.asarray(np.concatenate([self.x_eval, self.x_cal])), record=True)
            ref = {i: r[:n_eval] for i, r in ref_all.items()}
            ref_cal = {i: r[n_eval:] for i, r in ref_all.items()}
            n = len(dep.layout.layers)
            biases = []
            for _, layer in _nn().analog_layers(self.model):  # chip_index order
                b = getattr(layer, "bias", None)
                biases.append(jnp.zeros((layer.matrix().shape[1],), jnp.float32) if b is None or not layer.use_bias
                              else jnp.asarray(b[...], jnp.float32))
            self._data = {"params": dep.params, "weights": dep.weights, "x": jnp.asarray(self.x_eval),
                          "y": jnp.asarray(self.y_eval), "ref": tuple(ref[i] for i in range(n)),
                          "x_cal": jnp.asarray(self.x_cal), "ref_cal": tuple(ref_cal[i] for i in range(n)),
                          "bias": tuple(biases)}
        return self._data

    # -- evaluation -----------------------------------------------------------------
    def _program(self, data, device, key, variant):
        dep = self._deployed()
        cfg = variant.config.replace(n_cores=dep.config.n_cores)
        k_prog, k_age, k_read, k_cal = jax.random.split(key, 4)
        return program_chip(k_prog, data["weights"], cfg, device), k_age, k_read, k_cal

    def _lstsq(self, dep, state, key, data):
        pnn = _nn()
        cal = pnn.identity_calibration(dep.layout)
        gammas, betas = list(cal["gamma"]), list(cal["beta"])
        for i in range(len(dep.layout.layers)):
            _, outs = dep.apply(state, dict(cal, gamma=tuple(gammas), beta=tuple(betas)),
                                jax.random.fold_in(key, i), data["x_cal"], record=True)
            cols = outs[i].shape[-1]
            a, c = fit_column_affine(outs[i].reshape(-1, cols), data["ref_cal"][i].reshape(-1, cols), axis=0)
            gammas[i] = a[0]
            betas[i] = c[0] + (a[0] - 1.0) * data["bias"][i]
        return dict(cal, gamma=tuple(gammas), beta=tuple(betas))

    def _gradient(self, dep, state, key):
        if self._calibrator is None:
            self._calibrator = _nn().make_calibrator(dep, self.x_cal, steps=self.calibration_steps)
        cal, _ = self._calibrator(state, key)
        return cal

    def evaluate(self, data, device, key, t, variant):
        import optax

        pnn = _nn()
        dep = self._deployed().replace(params=data["params"], weights=data["weights"])
        state, k_age, k_read, k_cal = self._program(data, device, key, variant)
        st = state.at_time(k_age, t)
        if not variant.calibrate:
            cal = pnn.identity_calibration(dep.layout)
        elif self.calibration == "lstsq":
            cal = self._lstsq(dep, st, k_cal, data)
        else:
            cal = self._gradient(dep, st, k_cal)
        logits, outs = dep.apply(st, cal, k_read, data["x"], record=True)
        out = {"accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == data["y"]),
               "loss": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, data["y"]))}
        for i, name in enumerate(self.layer_names):
            out[f"layer_error/{name}"] = relative_error(outs[i], data["ref"][i])
        return out

    def conductances(self, data, device, key, t, variant):
        state, k_age, _, _ = self._program(data, device, key, variant)
        return state_conductances(state, k_age, t)

    def reference_metrics(self, data):
        import optax

        logits = self._deployed().reference(data["x"])
        y = data["y"]
        return {"accuracy": float(jnp.mean(jnp.argmax(logits, axis=-1) == y)),
                "loss": float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)))}

    def spec(self):
        return {"kind": self.kind, "layers": [[n, list(sh)] for n, sh in zip(self.layer_names, self._layer_shapes())],
                "params_sha256": params_fingerprint(self.model),
                "eval_sha256": _sha(self.x_eval, self.y_eval), "eval_examples": int(self.x_eval.shape[0]),
                "calibration_sha256": _sha(self.x_cal), "calibration_examples": int(self.x_cal.shape[0]),
                "calibration": self.calibration,
                **({"calibration_steps": self.calibration_steps} if self.calibration == "gradient" else {}),
                "n_chips": self.n_chips, **self.spec_extra}

    def describe(self):
        shapes = ", ".join(f"{r}×{c}" for r, c in self._layer_shapes())
        cores = f" on {self._layout.n_tiles} cores" if self._geometry is not None else ""
        return (f"network {self.description}: layers {shapes}{cores}; {self.x_eval.shape[0]} evaluation examples, "
                f"calibration {self.calibration} on {self.x_cal.shape[0]} examples")

    @classmethod
    def from_checkpoint(cls, path, dataset: str = "digits", *, data_dir=None, eval_examples=None,
                        calibration_examples: int = 128, **kwargs) -> "NetworkWorkload":
        """A workload from a :func:`save_network` checkpoint and a named data set."""
        model, arch, _ = load_network(path)
        shape = (8, 8, 1) if arch.get("kind") == "small_cnn" else None
        x, y, x_cal = load_dataset(dataset, data_dir, eval_examples, calibration_examples, input_shape=shape)
        kwargs.setdefault("description", f"{Path(path).name} on {dataset}")
        extra = {"architecture": arch, "dataset": dataset}
        return cls(model, x, y, x_cal, spec_extra=extra, **kwargs)
