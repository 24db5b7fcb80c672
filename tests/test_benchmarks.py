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


def _binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent test images."""
    return (p * (1.0 - p) / n) ** 0.5


@pytest.mark.slow
def test_cifar10_resnet9_synthetic_smoke():
    """Synthetic CIFAR-10 is uniform noise with labels that carry no information about the
    images, so every network, digital or on chip, is right by chance: accuracy 1/10 on the
    16 test images, within five binomial standard errors."""
    out, summary = _run("cifar10_resnet9.py", "--synthetic")
    assert "cores occupied" in out  # the placement report
    assert set(summary["results"]) == {"float_gdc", "hwa_gdc", "hwa_gdc_cal"}
    chance, n_test = 0.1, 16
    band = 5 * _binomial_se(chance, n_test)
    assert abs(summary["float"] - chance) <= band and abs(summary["hwa_digital"] - chance) <= band
    for variant, stats in summary["results"].items():
        assert set(stats) == {"1", "86400"}
        for t, (mean, _) in stats.items():
            assert abs(mean - chance) <= band, (variant, t, mean)


@pytest.mark.slow
def test_digits_accuracy_quick_smoke():
    """The float network on the chip against the same network in float on the same 450
    test images: at every time, within five binomial standard errors of the digital
    accuracy, and the gap no larger than the share of images whose prediction the chip
    changed (each changed prediction moves the accuracy by at most one image)."""
    out, summary = _run("digits_accuracy.py", "--quick", "--models", "mlp")
    assert "cores occupied" in out and "calibration" in out
    digital, n_test = summary["float"], 450
    assert digital > 0.5  # even 3 epochs learn the digits
    assert set(summary["results"]) == set(summary["agreement"]) == {"float_gdc", "hwa_gdc", "hwa_gdc_cal"}
    for variant in summary["results"]:
        assert set(summary["results"][variant]) == set(summary["agreement"][variant]) == TIMES_S
    band = 5 * _binomial_se(digital, n_test)
    for t, (mean, _) in summary["results"]["float_gdc"].items():
        agree = summary["agreement"]["float_gdc"][t][0]
        assert abs(mean - digital) <= band, (t, mean, digital, band)
        assert abs(mean - digital) <= 1.0 - agree + 2e-6, (t, mean, digital, agree)  # rounded to 6 digits
