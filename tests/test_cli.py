"""The ``pcmjax`` command: study, results, info, fit dispatch, and its error messages."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

# The study of tests/test_montecarlo.py (the same program, so a shared compilation cache
# serves both modules in one session).
from test_montecarlo import TINY_TOML

from pcmjax import cli

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
    assert "read_phases must be one of (1, 4), got 3" in capsys.readouterr().err


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


def test_study_without_histograms(tmp_path, study_file, capsys, xla_cache):
    out = tmp_path / "out"
    assert cli.main(["study", "--config", str(study_file), "-o", str(out), "--quiet", "--no-plots",
                     "--no-compile-cache", "--histogram-instances", "0"]) == 0
    assert (out / "results.npz").exists() and not (out / "conductances.npz").exists()
    with pytest.raises(SystemExit):
        cli.main(["study", "--config", str(study_file), "--histogram-instances", "-1"])
    assert "--histogram-instances: must be an integer >= 0, got '-1'" in capsys.readouterr().err


@pytest.mark.parametrize("edit,message", [
    (("instances = 64", "instances = -5"), "instances must be an integer >= 1, got -5"),
    (("kind = \"mvm\"", "kind = \"mvp\""), "kind must be one of ('network', 'mvm'), got 'mvp'"),
    (("[run]", "[run]\ndevices = 0"), "[run] devices must be an integer >= 1, got 0"),
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


def test_help_imports_no_simulator():
    """``pcmjax --help`` builds the parser only: no subcommand module, Monte Carlo code,
    network layers or optimiser library is imported (they take seconds)."""
    import subprocess
    import sys

    code = ("import sys\nfrom pcmjax import cli\ntry:\n    cli.main(['study', '--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nheavy = [m for m in ('pcmjax.cli._study', 'pcmjax.montecarlo', 'pcmjax.nn',"
            " 'optax') if m in sys.modules]\nassert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--instances" in proc.stdout and "--distributed" in proc.stdout


def test_usage_errors_exit_with_argparse_status():
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["study", "--instances", "0"])


# -- pcmjax info --network: placement and cost ------------------------------------------
# Tiny networks (saved with save_network) instead of the default one, so the tests stay fast.
MLP = {"kind": "mlp", "in_features": 8, "hidden": [300], "out_features": 10}  # 8×300 (1×2), 300×10 (2×1)
CNN = {"kind": "small_cnn", "in_features": 1, "channels": [4, 300, 4], "num_classes": 10, "image_size": 8}

# HERMES, Le Gallo et al. 2023 Table I, typed in again: one MVM of the 64-core chip takes
# 133 / 520 ns and 0.86 / 3.38 µJ (one- / four-phase); a core-MVM costs 1/64 of that energy.
T_MVM_NS = {1: 133.0, 4: 520.0}
E_CORE_UJ = {1: 0.86 / 64, 4: 3.38 / 64}


def _checkpoint(folder, arch, seed=0, name="net.npz", measured=True, **info):
    """An untrained network of ``arch`` saved with its input ranges (``measured``) or without."""
    from pcmjax import nn as pnn
    from pcmjax.montecarlo import build_network, save_network

    model = build_network(arch, seed=seed)
    if measured:
        shape = (arch["in_features"],) if arch["kind"] == "mlp" else (arch["image_size"],) * 2 + (arch["in_features"],)
        pnn.set_input_scales(model, np.random.default_rng(seed).uniform(0, 1, (8, *shape)).astype(np.float32))
    return save_network(folder / name, model, arch, **info), model


def test_info_network_mlp_cores_latency_energy(tmp_path, capsys):
    import pcmjax as pj
    from pcmjax import nn as pnn

    path, model = _checkpoint(tmp_path, MLP, test_accuracy=0.5)
    assert cli.main(["info", "--network", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    layout = pnn.plan(model, pj.ChipConfig())
    assert [layer["tiles"] for layer in info["network"]["layers"]] == [lp.n_tiles for lp in layout.layers] == [2, 2]
    assert [layer["mvms"] for layer in info["network"]["layers"]] == [1, 1]
    c = info["cost"]
    assert c["cores_used"] == layout.n_tiles == 4 and c["chips"] == 1 and c["read_phases"] == 1
    # Dense layers: one MVM each, one after the other; energy: Σ MVMs × tiles × e_core.
    assert c["latency_ns"] == pytest.approx(2 * T_MVM_NS[1])
    energy = (1 * 2 + 1 * 2) * E_CORE_UJ[1]
    assert c["energy_uj"] == pytest.approx(energy)
    ops = 2 * (8 * 300 + 300 * 10)
    assert c["ops"] == pytest.approx(ops)
    assert c["tops_per_w"] == pytest.approx(ops / (energy * 1e-6) / 1e12)
    assert c["tops"] == pytest.approx(ops / (2 * T_MVM_NS[1] * 1e-9) / 1e12)
    assert info["network"]["digital_accuracy"] == 0.5 and info["accuracy"] is None

    assert cli.main(["info", "--network", str(path)]) == 0
    out = capsys.readouterr().out
    assert layout.report() in out  # the placement table
    assert "cores used           4 (1 chip of 64;" in out
    assert f"latency              {2 * T_MVM_NS[1] / 1e3:.3f} µs" in out
    assert f"energy               {energy:.3f} µJ per inference" in out
    assert "one-phase" in out and "Table I" in out and "digital (checkpoint) 50.00%" in out


def test_info_network_cnn_mvms_are_output_pixels_and_chips(tmp_path, capsys):
    import pcmjax as pj
    from pcmjax import nn as pnn

    path, model = _checkpoint(tmp_path, CNN)
    # 8×8 image, 3×3 SAME convolutions: 8·8 output pixels, then 4·4 and 2·2 (stride 2); the
    # classifier one MVM. Tiles: 9×4 → 1, 36×300 → 2 column splits, 2700×4 → 11 row splits, 16×10 → 1.
    mvms, tiles = [64, 16, 4, 1], [1, 2, 11, 1]
    assert cli.main(["info", "--network", str(path), "--chip", "read_phases=4", "--chip", "n_cores=4",
                     "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["network"]["input_shape"] == [8, 8, 1]
    assert [layer["mvms"] for layer in info["network"]["layers"]] == mvms
    assert [layer["tiles"] for layer in info["network"]["layers"]] == tiles
    c = info["cost"]
    assert c["read_phases"] == 4 and c["mvms_per_inference"] == 85
    assert c["cores_used"] == 15 and c["chips"] == info["network"]["n_chips"] == 4  # 15 cores, 4 per chip
    assert c["latency_ns"] == pytest.approx(85 * T_MVM_NS[4])
    energy = sum(m * n for m, n in zip(mvms, tiles)) * E_CORE_UJ[4]  # 141 core-MVMs
    assert c["energy_uj"] == pytest.approx(energy)
    assert c["ops"] == pytest.approx(2 * (9 * 4 * 64 + 36 * 300 * 16 + 2700 * 4 * 4 + 16 * 10))

    assert cli.main(["info", "--network", str(path), "--chip", "read_phases=4", "--chip", "n_cores=4"]) == 0
    out = capsys.readouterr().out
    layout = pnn.plan(model, pj.ChipConfig(n_cores=4), n_chips=4)
    assert layout.report() in out
    assert "cores used           15 (4 chips of 4;" in out and "four-phase" in out
    assert f"latency              {85 * T_MVM_NS[4] / 1e3:.3f} µs" in out
    assert f"energy               {energy:.3f} µJ per inference" in out


@pytest.fixture(scope="module")
def network_study(tmp_path_factory, xla_cache):
    """A finished study of a tiny MLP in <tmp>/pcmjax-results: (checkpoint, folder, results)."""
    import pcmjax as pj
    from pcmjax import montecarlo as mc
    from pcmjax import nn as pnn

    root = tmp_path_factory.mktemp("netstudy")
    path, _ = _checkpoint(root, MLP)
    model, _, _ = mc.load_network(path)
    x = np.random.default_rng(0).uniform(0, 1, (32, 8)).astype(np.float32)
    y = np.asarray(pnn.predict(model, x))
    st = mc.Study(mc.NetworkWorkload(model, x, y, x[:16]), times=(1.0, 3600.0, 1e6), instances=2,
                  chip=pj.ChipConfig(n_cores=4), seed=1, variants=(mc.DEFAULT_VARIANTS[0],))
    res = mc.run_study(st, root / "pcmjax-results", quiet=True, plots=False)
    return path, root / "pcmjax-results", res


def test_info_network_beside_the_accuracy_study(tmp_path, network_study, capsys, monkeypatch):
    import shutil

    from pcmjax.montecarlo.study import format_time

    path, folder, res = network_study
    acc = res.get("accuracy", "none").astype(np.float64)
    want = {f"none at {format_time(1.0)}": acc[:, 0].mean(), f"none at {format_time(1e6)}": acc[:, 2].mean()}
    assert cli.main(["info", "--network", str(path), "--results", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["accuracy"] == pytest.approx(want) and info["accuracy_source"] == str(folder)
    assert info["cost"]["cores_used"] == 4

    assert cli.main(["info", "--network", str(path), "--results", str(folder)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.strip().startswith("accuracy"))
    assert ", ".join(f"{k} {v:.2%}" for k, v in want.items()) in line
    assert format_time(3600.0) not in line  # first and last time only
    assert f"mean over 2 chip instances of the study in {folder}" in out
    assert "different network" not in out and "phase mode" not in out
    # The study read one-phase; a four-phase cost is flagged as not matching it.
    assert cli.main(["info", "--network", str(path), "--results", str(folder), "--chip", "read_phases=4"]) == 0
    assert "the study read the chip in one-phase mode" in capsys.readouterr().out

    # Without --results: ./pcmjax-results is used when it holds a study of this network ...
    monkeypatch.chdir(folder.parent)
    assert cli.main(["info", "--network", str(path)]) == 0
    out = capsys.readouterr().out
    assert "the study in pcmjax-results" in out and f"none at {format_time(1e6)}" in out
    # ... and not for another network (other weights), saying so.
    other, _ = _checkpoint(tmp_path, MLP, seed=1, name="other.npz")
    assert cli.main(["info", "--network", str(other)]) == 0
    captured = capsys.readouterr()
    assert "none at" not in captured.out and "pcmjax-results holds a study of another network" in captured.err
    # Given explicitly for another network, the figures are shown with a warning.
    assert cli.main(["info", "--network", str(other), "--results", str(folder)]) == 0
    assert "WARNING: that study was made for a different network" in capsys.readouterr().out

    # An interrupted run (no results.npz yet) gives the instances finished so far.
    part = tmp_path / "partial"
    shutil.copytree(folder, part)
    (part / "results.npz").unlink()
    assert cli.main(["info", "--network", str(path), "--results", str(part), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(want)
    assert cli.main(["info", "--network", str(path), "--results", str(part)]) == 0
    assert "interrupted run: 2 of 2 instances" in capsys.readouterr().out



def test_info_config_takes_the_study_network_and_output(tmp_path, network_study, capsys, monkeypatch):
    """``pcmjax info --config study.toml`` of a network study: its checkpoint (relative to the
    file) and, when it exists, its output folder (relative to the working directory)."""
    path, folder, res = network_study
    sub = tmp_path / "studies"
    sub.mkdir()
    rel = os.path.relpath(path, sub)
    (sub / "s.toml").write_text(f'[study]\noutput = "{folder.name}"\n[workload]\ncheckpoint = "{rel}"\n'
                                '[chip]\nread_phases = 4\n')
    monkeypatch.chdir(folder.parent)
    assert cli.main(["info", "--config", str(sub / "s.toml"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cost"]["cores_used"] == 4 and info["cost"]["read_phases"] == 4
    assert info["accuracy_source"] == folder.name
    from pcmjax.montecarlo.study import format_time

    acc = res.get("accuracy", "none").astype(np.float64)
    assert info["accuracy"] == pytest.approx({f"none at {format_time(1.0)}": acc[:, 0].mean(),
                                              f"none at {format_time(1e6)}": acc[:, 2].mean()})
    # Without an output folder on disk: the cost alone.
    monkeypatch.chdir(tmp_path)
    assert cli.main(["info", "--config", str(sub / "s.toml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] is None

def test_study_of_a_checkpoint_without_input_ranges_says_how_to_measure_them(tmp_path, capsys):
    path, _ = _checkpoint(tmp_path, MLP, measured=False)
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.uniform(0, 1, (16, 8)).astype(np.float32), y=rng.integers(0, 10, 16))
    study = tmp_path / "s.toml"
    study.write_text(f'[study]\ninstances = 2\ntimes = ["1 s"]\n[workload]\ncheckpoint = "{path.name}"\n'
                     f'dataset = "{data.name}"\n[chip]\nn_cores = 4\n')
    assert cli.main(["study", "--config", str(study), "-o", str(tmp_path / "o"), "--no-compile-cache"]) == 2
    err = capsys.readouterr().err
    for needle in ("[workload]", "net.npz", "['layers/0', 'layers/1'] have no input range",
                   "pcmjax.nn.measure_input_ranges", "save_network"):
        assert needle in err, (needle, err)


def test_info_network_bad_input(tmp_path, capsys):
    from pcmjax.montecarlo import Results

    path, _ = _checkpoint(tmp_path, MLP)
    (tmp_path / "notes.npz").write_text("not a checkpoint")
    (tmp_path / "empty").mkdir()
    Results(np.zeros((2, 1, 1, 1)), [1.0], ["none"], ["mvm_error"]).save(tmp_path / "mvm")
    cases = [
        (["--network", str(tmp_path / "nope.npz")], ["--network", "does not exist", "save_network", "'default'"]),
        (["--network", str(tmp_path)], ["--network", "is a folder", "'default'"]),
        (["--network", str(tmp_path / "notes.npz")], ["--network", "not a pcmjax network checkpoint"]),
        (["--network", str(path), "--results", str(tmp_path / "none")], ["--results", "does not exist"]),
        (["--network", str(path), "--results", str(tmp_path / "empty")], ["--results", "no pcmjax study",
                                                                        "pcmjax study"]),
        (["--network", str(path), "--results", str(tmp_path / "mvm")], ["--results", "no 'accuracy' metric",
                                                                      "mvm_error", "network study"]),
        (["--results", str(tmp_path / "mvm")], ["--results needs --network"]),
        (["--network", str(path), "--chip", "rows=128"], ["--network", "256×256", "128×256"]),
    ]
    for argv, needles in cases:
        assert cli.main(["info", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("pcmjax info: error: "), err
        for n in needles:
            assert n in err, (argv, n, err)


def test_print_config_is_the_default_study_and_lists_every_key(capsys):
    """``pcmjax study --print-config``: valid TOML whose active lines are the embedded default
    study, with every study-file key (the parser's own key lists and every ChipConfig
    option) written out."""
    import dataclasses

    import tomllib

    import pcmjax as pj
    from pcmjax.montecarlo import config

    assert cli.main(["study", "--print-config"]) == 0
    text = capsys.readouterr().out
    parsed = tomllib.loads(text)
    assert config.parse_times(parsed["study"]["times"]) == config.DEFAULT_TIMES
    assert parsed["study"]["instances"] == config.DEFAULT_INSTANCES
    assert config.build_variants(parsed["variants"]) == mc_default_variants()
    assert pj.devices.to_dict(config.build_device(parsed["device"])) == pj.devices.to_dict(
        pj.devices.HermesPCM(num_devices=2))
    assert pj.ChipConfig.from_dict(parsed["chip"]) == pj.ChipConfig()
    keys = (*config.STUDY_KEYS, *config.RUN_KEYS, *config.NETWORK_KEYS, *config.MVM_KEYS, "preset", "file",
            *(f.name for f in dataclasses.fields(pj.ChipConfig)))
    missing = [k for k in keys if f"{k} =" not in text and f"[chip.{k}]" not in text]
    assert not missing, missing
    for section, value in pj.ChipConfig().to_dict().items():
        if isinstance(value, dict):
            assert all(f"# {k} =" in text or f"# [chip.{section}.{k}]" in text for k in value), section


def mc_default_variants():
    from pcmjax.montecarlo import DEFAULT_VARIANTS
    return DEFAULT_VARIANTS
