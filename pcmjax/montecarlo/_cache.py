"""Where pcmjax keeps what it can rebuild: trained default networks, data-set splits and
compiled programs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$PCMJAX_CACHE``, else ``$XDG_CACHE_HOME/pcmjax``, else ``~/.cache/pcmjax``."""
    if os.environ.get("PCMJAX_CACHE"):
        return Path(os.environ["PCMJAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "pcmjax"
