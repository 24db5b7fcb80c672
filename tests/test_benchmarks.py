"""Smoke runs of the end-to-end benchmark scripts at CI scale (subprocesses, as a user runs them).

The CIFAR-10 script runs on a tiny synthetic folder in the standard python-batch format
(``--synthetic``); the digits script with ``--quick``. Both must finish, print the
placement report and end with the JSON line their docstrings promise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMES_S = {"1", "3600", "86400", "2592000", "31536000"}


def _run(script: str, *args: str, timeout: float = 600.0) -> tuple[str, dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.stdout, json.loads(lines[-1])


def _check_stats(stats: dict, times: set[str]):
    assert set(stats) == times
    for mean, std in stats.values():
        assert 0.0 <= mean <= 1.0 and 0.0 <= std <= 0.5


@pytest.mark.slow
def test_cifar10_resnet9_synthetic_smoke():
    out, summary = _run("cifar10_resnet9.py", "--synthetic")
    assert "cores occupied" in out  # the placement report
    assert 0.0 <= summary["float"] <= 1.0 and 0.0 <= summary["hwa_digital"] <= 1.0
    assert set(summary["results"]) == {"float_gdc", "hwa_gdc", "hwa_gdc_cal"}
    for stats in summary["results"].values():
        _check_stats(stats, {"1", "86400"})


@pytest.mark.slow
def test_digits_accuracy_quick_smoke():
    out, summary = _run("digits_accuracy.py", "--quick", "--models", "mlp")
    assert "cores occupied" in out and "calibration" in out
    assert 0.5 < summary["float"] <= 1.0  # even 3 epochs learn the digits
    assert set(summary["results"]) == {"float_gdc", "hwa_gdc", "hwa_gdc_cal"}
    for stats in summary["results"].values():
        _check_stats(stats, TIMES_S)
    assert set(summary["agreement"]) == {"float_gdc", "hwa_gdc", "hwa_gdc_cal"}
    for stats in summary["agreement"].values():
        _check_stats(stats, TIMES_S)
