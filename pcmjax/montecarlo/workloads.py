"""Workloads: pure functions that evaluate ONE chip instance at one time.

A workload turns ``(key, t, variant)`` into a dict of scalar metrics; programming
happens inside, from the instance key, so the runner can ``vmap`` it over instance keys
(``fold_in(key(seed), i)``) and times, and shard the instance axis over devices. Arrays
the evaluation needs (weights, inputs, evaluation sets, network parameters) come from
:meth:`Workload.data` and are passed to the compiled function as arguments, never baked
in as constants.

Within one instance the same key is used at every time and for every variant: all
times see the same programmed chip (and the same realisation of its noise, scaled to
``t``), and variants are compared on identical chips. Because programming does not
depend on ``t``, ``vmap`` over times computes it once.
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
import numpy as np

from pcmjax._validate import check_choice, check_int
from pcmjax.chip.mvm import mvm
from pcmjax.chip.state import program_chip
from pcmjax.config import ChipConfig
from pcmjax.montecarlo.variant import ResolvedVariant

# Floor of denominators in relative errors and variances (outputs are O(1) weight units).
_EPS = 1e-12


class Workload(abc.ABC):
    """What a Monte Carlo study evaluates on each chip instance.

    Subclasses implement :meth:`metric_names`, :meth:`data`, :meth:`evaluate`,
    :meth:`conductances`, :meth:`spec` and :meth:`describe`.
    """

    kind: str = "workload"

    @abc.abstractmethod
    def metric_names(self) -> tuple[str, ...]:
        """Names of the scalar metrics :meth:`evaluate` returns."""

    @abc.abstractmethod
    def data(self):
        """A pytree of arrays passed (replicated) to every evaluation."""

    @abc.abstractmethod
    def evaluate(self, key, data, device, t, variant: ResolvedVariant) -> dict:
        """Metrics of one chip instance ``t`` seconds after programming.

        Args:
          key: the instance's ``jax.random`` key (programming, ageing, reads).
          data: the pytree of :meth:`data`.
          device: the device model (a pytree).
          t: seconds since programming, a scalar (traced).
          variant: :class:`ResolvedVariant` (static: chip config, calibration).

        Returns:
          dict ``metric name → scalar``.
        """

    @abc.abstractmethod
    def conductances(self, key, data, device, t, variant: ResolvedVariant):
        """``(g, mask)``: every device's conductance (µS, flat) at ``t`` and a mask of the
        devices with a non-zero target, for the same instance ``evaluate`` sees."""

    @abc.abstractmethod
    def spec(self) -> dict:
        """JSON description of the workload (part of the study hash)."""

    def describe(self) -> str:
        return self.kind

    def check_config(self, cfg: ChipConfig) -> None:  # noqa: B027 - optional: most workloads run on any chip
        """Raise ``ValueError`` if the workload cannot run on ``cfg``."""

    def check_variant(self, variant: ResolvedVariant) -> None:
        """Raise ``ValueError`` if the workload cannot evaluate ``variant`` (by default:
        the read-out refit, ``calibrate = "readout"``, which only a network has)."""
        if variant.readout:
            raise ValueError(f"calibrate = \"readout\" refits a network's output layer; the {self.kind} workload "
                             f"has none: use calibrate = true (the per-column fit) or false.")

    def reference_metrics(self, data) -> dict:
        """Metrics of the same evaluation without a chip (the digital network), ``name →
        float``, shown beside the chip's in tables and figures; ``{}`` if there are none."""
        return {}


# -- helpers shared by workloads ---------------------------------------------------
def relative_error(y, ref):
    """``‖y − ref‖ / ‖ref‖`` over all elements (0 when both vanish)."""
    num = jnp.sqrt(jnp.sum(jnp.square(y - ref)))
    den = jnp.sqrt(jnp.sum(jnp.square(ref)))
    return num / jnp.maximum(den, _EPS)


def fit_column_affine(y, ref, axis=-2):
    """Per-column least-squares ``ref ≈ γ y + β`` over the samples on ``axis``.

    A column whose outputs do not vary keeps ``γ = 1`` and gets ``β`` = mean offset.

    Returns:
      ``(gamma, beta)`` with ``axis`` kept as size 1.
    """
    my = jnp.mean(y, axis=axis, keepdims=True)
    mr = jnp.mean(ref, axis=axis, keepdims=True)
    dy = y - my
    var = jnp.mean(dy * dy, axis=axis, keepdims=True)
    cov = jnp.mean(dy * (ref - mr), axis=axis, keepdims=True)
    ok = var > 1e-10 * (1.0 + jnp.mean(jnp.square(ref), axis=axis, keepdims=True))
    gamma = jnp.where(ok, cov / jnp.where(ok, var, 1.0), 1.0)
    return gamma, mr - gamma * my


def state_conductances(key_age, state, t):
    """Flat conductances of a programmed state at ``t`` and the mask of programmed devices.

    The devices' own conductances at the configured temperature (``ChipState.conductances``;
    wire resistance is a property of the array, not of the devices, and is left out)."""
    g = state.conductances(key_age, t)
    return g.reshape(-1), (state.g_target > 0).reshape(-1)


# -- the raw chip-MVM workload -------------------------------------------------------
WEIGHT_KINDS = ("gaussian", "uniform")
INPUT_KINDS = ("uniform", "gaussian", "relu")


class MVMWorkload(Workload):
    """Random-but-fixed weights on a few cores; metric: relative MVM error vs ``x @ W``.

    The weights and inputs are drawn once from ``data_seed`` (the same for every
    instance); each instance programs them, ages the chip to ``t`` and multiplies.
    A calibrated variant fits, per core and column, ``γ y + β`` to the exact product on a
    separate calibration batch read from the same aged chip, then applies it.

    Args:
      cores: cores to program (each holds one ``rows × cols`` tile).
      rows, cols: tile size (default: the chip's crossbar size).
      batch: input vectors per core for the error.
      calibration_batch: input vectors per core for the calibrated variant.
      weights: ``"gaussian"`` (a typical trained layer) or ``"uniform"``.
      inputs: ``"uniform"`` in [−1, 1], ``"gaussian"`` (σ = 1/3, clipped by the PWM) or
        ``"relu"`` (uniform in [0, 1], post-activation inputs).
      data_seed: seed of the weights and inputs.

    Metrics:
      ``mvm_error``: ``‖y − xW‖ / ‖xW‖`` over all cores and the batch;
      ``mvm_error_worst_core``: the largest per-core relative error.
    """

    kind = "mvm"

    def __init__(self, cores: int = 4, rows: int | None = None, cols: int | None = None, batch: int = 64,
                 calibration_batch: int = 64, weights: str = "gaussian", inputs: str = "uniform",
                 data_seed: int = 0):
        self.cores = check_int("mvm workload: cores", cores, lo=1)
        self.batch = check_int("mvm workload: batch", batch, lo=1)
        self.calibration_batch = check_int("mvm workload: calibration_batch", calibration_batch, lo=2)
        self.data_seed = check_int("mvm workload: data_seed", data_seed, lo=0)
        self.rows = None if rows is None else check_int("mvm workload: rows", rows, lo=1)
        self.cols = None if cols is None else check_int("mvm workload: cols", cols, lo=1)
        self.weights_kind = check_choice("mvm workload: weights", weights, WEIGHT_KINDS)
        self.inputs_kind = check_choice("mvm workload: inputs", inputs, INPUT_KINDS)
        self._data = None
        self._shape = None

    def metric_names(self):
        return ("mvm_error", "mvm_error_worst_core")

    def check_config(self, cfg: ChipConfig) -> None:
        rows = cfg.rows if self.rows is None else self.rows
        cols = cfg.cols if self.cols is None else self.cols
        if self.cores > cfg.n_cores or rows > cfg.rows or cols > cfg.cols:
            raise ValueError(f"the mvm workload needs {self.cores} cores of {rows}×{cols} but the chip has "
                             f"{cfg.n_cores} cores of {cfg.rows}×{cfg.cols}.")
        shape = (rows, cols)
        if self._shape is not None and self._shape != shape:
            raise ValueError(f"every variant must keep the workload's tile shape {self._shape}, got {shape}; "
                             "set the mvm workload's rows and cols explicitly.")
        self._shape = shape

    def _tile(self):
        if self._shape is None:
            self.check_config(ChipConfig())
        return self._shape

    def data(self):
        if self._data is None:
            rows, cols = self._tile()
            kw, kx, kc = jax.random.split(jax.random.key(self.data_seed), 3)
            shape = (self.cores, rows, cols)
            if self.weights_kind == "gaussian":
                w = jax.random.normal(kw, shape) / np.sqrt(rows)
            else:
                w = jax.random.uniform(kw, shape, minval=-1.0, maxval=1.0) / np.sqrt(rows)
            self._data = {"w": w, "x": self._inputs(kx, self.batch, rows),
                          "x_cal": self._inputs(kc, self.calibration_batch, rows)}
        return self._data

    def _inputs(self, key, batch, rows):
        shape = (self.cores, batch, rows)
        if self.inputs_kind == "uniform":
            return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)
        if self.inputs_kind == "relu":
            return jax.random.uniform(key, shape)
        return jnp.clip(jax.random.normal(key, shape) / 3.0, -1.0, 1.0)

    def _programmed(self, key, data, device, cfg):
        k_prog, k_age, k_read, k_cal = jax.random.split(key, 4)
        state = program_chip(k_prog, data["w"], cfg, device)
        return state, k_age, k_read, k_cal

    def evaluate(self, key, data, device, t, variant):
        state, k_age, k_read, k_cal = self._programmed(key, data, device, variant.config)
        st = state.at_time(k_age, t)
        w, x = data["w"], data["x"]
        exact = jnp.einsum("cbr,crk->cbk", x, w)
        y = mvm(k_read, st, x)
        if variant.calibrate:
            x_cal = data["x_cal"]
            y_cal = mvm(k_cal, st, x_cal)
            gamma, beta = fit_column_affine(y_cal, jnp.einsum("cbr,crk->cbk", x_cal, w), axis=1)
            y = gamma * y + beta
        per_core = jax.vmap(relative_error)(y, exact)
        return {"mvm_error": relative_error(y, exact), "mvm_error_worst_core": jnp.max(per_core)}

    def conductances(self, key, data, device, t, variant):
        state, k_age, _, _ = self._programmed(key, data, device, variant.config)
        return state_conductances(k_age, state, t)

    def spec(self):
        rows, cols = self._tile()
        return {"kind": self.kind, "cores": self.cores, "rows": rows, "cols": cols, "batch": self.batch,
                "calibration_batch": self.calibration_batch, "weights": self.weights_kind,
                "inputs": self.inputs_kind, "data_seed": self.data_seed}

    def describe(self):
        rows, cols = self._tile()
        return (f"raw chip MVM: {self.cores} cores of {rows}×{cols}, {self.weights_kind} weights, "
                f"{self.inputs_kind} inputs, batch {self.batch} per core")
