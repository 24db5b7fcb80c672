"""Figures of a device-model fit: the four laws against per-bin data estimates, and the
conductance against time per conductance level (data against the fitted model)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from pcmjax._validate import check_key
from pcmjax.fit._data import simulate_measurements

LEVELS_SHOWN = 6
SIM_DEVICES = 1000  # simulated devices per level in the g(t) figure


def _pyplot():
    import matplotlib.pyplot as plt  # the CLI selects the Agg backend; notebooks keep theirs

    return plt


def _finish(plt, fig, path):
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_laws(result, path=None):
    """σ_prog, μ_ν, σ_ν and Q_s against conductance: per-bin estimates with standard errors
    (points) and the fitted laws (lines). Returns the path written, or the figure if
    ``path`` is None."""
    plt = _pyplot()
    est = result.binned()
    m = result.model
    g_max = float(m.g_max)
    g = np.linspace(0.0, max(float(np.nanmax(est["g"])), g_max), 300)
    g32 = g.astype(np.float32)
    mu, sn = (np.asarray(v) * float(m.drift_scale) for v in m.nu_moments(g32))
    curves = {
        "sigma_prog": np.asarray(m.prog_sigma(g32)) * float(m.prog_scale),
        "mu_nu": mu, "sigma_nu": np.abs(sn),
        "q_s": np.asarray(m.q_s(g32)) * float(m.read_noise_scale),
    }
    labels = {
        "sigma_prog": ("programming noise σ_prog (µS)", "target conductance g_T (µS)"),
        "mu_nu": ("mean drift exponent μ_ν", "target conductance g_T (µS)"),
        "sigma_nu": ("drift-exponent spread σ_ν", "target conductance g_T (µS)"),
        "q_s": ("1/f read-noise amplitude Q_s", "conductance g (µS)" + (" (programmed ≈ target)"
                                                                        if m.q_s_from == "programmed" else "")),
    }
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for ax, key in zip(axes.ravel(), ("sigma_prog", "mu_nu", "sigma_nu", "q_s")):
        val, se = est[key]
        ok = np.isfinite(val)
        ax.errorbar(est["g"][ok], val[ok], yerr=se[ok], fmt="o", ms=4, capsize=2, color="C0",
                    label="data (per-bin estimate ± 1 s.e.)")
        ax.plot(g, curves[key], "-", color="C3", label=f"fit ({result.family})")
        ax.set_ylabel(labels[key][0])
        ax.set_xlabel(labels[key][1])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    s = result.stats
    fig.suptitle(f"{result.family} fit to {s['n_devices']} devices: −2 log L = {2 * s['nll']:.1f}, "
                 f"AIC = {s['aic']:.1f}")
    return _finish(plt, fig, path)


def plot_drift(key, result, path=None):
    """Conductance against time per conductance level: data mean and 10–90 % range against
    the same statistics of devices simulated from the fitted model. Returns the path
    written, or the figure if ``path`` is None."""
    plt = _pyplot()
    data = result.data
    idx, centers, edges = result.bins
    nonempty = [b for b in range(edges.shape[0] - 1) if np.any(idx == b)]
    pick = sorted({nonempty[int(round(i))] for i in np.linspace(0, len(nonempty) - 1,
                                                              min(LEVELS_SHOWN, len(nonempty)))})
    times = np.unique(data.t_s)
    if times.shape[0] > 24:  # irregular read times: log-spaced time bins
        tb = np.unique(np.quantile(data.t_s, np.linspace(0, 1, 13)))
    else:
        tb = None
    check_key(key)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for n, b in enumerate(pick):
        lo, hi = edges[b], edges[b + 1]
        rows = (data.g_target_uS >= lo) & (data.g_target_uS < hi)
        t_rows, g_rows = data.t_s[rows], data.g_uS[rows]
        ids, first = np.unique(data.device_id[rows], return_index=True)
        targets = data.g_target_uS[rows][first]
        if tb is None:
            tt = times[np.isin(times, t_rows)]
            groups = [t_rows == t for t in tt]
        else:
            tt = np.array([t_rows[(t_rows >= a) & (t_rows <= c)].mean() for a, c in zip(tb[:-1], tb[1:])])
            groups = [(t_rows >= a) & (t_rows <= c) for a, c in zip(tb[:-1], tb[1:])]
        stats = np.array([[np.mean(g_rows[s]), *np.quantile(g_rows[s], [0.1, 0.9])] if s.any() else [np.nan] * 3
                          for s in groups])
        # A fixed number of simulated devices per level (resampled targets): one compile.
        pick_t = np.asarray(jax.random.choice(jax.random.fold_in(key, 1000 + n), targets, (SIM_DEVICES,)))
        sim = simulate_measurements(jax.random.fold_in(key, n), result.model, pick_t, tt)
        sg = sim.g_uS.reshape(-1, tt.shape[0])
        color = f"C{n % 10}"
        ax.plot(tt, sg.mean(0), "-", color=color, label=f"fit, g_T ≈ {np.mean(targets):.3g} µS")
        ax.fill_between(tt, *np.quantile(sg, [0.1, 0.9], axis=0), color=color, alpha=0.15)
        ax.errorbar(tt, stats[:, 0], yerr=[stats[:, 0] - stats[:, 1], stats[:, 2] - stats[:, 0]], fmt="o",
                    ms=4, capsize=2, color=color, label=f"data, {ids.shape[0]} devices")
    ax.set_xscale("symlog", linthresh=max(1.0, float(np.min(times[times > 0])) if np.any(times > 0) else 1.0))
    ax.set_xlabel("time after programming t (s)")
    ax.set_ylabel("conductance g (µS)")
    ax.set_title("conductance vs time per level: mean (points/lines) and 10–90 % range (bars/bands)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _finish(plt, fig, path)


def plot_fit(key, result, out_dir, prefix: str = "fit") -> list:
    """Both figures into ``out_dir`` as ``{prefix}_laws.png`` and ``{prefix}_drift.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_laws(result, out_dir / f"{prefix}_laws.png"), plot_drift(key, result, out_dir / f"{prefix}_drift.png")]
