"""``pcmjax fit``: fit a device model to a measurement file from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

from pcmjax.devices import load, save
from pcmjax.fit._data import COLUMNS, MeasurementError, load_measurements
from pcmjax.fit._device import fit_device_model
from pcmjax.fit._params import FAMILIES
from pcmjax.fit._plots import plot_fit


def build_parser(prog: str = "pcmjax fit") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fit a PCM device model to conductance measurements (long-form CSV or NPZ with columns "
                    f"{', '.join(COLUMNS)}; t in seconds after programming, conductances in µS). Prints the "
                    "parameters with standard errors, writes the model as JSON (pcmjax.devices.load reads it) "
                    "and figures of the data against the fit.",
    )
    p.add_argument("data", help="measurement file (.csv or .npz)")
    p.add_argument("--family", default="hermes", choices=FAMILIES, help="device-model family (default: hermes)")
    p.add_argument("--out", default=None, help="model JSON to write (default: <data stem>_<family>.json)")
    p.add_argument("--figures", default=None,
                   help="directory for the figures (default: beside --out); 'none' to skip them")
    p.add_argument("--num-devices", type=int, default=None, choices=(1, 2), help="devices per sign of a unit cell")
    p.add_argument("--q-s-from", default="programmed", choices=("programmed", "target"),
                   help="evaluate Q_s at the programmed (default) or the target conductance")
    p.add_argument("--g-max", type=float, default=None,
                   help="g_max in µS (default: the family's, or the largest target)")
    p.add_argument("--t0", type=float, default=None, help="drift reference time t0 in s (held fixed)")
    p.add_argument("--t-read", type=float, default=None, help="read duration t_read in s (held fixed)")
    p.add_argument("--basis", default="poly", choices=("poly", "spline"), help="flexible family: basis")
    p.add_argument("--degree", type=int, default=3,
                   help="flexible family: polynomial degree (spline: coefficients - 1)")
    p.add_argument("--max-rel-noise", type=float, default=0.3,
                   help="leave out target bins whose relative read noise exceeds this (default 0.3)")
    p.add_argument("--init", default=None,
                   help="model JSON to start from (pcmjax.devices.save writes one; also sets g_max, t0, t_read)")
    p.add_argument("--starts", type=int, default=4,
                   help="starting points per likelihood stage (default 4: per-level moment estimates, the "
                        "--init model or the published values, and both with the spread laws doubled; more "
                        "add displaced restarts)")
    p.add_argument("--seed", type=int, default=0, help="seed of the devices simulated for the drift figure")
    p.add_argument("--se", default="sandwich", choices=("sandwich", "hessian"), help="standard-error method")
    p.add_argument("--stats-json", default=None, help="also write parameters, errors and fit statistics here")
    return p


def cli_main(argv=None, prog: str = "pcmjax fit") -> int:
    """Entry point of ``pcmjax fit`` / ``python -m pcmjax.fit``; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    data_path = Path(args.data)
    try:
        data = load_measurements(data_path)
    except (MeasurementError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        init = load(args.init) if args.init else None
    except (OSError, ValueError, KeyError) as e:
        print(f"error: --init {args.init}: {e}", file=sys.stderr)
        return 2
    try:
        result = fit_device_model(
            data, args.family, num_devices=args.num_devices, q_s_from=args.q_s_from, g_max=args.g_max,
            t0=args.t0, t_read=args.t_read, basis=args.basis, degree=args.degree,
            max_rel_noise=args.max_rel_noise, se=args.se, init=init, starts=args.starts)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    out = Path(args.out) if args.out else data_path.with_name(f"{data_path.stem}_{args.family}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    save(result.model, out)
    print(f"model written to {out}")
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(
            {"family": result.family, "params": _finite(result.params()), "fixed": result.fixed, "stats": result.stats,
             "notes": result.notes}, indent=2) + "\n")
    if (args.figures or "").lower() != "none":
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        fig_dir = Path(args.figures) if args.figures else out.parent
        for path in plot_fit(jax.random.key(args.seed), result, fig_dir, prefix=out.stem):
            print(f"figure written to {path}")
    return 0


def _finite(params: dict) -> dict:
    """``{name: [value, stderr]}`` with ``None`` for the error of a parameter the data do not
    identify (JSON has no infinity)."""
    return {n: [v, s if s == s and abs(s) != float("inf") else None] for n, (v, s) in params.items()}
