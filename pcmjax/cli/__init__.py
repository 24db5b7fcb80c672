"""The ``pcmjax`` command.

::

    pcmjax study                          # the default study into ./pcmjax-results
    pcmjax study --config study.toml      # a study file (see pcmjax.montecarlo.config)
    pcmjax study --print-config           # a commented template of every study-file key
    pcmjax study --instances 1000 -o big  # override instances / seed / output / chunking
    pcmjax study --distributed --coordinator host0:1234 --num-processes 2 --process-id 0
    pcmjax results pcmjax-results         # the summary table of a finished run
    pcmjax info [--config study.toml] [--chip adc.bits=8 ...]
    pcmjax info --network default         # placement and cost (cores, latency, energy, TOPS/W)
    pcmjax info --network net.npz --results DIR   # ... beside a study's accuracy
    pcmjax fit ...                        # device-model fitting (pcmjax.fit)

Progress and messages go to stderr, the summary table to stdout. Compiled programs are
cached in ``$PCMJAX_CACHE/xla`` (default ``~/.cache/pcmjax/xla``), so a second run of
the same study (for instance after an interruption) skips the compilation; the study's
``run.json`` says what the cache served (``compile_cache``: ``requests``, ``hits``).
``PCMJAX_COMPILE_CACHE=DIR`` puts the cache elsewhere, ``PCMJAX_COMPILE_CACHE=0`` (or
``pcmjax study --no-compile-cache``) turns it off.

One module per subcommand (``_study``, ``_results``, ``_info`` with ``_network_info``,
``_fit``, ``_template`` for ``study --print-config``), each ``run(args) -> exit status``;
:mod:`pcmjax.cli._cli` holds the argument parser and imports a subcommand's module only
when it runs.
"""

from pcmjax.cli._cli import main

__all__ = ["main"]
