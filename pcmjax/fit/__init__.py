"""Fitting device and periphery models to measurements (DESIGN.md: ``fit/``).

* :func:`load_measurements` reads and validates long-form conductance reads (CSV / NPZ:
  ``device_id, g_target_uS, t_s, g_uS``); :func:`simulate_measurements` makes synthetic
  ones from any device model.
* :func:`fit_device_model` fits the HERMES, PCM-like, state-independent or flexible
  (polynomial / spline) family by maximum likelihood, with standard errors and fit
  statistics; the returned model goes straight into :func:`pcmjax.program_chip` and is
  saved with :func:`pcmjax.devices.save`.
* :func:`fit_adc` fits per-column ADC gain, offset, nonlinearity and noise to a
  calibration sweep.
* :func:`fit_scale_factors` recovers the device model's programming, drift and
  read-noise scale factors from chip-level MVM outputs by differentiating the chip
  simulation.
* :func:`cli_main` is ``pcmjax fit`` (also ``python -m pcmjax.fit``); :func:`plot_fit`
  draws the figures of data against fit.
"""

from pcmjax.fit._adc import ADCFit, fit_adc, simulate_adc_sweep
from pcmjax.fit._cli import cli_main
from pcmjax.fit._data import (
    COLUMNS,
    MeasurementError,
    Measurements,
    from_columns,
    load_measurements,
    simulate_measurements,
)
from pcmjax.fit._device import FitResult, fit_device_model
from pcmjax.fit._hardware import HardwareMeasurements, ScaleFit, fit_scale_factors, simulate_hardware
from pcmjax.fit._params import FAMILIES
from pcmjax.fit._plots import plot_drift, plot_fit, plot_laws

__all__ = ["COLUMNS", "FAMILIES", "MeasurementError", "Measurements", "from_columns", "load_measurements",
           "simulate_measurements", "FitResult", "fit_device_model", "ADCFit", "fit_adc", "simulate_adc_sweep",
           "HardwareMeasurements", "ScaleFit", "fit_scale_factors", "simulate_hardware", "cli_main", "plot_fit",
           "plot_laws", "plot_drift"]
