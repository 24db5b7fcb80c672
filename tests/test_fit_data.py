"""The measurement format: loading, validation by row and column, saving, simulation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from pcmjax.devices import HermesPCM, StateIndependent
from pcmjax.fit import MeasurementError, from_columns, load_measurements, simulate_measurements

HEADER = "device_id,g_target_uS,t_s,g_uS,comment\n"


def _write(tmp_path, body, header=HEADER, name="m.csv"):
    path = tmp_path / name
    path.write_text(header + body)
    return path


GOOD = "a,10,0,9.9,x\na,10,60,9.7,\na,10,3600,9.1,\nb,5,0,5.1,\nb,5,3600,4.6,\n"


def test_loads_good_csv_and_ignores_extra_columns(tmp_path):
    data = load_measurements(_write(tmp_path, GOOD + "\n"))  # a trailing blank line too
    assert data.n_reads == 5 and data.n_devices == 2
    dev = data.by_device()
    assert list(dev["ids"]) == ["a", "b"]
    np.testing.assert_allclose(dev["t"][0], [0, 60, 3600])
    np.testing.assert_array_equal(dev["mask"][1], [True, True, False])
    np.testing.assert_allclose(dev["g_target"], [10, 5])


def _problems(tmp_path, body, header=HEADER):
    with pytest.raises(MeasurementError) as e:
        load_measurements(_write(tmp_path, body, header))
    return e.value, {(row, col) for row, col, _ in e.value.problems}


@pytest.mark.parametrize("bad_row, expected", [
    ("a,10,120,,", (4, "g_uS")),          # missing value
    ("a,10,120,nan,", (4, "g_uS")),       # NaN counts as missing
    ("a,10,-5,9.0,", (4, "t_s")),         # negative time
    ("a,10,inf,9.0,", (4, "t_s")),        # non-finite time
    ("a,10,120,-1.0,", (4, "g_uS")),      # negative conductance
    ("a,10,120,abc,", (4, "g_uS")),       # not a number
    ("a,,120,9.0,", (4, "g_target_uS")),  # missing target
    ("a,11,120,9.0,", (4, "g_target_uS")),  # target changes within a device
])
def test_bad_values_reported_by_row_and_column(tmp_path, bad_row, expected):
    body = GOOD.replace("a,10,3600,9.1,\n", "a,10,3600,9.1,\n" + bad_row + "\n", 1)
    err, where = _problems(tmp_path, body)
    assert expected in where, err.problems
    assert f"row {expected[0]}, column {expected[1]}" in str(err)


def test_single_read_device_reported(tmp_path):
    err, where = _problems(tmp_path, GOOD + "c,3,60,2.9,\n")
    assert (6, "t_s") in where
    assert "'c' has 1 read" in str(err) and "at least two reads" in str(err)


def test_two_reads_at_the_same_time_reported(tmp_path):
    err, where = _problems(tmp_path, GOOD + "c,3,60,2.9,\nc,3,60,2.8,\n")
    assert (6, "t_s") in where and "1 distinct time" in str(err)


def test_siemens_instead_of_microsiemens_reported(tmp_path):
    body = "a,1e-5,0,9.9e-6,\na,1e-5,60,9.7e-6,\nb,5e-6,0,5.1e-6,\nb,5e-6,60,4.9e-6,\n"
    err, where = _problems(tmp_path, body)
    assert (None, "g_uS") in where and (None, "g_target_uS") in where
    assert "look like siemens" in str(err)


def test_reads_in_other_units_than_targets_reported(tmp_path):
    body = "a,10,0,9.9e-6,\na,10,60,9.7e-6,\nb,5,0,5.1e-6,\nb,5,60,4.9e-6,\n"
    err, where = _problems(tmp_path, body)
    assert (None, "g_uS") in where and "siemens" in str(err) and (None, "g_target_uS") not in where


def test_missing_column_and_empty_file(tmp_path):
    err, where = _problems(tmp_path, "a,10,0\n", header="device_id,g_target_uS,t_s\n")
    assert (None, "g_uS") in where
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(MeasurementError, match="empty"):
        load_measurements(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_measurements(tmp_path / "nope.csv")


def test_every_problem_is_listed(tmp_path):
    body = "a,10,0,,\na,10,-1,9,\nb,5,0,5,\n"
    err, where = _problems(tmp_path, body)
    assert {(1, "g_uS"), (2, "t_s"), (3, "t_s")} <= where  # b has a single read


def test_from_columns_and_npz_round_trip(tmp_path):
    cols = dict(device_id=[1, 1, 2, 2], g_target_uS=[3.0, 3.0, 0.0, 0.0], t_s=[0, 10, 0, 10], g_uS=[3.1, 3.0, 0, 0])
    data = from_columns(cols)
    assert data.n_devices == 2
    for name in ("d.npz", "d.csv"):
        back = load_measurements(data.save(tmp_path / name))
        np.testing.assert_array_equal(back.device_id, data.device_id)
        np.testing.assert_allclose(back.g_uS, data.g_uS)
    with pytest.raises(MeasurementError, match="row 2, column t_s"):
        from_columns(dict(cols, t_s=[0, -10, 0, 10]))


def test_simulated_measurements_follow_the_model():
    model = StateIndependent(sigma_prog=0.0, mu_nu=0.05, sigma_nu=0.0, q_s=0.0)
    data = simulate_measurements(jax.random.key(0), model, [10.0, 20.0], [0.0, 20.0, 200.0])
    dev = data.by_device()
    expected = dev["g_target"][:, None] * ((dev["t"] + 20.0) / 20.0) ** -0.05
    np.testing.assert_allclose(dev["g"], expected, rtol=1e-5)
    data = simulate_measurements(jax.random.key(1), HermesPCM(2), np.full(50, 5.0), [0.0, 60.0])
    assert data.n_reads == 100 and np.all(data.g_uS >= 0)
