"""The ``pcmjax`` command.

::

    pcmjax study                          # the default study into ./pcmjax-results
    pcmjax study --config study.toml      # a study file (see pcmjax.montecarlo.config)
    pcmjax study --instances 1000 -o big  # override instances / seed / output / chunking
    pcmjax results pcmjax-results         # the summary table of a finished run
    pcmjax info [--config study.toml] [--chip adc.bits=8 ...]
    pcmjax fit ...                        # device-model fitting (pcmjax.fit)

Progress and messages go to stderr, the summary table to stdout. Compiled programs are
cached in ``$PCMJAX_CACHE/xla`` (default ``~/.cache/pcmjax/xla``), so a second run of
the same study (for instance after an interruption) skips most of the compilation.
"""

from __future__ import annotations

import argparse
import json
import sys


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pcmjax", description="Simulate PCM analog in-memory-compute chips "
                                "(HERMES class): Monte Carlo studies, chip info, device-model fitting.")
    sub = p.add_subparsers(dest="command", metavar="{study,results,info,fit}")
    sub.required = True

    s = sub.add_parser("study", help="run (or resume) a Monte Carlo study",
                       description="Run a Monte Carlo study: chip instances × times × variants. Without --config, "
                       "the embedded default study: a digits MLP (trained on first use and cached) on a HERMES "
                       "chip, 1 s to 1 year after programming, 100 instances, variants none / gdc / calibrated. "
                       "An interrupted run resumes when started again with the same command.")
    s.add_argument("--config", "-c", metavar="STUDY.toml", help="study file (TOML); default: the embedded study")
    s.add_argument("--output", "-o", metavar="DIR", help="output folder (default: [study] output, or "
                   "./pcmjax-results)")
    s.add_argument("--instances", "-n", type=_positive_int, help="number of chip instances")
    s.add_argument("--seed", type=int, help="random seed (instance i uses fold_in(key(seed), i))")
    s.add_argument("--chunk-size", type=_positive_int, help="instances per chunk (default: from the memory budget)")
    s.add_argument("--memory-budget", metavar="SIZE", help="memory one chunk may use, e.g. 2GiB (default: a quarter "
                   "of RAM, at most 2 GiB)")
    s.add_argument("--devices", type=_positive_int, help="JAX devices to shard instances over (default: all)")
    s.add_argument("--vmap-width", type=_positive_int, help="instances each device evaluates at once (default: "
                   "from the memory budget; results are bit-identical for a given width)")
    s.add_argument("--no-plots", action="store_true", help="do not write PNG figures")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bar, messages or table")
    s.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first (several "
                   "hosts; run the same command on every host, with a shared output folder)")
    s.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent compilation cache")

    r = sub.add_parser("results", help="print the summary table of a study's output folder (finished or "
                       "interrupted)")
    r.add_argument("folder", nargs="?", default="pcmjax-results")
    r.add_argument("--metric", action="append", help="only these metrics (repeatable)")

    i = sub.add_parser("info", help="print the chip configuration and capacity")
    i.add_argument("--config", "-c", metavar="STUDY.toml", help="take [chip] and [device] from a study file")
    i.add_argument("--chip", action="append", default=[], metavar="OPTION=VALUE",
                   help="override a chip option, e.g. --chip adc.bits=8 (repeatable; values parsed as TOML)")
    i.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("fit", help="fit a device model to measurements (pcmjax.fit; see pcmjax fit --help)",
                   add_help=False)
    return p


def _toml_value(text: str):
    from pcmjax.montecarlo.config import load_toml  # noqa: F401  (tomllib / tomli selection)

    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def _info(args) -> int:
    from pcmjax.chip.config import ChipConfig
    from pcmjax.montecarlo.config import ConfigError, build_device, load_toml

    chip_table, device = {}, None
    if args.config:
        from pathlib import Path

        cfg = load_toml(args.config)
        chip_table = cfg.get("chip", {})
        device = build_device(cfg.get("device", {}), Path(args.config).resolve().parent)
    cfg = ChipConfig.from_dict(chip_table)
    for item in args.chip:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--chip expects OPTION=VALUE (e.g. adc.bits=8), got {item!r}.")
        try:
            cfg = cfg.set(key.strip(), _toml_value(value.strip()))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--chip {item}: {e}") from e
    if device is None:
        from pcmjax.devices import HermesPCM

        device = HermesPCM(num_devices=2)
    n_dev = int(device.num_devices)
    info = {
        "chip": cfg.to_dict(),
        "capacity": {"cores": cfg.n_cores, "rows": cfg.rows, "cols": cfg.cols, "weights": cfg.capacity,
                     "pcm_devices": cfg.capacity * 2 * n_dev, "devices_per_weight": 2 * n_dev},
        "device": {"model": type(device).__name__, "num_devices": n_dev,
                   "g_max_uS": float(device.g_max), "t0_s": float(getattr(device, "t0", float("nan")))},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0

    def lines(d, indent="  "):
        for k, v in d.items():
            if isinstance(v, dict):
                yield f"{indent}{k}:"
                yield from lines(v, indent + "  ")
            else:
                yield f"{indent}{k} = {v!r}"

    cap = info["capacity"]
    print("chip configuration (pcmjax.ChipConfig):")
    print("\n".join(lines(info["chip"])))
    print(f"capacity: {cap['cores']} cores × {cap['rows']}×{cap['cols']} = {cap['weights']:,} weights on "
          f"{cap['pcm_devices']:,} PCM devices ({cap['devices_per_weight']} per weight)")
    d = info["device"]
    print(f"device model: {d['model']}(num_devices={d['num_devices']}), g_max = {d['g_max_uS']:.4g} µS per sign, "
          f"t0 = {d['t0_s']:.4g} s")
    return 0


def _study(args) -> int:
    import jax

    if args.distributed:  # pragma: no cover - needs a cluster
        jax.distributed.initialize()
    from pcmjax import montecarlo as mc
    from pcmjax.montecarlo import config as mcc

    if not args.no_compile_cache:
        mc.enable_compilation_cache()
    overrides = {"instances": args.instances, "seed": args.seed, "output": args.output,
                 "chunk_size": args.chunk_size, "memory_budget": args.memory_budget, "devices": args.devices,
                 "vmap_width": args.vmap_width}
    sc = mcc.load_study_file(args.config, overrides) if args.config else mcc.default_study(overrides)
    run = dict(sc.run)
    plots = bool(run.pop("plots", True)) and not args.no_plots
    results = mc.run_study(sc.study, sc.output, quiet=args.quiet, plots=plots, **run)
    if not args.quiet and jax.process_index() == 0:
        print(results.table())
        info = results.run_info
        print(f"\n{sc.study.evaluations} evaluations; compile {info['compile_s']:.1f} s, compute "
              f"{info['compute_s']:.1f} s, total {info['total_s']:.1f} s; results in {sc.output}/")
    return 0


def _results(args) -> int:
    from pcmjax.montecarlo import load_results

    res = load_results(args.folder, partial=True)
    if res.meta.get("partial"):
        print(f"interrupted run: {res.meta['partial']} instances finished (run the study again to complete it)\n")
    print(res.table(args.metric))
    return 0


def _fit(argv) -> int:
    try:
        from pcmjax import fit
    except ImportError as e:  # pragma: no cover - fit is part of the package
        print(f"pcmjax fit: not available ({e})", file=sys.stderr)
        return 2
    cli_main = getattr(fit, "cli_main", None)
    if cli_main is None:
        print("pcmjax fit: this version of pcmjax.fit has no command-line interface (pcmjax.fit.cli_main); "
              "use pcmjax.fit.fit_device_model from Python.", file=sys.stderr)
        return 2
    rc = cli_main(list(argv))
    return int(rc or 0)


def main(argv=None) -> int:
    """Entry point of the ``pcmjax`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fit":
        return _fit(argv[1:])
    args = _parser().parse_args(argv)
    from pcmjax.montecarlo.store import StudyMismatchError

    try:
        return {"study": _study, "results": _results, "info": _info}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, ImportError, StudyMismatchError) as e:
        print(f"pcmjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npcmjax {args.command}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
