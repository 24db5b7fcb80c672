"""Maximum-likelihood fit of a device model to conductance measurements.

The estimator (details in :mod:`._reduce` and :mod:`._likelihood`):

1. per device, weighted least squares of ``ln g`` on ``ln(1 + t/t0)`` gives the
   intercept ``â ≈ ln g_prog``, the drift exponent ``ν̂`` and the residual scatter;
2. three likelihoods of those summaries, one per stage, each a function of the family's
   law parameters: Q_s from the residual scatter, then (μ_ν, σ_ν) from the slopes with
   their estimation noise deconvolved and the ``|·|`` fold of ν exact, then σ_prog from
   the intercepts (``g_prog`` clipped at 0 included exactly);
3. each stage is minimised with optax L-BFGS in whitened coordinates and polished with
   Newton steps (:mod:`._optimize`); the later stages use the fitted Q_s for the noise of
   ``â`` and ``ν̂``; with Q_s at the programmed conductance further passes repeat the
   stages (each from the previous optimum and the usual starts) with the programming
   distribution of the previous pass's σ_prog, until it stops changing, so that the
   optimum is that of the final objective;
4. standard errors: by default the sandwich form ``A⁻¹ B A⁻ᵀ`` of the stacked estimating
   equations (A: expected curvature of each stage and the cross-stage Jacobian; B: sum of
   per-device score outer products), which propagates the uncertainty of Q_s into the
   later stages and is robust to the quasi-likelihood of stage 1; ``se="hessian"``
   gives the inverse finite-difference Hessian of each stage;
5. clipped laws (PCM-like μ_ν and σ_ν): every configuration of which levels sit on which
   piece is refitted (:mod:`._configs`); the errors of their entries cover every
   configuration within ΔNLL < 2 of the best (a profile-likelihood interval over the
   configurations), and an entry some such configuration leaves undetermined is reported
   as not identified.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from pcmjax._validate import check_choice, check_float, check_int
from pcmjax.devices import DeviceModel
from pcmjax.fit import _params
from pcmjax.fit._data import Measurements, load_measurements
from pcmjax.fit._derived import mean_drift
from pcmjax.fit._diagnostics import binned_estimates
from pcmjax.fit._optimize import fit_entries
from pcmjax.fit._reduce import make_bins, reduce_devices, select_devices

DEFAULT_DEVICES = {"hermes": 2, "pcm_like": 1, "state_independent": 1, "flexible": 1}
SE_METHODS = ("sandwich", "hessian")


@dataclasses.dataclass(eq=False)
class FitResult:
    """A fitted device model with its uncertainties and goodness of fit.

    Attributes:
      model: the fitted :class:`pcmjax.devices.DeviceModel` (``program_chip`` accepts it).
      family: family name.
      names: names of the estimated parameters (``"prog_coeffs[1]"``, ...).
      values, stderr: ``[P]`` estimates and standard errors; ``inf`` marks a parameter the
        data do not identify (the likelihood is flat along it).
      cov: ``[P, P]`` covariance (NaN in the rows and columns of unidentified parameters).
      stages: ``[P]`` stage of each parameter (``"noise"``, ``"drift"``, ``"prog"``).
      fixed: ``{name: value}`` law entries held fixed (not informed by the data, or the
        HERMES thresholds), with the reason in ``notes``.
      stats: goodness of fit: ``nll`` (total and per stage), ``n_params``, ``aic``,
        ``bic``, ``n_devices``, ``n_reads``, ``newton_decrement`` (convergence:
        ``sqrt(gᵀ A⁻¹ g)`` of the smoothed gradient before the final Newton step, i.e. the
        distance to the optimum in standard errors; ≪ 1).
      notes: list of human-readable remarks (excluded devices, fixed entries, ...).
      devices: per-device summaries of the fitted devices at the fitted read noise
        (``g_target``, ``x`` and ``V``: corrected ν̂ and its noise variance, ``a_c`` and
        ``U``: corrected ln g_prog and its variance, ``q2``: Q_s², ``rss``, ``e_rss``, ...).
      bins: target-conductance bins of the fitted devices ``(index, centers, edges)``.
      data: the measurements.
      alternatives: ``[(model, delta_nll, names)]``: other configurations of the clipped
        laws (which levels sit on which piece) whose NLL is within 2 of the best, with the
        entries each leaves undetermined; the standard errors and :meth:`mean_drift` cover
        them.
    """

    model: DeviceModel
    family: str
    names: list
    values: np.ndarray
    stderr: np.ndarray
    cov: np.ndarray
    stages: list
    fixed: dict
    stats: dict
    notes: list
    devices: dict = dataclasses.field(repr=False, default=None)
    bins: tuple = dataclasses.field(repr=False, default=None)
    data: Measurements = dataclasses.field(repr=False, default=None)
    alternatives: list = dataclasses.field(repr=False, default_factory=list)

    def params(self) -> dict:
        """``{name: (value, stderr)}`` of the estimated parameters (stderr ``inf``: not
        identified by the data)."""
        return {n: (float(v), float(s)) for n, v, s in zip(self.names, self.values, self.stderr)}

    def summary(self) -> str:
        """A printable table of the parameters with their standard errors and the fit statistics."""
        lines = [f"{self.family} device model fitted to {self.stats['n_devices']} devices "
                 f"({self.stats['n_reads']} reads)", f"{'parameter':<22}{'stage':<8}{'value':>14}{'std. error':>14}"]
        for n, st, v, s in zip(self.names, self.stages, self.values, self.stderr):
            err = f"{s:>14.3g}" if np.isfinite(s) else f"{'not identified':>16}"
            lines.append(f"{n:<22}{st:<8}{v:>14.6g}{err}")
        for n, v in self.fixed.items():
            lines.append(f"{n:<22}{'fixed':<8}{v:>14.6g}{'-':>14}")
        s = self.stats
        lines.append(f"-2 log L = {2 * s['nll']:.2f}  (noise {2 * s['nll_noise']:.2f}, drift {2 * s['nll_drift']:.2f}, "
                     f"prog {2 * s['nll_prog']:.2f});  AIC = {s['aic']:.2f};  BIC = {s['bic']:.2f};  "
                     f"parameters = {s['n_params']}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def mean_drift(self, g_target):
        """Mean drift exponent ``E|μ_ν + σ_ν ξ|`` at ``g_target`` ``[L]`` (µS) with its
        delta-method standard error, widened to cover the plausible alternative
        configurations: ``(value [L], stderr [L])``, ``inf`` where a parameter the data do
        not identify moves it."""
        return mean_drift(self, g_target)

    def binned(self) -> dict:
        """Per-bin estimates of σ_prog, μ_ν, σ_ν and Q_s from the data (for figures);
        see :func:`pcmjax.fit._diagnostics.binned_estimates`."""
        return binned_estimates(self)


def _select(stats, max_rel_noise, notes):
    """Devices kept for the fit (see :func:`select_devices`); appends notes on the others."""
    bins = make_bins(stats.g_target)
    keep, bin_sigma = select_devices(stats, max_rel_noise, bins)
    n_partial = int(np.sum(~(stats.usable | stats.all_zero)))
    if n_partial:
        notes.append(f"{n_partial} device(s) with some (not all) reads at 0 or a singular design left out")
    n_noisy = int(np.sum((stats.usable | stats.all_zero) & ~keep))
    if n_noisy:
        out = bins[1][bin_sigma > max_rel_noise]
        notes.append(f"{n_noisy} device(s) left out: relative read noise above {max_rel_noise} at targets "
                     f"{np.array2string(out, precision=3, threshold=8)} µS")
    return keep


def fit_device_model(data, family: str = "hermes", *, num_devices: int | None = None, q_s_from: str = "programmed",
                     g_max: float | None = None, t0: float | None = None, t_read: float | None = None,
                     basis: str = "poly", degree: int = 3, init: DeviceModel | None = None,
                     max_rel_noise: float = 0.3, se: str = "sandwich", max_iter: int = 300,
                     starts: int = 4) -> FitResult:
    """Fit a device model to conductance measurements by maximum likelihood.

    Args:
      data: :class:`Measurements`, or a path / mapping for :func:`load_measurements`.
      family: ``"hermes"``, ``"pcm_like"``, ``"state_independent"`` or ``"flexible"``.
      num_devices: devices per sign of the unit cell (default: 2 for hermes, else 1).
      q_s_from: Q_s at the ``"programmed"`` (default) or ``"target"`` conductance.
      g_max: µS; default: the family's published value (hermes, pcm_like,
        state_independent) or the largest target (flexible; also used when targets
        exceed the published value).
      t0, t_read: seconds; held fixed (default: the family's values).
      basis, degree: the flexible family's laws (``"poly"`` or ``"spline"``; the spline
        has ``degree + 1`` coefficients and needs ``degree >= 3``).
      init: a model of the family to start from (and to take g_max, t0, t_read and held
        entries from); its values are the first start, the moment estimates the second.
      starts: starting points per likelihood stage (≥ 1): the per-level moment
        estimates, then ``init`` or the family's published values, then those two with
        every spread law (σ_ν, Q_s, σ_prog) doubled, then the best optimum displaced by a
        few standard errors along deterministic directions; the lowest NLL wins. The
        default 4 reaches the optimum on the families' usual surfaces; more guard against
        rarer local optima at proportionally more time.
      max_rel_noise: target bins whose typical device has a larger relative read noise
        ``Q_s n(t)`` at the last read are left out (the log-domain summaries assume it
        small; the moments used are exact, the Gaussian shapes of ``â`` and ``ν̂``
        approximate).
      se: ``"sandwich"`` (default) or ``"hessian"``.
      max_iter: L-BFGS iterations per stage.

    Returns:
      :class:`FitResult`.
    """
    check_choice("family", family, _params.FAMILIES)
    check_choice("se", se, SE_METHODS)
    check_float("max_rel_noise", max_rel_noise, 0.0, 0.5, lo_open=True)
    starts = check_int("starts", starts, 1)
    max_iter = check_int("max_iter", max_iter, 1)
    if not isinstance(data, Measurements):
        data = load_measurements(data)
    num_devices = DEFAULT_DEVICES[family] if num_devices is None else num_devices
    notes = []
    if g_max is None and init is None:
        published = None if family == "flexible" else _params.template(family, num_devices, q_s_from).g_max
        top = float(np.max(data.g_target_uS))
        if published is None or top > 1.01 * float(published):
            g_max = top
            if published is not None:
                notes.append(f"targets reach {top:.4g} µS, above the published g_max {float(published):.4g} µS: "
                             f"g_max set to {top:.4g} µS")
    model0 = _params.template(family, num_devices, q_s_from, basis, degree, g_max, t0, t_read, init)

    stats = reduce_devices(data, float(model0.t0), float(model0.t_read))
    keep = _select(stats, max_rel_noise, notes)
    sub = stats.subset(keep)
    if sub.n_devices < 10:
        raise ValueError(f"only {sub.n_devices} device(s) are usable for the fit; need at least 10.")
    if not np.any(sub.dof > 0):
        raise ValueError("no device has three or more reads: the read noise (Q_s) cannot be fitted.")
    entries = _params.entries_for(model0)
    res = fit_entries(model0, entries, sub, se, max_iter, starts=starts, init_first=init is not None)
    fitted, names, values, stderr, cov, stage_list, fixed, stage_nll, newton_decrement, fixed_notes, table, alts = res
    notes += fixed_notes
    if alts:
        notes.append(f"{len(alts)} other configuration(s) of the clipped laws (which levels sit on which piece) fit "
                     "within ΔNLL < 2 of the best; the standard errors and mean_drift cover them")
    p = len(names)
    n_reads = int(sub.mask.sum())
    nll = float(sum(stage_nll))
    st = dict(nll=nll, nll_noise=stage_nll[0], nll_drift=stage_nll[1], nll_prog=stage_nll[2], n_params=p,
              aic=2 * nll + 2 * p, bic=2 * nll + p * math.log(max(sub.n_devices, 1)), n_devices=sub.n_devices,
              n_reads=n_reads, n_devices_total=stats.n_devices, newton_decrement=newton_decrement)
    return FitResult(model=fitted, family=family, names=names, values=values, stderr=stderr, cov=cov,
                     stages=stage_list, fixed=fixed, stats=st, notes=notes, devices=table,
                     bins=make_bins(table["g_target"]), data=data, alternatives=alts)
