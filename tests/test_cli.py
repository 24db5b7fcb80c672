"""The ``pcmjax`` command: study, results, info, fit dispatch, and its error messages."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from pcmjax import cli

# The study of tests/test_montecarlo.py (the same program, so a shared compilation cache
# serves both modules in one session).
from test_montecarlo import TINY_TOML

TOML = TINY_TOML.replace('name = "tiny"', 'name = "cli"')


@pytest.fixture
def study_file(tmp_path):
    p = tmp_path / "study.toml"
    p.write_text(TOML)
    return p


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    """The session's persistent compilation cache (shared with tests/test_montecarlo.py)."""
    from jax._src import compilation_cache

    path = tmp_path_factory.getbasetemp() / "pcmjax-xla-cache"
    path.mkdir(exist_ok=True)
    old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    yield path
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
    compilation_cache.reset_cache()


def test_info_prints_config_and_capacity(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "capacity: 64 cores × 256×256 = 4,194,304 weights on 16,777,216 PCM devices" in out
    assert "drift_compensation = 'global'" in out
    assert cli.main(["info", "--chip", "n_cores=8", "--chip", "adc.bits=8", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["capacity"]["weights"] == 8 * 256 * 256 and info["chip"]["adc"]["bits"] == 8


def test_info_bad_option_names_key_and_allowed(capsys):
    assert cli.main(["info", "--chip", "adc.bitz=8"]) == 2
    err = capsys.readouterr().err
    assert "bitz" in err and "allowed" in err and "'bits'" in err
    assert cli.main(["info", "--chip", "read_phases=3"]) == 2
    assert "read_phases must be 1 or 4" in capsys.readouterr().err


def test_study_results_and_refusal(tmp_path, study_file, capsys, xla_cache):
    out = tmp_path / "out"
    rc = cli.main(["study", "--config", str(study_file), "-o", str(out), "--no-compile-cache"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "mvm_error (%)" in captured.out and "calibrated" in captured.out  # the summary table
    assert "compiled in" in captured.err
    for name in ("results.npz", "summary.csv", "summary.json", "figures/mvm_error_vs_time.png"):
        assert (out / name).exists(), name
    with np.load(out / "results.npz") as z:
        assert z["values"].shape == (64, 3, 2, 2)
    assert cli.main(["results", str(out)]) == 0
    assert "1 y" in capsys.readouterr().out
    # the same command again: nothing to compute, same results
    assert cli.main(["study", "--config", str(study_file), "-o", str(out), "--quiet", "--no-compile-cache"]) == 0
    assert json.loads((out / "run.json").read_text())["computed"] == 0
    # a changed study in the same folder is refused, naming what changed
    study_file.write_text(TOML.replace("seed = 3", "seed = 4"))
    assert cli.main(["study", "--config", str(study_file), "-o", str(out), "--quiet", "--no-compile-cache"]) == 2
    err = capsys.readouterr().err
    assert "different study" in err and "seed" in err


@pytest.mark.parametrize("edit,message", [
    (("instances = 64", "instances = -5"), "instances must be a positive integer"),
    (("kind = \"mvm\"", "kind = \"mvp\""), "kind must be one of ['network', 'mvm']"),
    (("[chip]", "[chip]\nadc_bits = 3"), "[chip]: unknown key(s) ['adc_bits']; allowed:"),
    (("\"1 h\"", "\"1 hr.\""), "units"),
])
def test_bad_config_is_reported(tmp_path, study_file, capsys, edit, message):
    study_file.write_text(TOML.replace(*edit))
    assert cli.main(["study", "--config", str(study_file), "-o", str(tmp_path / "o"), "--no-compile-cache"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(study_file) in err


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["study", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fit_dispatches_to_pcmjax_fit(monkeypatch):
    import pcmjax.fit as fit

    seen = []
    monkeypatch.setattr(fit, "cli_main", lambda argv: seen.append(argv) or 7, raising=False)
    assert cli.main(["fit", "data.csv", "--family", "hermes"]) == 7
    assert seen == [["data.csv", "--family", "hermes"]]


def test_usage_errors_exit_with_argparse_status():
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["study", "--instances", "0"])
