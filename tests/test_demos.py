"""The two demonstrations of networks of your own on the chip, in their smoke sizes.

Each script runs as a subprocess with ``--smoke``: it trains a tiny network, converts it,
fine-tunes it hardware-aware, saves it, and runs a study through a study file that names
its factory. The checks compare with references computed here, independently of the
scripts' own figures.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pcmjax import montecarlo as mc

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _run(script, out):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--out", str(out)], capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _module(name):
    spec = importlib.util.spec_from_file_location(f"_demo_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _paired_bound(a, b):
    """Five standard errors of the mean of the per-instance differences ``a − b`` ``[instances, times]``."""
    d = np.asarray(a) - np.asarray(b)
    return 5 * d.std(axis=0, ddof=1) / math.sqrt(d.shape[0])


@pytest.mark.slow
def test_char_lstm_smoke_learns_the_text_and_runs_on_the_chip(tmp_path):
    log = _run("char_lstm.py", tmp_path)
    summary = json.loads((tmp_path / "char_lstm_summary.json").read_text())
    # Independent reference: the entropy of the test characters' own frequencies (what a
    # model without context achieves at best); the LSTM must beat it, in software and on chip.
    x = np.load(tmp_path / "test.npz")["x"]
    _, counts = np.unique(x[:, 1:], return_counts=True)
    p = counts / counts.sum()
    unigram_bits = float(-(p * np.log2(p)).sum())
    digital = summary["reference"]["bpc"]
    assert digital < unigram_bits - 0.3
    results = mc.load_results(tmp_path / "study")
    gdc, readout = results.get("bpc", "gdc"), results.get("bpc", "calibrated_readout")
    assert gdc.shape == readout.shape == (8, 2) and np.all(np.isfinite(gdc)) and np.all(np.isfinite(readout))
    assert abs(gdc[:, 0].mean() - digital) < 0.5 and gdc[:, 0].mean() < unigram_bits
    # The read-out refit fits the digital network's next-character distribution: on the same
    # chips it is not worse than drift compensation alone beyond the instances' spread.
    assert np.all(readout.mean(axis=0) <= gdc.mean(axis=0) + _paired_bound(readout, gdc))
    assert "calibrated + read-out refit" in log  # the study file's calibrate = "readout", in the header
    assert (tmp_path / "study.toml").read_text().count('model = "') == 2  # factory and device model
    assert summary["times_s"][0] == 1.0 and math.isclose(summary["times_s"][-1], 365.25 * 86400)


def test_char_lstm_without_the_text_says_what_to_install(monkeypatch):
    module = _module("char_lstm")
    monkeypatch.setattr(module.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as e:
        module.kjv_text()
    assert "apt-get install bible-kjv" in str(e.value) and "--text" in str(e.value)


def test_char_lstm_encoding_keeps_the_most_frequent_characters():
    module = _module("char_lstm")
    tokens, alphabet = module.encode("aAb ab!?" * 3 + "z", vocab=4)
    assert alphabet == "ab " and tokens.max() == 3  # a (6), b (6), space (3); ! ? z share token 3
    assert list(tokens[:4]) == [0, 0, 1, 2]


@pytest.mark.slow
def test_transformer_smoke_classifies_digits_on_the_chip(tmp_path):
    _run("transformer_rows.py", tmp_path)
    summary = json.loads((tmp_path / "transformer_summary.json").read_text())
    data = np.load(tmp_path / "digits_rows.npz")
    assert data["x"].shape == (450, 64) and data["y"].shape == (450,)
    n = 64  # the smoke study's evaluation examples
    # Far above chance (10 %): 5 standard errors of a chance classifier on n examples.
    chance_bound = 0.1 + 5 * math.sqrt(0.1 * 0.9 / n)
    assert summary["reference"]["accuracy"] > chance_bound
    results = mc.load_results(tmp_path / "study")
    assert results.variants == ("none", "gdc") and np.allclose(results.times, [1.0, 365.25 * 86400])
    none, gdc = results.get("accuracy", "none"), results.get("accuracy", "gdc")
    assert none.shape == gdc.shape == (8, 2)
    for acc in (none, gdc):  # fractions of the n examples
        assert np.all((acc >= 0) & (acc <= 1)) and np.allclose(acc * n, np.round(acc * n), atol=1e-3)
    assert gdc[:, 0].mean() > chance_bound
    # Global drift compensation undoes the drift's common decay: not worse than none at a year.
    assert gdc[:, 1].mean() >= none[:, 1].mean() - _paired_bound(gdc, none)[1]
