"""The network workload: a Flax network deployed on each chip instance.

Built on :mod:`pcmjax.nn`: :func:`pcmjax.nn.plan` / :func:`pcmjax.nn.deploy` give the
tile layout and the pure forward pass (``DeployedModel.apply``); every chip instance
programs the network's tiles from its own key, ages to ``t`` and runs the evaluation
set. Metrics: ``accuracy``, ``loss`` (mean cross-entropy) (for a language model, whose
evaluation set is token sequences: ``bpc``, the mean cross-entropy of each next token in
bits, i.e. bits per character for a character model, and ``accuracy`` of the next token)
and, per analog layer,
``layer_error/<layer>``: the relative error ``‖y_chip − y_digital‖ / ‖y_digital‖`` of the
layer's output (before its activation) on the evaluation set, with the chip's errors
accumulated through the preceding layers, as the network experiences them.

Calibration (variants with ``calibrate = true``) sets the digital units' per-column
``γ'``, ``β'`` of each layer at time ``t`` from a small unlabelled calibration set:

* ``"lstsq"`` (default): layer after layer in the order the forward pass calls them, a
  per-column least-squares fit of the chip's layer output as an affine function of the
  digital one (inverted to correct it), each layer seeing the already calibrated
  earlier layers. Closed form, a few forward passes: cheap enough for thousands of
  instances.
* ``"gradient"``: :func:`pcmjax.nn.make_calibrator` (Adam through the simulated chip,
  also learning input ranges); more accurate, about ``steps`` times the cost.

Variants with ``calibrate = "readout"`` add, after either, the read-out refit of
:func:`pcmjax.nn.fit_readout`: the output layer's per-column ``γ'``, ``β'`` refitted
(``READOUT_STEPS`` Adam steps on one recorded chip pass over the calibration set) to
minimise the KL divergence of the chip's output distribution from the digital
network's: the next-token distribution of a language model, the class distribution of
a classifier. It shrinks the logits where the chip's noise makes them over-confident,
which a per-column fit of each layer's output cannot. It needs the network's output to
be its last analog layer's output (logits); other networks refuse such variants.

Checkpoints are in :mod:`pcmjax.montecarlo.checkpoints`, evaluation data in
:mod:`pcmjax.montecarlo.datasets`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcmjax import nn as pnn
from pcmjax._validate import check_choice, check_int
from pcmjax.chip.state import program_chip
from pcmjax.config import ChipConfig
from pcmjax.montecarlo.checkpoints import array_fingerprint, load_network, params_fingerprint
from pcmjax.montecarlo.datasets import load_dataset
from pcmjax.montecarlo.workloads import Workload, fit_column_affine, relative_error, state_conductances
from pcmjax.nn.recurrent import CELLS

CALIBRATION_METHODS = ("lstsq", "gradient")
READOUT_STEPS = 300  # Adam steps of the read-out refit (pcmjax.nn.fit_readout's default)


def _chip_gain(y, ref):
    """Per-column ``(γ, β)`` with ``γ y + β ≈ ref`` for chip outputs ``y`` ``[samples, cols]``.

    The chip's output is modelled as ``y = a · ref + b + noise`` (gain and offset errors
    plus read noise and errors passed on from earlier layers, which ``ref``, the digital
    network, does not have), fitted by least squares of ``y`` on the noise-free ``ref``,
    then inverted: ``γ = 1/a``, ``β = −b/a``. Regressing ``ref`` on the noisy ``y``
    instead would shrink every column towards its mean by ``var(ref) / var(y)``
    (errors in the regressor), which hurts most where the noise is largest.
    A column whose gain cannot be resolved (``a ≤ 0.05``) only has its offset removed.
    """
    a, b = fit_column_affine(ref, y, axis=0)
    a, b = a[0], b[0]
    ok = a > 0.05
    gamma = jnp.where(ok, 1.0 / jnp.where(ok, a, 1.0), 1.0)
    beta = jnp.where(ok, -b * gamma, -(jnp.mean(y, axis=0) - jnp.mean(ref, axis=0)))
    return gamma, beta


def _column_bias(layer, cols: int):
    """The bias the layer adds after its recorded MVM output, as ``[cols]`` (zeros for a
    recurrent cell, which records its pre-activations before the bias)."""
    b = None if isinstance(layer, tuple(CELLS.values())) else getattr(layer, "bias", None)
    if b is None or not getattr(layer, "use_bias", True) or int(np.prod(b.shape)) != cols:
        return jnp.zeros((cols,), jnp.float32)
    return jnp.asarray(b[...], jnp.float32).reshape(cols)


class NetworkWorkload(Workload):
    """A trained network deployed on each chip instance.

    Args:
      model: an ``nnx.Module`` with analog layers (:func:`pcmjax.nn.convert` makes them).
      x_eval, y_eval: evaluation inputs and integer labels; or, with ``y_eval=None``,
        integer token sequences ``[sequences, length]`` of a language model, which maps
        tokens ``[N, T]`` to next-token logits ``[N, T, vocab]`` and is evaluated on
        every sequence's first ``length − 1`` tokens (metric ``bpc``).
      x_cal: unlabelled calibration inputs, or token sequences (for calibrated
        variants; default: the first 128 evaluation inputs).
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
        if not pnn.analog_layers(model):
            raise ValueError("the network has no analog layers (pcmjax.nn.AnalogLinear / AnalogConv) to deploy; "
                             "convert a Flax model with pcmjax.nn.convert.")
        missing = pnn.missing_input_ranges(model)
        if missing:
            raise ValueError(f"network {description}: the analog layers {missing} have no input range (the "
                             "checkpoint holds none, e.g. a network saved before training); measure them with "
                             "pcmjax.nn.measure_input_ranges(model, x_sample) or train the network, then save it "
                             "again with pcmjax.montecarlo.save_network.")
        check_choice("calibration", calibration, CALIBRATION_METHODS)
        self.language_model = y_eval is None
        if self.language_model:  # token ids stay integers: the deployed model passes them unchanged
            x_eval, y_eval, x_cal = self._sequences(x_eval, x_cal)
        else:
            x_eval = np.asarray(x_eval, np.float32)
            x_cal = x_eval[:128] if x_cal is None else np.asarray(x_cal, np.float32)
        y_eval = np.asarray(y_eval, np.int32)
        if x_eval.shape[0] != y_eval.shape[0] or x_eval.shape[0] < 1:
            raise ValueError(f"x_eval and y_eval must hold the same number (>= 1) of examples, got "
                             f"{x_eval.shape[0]} and {y_eval.shape[0]}.")
        self.model, self.x_eval, self.y_eval, self.x_cal = model, x_eval, y_eval, x_cal
        self.calibration = calibration
        self.calibration_steps = check_int("calibration_steps", calibration_steps, lo=1)
        self.n_chips = check_int("n_chips", n_chips, lo=1)
        self.description, self.spec_extra = description, dict(spec_extra or {})
        self._template = None
        self._geometry = None
        self._data = None
        self._calibrator = None

    @staticmethod
    def _sequences(x, x_cal):
        """The inputs, next-token targets and calibration inputs of token sequences (int32)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] < 2 or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"x_eval without y_eval must be integer token sequences [sequences, length >= 2], got "
                             f"shape {x.shape} and dtype {x.dtype}.")
        x_cal = x[:128] if x_cal is None else np.asarray(x_cal)
        if x_cal.ndim != 2 or x_cal.shape[1] < 2 or not np.issubdtype(x_cal.dtype, np.integer):
            raise ValueError(f"x_cal of a language model must be integer token sequences, got shape {x_cal.shape} "
                             f"and dtype {x_cal.dtype}.")
        x, x_cal = x.astype(np.int32), x_cal.astype(np.int32)
        return x[:, :-1], x[:, 1:], x_cal[:, :-1]

    # -- setup -------------------------------------------------------------------
    def check_config(self, cfg: ChipConfig) -> None:
        geometry = (cfg.n_cores, cfg.rows, cfg.cols)
        if self._geometry is None:
            layout = pnn.plan(self.model, cfg, self.n_chips)  # raises if the network does not fit
            self._geometry, self._layout_cfg = geometry, cfg
            self._layout = layout
        elif geometry != self._geometry:
            raise ValueError(f"every variant must keep the chip geometry (n_cores, rows, cols) = {self._geometry} "
                             f"the network was placed on, got {geometry}.")

    def _deployed(self):
        """A deployed model used as a template (layout, graph, tiles). It is placed, not
        programmed: every instance programs its own chip from its own key, so placing
        needs no key."""
        if self._template is None:
            if self._geometry is None:
                self.check_config(ChipConfig())
            self._template = pnn.deploy(self.model, None, self._layout_cfg, n_chips=self.n_chips, program=False)
        return self._template

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Paths of the analog layers, in chip order (as :func:`pcmjax.nn.plan` names them)."""
        return tuple("/".join(str(p) for p in path) or "<root>" for path, _ in pnn.analog_layers(self.model))

    def _layer_shapes(self):
        return [tuple(int(d) for d in layer.matrix().shape) for _, layer in pnn.analog_layers(self.model)]

    def metric_names(self):
        first = ("bpc", "accuracy") if self.language_model else ("accuracy", "loss")
        return (*first, *(f"layer_error/{n}" for n in self.layer_names))

    def data(self):
        if self._data is None:
            dep = self._deployed()
            n_eval = self.x_eval.shape[0]
            _, ref_all = dep.reference(jnp.asarray(np.concatenate([self.x_eval, self.x_cal])), record=True)
            # One row per example: a layer may record its output with the batch and token
            # axes flattened together ([N · T, cols], batch outermost).
            n_all = n_eval + self.x_cal.shape[0]
            ref = {i: r.reshape(n_all, -1)[:n_eval] for i, r in ref_all.items()}
            ref_cal = {i: r.reshape(n_all, -1)[n_eval:] for i, r in ref_all.items()}
            n = len(dep.layout.layers)
            self._order = pnn.layer_call_order(dep, self.x_cal)
            biases = [_column_bias(layer, lp.shape[1])  # chip_index order
                      for (_, layer), lp in zip(pnn.analog_layers(self.model), dep.layout.layers)]
            self._data = {"params": dep.params, "weights": dep.weights, "x": jnp.asarray(self.x_eval),
                          "y": jnp.asarray(self.y_eval), "ref": tuple(ref[i] for i in range(n)),
                          "x_cal": jnp.asarray(self.x_cal), "ref_cal": tuple(ref_cal[i] for i in range(n)),
                          "bias": tuple(biases)}
        return self._data

    # -- evaluation -----------------------------------------------------------------
    def _program(self, key, data, device, variant):
        dep = self._deployed()
        cfg = variant.config.replace(n_cores=dep.config.n_cores)
        k_prog, k_age, k_read, k_cal = jax.random.split(key, 4)
        return program_chip(k_prog, data["weights"], cfg, device, tiles=dep.layout.tiles), k_age, k_read, k_cal

    def _lstsq(self, key, dep, state, data):
        cal = pnn.identity_calibration(dep.layout)
        gammas, betas = list(cal["gamma"]), list(cal["beta"])
        for i in self._order:  # data-flow order: each layer sees the calibrated layers before it
            _, outs = dep.apply(state, dict(cal, gamma=tuple(gammas), beta=tuple(betas)),
                                jax.random.fold_in(key, i), data["x_cal"], record=True)
            cols = dep.layout.layers[i].shape[1]  # a LinearGeneral's output may have several feature axes
            a, c = _chip_gain(outs[i].reshape(-1, cols), data["ref_cal"][i].reshape(-1, cols))
            gammas[i] = a
            betas[i] = c + (a - 1.0) * data["bias"][i]
        return dict(cal, gamma=tuple(gammas), beta=tuple(betas))

    def _gradient(self, key, dep, state):
        if self._calibrator is None:
            self._calibrator = pnn.make_calibrator(dep, self.x_cal, steps=self.calibration_steps)
        cal, _ = self._calibrator(state, key)
        return cal

    def check_variant(self, variant):
        """Refuse the read-out refit of a network whose output is not its last analog
        layer's output (the refit changes that layer's per-column affine)."""
        if not variant.readout:
            return
        try:
            pnn.readout_layer(self._deployed(), jnp.asarray(self.x_cal[:1]))
        except ValueError as e:
            raise ValueError(f"calibrate = \"readout\" refits the output layer of {self.description} for the "
                             f"network's output distribution, but: {e} Use calibrate = true.") from e

    def _calibration(self, key, dep, state, data, variant):
        """The variant's calibration of the aged chip ``state`` (identity if none)."""
        if not variant.calibrate:
            return pnn.identity_calibration(dep.layout)
        if self.calibration == "lstsq":
            cal = self._lstsq(key, dep, state, data)
        else:
            cal = self._gradient(key, dep, state)
        if variant.readout:
            cal, _ = pnn.fit_readout(dep, jax.random.fold_in(key, 1 << 20), data["x_cal"], state=state,
                                     calibration=cal, steps=READOUT_STEPS)
        return cal

    def evaluate(self, key, data, device, t, variant):
        dep = self._deployed().replace(params=data["params"], weights=data["weights"])
        state, k_age, k_read, k_cal = self._program(key, data, device, variant)
        st = state.at_time(k_age, t)
        cal = self._calibration(k_cal, dep, st, data, variant)
        logits, outs = dep.apply(st, cal, k_read, data["x"], record=True)
        out = self._task_metrics(logits, data["y"])
        for i, name in enumerate(self.layer_names):
            out[f"layer_error/{name}"] = relative_error(outs[i].reshape(data["ref"][i].shape), data["ref"][i])
        return out

    def conductances(self, key, data, device, t, variant):
        state, k_age, _, _ = self._program(key, data, device, variant)
        return state_conductances(k_age, state, t)

    def _task_metrics(self, logits, y):
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        acc = jnp.mean(jnp.argmax(logits, axis=-1) == y)
        if self.language_model:
            return {"bpc": loss / np.log(2.0), "accuracy": acc}
        return {"accuracy": acc, "loss": loss}

    def reference_metrics(self, data):
        logits = self._deployed().reference(data["x"])
        return {k: float(v) for k, v in self._task_metrics(logits, data["y"]).items()}

    def spec(self):
        return {"kind": self.kind, "layers": [[n, list(sh)] for n, sh in zip(self.layer_names, self._layer_shapes())],
                "params_sha256": params_fingerprint(self.model),
                "eval_sha256": array_fingerprint(self.x_eval, self.y_eval), "eval_examples": int(self.x_eval.shape[0]),
                "calibration_sha256": array_fingerprint(self.x_cal), "calibration_examples": int(self.x_cal.shape[0]),
                "calibration": self.calibration,
                **({"calibration_steps": self.calibration_steps} if self.calibration == "gradient" else {}),
                "n_chips": self.n_chips, **({"task": "language_model"} if self.language_model else {}),
                **self.spec_extra}

    def describe(self):
        shapes = ", ".join(f"{r}×{c}" for r, c in self._layer_shapes())
        cores = f" on {self._layout.n_tiles} cores" if self._geometry is not None else ""
        what = (f"{self.x_eval.shape[0]} sequences of {self.x_eval.shape[1]} next-token predictions"
                if self.language_model else f"{self.x_eval.shape[0]} evaluation examples")
        return (f"network {self.description}: layers {shapes}{cores}; {what}, "
                f"calibration {self.calibration} on {self.x_cal.shape[0]} examples")

    @classmethod
    def from_checkpoint(cls, path, dataset: str = "digits", *, data_dir=None, eval_examples=None,
                        calibration_examples: int = 128, **kwargs) -> NetworkWorkload:
        """A workload from a :func:`save_network` checkpoint and a named data set."""
        model, arch, _ = load_network(path)
        shape = (8, 8, 1) if arch.get("kind") == "small_cnn" else None
        x, y, x_cal = load_dataset(dataset, data_dir, eval_examples, calibration_examples, input_shape=shape)
        kwargs.setdefault("description", f"{Path(path).name} on {dataset}")
        extra = {"architecture": arch, "dataset": dataset}
        return cls(model, x, y, x_cal, spec_extra=extra, **kwargs)
