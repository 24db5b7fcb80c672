"""``pcmjax study``: run (or resume) a Monte Carlo study, on one process or several."""

from __future__ import annotations

import jax

from pcmjax import montecarlo as mc
from pcmjax._validate import check_int
from pcmjax.montecarlo import config as mcc


def _join_distributed(args) -> None:
    """Check the multi-process options and, with ``--distributed``, join the run (before
    anything starts a JAX backend)."""
    given = {k: v for k, v in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                               ("--process-id", args.process_id)) if v is not None}
    if given and not args.distributed:
        raise ValueError(f"{', '.join(given)} need --distributed.")
    if not args.distributed:
        return
    if given and len(given) < 3:
        raise ValueError("--distributed outside a recognised cluster needs all of --coordinator, --num-processes "
                         f"and --process-id; got only {', '.join(given)}.")
    if args.process_id is not None:
        check_int("--process-id", args.process_id, 0, args.num_processes - 1)
    mc.init_distributed(args.coordinator, args.num_processes, args.process_id)


def run(args) -> int:
    """Run the study of ``args.config`` (default: the embedded study); print its table."""
    _join_distributed(args)
    cache = None if args.no_compile_cache else mc.default_compile_cache()
    if cache is not None:
        mc.enable_compilation_cache(cache)
    overrides = {"instances": args.instances, "seed": args.seed, "output": args.output,
                 "chunk_size": args.chunk_size, "memory_budget": args.memory_budget, "devices": args.devices,
                 "vmap_width": args.vmap_width, "histogram_instances": args.histogram_instances}
    sc = mcc.load_study_file(args.config, overrides) if args.config else mcc.default_study(overrides)
    run_options = dict(sc.run)
    plots = bool(run_options.pop("plots", True)) and not args.no_plots
    results = mc.run_study(sc.study, sc.output, quiet=args.quiet, plots=plots, **run_options)
    if not args.quiet and jax.process_index() == 0:
        print(results.table())
        info = results.run_info
        print(f"\n{sc.study.evaluations} evaluations; compile {info['compile_s']:.1f} s, compute "
              f"{info['compute_s']:.1f} s, total {info['total_s']:.1f} s; results in {sc.output}/")
    return 0
