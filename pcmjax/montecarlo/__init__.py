"""Monte Carlo studies of PCM chips: many instances × times × variants, fast and resumable.

::

    from pcmjax import montecarlo as mc

    study = mc.Study(mc.MVMWorkload(cores=4), times=mc.log_times(1, mc.YEAR, 6), instances=200)
    results = mc.run_study(study, "results/")      # vmapped, chunked, sharded, resumable
    print(results.table())
    results.get("mvm_error", "gdc")                # [instances, times]

A study evaluates a *workload* (:class:`MVMWorkload`: raw chip MVMs; :class:`NetworkWorkload`:
a deployed network) on ``instances`` independently programmed chips (instance ``i``
draws from ``fold_in(key(seed), i)`` only), at every time, for every :class:`Variant`
(named chip-config overrides, e.g. no compensation / global drift compensation /
calibrated). :func:`run_study` writes per-chunk files so an interrupted run continues
where it stopped, then ``results.npz``, ``summary.json``/``.csv`` and figures.
"""

from pcmjax.montecarlo._cache import cache_dir, default_compile_cache, enable_compilation_cache
from pcmjax.montecarlo._chunks import choose_chunk, make_mesh
from pcmjax.montecarlo._programs import instance_function
from pcmjax.montecarlo.checkpoints import build_network, default_network, load_network, save_network
from pcmjax.montecarlo.config import ConfigError, StudyConfig, default_study, load_study_file, study_from_dict
from pcmjax.montecarlo.network import NetworkWorkload
from pcmjax.montecarlo.results import Results, load_results
from pcmjax.montecarlo.runner import init_distributed, run_study
from pcmjax.montecarlo.store import StudyMismatchError
from pcmjax.montecarlo.study import DAY, HOUR, MINUTE, MONTH, WEEK, YEAR, Study, format_time, log_times
from pcmjax.montecarlo.variant import DEFAULT_VARIANTS, ResolvedVariant, Variant
from pcmjax.montecarlo.workloads import MVMWorkload, Workload, fit_column_affine, relative_error

__all__ = [
    "Study", "Variant", "ResolvedVariant", "DEFAULT_VARIANTS", "Workload", "MVMWorkload", "run_study",
    "Results", "load_results", "StudyMismatchError", "log_times", "format_time", "make_mesh", "choose_chunk",
    "instance_function", "relative_error", "fit_column_affine", "enable_compilation_cache", "init_distributed",
    "NetworkWorkload",
    "build_network", "save_network", "load_network", "default_network", "cache_dir", "default_compile_cache",
    "ConfigError", "StudyConfig",
    "default_study", "load_study_file", "study_from_dict", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH", "YEAR",
]
