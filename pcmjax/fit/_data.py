"""Conductance measurements: the long-form format, its loader and validator, a simulator.

The format (CSV with a header row, or NPZ with one array per column) has one row per read::

    device_id,g_target_uS,t_s,g_uS
    d0,10.0,25.0,9.71
    d0,10.0,3600.0,8.93
    ...

* ``device_id``: any label (string or integer) shared by the reads of one device;
* ``g_target_uS``: the device's target conductance, µS (the same on every row of a device);
* ``t_s``: seconds after programming completed (≥ 0);
* ``g_uS``: the conductance read, µS (≥ 0).

Each device needs at least two reads at different times (the drift exponent is a slope);
three or more also inform the read noise. Extra columns are ignored. Rows are numbered
from 1 for the first data row (the header is not counted; in a CSV the file line is
``row + 1``).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import jax
import numpy as np

from pcmjax._validate import check_key

COLUMNS = ("device_id", "g_target_uS", "t_s", "g_uS")
_NUMERIC = COLUMNS[1:]
MAX_LISTED = 20  # problems listed in an error message (all are kept in .problems)
# Conductances of PCM devices are 0.01–100 µS; a median below this is a unit mix-up.
SIEMENS_LOOKING_UPPER = 1e-3


class MeasurementError(ValueError):
    """Invalid measurement data; ``problems`` lists ``(row, column, message)`` tuples."""

    def __init__(self, source: str, problems: list[tuple]):
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s) in the measurement data:"]
        for row, col, msg in problems[:MAX_LISTED]:
            where = ("row " + str(row) if row is not None else "all rows") + (f", column {col}" if col else "")
            lines.append(f"  {where}: {msg}")
        if len(problems) > MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more (see .problems).")
        lines.append(f"Expected columns {', '.join(COLUMNS)} (t in seconds after programming, conductances in µS).")
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True, eq=False)
class Measurements:
    """Validated long-form conductance reads (one entry per read).

    Attributes:
      device_id: ``[n_reads]`` device labels (strings).
      g_target_uS, t_s, g_uS: ``[n_reads]`` float64 arrays.
      source: where the data came from (for messages).
    """

    device_id: np.ndarray
    g_target_uS: np.ndarray
    t_s: np.ndarray
    g_uS: np.ndarray
    source: str = "<arrays>"

    @property
    def n_reads(self) -> int:
        return int(self.g_uS.shape[0])

    @property
    def n_devices(self) -> int:
        return int(np.unique(self.device_id).shape[0])

    def by_device(self) -> dict:
        """Per-device padded arrays ``[n_devices, max_reads]`` (reads sorted by time).

        Returns:
          dict with ``ids`` ``[D]``, ``g_target`` ``[D]``, ``t`` and ``g`` ``[D, J]`` and
          ``mask`` ``[D, J]`` (True where a read exists).
        """
        ids, inverse = np.unique(self.device_id, return_inverse=True)
        order = np.lexsort((self.t_s, inverse))
        inv, t, g = inverse[order], self.t_s[order], self.g_uS[order]
        counts = np.bincount(inv, minlength=ids.shape[0])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        col = np.arange(inv.shape[0]) - starts[inv]
        J = int(counts.max())
        out_t = np.zeros((ids.shape[0], J))
        out_g = np.zeros((ids.shape[0], J))
        mask = np.zeros((ids.shape[0], J), bool)
        out_t[inv, col], out_g[inv, col], mask[inv, col] = t, g, True
        g_target = np.zeros(ids.shape[0])
        g_target[inv] = self.g_target_uS[order]
        return dict(ids=ids, g_target=g_target, t=out_t, g=out_g, mask=mask)

    def save(self, path) -> Path:
        """Write as CSV (``.csv``) or NPZ (``.npz``)."""
        path = Path(path)
        if path.suffix.lower() == ".npz":
            np.savez(path, device_id=self.device_id, g_target_uS=self.g_target_uS, t_s=self.t_s, g_uS=self.g_uS)
            return path
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for row in zip(self.device_id, self.g_target_uS, self.t_s, self.g_uS):
                w.writerow([row[0]] + [repr(float(v)) for v in row[1:]])
        return path


def load_measurements(source) -> Measurements:
    """Read and validate conductance measurements.

    Args:
      source: path to a ``.csv`` or ``.npz`` file in the long-form format (module
        docstring), or a mapping with the four columns as sequences.

    Returns:
      :class:`Measurements`.

    Raises:
      MeasurementError: listing every problem by row and column (missing values,
        non-numeric, negative or non-finite times or conductances, targets that change
        within a device, devices with fewer than two reads at different times, values
        that look like siemens rather than µS).
    """
    if isinstance(source, dict):
        return from_columns(source, "<mapping>")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"measurement file {str(path)!r} does not exist.")
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return from_columns({k: z[k] for k in z.files}, str(path))
    with path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise MeasurementError(str(path), [(None, None, "the file is empty")]) from None
        rows = list(reader)
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise MeasurementError(str(path), [(None, c, f"column is missing (header has {header})") for c in missing])
    idx = {c: header.index(c) for c in COLUMNS}
    rows = [r for r in rows if any(cell.strip() for cell in r)]  # blank lines
    cols = {c: [r[idx[c]].strip() if idx[c] < len(r) else "" for r in rows] for c in COLUMNS}
    return from_columns(cols, str(path))


def from_columns(cols: dict, source: str = "<arrays>") -> Measurements:
    """Validate column sequences (strings or numbers) into :class:`Measurements`."""
    problems: list[tuple] = []
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise MeasurementError(source, [(None, c, f"column is missing (got {sorted(cols)})") for c in missing])
    n = len(cols["device_id"])
    for c in _NUMERIC:
        if len(cols[c]) != n:
            raise MeasurementError(source, [(None, c, f"has {len(cols[c])} entries but device_id has {n}")])
    if n == 0:
        raise MeasurementError(source, [(None, None, "there are no reads")])
    ids = np.asarray([_label(v) for v in cols["device_id"]], dtype=object)
    for i in np.nonzero(ids == "")[0]:
        problems.append((int(i) + 1, "device_id", "missing value"))
    values = {}
    for c in _NUMERIC:
        arr = np.full(n, np.nan)
        for i, v in enumerate(cols[c]):
            arr[i], msg = _number(v)
            if msg:
                problems.append((i + 1, c, msg))
        bad = np.isinf(arr) | (arr < 0)
        for i in np.nonzero(bad)[0]:
            what = "seconds after programming" if c == "t_s" else "µS"
            problems.append((int(i) + 1, c, f"{arr[i]!r} is not a finite, non-negative number of {what}"))
        values[c] = arr
    problems += _device_problems(ids, values)
    problems += _unit_problems(values)
    if problems:
        problems.sort(key=lambda p: (p[0] is None, p[0] or 0))
        raise MeasurementError(source, problems)
    return Measurements(np.asarray(ids, dtype=str), values["g_target_uS"], values["t_s"], values["g_uS"], source)


def _label(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    return str(v).strip()


def _number(v):
    if v is None:
        return np.nan, "missing value"
    if isinstance(v, str):
        s = v.strip()
        if s == "" or s.lower() in ("nan", "na", "n/a", "null", "none"):
            return np.nan, "missing value"
        try:
            return float(s), None
        except ValueError:
            return np.nan, f"{v!r} is not a number"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return np.nan, f"{v!r} is not a number"
    return x, ("missing value" if np.isnan(x) else None)


def _device_problems(ids, values) -> list:
    """Targets that change within a device; devices with fewer than two distinct read times."""
    problems = []
    rows = np.nonzero(ids != "")[0]
    if rows.size == 0:
        return problems
    uniq, inv = np.unique(ids[rows].astype(str), return_inverse=True)
    uniq = np.array([str(u) for u in uniq], dtype=object)
    g_t, t = values["g_target_uS"][rows], values["t_s"][rows]
    # First finite target of each device, then rows that disagree with it.
    order = np.lexsort((rows, ~np.isfinite(g_t), inv))
    first_pos = order[np.searchsorted(inv[order], np.arange(uniq.size))]
    ref, ref_row = g_t[first_pos], rows[first_pos]
    tol = 1e-9 * np.maximum(1.0, np.abs(ref))
    for i in np.nonzero(np.isfinite(g_t) & (np.abs(g_t - ref[inv]) > tol[inv]))[0]:
        d = inv[i]
        problems.append((int(rows[i]) + 1, "g_target_uS",
                         f"device {uniq[d]!r} has target {g_t[i]!r} here but {ref[d]!r} on row "
                         f"{int(ref_row[d]) + 1}; a device has one target"))
    # Distinct finite times per device.
    fin = np.isfinite(t)
    pairs = np.unique(np.stack([inv[fin], t[fin]], axis=1), axis=0)
    n_times = np.bincount(pairs[:, 0].astype(int), minlength=uniq.size)
    n_reads = np.bincount(inv, minlength=uniq.size)
    first_row = np.full(uniq.size, np.iinfo(np.int64).max)
    np.minimum.at(first_row, inv, rows)
    for d in np.nonzero(n_times < 2)[0]:
        what = "1 read" if n_reads[d] == 1 else f"{n_reads[d]} reads but {n_times[d]} distinct time(s)"
        problems.append((int(first_row[d]) + 1, "t_s",
                         f"device {uniq[d]!r} has {what}; the drift exponent needs at least two reads at "
                         f"different times"))
    return problems


def _unit_problems(values) -> list:
    problems = []
    for c in ("g_target_uS", "g_uS"):
        v = values[c]
        pos = v[np.isfinite(v) & (v > 0)]
        if pos.size and np.median(pos) < SIEMENS_LOOKING_UPPER:
            other = "g_target_uS" if c == "g_uS" else "g_uS"
            problems.append((None, c, f"values look like siemens, not µS (median {np.median(pos):.3g}); "
                                      f"multiply by 1e6 to convert S to µS (both {c} and {other} must be µS)"))
    gt, g = values["g_target_uS"], values["g_uS"]
    ok = np.isfinite(gt) & np.isfinite(g) & (gt > 0) & (g > 0)
    if ok.sum() > 0 and not problems:
        ratio = np.median(g[ok] / gt[ok])
        if ratio > 1e3 or ratio < 1e-3:
            problems.append((None, "g_uS", f"reads are {ratio:.3g} times the targets (median ratio): the two "
                                           f"columns are in different units (both must be µS)"))
    return problems


def simulate_measurements(key, model, g_target_uS, t_s, *, device_prefix: str = "d") -> Measurements:
    """Reads of simulated devices: the synthetic counterpart of a measurement campaign.

    Each device is programmed once (``model.program``), gets its drift exponent
    (``model.drift_exponent``) and is read at every time in ``t_s`` with an independent
    draw of the accumulated 1/f noise (``model.at_time``), as the device model defines it.

    Args:
      key: a ``jax.random`` key.
      model: a :class:`pcmjax.devices.DeviceModel`.
      g_target_uS: ``[n_devices]`` target conductances, µS.
      t_s: ``[n_times]`` read times, seconds after programming.
      device_prefix: labels are ``f"{prefix}{i}"``.

    Returns:
      :class:`Measurements` with ``n_devices · n_times`` rows.
    """
    check_key(key)
    g_t = np.asarray(g_target_uS, np.float32).reshape(-1)
    times = np.asarray(t_s, np.float32).reshape(-1)
    if g_t.size == 0 or times.size == 0:
        raise ValueError("g_target_uS and t_s must not be empty.")
    if not (np.all(np.isfinite(times)) and np.all(times >= 0)):
        raise ValueError(f"t_s must be finite seconds >= 0 after programming, got {times}.")
    reads = np.asarray(_simulate(key, model, g_t, times), np.float64).T  # [D, T]
    n_dev, n_t = reads.shape
    ids = np.char.add(device_prefix, np.arange(n_dev).astype(str))
    return Measurements(
        device_id=np.repeat(ids, n_t), g_target_uS=np.repeat(g_t.astype(np.float64), n_t),
        t_s=np.tile(times.astype(np.float64), n_dev), g_uS=reads.reshape(-1), source="<simulated>",
    )


@jax.jit
def _simulate(key, model, g_t, times):
    k_prog, k_nu, k_read = jax.random.split(key, 3)
    g_prog = model.program(k_prog, g_t)
    nu = model.drift_exponent(k_nu, g_t)
    g_ref = g_t if model.q_s_from == "target" else None

    def read(k, t):
        return model.at_time(k, g_prog, nu, t, g_target=g_ref)

    return jax.vmap(read)(jax.random.split(k_read, times.shape[0]), times)  # [T, D]
