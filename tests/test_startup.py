"""Start-up: what importing pcmjax and the ``pcmjax`` command load, and the compilation
caches a study uses by default (a warm run takes its program from them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from pcmjax import montecarlo as mc
from pcmjax.cli import _study
from pcmjax.montecarlo import _cache

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("matplotlib", "sklearn", "optax", "tqdm", "scipy")

SMALL_TOML = """\
[study]
name = "startup"
instances = 2
seed = 1
times = ["1 s", "1 day"]

[workload]
kind = "mvm"
cores = 2
rows = 16
cols = 16
batch = 4
calibration_batch = 4

[chip]
n_cores = 2
rows = 16
cols = 16

[variants.gdc]
drift_compensation = "global"
"""


def _modules_after(code: str, names=HEAVY + ("pcmjax.montecarlo",)) -> list[str]:
    """The modules of ``names`` (default: ``HEAVY`` and ``pcmjax.montecarlo``) loaded by
    ``code`` in a fresh interpreter."""
    probe = (f"{code}\nimport sys\nnames = {tuple(names)!r}\n"
             "print('loaded:' + ','.join(n for n in names if n in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("loaded:")][-1]
    return [n for n in line[len("loaded:"):].split(",") if n]


def test_import_pcmjax_loads_nothing_heavy():
    assert _modules_after("import pcmjax") == []


def test_import_pcmjax_loads_no_flax():
    # The chip and its pytrees are plain JAX; flax (linen included) comes with pcmjax.nn.
    assert _modules_after("import pcmjax", ("flax", "flax.linen", "flax.nnx")) == []
    assert _modules_after("import pcmjax.nn", ("flax",)) == ["flax"]  # the probe sees flax


def test_help_loads_nothing_heavy():
    code = ("from pcmjax import cli\nfor argv in (['--help'], ['study', '--help']):\n    try:\n"
            "        cli.main(argv)\n    except SystemExit as e:\n        assert e.code == 0\n")
    assert _modules_after(code) == []


def test_default_compile_cache_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PCMJAX_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("PCMJAX_COMPILE_CACHE", raising=False)
    assert mc.default_compile_cache() == tmp_path / "c" / "xla"
    for off in ("0", "off", "False", " no "):
        monkeypatch.setenv("PCMJAX_COMPILE_CACHE", off)
        assert mc.default_compile_cache() is None, off
    monkeypatch.setenv("PCMJAX_COMPILE_CACHE", str(tmp_path / "elsewhere"))
    assert mc.default_compile_cache() == tmp_path / "elsewhere"


class _Stop(Exception):
    pass


@pytest.mark.parametrize("env,flag,expected", [
    (None, False, "xla"), ("0", False, None), (None, True, None), ("DIR", False, "elsewhere")])
def test_study_command_turns_the_cache_on_by_default(monkeypatch, tmp_path, env, flag, expected):
    """``pcmjax study`` sets JAX's cache folder before running the study, unless told not to."""
    from jax._src import compilation_cache

    monkeypatch.setenv("PCMJAX_CACHE", str(tmp_path))
    if env is None:
        monkeypatch.delenv("PCMJAX_COMPILE_CACHE", raising=False)
    else:
        monkeypatch.setenv("PCMJAX_COMPILE_CACHE", str(tmp_path / "elsewhere") if env == "DIR" else env)
    seen = []

    def fake_run_study(*a, **kw):
        seen.append(_cache.compile_cache_folder())
        raise _Stop

    monkeypatch.setattr(mc, "run_study", fake_run_study)
    study_file = tmp_path / "s.toml"
    study_file.write_text(SMALL_TOML)
    old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", None)
    args = _study_args(study_file, tmp_path / "out", no_compile_cache=flag)
    try:
        with pytest.raises(_Stop):
            _study.run(args)
    finally:
        jax.config.update("jax_compilation_cache_dir", old[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
        compilation_cache.reset_cache()
    assert seen == [None if expected is None else str(tmp_path / expected)]


def _study_args(config, output, no_compile_cache=False):
    from pcmjax.cli._cli import _parser

    argv = ["study", "--config", str(config), "-o", str(output), "--quiet", "--no-plots"]
    return _parser().parse_args(argv + (["--no-compile-cache"] if no_compile_cache else []))


def test_environment_fingerprint_follows_code_outside_the_installation(tmp_path, monkeypatch):
    """A network factory of your own is part of a stored program's key: editing it
    changes the key."""
    src = tmp_path / "my_factory_mod.py"
    src.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = _cache.environment_fingerprint()
    import my_factory_mod  # noqa: F401 - loaded: now part of the key

    loaded = _cache.environment_fingerprint()
    assert loaded != before
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, unchanged: same key
    assert _cache.environment_fingerprint() == loaded
    src.write_text("X = 2\n")
    assert _cache.environment_fingerprint() != loaded
    monkeypatch.delitem(sys.modules, "my_factory_mod")


def _run_cli(study_file, out, cache):
    env = dict(os.environ, PCMJAX_CACHE=str(cache), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("PCMJAX_COMPILE_CACHE", None)
    proc = subprocess.run([sys.executable, "-m", "pcmjax.cli", "study", "--config", str(study_file), "-o", str(out),
                           "--no-plots"], env=env, capture_output=True, text=True, timeout=600, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out / "results.npz") as z:
        values = z["values"]
    return json.loads((out / "run.json").read_text()), values, proc.stderr


def test_warm_run_takes_its_program_from_the_caches(tmp_path):
    """A fresh process compiles and stores the study's program; the next one loads it (no
    compilation), and without the program store JAX's cache still serves it. Every run
    gives the same results."""
    study_file = tmp_path / "s.toml"
    study_file.write_text(SMALL_TOML)
    cache = tmp_path / "cache"
    cold, v_cold, _ = _run_cli(study_file, tmp_path / "cold", cache)
    assert cold["compile_cache"] == {"dir": str(cache / "xla"), "requests": 1, "hits": 0, "program_store": "saved"}
    warm, v_warm, err = _run_cli(study_file, tmp_path / "warm", cache)
    assert warm["compile_cache"]["program_store"] == "hit" and warm["compile_cache"]["requests"] == 0
    assert "compiled program from the program store" in err
    for f in (cache / "xla" / "pcmjax-programs").iterdir():
        f.unlink()
    jax_only, v_jax, err = _run_cli(study_file, tmp_path / "jax", cache)
    assert jax_only["compile_cache"]["hits"] == 1 and jax_only["compile_cache"]["program_store"] == "miss"
    assert "from the compilation cache" in err
    np.testing.assert_array_equal(v_warm, v_cold)
    np.testing.assert_array_equal(v_jax, v_cold)
