"""``pcmjax fit``: device-model fitting, handed to :func:`pcmjax.fit.cli_main`."""

from __future__ import annotations

from pcmjax import fit


def run(argv) -> int:
    """Fit a device model to measurements (``argv``: the arguments after ``fit``)."""
    return int(fit.cli_main(list(argv)) or 0)
