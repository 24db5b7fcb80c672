"""The ``pcmjax`` command's argument parser and dispatch (see :mod:`pcmjax.cli`).

Only the parser is built here: each subcommand's module is imported when that subcommand
runs, so ``pcmjax --help`` and usage errors answer without importing the simulator.
"""

from __future__ import annotations

import argparse
import sys

from pcmjax._validate import check_int


def _int_at_least(lo: int, what: str):
    """An argparse type: an integer ``>= lo`` (``what`` names it in the error)."""
    def parse(s):
        try:
            return check_int("the value", int(s), lo=lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {s!r}") from None
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


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
    s.add_argument("--print-config", action="store_true", help="print a commented template of every study-file "
                   "key (the default study) and exit")
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
    s.add_argument("--histogram-instances", type=_non_negative_int, help="instances pooled in the conductance "
                   "histograms (default 8; 0: none, a smaller and faster program)")
    s.add_argument("--no-plots", action="store_true", help="do not write PNG figures")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bar, messages or table")
    s.add_argument("--distributed", action="store_true", help="join a multi-process run (several hosts: the same "
                   "command on every host, with a shared output folder; on SLURM / Open MPI the cluster settings "
                   "are detected, elsewhere give the three options below)")
    s.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed: address of process 0")
    s.add_argument("--num-processes", type=_positive_int, help="with --distributed: number of processes")
    s.add_argument("--process-id", type=int, help="with --distributed: this process's index, 0 … N-1")
    s.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent compilation cache "
                   "(default: on, in $PCMJAX_CACHE/xla or ~/.cache/pcmjax/xla; PCMJAX_COMPILE_CACHE=DIR moves it, "
                   "PCMJAX_COMPILE_CACHE=0 turns it off)")

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


def _command(name: str):
    """The ``run`` function of a subcommand's module."""
    # Imported here, not at the top: a subcommand's module imports JAX, Flax and the
    # simulator (seconds), which `pcmjax --help` and the other subcommands do not need.
    if name == "template":
        from pcmjax.cli import _template as module
    elif name == "study":
        from pcmjax.cli import _study as module
    elif name == "results":
        from pcmjax.cli import _results as module
    elif name == "info":
        from pcmjax.cli import _info as module
    else:
        from pcmjax.cli import _fit as module
    return module.run


def main(argv=None) -> int:
    """Entry point of the ``pcmjax`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fit":  # pcmjax.fit parses its own arguments
        return _command("fit")(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "study" and args.print_config:
            return _command("template")(args)
        return _command(args.command)(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:  # StudyMismatchError is a ValueError
        print(f"pcmjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npcmjax {args.command}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
