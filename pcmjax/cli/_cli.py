"""The ``pcmjax`` command.

::

    pcmjax study                          # the default study into ./pcmjax-results
    pcmjax study --config study.toml      # a study file (see pcmjax.montecarlo.config)
    pcmjax study --instances 1000 -o big  # override instances / seed / output / chunking
    pcmjax study --distributed --coordinator host0:1234 --num-processes 2 --process-id 0
    pcmjax results pcmjax-results         # the summary table of a finished run
    pcmjax info [--config study.toml] [--chip adc.bits=8 ...]
    pcmjax info --network default         # placement and cost (cores, latency, energy, TOPS/W)
    pcmjax info --network net.npz --results DIR   # ... beside a study's accuracy
    pcmjax fit ...                        # device-model fitting (pcmjax.fit)

Progress and messages go to stderr, the summary table to stdout. Compiled programs are
cached in ``$PCMJAX_CACHE/xla`` (default ``~/.cache/pcmjax/xla``), so a second run of
the same study (for instance after an interruption) skips most of the compilation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
    s.add_argument("--distributed", action="store_true", help="join a multi-process run (several hosts: the same "
                   "command on every host, with a shared output folder; on SLURM / Open MPI the cluster settings "
                   "are detected, elsewhere give the three options below)")
    s.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed: address of process 0")
    s.add_argument("--num-processes", type=_positive_int, help="with --distributed: number of processes")
    s.add_argument("--process-id", type=int, help="with --distributed: this process's index, 0 … N-1")
    s.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent compilation cache")

    r = sub.add_parser("results", help="print the summary table of a study's output folder (finished or "
                       "interrupted)")
    r.add_argument("folder", nargs="?", default="pcmjax-results")
    r.add_argument("--metric", action="append", help="only these metrics (repeatable)")

    i = sub.add_parser("info", help="print the chip configuration and capacity")
    i.add_argument("--config", "-c", metavar="STUDY.toml", help="take [chip] and [device] from a study file (and, "
                   "for a network study with a [workload] checkpoint, the network and the study's output folder)")
    i.add_argument("--chip", action="append", default=[], metavar="OPTION=VALUE",
                   help="override a chip option, e.g. --chip adc.bits=8 (repeatable; values parsed as TOML)")
    i.add_argument("--network", metavar="NETWORK", help="a network checkpoint (.npz, pcmjax.montecarlo.save_network) "
                   "or 'default' (the cached digits MLP): print its placement on the chip and its cost per inference "
                   "(cores, MVMs, latency, energy, TOPS, TOPS/W from published HERMES figures)")
    i.add_argument("--results", metavar="DIR", help="with --network: a Monte Carlo study output folder whose "
                   "accuracy (per variant, first and last time) is printed beside the cost (default: "
                   "./pcmjax-results if it holds a study of the same network)")
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
    from pcmjax.config import ChipConfig
    from pcmjax.montecarlo.config import ConfigError, build_device, load_toml

    chip_table, device = {}, None
    if args.config:
        cfg = load_toml(args.config)
        chip_table = cfg.get("chip", {})
        base = Path(args.config).resolve().parent
        device = build_device(cfg.get("device", {}), base)
        workload = cfg.get("workload", {})
        if (args.network is None and isinstance(workload, dict) and workload.get("kind", "network") == "network"
                and isinstance(workload.get("checkpoint"), str)):
            # The study's own network, and (unless --results says otherwise) its output folder.
            ckpt = workload["checkpoint"]
            args.network = ckpt if ckpt == "default" or Path(ckpt).is_absolute() else str(base / ckpt)
            output = cfg.get("study", {}).get("output")
            if args.results is None and isinstance(output, str) and Path(output).is_dir():
                args.results = output
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
    if args.results is not None and args.network is None:
        raise ValueError("--results needs --network (the network whose cost is printed beside the accuracy).")
    n_dev = int(device.num_devices)
    info = {
        "chip": cfg.to_dict(),
        "capacity": {"cores": cfg.n_cores, "rows": cfg.rows, "cols": cfg.cols, "weights": cfg.capacity,
                     "pcm_devices": cfg.capacity * 2 * n_dev, "devices_per_weight": 2 * n_dev},
        "device": {"model": type(device).__name__, "num_devices": n_dev,
                   "g_max_uS": float(device.g_max), "t0_s": float(getattr(device, "t0", float("nan")))},
    }
    net = _network_info(args, cfg) if args.network is not None else None
    if net is not None:
        info.update(net["json"])
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if net is not None:
        print(net["text"])
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


DEFAULT_RESULTS = "pcmjax-results"


def _input_shape(arch: dict) -> tuple:
    """One example's shape for a checkpoint's architecture (see build_network)."""
    kind = arch.get("kind")
    if kind == "mlp":
        return (int(arch.get("in_features", 64)),)
    if kind == "small_cnn":
        side = int(arch.get("image_size", 8))
        return (side, side, int(arch.get("in_features", 1)))
    raise ValueError(f"--network: cannot tell the input shape of architecture kind {kind!r}; "
                     "known: 'mlp', 'small_cnn'.")


def _load_network(name: str, log):
    from pcmjax.montecarlo import network

    if name == "default":
        path = network.default_network_path()
        if not path.exists():
            network.default_network(path, log=log)
    else:
        path = Path(name)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"--network: network checkpoint {name!r} {what}; give a checkpoint file "
                                    "written by pcmjax.montecarlo.save_network (.npz) or 'default' (the cached "
                                    "digits MLP).")
    try:
        model, arch, ckpt = network.load_network(path)
    except (ValueError, KeyError) as e:
        raise ValueError(f"--network: {e}") from e
    return model, arch, ckpt, path


def _study_spec(folder) -> dict:
    """The study spec in a study folder's manifest (``{}`` if there is none or it is unreadable)."""
    from pcmjax.montecarlo.store import RunFolder

    folder = Path(folder)
    if folder.suffix == ".npz":
        folder = folder.parent
    try:
        m = RunFolder(folder).manifest() or {}
    except ValueError:
        return {}
    spec = m.get("spec", {})
    return spec if isinstance(spec, dict) else {}


def _study_accuracy(folder, explicit: bool):
    """``(accuracy dict, source note)`` of a study output folder: mean accuracy per variant
    at the first and last time."""
    from pcmjax.montecarlo import load_results

    arg = f"--results {folder}" if explicit else f"./{folder}"
    if not Path(folder).exists():
        raise FileNotFoundError(f"{arg}: the folder does not exist; give the output folder of a `pcmjax study` run.")
    try:
        res = load_results(folder, partial=True)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{arg}: {e} Give the output folder of a `pcmjax study` run (it holds "
                                "manifest.json and, when finished, results.npz).") from None
    except (ValueError, KeyError) as e:
        raise ValueError(f"{arg}: not a readable pcmjax study output ({e}).") from None
    if "accuracy" not in res.metrics:
        raise ValueError(f"{arg}: the study has no 'accuracy' metric (its metrics: {list(res.metrics)}); give the "
                         "output folder of a network study.")
    rows = {(r["time_s"], r["variant"]): r for r in res.summary() if r["metric"] == "accuracy"}
    times = sorted({float(res.times[0]), float(res.times[-1])})
    acc = {}
    for v in res.variants:
        for t in times:
            r = rows[(t, v)]
            if r["mean"] is not None:
                acc[f"{v} at {r['time']}"] = float(r["mean"])
    n = res.values.shape[0]
    partial = res.meta.get("partial")
    note = (f"accuracy: mean over {n} chip instance{'s' if n != 1 else ''} of the study in {folder}"
            f"{f' (interrupted run: {partial} instances)' if partial else ''}")
    return acc, note


def _network_info(args, cfg) -> dict:
    """Placement and cost of ``--network`` on chips of ``cfg``, with ``--results`` accuracy."""
    from pcmjax import cost
    from pcmjax.montecarlo.network import params_fingerprint
    from pcmjax.nn import plan

    def log(msg):
        print(msg, file=sys.stderr)

    if (cfg.rows, cfg.cols) != (cost.HERMES_ROWS, cost.HERMES_COLS):
        raise ValueError(f"--network: the cost model uses the published HERMES figures of {cost.HERMES_ROWS}×"
                         f"{cost.HERMES_COLS} cores, but the chip has {cfg.rows}×{cfg.cols} cores; drop --chip "
                         "rows/cols (or the [chip] rows/cols of the study file).")
    model, arch, ckpt, path = _load_network(args.network, log)
    shape = _input_shape(arch)
    # As many chips as the network needs (plan with room to spare, then exactly).
    tiles = plan(model, cfg, n_chips=1 << 20).n_tiles
    n_chips = max(1, -(-tiles // cfg.n_cores))
    layout = plan(model, cfg, n_chips=n_chips)
    mvms = cost.layer_mvms(model, layout, shape)
    layers = cost.from_layout(layout, mvms)
    phases = cfg.read_phases
    costs = cost.network_cost(layers, phases, cores_per_chip=cfg.n_cores)

    accuracy, source, notes = None, None, []
    digital = ckpt.get("test_accuracy") if isinstance(ckpt, dict) else None
    folder = args.results
    if folder is None and Path(DEFAULT_RESULTS).is_dir():
        wl = _study_spec(DEFAULT_RESULTS).get("workload", {})
        if wl.get("params_sha256") is not None and wl.get("params_sha256") == params_fingerprint(model):
            folder = DEFAULT_RESULTS
        else:
            what = "a study of another network" if wl.get("kind") == "network" else "no network study"
            notes.append(f"note: ./{DEFAULT_RESULTS} holds {what}; its accuracy is not shown (use --results DIR).")
    if folder is not None:
        accuracy, source = _study_accuracy(folder, explicit=args.results is not None)
        spec = _study_spec(folder)
        h = spec.get("workload", {}).get("params_sha256")
        if h is None:
            source += "; its network could not be checked (no manifest.json with a network workload)"
        elif h != params_fingerprint(model):
            source += f"; WARNING: that study was made for a different network than {args.network}"
        study_phases = spec.get("chip", {}).get("read_phases")
        if study_phases in (1, 4) and study_phases != phases:
            source += (f"; the study read the chip in {'one' if study_phases == 1 else 'four'}-phase mode, the "
                       f"cost above is for {'one' if phases == 1 else 'four'}-phase (--chip read_phases="
                       f"{study_phases} for the study's)")
    shown = {}
    if isinstance(digital, (int, float)) and not isinstance(digital, bool):
        shown["digital (checkpoint)"] = float(digital)
    shown.update(accuracy or {})

    name = f"the default digits MLP ({path})" if args.network == "default" else str(path)
    mode = "one-phase" if phases == 1 else "four-phase"
    head = (f"network {name}: {arch.get('kind')}, input {'×'.join(map(str, shape))}; "
            f"{layout.n_tiles} cores on {n_chips} chip{'s' if n_chips > 1 else ''} of {cfg.n_cores} cores of "
            f"{cfg.rows}×{cfg.cols}, {mode} reads (--chip read_phases=1|4)")
    text = "\n\n".join([
        head,
        layout.report(),
        cost.report(layers, phases, accuracy=shown or None, title=f"Chip cost per inference ({cost.SOURCE})",
                    cores_per_chip=cfg.n_cores),
    ])
    if source:
        text += f"\n  ({source})"
    for n in notes:
        log(n)
    layout_json = [{"name": lp.name, "shape": list(lp.shape), "tiles": lp.n_tiles,
                    "row_splits": len(lp.row_chunks), "col_splits": len(lp.col_chunks),
                    "first_core": lp.first_core, "utilisation": lp.utilisation, "mvms": mvms[lp.name]}
                   for lp in layout.layers]
    js = {
        "network": {"checkpoint": str(path), "architecture": arch, "input_shape": list(shape),
                    "checkpoint_info": ckpt, "n_chips": n_chips, "cores": layout.n_tiles, "layers": layout_json},
        "cost": {**costs, "source": cost.SOURCE},
        "accuracy": accuracy,
        "accuracy_source": str(folder) if folder is not None else None,
    }
    if digital is not None:
        js["network"]["digital_accuracy"] = digital
    return {"text": text, "json": js}


def _study(args) -> int:
    import jax

    given = {k: v for k, v in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                               ("--process-id", args.process_id)) if v is not None}
    if given and not args.distributed:
        raise ValueError(f"{', '.join(given)} need --distributed.")
    if args.distributed:
        if given and len(given) < 3:
            raise ValueError("--distributed outside a recognised cluster needs all of --coordinator, --num-processes "
                             f"and --process-id; got only {', '.join(given)}.")
        if args.process_id is not None and not 0 <= args.process_id < args.num_processes:
            raise ValueError(f"--process-id must be in 0 … {args.num_processes - 1}, got {args.process_id}.")
        from pcmjax.montecarlo.runner import init_distributed

        init_distributed(args.coordinator, args.num_processes, args.process_id)
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
