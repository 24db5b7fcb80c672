"""Fitting device and periphery models to measurements (DESIGN.md: ``fit/``).

* :func:`load_measurements` reads and validates long-form conductance reads (CSV / NPZ);
  :func:`simulate_measurements` makes synthetic ones from any device model.
* :func:`fit_device_model` fits the HERMES, PCM-like, state-independent or flexible
  family by maximum likelihood, with standard errors and fit statistics.
"""

from pcmjax.fit._data import COLUMNS, MeasurementError, Measurements, from_columns, load_measurements, simulate_measurements
from pcmjax.fit._device import FitResult, fit_device_model

__all__ = ["COLUMNS", "MeasurementError", "Measurements", "from_columns", "load_measurements", "simulate_measurements",
           "FitResult", "fit_device_model"]
