"""Results of a study: every instance × time × variant × metric, and their summary."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from pcmjax.montecarlo.store import RunFolder, atomic_write_bytes, atomic_write_text
from pcmjax.montecarlo.study import format_time

PERCENTILES = (5, 50, 95)
# Metrics shown in percent in tables and figures.
PERCENT_METRICS = ("accuracy",)


def is_percent(metric: str) -> bool:
    return metric in PERCENT_METRICS or metric.startswith("mvm_error") or metric.startswith("layer_error")


class Results:
    """Values of a study.

    Attributes:
      values: ``[instances, times, variants, metrics]`` float32.
      times: ``[T]`` seconds after programming.
      variants, metrics: names.
      meta: dict (study name, hash, seed, ...).
    """

    def __init__(self, values, times, variants, metrics, meta=None, instances=None):
        self.values = np.asarray(values, np.float32)
        self.times = np.asarray(times, np.float64)
        self.variants = tuple(str(v) for v in variants)
        self.metrics = tuple(str(m) for m in metrics)
        self.meta = dict(meta or {})
        n = self.values.shape[0]
        self.instances = np.arange(n) if instances is None else np.asarray(instances, np.int64)
        self.histograms = None  # conductance histograms (dict), when available
        self.run_info: dict = {}  # timings and chunking of the run that produced these results
        expected = (n, len(self.times), len(self.variants), len(self.metrics))
        if self.values.shape != expected:
            raise ValueError(f"values has shape {self.values.shape}, expected {expected}.")

    def __repr__(self):
        return (f"Results({self.values.shape[0]} instances × {len(self.times)} times × "
                f"{len(self.variants)} variants × {len(self.metrics)} metrics)")

    def get(self, metric: str, variant: str | None = None) -> np.ndarray:
        """``[instances, times]`` values of one metric and variant (``[..., variants]`` if
        ``variant`` is None)."""
        if metric not in self.metrics:
            raise KeyError(f"unknown metric {metric!r}; available: {list(self.metrics)}.")
        m = self.metrics.index(metric)
        if variant is None:
            return self.values[:, :, :, m]
        if variant not in self.variants:
            raise KeyError(f"unknown variant {variant!r}; available: {list(self.variants)}.")
        return self.values[:, :, self.variants.index(variant), m]

    # -- summary -------------------------------------------------------------------
    def summary(self) -> list[dict]:
        """One row per time, variant and metric: mean, std and 5/50/95 % percentiles."""
        rows = []
        finite = np.isfinite(self.values)
        for ti, t in enumerate(self.times):
            for vi, v in enumerate(self.variants):
                for mi, m in enumerate(self.metrics):
                    x = self.values[:, ti, vi, mi][finite[:, ti, vi, mi]].astype(np.float64)
                    row = {"time_s": float(t), "time": format_time(t), "variant": v, "metric": m, "n": int(x.size)}
                    if x.size:
                        p = np.percentile(x, PERCENTILES)
                        row.update(mean=float(x.mean()), std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
                                   **{f"p{q}": float(val) for q, val in zip(PERCENTILES, p)})
                    else:
                        row.update(mean=None, std=None, **{f"p{q}": None for q in PERCENTILES})
                    rows.append(row)
        return rows

    def table(self, metrics=None, width: int = 22) -> str:
        """A text table per metric: rows are times, columns variants, ``mean ± std``."""
        metrics = self.metrics if metrics is None else metrics
        blocks = []
        for m in metrics:
            scale, unit = (100.0, " %") if is_percent(m) else (1.0, "")
            head = f"{m + (' (%)' if unit else ''):<18}" + "".join(f"{v:>{width}}" for v in self.variants)
            lines = [head, "-" * len(head)]
            ref = self.meta.get("reference", {}).get(m)
            if ref is not None:
                lines.append(f"{'digital (no chip)':<18}{ref * scale:>{width}.3g}")
            for ti, t in enumerate(self.times):
                cells = []
                for v in self.variants:
                    x = self.get(m, v)[:, ti].astype(np.float64) * scale
                    x = x[np.isfinite(x)]
                    cells.append(f"{x.mean():.3g} ± {x.std():.2g}" if x.size else "n/a")
                lines.append(f"{format_time(t):<18}" + "".join(f"{c:>{width}}" for c in cells))
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    # -- files ---------------------------------------------------------------------
    def save(self, folder) -> dict:
        """Write ``results.npz``, ``summary.json`` and ``summary.csv`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = dict(values=self.values, times_s=self.times, variants=np.asarray(self.variants),
                      metrics=np.asarray(self.metrics), instances=self.instances,
                      time_labels=np.asarray([format_time(t) for t in self.times]),
                      meta=np.asarray(json.dumps(self.meta)))
        atomic_write_bytes(folder / "results.npz", lambda f: np.savez(f, **arrays))
        rows = self.summary()
        atomic_write_text(folder / "summary.json", json.dumps(
            {"meta": self.meta, "instances": int(self.values.shape[0]), "percentiles": list(PERCENTILES),
             "rows": rows}, indent=1) + "\n")
        buf = io.StringIO()
        fields = ["time_s", "time", "variant", "metric", "n", "mean", "std", *(f"p{q}" for q in PERCENTILES)]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else (f"{r[k]:.8g}" if isinstance(r[k], float) else r[k]))
                        for k in fields})
        atomic_write_text(folder / "summary.csv", buf.getvalue())
        return {"results": folder / "results.npz", "summary_json": folder / "summary.json",
                "summary_csv": folder / "summary.csv"}

    @classmethod
    def load(cls, path) -> Results:
        """Read ``results.npz`` (or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "results.npz"
        if not path.exists():
            raise FileNotFoundError(f"no results at {str(path)!r}; run the study first.")
        with np.load(path) as z:
            res = cls(z["values"], z["times_s"], z["variants"].tolist(), z["metrics"].tolist(),
                      json.loads(str(z["meta"])), instances=z["instances"])
        cond = path.parent / "conductances.npz"
        if cond.exists():
            with np.load(cond) as z:
                res.histograms = {"edges": z["edges_uS"], "counts": z["counts"], "times_s": z["times_s"],
                                  "variants": tuple(z["variants"].tolist()), "instances": int(z["instances"]),
                                  "g_max": float(z["g_max_uS"])}
        return res


def load_results(path, partial: bool = False) -> Results:
    """The :class:`Results` stored in a study's output folder.

    With ``partial=True``, a folder whose run was interrupted (no ``results.npz`` yet)
    gives the instances finished so far (``results.instances`` lists them).
    """
    path = Path(path)
    if not partial or (path / "results.npz").exists() or path.suffix == ".npz":
        return Results.load(path)
    folder = RunFolder(path)
    m = folder.manifest()
    if m is None:
        raise FileNotFoundError(f"{str(path)!r} holds no pcmjax study (no manifest.json).")
    shape = (len(m["times_s"]), len(m["variants"]), len(m["metrics"]))
    done = folder.load_done(shape)
    if not done:
        raise FileNotFoundError(f"{str(path)!r}: no instance finished yet.")
    ids = sorted(done)
    meta = {"name": m.get("name"), "study_hash": m.get("study_hash"), "partial": f"{len(ids)} of {m['instances']}"}
    if m.get("reference"):
        meta["reference"] = m["reference"]
    return Results(np.stack([done[i][0] for i in ids]), m["times_s"], m["variants"], m["metrics"], meta,
                   instances=ids)
