"""Where pcmjax keeps what it can rebuild: trained default networks, data-set splits and
compiled programs.

Compiled programs go to JAX's persistent compilation cache. The ``pcmjax`` command turns
it on by default, in ``$PCMJAX_CACHE/xla`` (default ``~/.cache/pcmjax/xla``):

* ``PCMJAX_COMPILE_CACHE=0`` (or ``off``, ``no``, ``false``) turns it off, as does
  ``pcmjax study --no-compile-cache``;
* ``PCMJAX_COMPILE_CACHE=/some/folder`` puts it there instead.

JAX keys every entry by the program itself (its lowered HLO), the compiler options, the
JAX and XLA versions and the device, so a changed study or a changed pcmjax compiles
afresh and never reuses a stale program. :class:`CacheEvents` counts what a compilation
took from the cache (a study records it in ``run.json``: ``compile_cache``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import platform
import sys
from pathlib import Path

import jax
import jax.monitoring
from jax.experimental import serialize_executable

COMPILE_CACHE_ENV = "PCMJAX_COMPILE_CACHE"
_OFF = ("0", "off", "no", "false")
# Every program is cached, however quickly it compiled: a study's start-up compiles a few
# dozen small programs (data preparation), each much slower to compile than to read back.
MIN_COMPILE_TIME_S = 0.0
_REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
_HITS = "/jax/compilation_cache/cache_hits"


def cache_dir() -> Path:
    """``$PCMJAX_CACHE``, else ``$XDG_CACHE_HOME/pcmjax``, else ``~/.cache/pcmjax``."""
    if os.environ.get("PCMJAX_CACHE"):
        return Path(os.environ["PCMJAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "pcmjax"


def default_compile_cache() -> Path | None:
    """The compilation-cache folder the ``pcmjax`` command uses: ``$PCMJAX_COMPILE_CACHE``
    if it names a folder, ``None`` if it says ``0``/``off``/``no``/``false``, else
    ``cache_dir() / "xla"``."""
    value = os.environ.get(COMPILE_CACHE_ENV, "").strip()
    if value.lower() in _OFF:
        return None
    return Path(value).expanduser() if value else cache_dir() / "xla"


def enable_compilation_cache(path=None) -> str:
    """Cache compiled programs on disk, so that running or resuming the same study again
    skips the compilation.

    Args:
      path: the folder (default: ``$PCMJAX_CACHE/xla``, i.e. ``~/.cache/pcmjax/xla``).

    Returns:
      the folder, as a string.
    """
    folder = str(cache_dir() / "xla" if path is None else path)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    return folder


def compile_cache_folder() -> str | None:
    """The persistent compilation cache's folder if it is on, else ``None``."""
    if jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir:
        return str(jax.config.jax_compilation_cache_dir)
    return None


class CacheEvents:
    """Counts compilations that consulted the persistent cache and those it served,
    while the ``with`` block runs (``requests``, ``hits``)."""

    def __init__(self):
        self.requests = 0
        self.hits = 0

    def _listen(self, event: str, **_kw) -> None:
        if event == _REQUESTS:
            self.requests += 1
        elif event == _HITS:
            self.hits += 1

    def __enter__(self) -> CacheEvents:
        jax.monitoring.register_event_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_listener(self._listen)

    def summary(self) -> dict:
        """``{"dir", "requests", "hits"}`` (``dir`` ``None``: the cache is off)."""
        return {"dir": compile_cache_folder(), "requests": self.requests, "hits": self.hits}


# -- compiled study programs ------------------------------------------------------------
# JAX's cache is keyed by the lowered program, so a warm run still traces and lowers the
# study (most of a warm start). Beside it, a study's compiled per-device program is kept
# under a key of everything that determines it: the study's hash (network, data, chip,
# device, times, variants, metrics), the vmap width and histogram instances, the source
# text of pcmjax and of every other module outside the Python installation (a network
# factory of your own), the versions of JAX, jaxlib, Flax, NumPy and ml_dtypes, JAX's numerics
# options, XLA_FLAGS, and the device and host CPU. A hit skips tracing and compiling.
# Code installed into the Python installation is known by those versions only: a network
# built by an installed package of your own that changes without a new version needs the
# store emptied (or the cache off: PCMJAX_COMPILE_CACHE=0). A program JAX's cache served
# cannot be stored again (it does not serialise completely), so after a change of pcmjax
# that leaves the program as it was, warm runs take it from JAX's cache (lowering it first).
_PROGRAMS = "pcmjax-programs"
_PROGRAMS_KEPT = 32  # newest entries kept
_VERSIONED = ("jax", "jaxlib", "flax", "numpy", "ml_dtypes")
_JAX_OPTIONS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_threefry_partitionable",
                "jax_default_prng_impl", "jax_numpy_rank_promotion")


def _outside_installation(path: str, roots: tuple[str, ...]) -> bool:
    if path.startswith(roots):
        return False
    return not os.path.realpath(path).startswith(roots)


def _host_cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def environment_fingerprint() -> str:
    """A hash of the code and settings a compiled study program depends on, besides the
    study itself (see the comment above)."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    sources = {str(p) for p in package.rglob("*.py")}
    roots = tuple({os.path.join(os.path.realpath(p), "") for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
                  | {os.path.join(p, "") for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and f.endswith(".py") and _outside_installation(f, roots):
            sources.add(os.path.realpath(f))
    for f in sorted(sources):  # by content: a file touched but unchanged keeps the key
        try:
            h.update(f"{f}:".encode() + hashlib.sha256(Path(f).read_bytes()).digest())
        except OSError:
            h.update(f"{f}:unreadable;".encode())
    for name in _VERSIONED:
        h.update(f"{name}={getattr(sys.modules.get(name), '__version__', None)};".encode())
    for name in _JAX_OPTIONS:
        h.update(f"{name}={getattr(jax.config, name, None)};".encode())
    dev = jax.devices()[0]
    h.update(f"{os.environ.get('XLA_FLAGS', '')};{dev.platform};{dev.device_kind};".encode())
    h.update(f"{getattr(dev.client, 'platform_version', '')};{platform.machine()};{_host_cpu()}".encode())
    return h.hexdigest()


class ProgramStore:
    """Compiled single-device study programs on disk (in the compilation cache's folder).

    Args:
      folder: the compilation cache's folder; the programs go to its ``pcmjax-programs``.
      identity: what determines the programs apart from the width (a study's hash and
        histogram instances); the environment's fingerprint is added.
    """

    def __init__(self, folder, identity: str):
        self.folder = Path(folder) / _PROGRAMS
        self.key = hashlib.sha256(f"{identity};{environment_fingerprint()}".encode()).hexdigest()[:40]

    def _path(self, what) -> Path:
        return self.folder / f"{self.key}-{what}.pkl"

    def estimate(self) -> int | None:
        """The stored peak-memory estimate of one instance (bytes), if any."""
        return self._read("estimate")

    def load(self, width: int, device):
        """The stored program of ``width`` instances loaded on ``device``, or ``None``."""
        entry = self._read(f"w{width}")
        if entry is None:
            return None
        try:
            return serialize_executable.deserialize_and_load(*entry, execution_devices=[device])
        except Exception:  # noqa: BLE001 - an unreadable entry: compile instead
            return None

    def save(self, width: int, compiled, per_instance: int) -> bool:
        """Store ``compiled`` (a freshly compiled executable) and the estimate; ``False``
        if it cannot be serialised."""
        try:
            entry = serialize_executable.serialize(compiled)
        except Exception:  # noqa: BLE001 - not serialisable on this backend
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write(f"w{width}", entry)
        self._write("estimate", int(per_instance))
        files = sorted(self.folder.glob("*-w*.pkl"), key=lambda p: p.stat().st_mtime)
        for old in files[:-_PROGRAMS_KEPT]:
            old.unlink(missing_ok=True)
        return True

    def _read(self, what):
        path = self._path(what)
        try:
            with open(path, "rb") as f:
                value = pickle.load(f)
            path.touch()  # recently used: kept
            return value
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            return None

    def _write(self, what, value) -> None:
        path = self._path(what)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(value, f)
        os.replace(tmp, path)
