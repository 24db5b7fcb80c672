"""The demo (``python -m pcmjax.demo``): table contents, flags, and drift compensation."""

from __future__ import annotations

import numpy as np
import pytest

from pcmjax import demo


@pytest.fixture(scope="module")
def demo_run():
    """Run the demo once on two cores; capture its printout."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        errors = demo.main(["--cores", "2"])
    return errors, buf.getvalue()


def test_table_has_every_time_and_both_columns(demo_run):
    errors, out = demo_run
    for label, _ in demo.TIMES:
        assert label in out
    for label in ("1 s", "1 hour", "1 day", "1 month", "1 year"):
        rows = [line for line in out.splitlines() if line.startswith(label + " ")]
        assert len(rows) == 1, (label, out)
        assert rows[0].count("%") == 4, rows[0]  # mean and std for both columns
    header = [line for line in out.splitlines() if line.startswith("time after programming")]
    assert len(header) == 1
    for _, column in demo.MODES:
        assert column in header[0]
    assert "2 of the 64" in out


def test_errors_shape_and_range(demo_run):
    errors, _ = demo_run
    assert set(errors) == {"none", "global"}
    for e in errors.values():
        assert e.shape == (3, len(demo.TIMES))
        assert np.all(np.isfinite(e)) and np.all(e > 0) and np.all(e < 2)


def test_compensation_helps_after_a_year(demo_run):
    errors, _ = demo_run
    assert errors["global"][:, -1].mean() < errors["none"][:, -1].mean()
    # Without compensation drift makes the error grow with time.
    assert errors["none"][:, -1].mean() > errors["none"][:, 0].mean()


@pytest.mark.parametrize("argv", [["--cores", "0"], ["--cores", "65"], ["--cores", "two"]])
def test_bad_cores_flag_exits(argv, capsys):
    with pytest.raises(SystemExit) as info:
        demo.main(argv)
    assert info.value.code == 2
    assert "--cores" in capsys.readouterr().err
