"""Matplotlib figures for Monte Carlo results (needs the ``pcmjax[plots]`` extra).

Every ``plot_*`` function draws on a given ``ax`` (or a new figure) and returns the
axes; :func:`study_figures` writes the standard PNG set of a study. Figures are built
with :class:`matplotlib.figure.Figure` and the Agg canvas, so writing them never
touches pyplot's global state or needs a display.

Times are shown on a log axis labelled with named durations (1 s, 1 min, 1 h, 1 d, ...);
metrics named ``accuracy``, ``mvm_error*`` and ``layer_error/*`` are shown in percent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pcmjax.montecarlo.results import Results, is_percent
from pcmjax.montecarlo.study import DAY, HOUR, MINUTE, MONTH, YEAR, format_time

_NAMED_TIMES = ((1e-3, "1 ms"), (1.0, "1 s"), (MINUTE, "1 min"), (HOUR, "1 h"), (DAY, "1 day"), (MONTH, "1 month"),
                (YEAR, "1 year"), (10 * YEAR, "10 years"))
_LABELS = {
    "accuracy": "test accuracy (%)",
    "loss": "test cross-entropy loss (nats)",
    "mvm_error": "relative MVM error ‖y − xW‖ / ‖xW‖ (%)",
    "mvm_error_worst_core": "worst core's relative MVM error (%)",
}


def _mpl():
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError("pcmjax.plots needs matplotlib: pip install 'pcmjax[plots]'.") from e
    return matplotlib, Figure, FigureCanvasAgg


def metric_label(metric: str) -> str:
    """Axis label (with unit) of a metric."""
    if metric in _LABELS:
        return _LABELS[metric]
    if metric.startswith("layer_error/"):
        return f"relative output error of layer {metric.split('/', 1)[1]} (%)"
    return metric + (" (%)" if is_percent(metric) else "")


def _new_axes(ax, figsize=(6.4, 4.2)):
    if ax is not None:
        return ax
    _, Figure, FigureCanvasAgg = _mpl()
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def format_time_axis(ax, times_s) -> None:
    """Log-scaled x axis with named durations as ticks, labelled with its unit."""
    times_s = np.asarray(times_s, float)
    pos = times_s[times_s > 0]
    lo, hi = (pos.min(), pos.max()) if pos.size else (1.0, 10.0)
    ax.set_xscale("log")
    ticks = [(t, lab) for t, lab in _NAMED_TIMES if lo / 1.5 <= t <= hi * 1.5]
    if len(ticks) >= 2:
        ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks])
    ax.set_xlim(lo / 1.6, hi * 1.6)
    ax.set_xlabel("time after programming (log scale; s = seconds)")
    ax.grid(True, which="major", alpha=0.3)


def plot_metric(results: Results, metric: str, ax=None, variants=None, band=(5, 95)):
    """Median (line) and ``band`` percentiles (shaded) of ``metric`` vs time, per variant."""
    ax = _new_axes(ax)
    scale = 100.0 if is_percent(metric) else 1.0
    times = results.times
    x = np.where(times > 0, times, np.nan)
    for i, v in enumerate(variants or results.variants):
        vals = results.get(metric, v).astype(np.float64) * scale
        lo, med, hi = np.nanpercentile(vals, [band[0], 50, band[1]], axis=0)
        color = f"C{i}"
        ax.plot(x, med, "o-", color=color, label=v, lw=1.8, ms=4)
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
    ref = results.meta.get("reference", {}).get(metric)
    if ref is not None:  # the same evaluation without a chip
        ax.axhline(ref * scale, color="0.3", ls="--", lw=1.2, label="digital (no chip)")
    format_time_axis(ax, times)
    ax.set_ylabel(metric_label(metric))
    ax.legend(title=f"variant (line: median, band: {band[0]}–{band[1]} %)", fontsize="small",
              title_fontsize="small")
    return ax


def plot_conductance_histograms(hist: dict, ax=None, variant: int | str = 0, density: bool = True):
    """Conductance histograms of the programmed devices, one step line per time."""
    ax = _new_axes(ax)
    import matplotlib

    names = list(hist["variants"])
    vi = names.index(variant) if isinstance(variant, str) else int(variant)
    edges, counts, times = np.asarray(hist["edges"]), np.asarray(hist["counts"])[vi], np.asarray(hist["times_s"])
    cmap = matplotlib.colormaps["viridis"]
    width = np.diff(edges)
    for ti, t in enumerate(times):
        c = counts[ti]
        y = c / max(c.sum(), 1.0) / width if density else c
        ax.stairs(y, edges, color=cmap(ti / max(len(times) - 1, 1)), lw=1.6, label=format_time(t))
    ax.axvline(float(hist["g_max"]), color="0.4", ls=":", lw=1, label=f"g_max = {float(hist['g_max']):.3g} µS")
    ax.set_xlabel("conductance G (µS)")
    ax.set_ylabel("probability density (1/µS)" if density else "devices per bin")
    ax.set_title(f"programmed devices, variant {names[vi]!r} ({int(hist.get('instances', 0))} chip instances)",
                 fontsize="medium")
    ax.legend(title="time after programming", fontsize="small")
    return ax


def error_metrics(results: Results) -> list[str]:
    return [m for m in results.metrics if m.startswith("mvm_error") or m.startswith("layer_error")]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _grid(n, panel=(5.2, 3.8)):
    _, Figure, FigureCanvasAgg = _mpl()
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(panel[0] * cols, panel[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def study_figures(results: Results, folder) -> list[Path]:
    """Write the standard figures of a study into ``folder``; returns their paths.

    * ``metrics_vs_time.png``: every metric that is not an MVM error (accuracy, loss);
    * ``mvm_error_vs_time.png``: MVM / per-layer relative errors;
    * ``conductance_histograms.png``: conductances at each time (when available).
    """
    folder = Path(folder)
    out = []
    title = f"{results.meta.get('name', 'study')}: median and 5–95 % of {results.values.shape[0]} chip instances"
    others = [m for m in results.metrics if m not in error_metrics(results)]
    for name, metrics in (("metrics_vs_time.png", others), ("mvm_error_vs_time.png", error_metrics(results))):
        if not metrics:
            continue
        fig, axes = _grid(len(metrics))
        for ax, m in zip(axes, metrics):
            plot_metric(results, m, ax=ax)
        fig.suptitle(title)
        out.append(_save(fig, folder / name))
    hist = results.histograms
    if hist is not None:
        counts = np.asarray(hist["counts"])
        groups = []  # variants with identical histograms share a panel
        for vi in range(counts.shape[0]):
            for g in groups:
                if np.array_equal(counts[g[0]], counts[vi]):
                    g.append(vi)
                    break
            else:
                groups.append([vi])
        fig, axes = _grid(len(groups), panel=(6.0, 4.2))
        for ax, g in zip(axes, groups):
            plot_conductance_histograms(hist, ax=ax, variant=g[0])
            if len(g) > 1:
                names = ", ".join(str(hist["variants"][i]) for i in g)
                ax.set_title(f"programmed devices, variants {names} ({int(hist['instances'])} chip instances)",
                             fontsize="medium")
        out.append(_save(fig, folder / "conductance_histograms.png"))
    return out
