"""Monte Carlo studies: specs and hashes, chunking, results, summaries, and the runner.

The runner tests share one tiny raw-MVM study (2 cores of 32×32, 64 instances, 3 times,
2 variants) and a persistent compilation cache, so that equal programs (the same
per-device batch) compile once for the whole module, including its subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcmjax as pj
from pcmjax import montecarlo as mc
from pcmjax.config import FaultConfig, ParasiticsConfig, TemperatureConfig
from pcmjax.montecarlo import _chunks, _memory, _programs, config, runner
from pcmjax.montecarlo.results import Results
from pcmjax.montecarlo.study import spec_differences

ROOT = Path(__file__).resolve().parents[1]

TINY_TOML = """\
[study]
name = "tiny"
instances = 64
seed = 3
times = ["1 s", "1 h", "1 year"]

[workload]
kind = "mvm"
cores = 2
rows = 32
cols = 32
batch = 8
calibration_batch = 8

[chip]
n_cores = 2
rows = 32
cols = 32

[variants.none]
drift_compensation = "none"

[variants.calibrated]
drift_compensation = "global"
calibrate = true

[run]
chunk_size = 7
"""


def tiny_study(**changes) -> mc.Study:
    st = config.study_from_dict(__import__("tomllib").loads(TINY_TOML)).study
    return st.replace(**changes) if changes else st


def subprocess_env(cache_dir, devices=1):
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    else:  # no persistent cache (not even the test session's): executables move between devices
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    # Keep the session's XLA flags (they change code generation, hence the last bits).
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return env


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    """A persistent compilation cache for this module (and its subprocesses)."""
    from jax._src import compilation_cache

    path = tmp_path_factory.getbasetemp() / "pcmjax-xla-cache"  # shared with tests/test_cli.py
    path.mkdir(exist_ok=True)
    old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    yield path
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def reference(xla_cache):
    """The tiny study, uninterrupted, with chunks of 7 (in memory)."""
    return mc.run_study(tiny_study(), None, chunk_size=7, quiet=True)


# -- specs, variants, times ----------------------------------------------------------
def test_variant_normalises_and_validates():
    v = mc.Variant("low-adc", {"adc": {"bits": 6}, "drift_compensation": "none"})
    assert v.chip == (("adc.bits", 6), ("drift_compensation", "none"))
    assert v.overrides() == {"adc": {"bits": 6}, "drift_compensation": "none"}
    assert hash(v) == hash(mc.Variant("low-adc", {"drift_compensation": "none", "adc": {"bits": 6}}))
    cfg = v.resolve(pj.ChipConfig()).config
    assert cfg.adc.bits == 6 and cfg.drift_compensation == "none"
    with pytest.raises(ValueError, match="name"):
        mc.Variant("bad name!")
    with pytest.raises(ValueError, match=r"variant 'x'.*no option"):
        mc.Variant("x", {"nonsense": 1}).resolve(pj.ChipConfig())
    with pytest.raises(ValueError, match=r"variant 'y'.*drift_compensation must be one of"):
        mc.Variant("y", {"drift_compensation": "sometimes"}).resolve(pj.ChipConfig())


def test_study_validation_messages():
    wl = mc.MVMWorkload(cores=1, rows=8, cols=8)
    with pytest.raises(ValueError, match="ascending"):
        mc.Study(wl, times=(10.0, 1.0))
    with pytest.raises(ValueError, match="instances"):
        mc.Study(wl, instances=0)
    with pytest.raises(ValueError, match=r"allowed: \['mvm_error', 'mvm_error_worst_core'\]"):
        mc.Study(wl, metrics=("accuracy",))
    with pytest.raises(ValueError, match="unique"):
        mc.Study(wl, variants=(mc.Variant("a"), mc.Variant("a")))
    with pytest.raises(ValueError, match="needs 8 cores"):
        mc.Study(mc.MVMWorkload(cores=8), chip=pj.ChipConfig(n_cores=4))


def test_spec_hash_tracks_what_changes_results():
    st = tiny_study()
    h = st.hash()
    assert h == tiny_study().hash() and len(h) == 16
    assert st.replace(instances=1000, name="other").hash() == h  # instances may grow
    for changed in (dict(seed=4), dict(times=(1.0, 2.0)), dict(chip=st.chip.set("adc.bits", 8)),
                    dict(device=pj.devices.HermesPCM(num_devices=1)), dict(variants=st.variants[:1])):
        assert st.replace(**changed).hash() != h, changed
    diff = spec_differences(st.spec(), st.replace(seed=4, chip=st.chip.set("adc.bits", 8)).spec())
    assert diff == ["chip.adc.bits", "seed"]


def test_times_parsing_and_labels():
    assert config.parse_time("1 year") == mc.YEAR
    assert config.parse_time("30 min") == 1800.0
    assert config.parse_time(5) == 5.0
    assert config.parse_times({"start": "1 s", "stop": "1 y", "num": 6}) == mc.log_times(1.0, mc.YEAR, 6)
    with pytest.raises(config.ConfigError, match="units"):
        config.parse_time("3 fortnights")
    assert [mc.format_time(t) for t in (0, 1, 60, 3600, 86400, mc.YEAR, 2.5 * mc.HOUR)] == [
        "0 s", "1 s", "1 min", "1 h", "1 d", "1 y", "2.5 h"]


def test_parse_bytes():
    assert _memory.parse_bytes("2GiB") == 2 << 30
    assert _memory.parse_bytes("512 MB") == 512 * 1000**2
    assert _memory.parse_bytes(1024) == 1024
    with pytest.raises(ValueError, match="units"):
        _memory.parse_bytes("lots")


def test_memory_estimate_tracks_live_values():
    def f(x):
        y = x * 2.0  # x and y live together: 2 × 4 MB
        return jnp.sum(y)

    est = _memory.estimate_peak_bytes(f, jnp.zeros((1 << 20,), jnp.float32))
    assert 8 << 20 <= est <= 9 << 20


# -- chunking -----------------------------------------------------------------------
@pytest.mark.parametrize("n_todo,n_dev,chunk", [(100, 1, None), (100, 4, None), (5, 1, 1), (64, 4, 7), (3, 2, None),
                                                (200, 2, 150)])
def test_chunks_cover_every_instance_once(n_todo, n_dev, chunk):
    per_chunk, batch, width = _chunks.choose_chunk(n_todo, n_dev, 10 << 20, 1 << 30, chunk)
    assert batch == width * n_dev  # one program, one group per device, for every chunk size
    ids = np.arange(n_todo)
    seen = []
    for a in range(0, n_todo, per_chunk):
        chunk_ids = ids[a:a + per_chunk]
        covered = []
        for padded, (idx, pos) in _chunks.layout_chunk(chunk_ids, batch, n_dev, width):
            assert padded.shape == (batch,) and np.array_equal(padded[pos], chunk_ids[idx])
            assert np.sum(padded >= 0) == idx.size
            covered.extend(idx.tolist())
        assert sorted(covered) == list(range(chunk_ids.size))
        seen.extend(chunk_ids.tolist())
    assert seen == ids.tolist()


def test_width_follows_memory():
    assert _chunks.choose_chunk(100, 1, 1 << 20, 2 << 30)[2] == _chunks.MAX_WIDTH
    assert _chunks.choose_chunk(100, 1, 16 << 20, 2 << 30)[2] == 4
    assert _chunks.choose_chunk(100, 1, 1 << 20, 2 << 20)[2] == 2
    assert _chunks.choose_chunk(100, 4, 1 << 20, 8 << 20)[2] == 2  # the budget is shared by the devices
    assert _chunks.choose_chunk(100, 1, 1 << 30, 2 << 30)[2] == 1
    assert _chunks.choose_chunk(10_000, 1, 100 << 20, 2 << 30)[0] == 157  # at most MAX_CHUNKS chunks


# -- results --------------------------------------------------------------------------
def test_results_summary_files(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 2, 3, 2)).astype(np.float32)
    res = Results(values, (1.0, 10.0), ("a", "b", "c"), ("accuracy", "loss"), {"name": "x"})
    rows = res.summary()
    assert len(rows) == 2 * 3 * 2
    r0 = rows[0]
    x = values[:, 0, 0, 0].astype(np.float64)
    assert r0["mean"] == pytest.approx(x.mean()) and r0["std"] == pytest.approx(x.std(ddof=1))
    assert r0["p50"] == pytest.approx(np.median(x)) and r0["p5"] <= r0["p50"] <= r0["p95"]
    res.save(tmp_path)
    back = mc.load_results(tmp_path)
    assert np.array_equal(back.values, values) and back.variants == ("a", "b", "c")
    csv_lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert csv_lines[0] == "time_s,time,variant,metric,n,mean,std,p5,p50,p95" and len(csv_lines) == 13
    assert len(json.loads((tmp_path / "summary.json").read_text())["rows"]) == 12
    assert "accuracy (%)" in res.table()


# -- config files -----------------------------------------------------------------------
def test_config_errors_name_the_key(tmp_path):
    base = __import__("tomllib").loads(TINY_TOML)
    cases = [
        ({"study": {"instnces": 3}}, r"\[study\]: unknown key\(s\) \['instnces'\]; allowed: \['instances'"),
        ({"workload": {"kind": "laser"}}, r"kind must be one of \('network', 'mvm'\), got 'laser'"),
        ({"workload": {"kind": "mvm", "weights": "cauchy"}},
         r"weights must be one of \('gaussian', 'uniform'\), got 'cauchy'"),
        ({"chip": {"adc": {"bitz": 3}}}, r"\[chip\].*bitz.*allowed"),
        ({"device": {"model": "memristor"}}, r"\[device\] model must be one of \('hermes', 'pcm_like'.*file ="),
        ({"run": {"vmap_width": 0}}, r"\[run\] vmap_width must be an integer >= 1, got 0"),
        ({"run": {"plots": "yes"}}, r"\[run\] plots must be True or False, got 'yes'"),
        ({"run": {"histogram_instances": -1}}, r"\[run\] histogram_instances must be an integer >= 0, got -1"),
        ({"variants": {"v": {"drift_compensation": "often"}}}, r"variant 'v'.*must be one of"),
        ({"run": {"chunksize": 3}}, r"\[run\]: unknown key.*chunk_size"),
        ({"bogus": {}}, r"study file: unknown key\(s\) \['bogus'\]"),
    ]
    for patch, pattern in cases:
        cfg = json.loads(json.dumps(base))
        for section, table in patch.items():
            if section in cfg and isinstance(cfg[section], dict) and section != "variants":
                cfg[section].update(table)
            else:
                cfg[section] = table
        with pytest.raises(config.ConfigError, match=pattern):
            config.study_from_dict(cfg)


def test_config_device_from_fitted_json(tmp_path):
    dev = pj.devices.PCMLike(num_devices=1)
    pj.devices.save(dev, tmp_path / "fit.json")
    text = TINY_TOML + '\n[device]\nfile = "fit.json"\n'
    (tmp_path / "s.toml").write_text(text)
    sc = config.load_study_file(tmp_path / "s.toml", {"output": "out", "instances": 5})
    assert isinstance(sc.study.device, pj.devices.PCMLike) and sc.study.device.num_devices == 1
    assert sc.output == "out" and sc.study.instances == 5 and sc.run == {"chunk_size": 7}


# -- the runner -----------------------------------------------------------------------
def mvm_errors_one_at_a_time(study: mc.Study, i: int) -> np.ndarray:
    """``[times, variants]`` MVM errors of instance ``i`` of a raw-MVM study, computed
    without the runner or the workload: the instance's key ``fold_in(key(seed), i)`` split
    into programming / ageing / read / calibration keys, ``pj.program_chip``, ``at_time``,
    ``pj.mvm``; the calibrated variant fits ``γ y + β`` per core and column with
    ``np.linalg.lstsq``; errors in float64."""
    data = study.workload.data()
    w, x, x_cal = (np.asarray(data[k], np.float64) for k in ("w", "x", "x_cal"))
    exact, exact_cal = np.einsum("cbr,crk->cbk", x, w), np.einsum("cbr,crk->cbk", x_cal, w)
    k_prog, k_age, k_read, k_cal = jax.random.split(jax.random.fold_in(jax.random.key(study.seed), i), 4)
    out = np.zeros((len(study.times), len(study.variants)))
    for v, variant in enumerate(study.resolved_variants()):
        state = pj.program_chip(k_prog, data["w"], variant.config, study.device)
        for j, t in enumerate(study.times):
            aged = state.at_time(k_age, jnp.float32(t))
            y = np.asarray(pj.mvm(k_read, aged, data["x"]), np.float64)
            if variant.calibrate:
                y_cal = np.asarray(pj.mvm(k_cal, aged, data["x_cal"]), np.float64)
                for c in range(y.shape[0]):
                    for k in range(y.shape[2]):
                        a = np.stack([y_cal[c, :, k], np.ones(y_cal.shape[1])], axis=1)
                        (gamma, beta), *_ = np.linalg.lstsq(a, exact_cal[c, :, k], rcond=None)
                        y[c, :, k] = gamma * y[c, :, k] + beta
            out[j, v] = np.linalg.norm(y - exact) / np.linalg.norm(exact)
    return out


def test_run_writes_results_summary_figures(tmp_path, xla_cache, reference):
    out = tmp_path / "run"
    res = mc.run_study(tiny_study(), out, chunk_size=7, quiet=True)
    assert np.array_equal(res.values, reference.values)
    assert res.values.shape == (64, 3, 2, 2) and np.all(np.isfinite(res.values))
    err = res.get("mvm_error")
    st = tiny_study()
    for i in (0, 13, 63):  # the runner against each instance evaluated alone (public chip API, float64)
        want = mvm_errors_one_at_a_time(st, i)
        np.testing.assert_allclose(err[i], want, rtol=2e-3, err_msg=f"instance {i}")
    # drift degrades the uncompensated chip; calibration keeps the error lower a year on
    assert np.median(err[:, 2, 0]) > np.median(err[:, 0, 0])
    assert np.median(err[:, 2, 1]) < np.median(err[:, 2, 0])
    for name in ("results.npz", "summary.json", "summary.csv", "conductances.npz", "manifest.json", "run.json",
                 "figures/mvm_error_vs_time.png", "figures/conductance_histograms.png"):
        assert (out / name).exists(), name
    assert len(list((out / "chunks").glob("chunk-*.npz"))) == 10  # ceil(64 / 7)
    hist = res.histograms
    assert hist["counts"].shape == (2, 3, _programs.HIST_BINS)
    # every programmed device of the first HIST_INSTANCES instances is counted once per time
    assert hist["instances"] == runner.HIST_INSTANCES
    n_programmed = int(np.count_nonzero(np.asarray(tiny_study().workload.data()["w"]))) * runner.HIST_INSTANCES
    assert np.all(hist["counts"].sum(-1) <= n_programmed) and np.all(hist["counts"].sum(-1) > 0.99 * n_programmed)
    back = mc.load_results(out)
    assert np.array_equal(back.values, res.values) and back.histograms is not None


@pytest.mark.parametrize("chunk_size,instances", [(1, 12), (64, 64)])
def test_identical_for_any_chunk_size(xla_cache, reference, chunk_size, instances):
    res = mc.run_study(tiny_study(instances=instances), None, chunk_size=chunk_size, quiet=True)
    assert res.run_info["chunk_size"] == chunk_size
    assert np.array_equal(res.values, reference.values[:instances])
    if instances == 64:
        assert np.array_equal(res.histograms["counts"], reference.histograms["counts"])


@pytest.mark.slow
def test_identical_on_one_two_or_four_devices(tmp_path, reference):
    """In a process with four (CPU) devices: 1, 2 or 4 of them, any chunk size, same bits."""
    (tmp_path / "s.toml").write_text(TINY_TOML)
    script = textwrap.dedent(f"""
        import jax, numpy as np
        from pcmjax import montecarlo as mc
        assert len(jax.devices()) == 4
        st = mc.load_study_file({str(tmp_path / 's.toml')!r}).study
        for devices, cs in ((1, 7), (4, 7), (4, 64), (2, 1)):
            r = mc.run_study(st, None, chunk_size=cs, devices=devices, quiet=True)
            assert r.run_info["devices"] == devices
            np.save({str(tmp_path)!r} + f"/v{{devices}}-{{cs}}.npy", r.values)
    """)
    # Without the persistent cache, the program is compiled once and moved to the other devices.
    subprocess.run([sys.executable, "-c", script], check=True, env=subprocess_env(None, 4), timeout=400)
    one = np.load(tmp_path / "v1-7.npy")
    for name in ("v4-7", "v4-64", "v2-1"):
        assert np.array_equal(np.load(tmp_path / f"{name}.npy"), one), name
    # XLA splits CPU loops across the client's threads, and a client with more devices has
    # more threads: against the single-device process, last bits may differ (and, rarely,
    # flip an ADC count, which moves a relative error by ~1e-5).
    np.testing.assert_allclose(one, reference.values, rtol=1e-4, atol=0)


def test_changed_study_is_refused(tmp_path, xla_cache, reference):
    out = tmp_path / "run"
    mc.run_study(tiny_study(instances=3), out, chunk_size=7, quiet=True, plots=False)
    with pytest.raises(mc.StudyMismatchError, match=r"different study.*changed: seed"):
        mc.run_study(tiny_study(instances=3, seed=4), out, quiet=True)
    with pytest.raises(mc.StudyMismatchError, match="times_s"):
        mc.run_study(tiny_study(instances=3, times=(1.0, 2.0, 3.0)), out, quiet=True)
    # more instances of the same study extend it; the first three are not recomputed
    res = mc.run_study(tiny_study(instances=10), out, chunk_size=7, quiet=True, plots=False)
    assert res.run_info["resumed"] == 3 and res.run_info["computed"] == 7
    assert np.array_equal(res.values, reference.values[:10])


def test_killed_run_resumes_to_identical_results(tmp_path, xla_cache, reference, capsys):
    """Kill a run after two chunks; the same command continues and matches an uninterrupted run."""
    (tmp_path / "s.toml").write_text(TINY_TOML)
    out = tmp_path / "run"
    # The child writes a chunk, then sleeps, so it is reliably killed part-way.
    script = textwrap.dedent(f"""
        import sys, time
        from pcmjax.montecarlo import store
        from pcmjax import cli
        orig = store.RunFolder.write_chunk
        def slow(self, *a, **k):
            p = orig(self, *a, **k)
            time.sleep(0.5)
            return p
        store.RunFolder.write_chunk = slow
        sys.exit(cli.main(["study", "--config", {str(tmp_path / 's.toml')!r}, "-o", {str(out)!r}, "--quiet",
                           "--no-compile-cache"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(xla_cache, 1))
    try:
        import time

        deadline = time.time() + 240
        while len(list((out / "chunks").glob("chunk-*.npz"))) < 2:
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.time() < deadline, "no chunk written in time"
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "chunks").glob("chunk-*.npz")}
    assert 2 <= len(before) < 10 and not (out / "results.npz").exists()
    done_before = sum(np.load(out / "chunks" / n)["instances"].size for n in before)
    partial = mc.load_results(out, partial=True)  # what the interrupted run finished
    assert partial.values.shape[0] == done_before
    assert np.array_equal(partial.values, reference.values[partial.instances])
    from pcmjax import cli

    assert cli.main(["results", str(out)]) == 0
    assert f"{done_before} of 64 instances finished" in capsys.readouterr().out

    sc = config.load_study_file(tmp_path / "s.toml")
    res = mc.run_study(sc.study, out, quiet=True, **sc.run)
    assert res.run_info["resumed"] == done_before and res.run_info["computed"] == 64 - done_before
    assert np.array_equal(res.values, reference.values)
    assert np.array_equal(mc.load_results(out).values, reference.values)
    for name, (mtime, data) in before.items():  # nothing already computed was rewritten
        p = out / "chunks" / name
        assert p.stat().st_mtime_ns == mtime and p.read_bytes() == data
    # a finished run started again computes nothing
    again = mc.run_study(sc.study, out, quiet=True, plots=False, **sc.run)
    assert again.run_info["computed"] == 0 and np.array_equal(again.values, reference.values)


# -- the network workload ------------------------------------------------------------------
@pytest.mark.slow
def test_network_workload_and_checkpoint(tmp_path, xla_cache):
    from pcmjax import nn as pnn

    arch = {"kind": "mlp", "in_features": 16, "hidden": [12], "out_features": 4}
    model = mc.build_network(arch, seed=1)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (40, 16)).astype(np.float32)
    pnn.set_input_scales(model, x)  # saved with the network, as training would
    y = np.asarray(pnn.predict(model, x))  # the digital network's own predictions
    path = mc.save_network(tmp_path / "net.npz", model, arch)
    loaded, arch2, _ = mc.load_network(path)
    assert arch2 == arch
    assert np.array_equal(np.asarray(loaded.layers[0].kernel[...]), np.asarray(model.layers[0].kernel[...]))
    chip = pj.ChipConfig(n_cores=2, rows=16, cols=16)
    wl = mc.NetworkWorkload(loaded, x, y, x[:16])
    variants = (mc.DEFAULT_VARIANTS[0], mc.DEFAULT_VARIANTS[2])  # none, calibrated
    st = mc.Study(wl, times=(1.0, 1e6), instances=3, chip=chip, seed=1, variants=variants)
    assert st.metrics == ("accuracy", "loss", "layer_error/layers/0", "layer_error/layers/1")
    assert st.hash() == mc.Study(mc.NetworkWorkload(model, x, y, x[:16]), times=(1.0, 1e6), instances=3,
                                 chip=chip, seed=1, variants=variants).hash()
    res = mc.run_study(st, tmp_path / "out", quiet=True)
    acc = res.get("accuracy")
    assert np.all(np.isfinite(res.values))
    # The digital network beside the chip: y are its own predictions, so its accuracy is 1;
    # its loss is the cross-entropy of the float network's logits (in eval mode).
    loaded.eval()
    logits = np.asarray(loaded(jnp.asarray(x)), np.float64)
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    assert res.meta["reference"]["accuracy"] == 1.0
    assert res.meta["reference"]["loss"] == pytest.approx(-logp[np.arange(len(y)), y].mean(), rel=1e-4)
    assert "digital (no chip)" in res.table(["accuracy"])
    assert mc.load_results(tmp_path / "out").meta["reference"] == res.meta["reference"]
    # Each instance's "none" variant through the public deploy API instead of the workload.
    none_cfg = st.resolved_variants()[0].config
    _, ref_outs = pnn.deploy(loaded, None, none_cfg, program=False).reference(jnp.asarray(x), record=True)
    for i in range(st.instances):
        k_prog, k_age, k_read, _ = jax.random.split(jax.random.fold_in(jax.random.key(st.seed), i), 4)
        dep = pnn.deploy(loaded, k_prog, none_cfg)
        for j, t in enumerate(st.times):
            aged = dep.at_time(k_age, jnp.float32(t))
            logits, outs = aged.apply(aged.state, aged.calibration, k_read, jnp.asarray(x), record=True)
            want = np.mean(np.argmax(np.asarray(logits), axis=1) == y)
            assert abs(acc[i, j, 0] - want) <= 1.0 / len(y) + 1e-6, (i, t, acc[i, j, 0], want)
            o, r = np.asarray(outs[1], np.float64), np.asarray(ref_outs[1], np.float64)
            want_err = np.linalg.norm(o - r) / np.linalg.norm(r)
            assert res.get("layer_error/layers/1")[i, j, 0] == pytest.approx(want_err, rel=1e-2), (i, t)
    err = res.get("layer_error/layers/1")
    none, cal = res.variants.index("none"), res.variants.index("calibrated")
    assert np.median(err[:, 1, cal]) < np.median(err[:, 1, none])
    assert (tmp_path / "out" / "figures" / "metrics_vs_time.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("chip,variants", [
    (pj.ChipConfig(n_cores=3), (mc.DEFAULT_VARIANTS[0], mc.DEFAULT_VARIANTS[1])),  # none, gdc
    (pj.ChipConfig(n_cores=3, read_phases=4, faults=FaultConfig(stuck_set=0.01, dead_columns=0.02)),
     (mc.Variant("column", {"drift_compensation": "column"}, calibrate=True),)),
    (pj.ChipConfig(n_cores=3, parasitics=ParasiticsConfig(2.0, 2.0),
                   temperature=TemperatureConfig(temperature_k=330.0, read_temperature_k=310.0)),
     (mc.DEFAULT_VARIANTS[1],)),
], ids=["one_phase-gdc", "four_phase-faults-column-calibrated", "ir_drop-temperature-gdc"])
def test_runner_matches_instances_evaluated_one_at_a_time(xla_cache, chip, variants):
    """The vectorised runner (instances × times vmapped, one compiled program) gives what
    each instance gives evaluated alone: catches transformations or compilations that
    mix up axes. HERMES cores with tiles smaller than a core (padding rows and columns),
    global drift compensation and three times: the case an XLA miscompile once broke."""
    from pcmjax import nn as pnn

    arch = {"kind": "mlp", "in_features": 64, "hidden": [256, 256], "out_features": 10}
    model = mc.build_network(arch, seed=2)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (24, 64)).astype(np.float32)
    y = rng.integers(0, 4, 24).astype(np.int32)
    pnn.set_input_scales(model, x)
    wl = mc.NetworkWorkload(model, x, y, x[:8])
    st = mc.Study(wl, times=(1.0, 1e4, 1e7), instances=2, chip=chip, seed=5, variants=variants)
    res = mc.run_study(st, None, quiet=True, histogram_instances=0)
    data = wl.data()
    one = jax.jit(lambda key, t, v: wl.evaluate(key, data, st.device, t, v), static_argnums=2)
    for i in range(st.instances):
        key = jax.random.fold_in(jax.random.key(st.seed), i)
        for j, t in enumerate(st.times):
            for k, v in enumerate(st.resolved_variants()):
                out = one(key, jnp.float32(t), v)
                for m, name in enumerate(st.metrics):
                    got, want = res.values[i, j, k, m], float(out[name])
                    if name == "accuracy":  # a rounding flip may change one prediction
                        assert abs(got - want) <= 1.0 / len(y) + 1e-6, (i, t, v.name, name, got, want)
                    else:
                        assert got == pytest.approx(want, rel=1e-2, abs=1e-4), (i, t, v.name, name, got, want)


def test_fault_rate_sweep_as_variants(xla_cache):
    """Stuck-at-RESET rates swept as study variants on an otherwise ideal chip: the mean
    squared MVM error matches the binomial expectation. With n = 2 devices per sign a
    weight keeps the fraction f = h/2 of its conductance, h ~ Bin(2, 1 − p), so
    E‖y − xW‖² = p² ‖xW‖² + p(1 − p)/2 · Σ x² W² (independent over weights)."""
    wl = mc.MVMWorkload(cores=2, rows=32, cols=32, batch=16)
    rates = (0.0, 0.05, 0.2)
    variants = tuple(mc.Variant(f"p{p}", {"faults": {"stuck_reset": p}}) for p in rates)
    st = mc.Study(wl, times=(1.0,), instances=200, chip=pj.ChipConfig.ideal(n_cores=2, rows=32, cols=32), seed=0,
                  variants=variants, metrics=("mvm_error",))
    err2 = mc.run_study(st, None, quiet=True, histogram_instances=0).get("mvm_error")[:, 0, :].astype(np.float64) ** 2
    w, x = (np.asarray(wl.data()[k], np.float64) for k in ("w", "x"))
    y2 = np.sum(np.einsum("cbr,crk->cbk", x, w) ** 2)
    xw2 = np.sum(np.einsum("cbr,crk->cbk", x**2, w**2))
    assert np.all(err2[:, 0] < 1e-12)  # no faults, ideal chip: exact to float32 rounding
    for j, p in enumerate(rates[1:], start=1):
        want = p**2 + p * (1 - p) / 2 * xw2 / y2
        se = err2[:, j].std(ddof=1) / np.sqrt(err2.shape[0])
        assert abs(err2[:, j].mean() - want) < 5 * se, (p, err2[:, j].mean(), want, se)


def test_importing_pcmjax_starts_no_jax_backend():
    """jax.distributed.initialize must run before any JAX backend exists, so importing the
    package (as the CLI does before joining a multi-process run) must not create one."""
    code = ("import pcmjax, pcmjax.montecarlo, pcmjax.nn, pcmjax.fit, pcmjax.cli, pcmjax.plots\n"
            "from jax._src import xla_bridge\nassert not xla_bridge.backends_are_initialized()\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(None), timeout=120)


@pytest.mark.slow
def test_two_processes_share_one_study(tmp_path, reference):
    """``pcmjax study --distributed``: two processes of two CPU devices each (Gloo on
    localhost) run one study into one folder; process 0 writes it, and the results are
    those of a single process."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "s.toml").write_text(TINY_TOML)
    out = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-m", "pcmjax.cli", "study", "--config", str(tmp_path / "s.toml"),
                               "-o", str(out), "--quiet", "--no-plots", "--no-compile-cache", "--chunk-size", "8",
                               "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i)], env=subprocess_env(None, 2), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]
    res = mc.load_results(out)
    assert res.values.shape == reference.values.shape
    # Other device counts per process than the in-process reference: last bits may differ.
    np.testing.assert_allclose(res.values, reference.values, rtol=1e-4, atol=0)
    assert json.loads((out / "run.json").read_text())["devices"] == 4


def test_distributed_options_are_checked(capsys):
    from pcmjax import cli

    assert cli.main(["study", "--coordinator", "127.0.0.1:1234"]) == 2
    assert "need --distributed" in capsys.readouterr().err
    assert cli.main(["study", "--distributed", "--num-processes", "2"]) == 2
    assert "needs all of --coordinator, --num-processes and --process-id" in capsys.readouterr().err
    assert cli.main(["study", "--distributed", "--coordinator", "h:1", "--num-processes", "2",
                     "--process-id", "2"]) == 2
    assert "--process-id must be an integer in 0..1, got 2." in capsys.readouterr().err


def test_lstsq_calibration_gain_is_unbiased_under_read_noise():
    """The per-column correction of ``calibration = "lstsq"`` inverts the chip's gain and
    offset (``y = a·ref + b + noise`` → ``γ = 1/a``, ``β = −b/a``) without the shrinkage
    ``var(ref) / var(y)`` a regression of ``ref`` on the noisy ``y`` has; tolerance: 5
    standard errors of the slope of ``n`` samples."""
    from pcmjax.montecarlo.network import _chip_gain

    n, cols = 4000, 3
    k1, k2 = jax.random.split(jax.random.key(7))
    ref = jax.random.normal(k1, (n, cols))
    a, b, noise = jnp.asarray([0.8, 1.0, 1.25]), jnp.asarray([0.3, -0.1, 0.0]), 0.7
    y = a * ref + b + noise * jax.random.normal(k2, (n, cols))
    gamma, beta = _chip_gain(y, ref)
    se_a = noise / np.sqrt(n)  # standard error of the fitted slope (unit-variance ref)
    assert np.all(np.abs(np.asarray(gamma) - 1 / np.asarray(a)) < 5 * se_a / np.asarray(a) ** 2), gamma
    np.testing.assert_allclose(np.asarray(beta), -np.asarray(b / a), atol=5 * (noise / np.sqrt(n)) / 0.8 + 0.02)
    shrunk = np.asarray(a) / (np.asarray(a) ** 2 + noise**2)  # ref-on-y slope: what the correction avoids
    assert np.all(np.abs(np.asarray(gamma) - shrunk) > 10 * se_a)
    # A column that does not respond keeps its gain and loses its offset.
    flat = jnp.full((n, 1), 2.0) + 0.01 * jax.random.normal(k2, (n, 1))
    g0, b0 = _chip_gain(flat, ref[:, :1])
    offset = float(jnp.mean(flat) - jnp.mean(ref[:, 0]))
    assert float(g0[0]) == 1.0 and float(b0[0]) == pytest.approx(-offset, abs=1e-5)


# -- calibrate = "readout" ---------------------------------------------------------
def test_calibrate_values_validation_and_round_trip():
    r = mc.Variant("r", {"drift_compensation": "global"}, calibrate="readout")
    assert r.readout and r.calibrate == "readout" and r.resolve(pj.ChipConfig()).readout
    assert not mc.Variant("c", calibrate=True).readout and not mc.Variant("n").readout
    assert mc.Variant(**r.to_dict()) == r and r.to_dict()["calibrate"] == "readout"
    assert mc.Variant("b", calibrate=np.bool_(True)).calibrate is True
    with pytest.raises(ValueError, match=r"variant 'x': calibrate must be false, true .* or \"readout\".*got 'yes'"):
        mc.Variant("x", calibrate="yes")
    with pytest.raises(TypeError, match=r"calibrate must be false, true .*got 1\."):
        mc.Variant("x", calibrate=1)
    base = __import__("tomllib").loads(TINY_TOML)
    cfg = dict(base, variants={"v": {"drift_compensation": "global", "calibrate": "often"}})
    with pytest.raises(config.ConfigError, match=r"\[variants\.v\].*\"readout\".*got 'often'"):
        config.study_from_dict(cfg)
    # The raw-MVM workload has no output layer to refit: refused when the study is built.
    cfg = dict(base, variants={"v": {"drift_compensation": "global", "calibrate": "readout"}})
    with pytest.raises(config.ConfigError, match=r"variant 'v'.*mvm workload has none"):
        config.study_from_dict(cfg)
    cfg = dict(base, variants={"v": {"drift_compensation": "global", "calibrate": True}})
    assert config.study_from_dict(cfg).study.variants[0].calibrate is True


def test_no_histograms_compile_no_histogram_branch():
    """``histogram_instances=0``: the per-device program holds no conditional histogram
    branch (less to compile), and the instances' values are those of a run with histograms."""
    chip = pj.ChipConfig(n_cores=1, rows=8, cols=8)
    st = mc.Study(mc.MVMWorkload(cores=1, rows=8, cols=8, batch=4), times=(1.0, 1e5), instances=3, chip=chip, seed=2)
    args = (st.workload.data(), st.device, np.uint32(st.seed), np.asarray(st.times, np.float32), np.zeros(1, np.int32))

    def conds(hist_instances):
        jaxpr = jax.make_jaxpr(_programs.device_function(st, 1, hist_instances))(*args)
        return str(jaxpr).count("cond[")

    assert conds(0) == 0 and conds(2) >= 1
    without = mc.run_study(st, None, quiet=True, histogram_instances=0)
    with_hist = mc.run_study(st, None, quiet=True, histogram_instances=2)
    assert without.histograms is None and with_hist.histograms["instances"] == 2
    # The histogram branch only reads the instances' conductances, but XLA may fuse the two
    # programs differently: equal up to float32 rounding (a few units in the last place).
    np.testing.assert_allclose(without.values, with_hist.values, rtol=4 * np.finfo(np.float32).eps, atol=0)
