"""Evaluation data of network studies: the digits test split (cached) or CIFAR-10."""

from __future__ import annotations

import numpy as np

from pcmjax import data as pdata
from pcmjax._validate import check_choice
from pcmjax.montecarlo._cache import cache_dir
from pcmjax.montecarlo.store import atomic_write_bytes

DATASETS = ("digits", "cifar10")


def load_dataset(name: str, data_dir=None, eval_examples=None, calibration_examples=128, input_shape=None):
    """``(x_eval, y_eval, x_cal)``: the test split and the first calibration examples of
    the training split (``"digits"``, or ``"cifar10"`` from ``data_dir``)."""
    check_choice("dataset", name, DATASETS)
    if name == "digits":
        as_images = input_shape is not None and len(input_shape) == 3
        ds = _cached_digits(as_images)
    else:
        ds = pdata.load_cifar10(data_dir, normalize=True)
    n_eval = ds.x_test.shape[0] if eval_examples is None else min(int(eval_examples), ds.x_test.shape[0])
    n_cal = min(int(calibration_examples), ds.x_train.shape[0])
    return ds.x_test[:n_eval], ds.y_test[:n_eval], ds.x_train[:n_cal]


def _cached_digits(as_images: bool):
    """The digits split of :func:`pcmjax.data.load_digits`, cached as ``.npz`` (importing
    scikit-learn takes seconds; the split is deterministic)."""
    path = cache_dir() / "datasets" / f"digits-split0-test0.25{'-images' if as_images else ''}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return pdata.Dataset(z["x_train"], z["y_train"], z["x_test"], z["y_test"], int(z["num_classes"]),
                                     tuple(int(d) for d in z["input_shape"]))
        except (OSError, ValueError, KeyError):
            pass  # unreadable: rebuild it
    ds = pdata.load_digits(as_images=as_images)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, lambda f: np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                                                    y_test=ds.y_test, num_classes=ds.num_classes,
                                                    input_shape=np.asarray(ds.input_shape)))
    except OSError:  # a read-only cache: fine, just slower next time
        pass
    return ds


NPZ_KEYS = ("x", "y", "x_cal")


def _array_error(path, name, arr, allowed):
    return ValueError(f"dataset {str(path)!r}: {name} has shape {tuple(arr.shape)} and dtype {arr.dtype}; "
                      f"allowed: {allowed}.")


def _check_npz(path, arrays: dict):
    """Check the arrays of a ``.npz`` data set (see :func:`load_npz_dataset`)."""
    unknown = sorted(set(arrays) - set(NPZ_KEYS))
    if "x" not in arrays or unknown:
        raise ValueError(f"dataset {str(path)!r} holds arrays {sorted(arrays)}; it needs 'x' (and 'y' for "
                         f"classification, optionally 'x_cal'), allowed: {list(NPZ_KEYS)}.")
    x = arrays["x"]
    y = arrays.get("y")
    if y is None:  # token sequences
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 2 or not np.issubdtype(x.dtype, np.integer):
            raise _array_error(path, "x", x, "without 'y', token sequences: integers of shape [sequences, "
                                             "length >= 2]")
        if x.min() < 0:
            raise ValueError(f"dataset {str(path)!r}: token ids in x must be >= 0, got {int(x.min())}.")
    else:
        if x.ndim < 2 or x.shape[0] < 1 or not (np.issubdtype(x.dtype, np.floating)
                                                 or np.issubdtype(x.dtype, np.integer)):
            raise _array_error(path, "x", x, "for classification, numbers of shape [examples, features...]")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"dataset {str(path)!r}: x must be finite.")
        if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise _array_error(path, "y", y, f"class labels: integers >= 0 of shape [{x.shape[0]}] (one per "
                                             "example of x)")
    if "x_cal" in arrays:
        c = arrays["x_cal"]
        same_kind = np.issubdtype(c.dtype, np.integer) if y is None else np.issubdtype(c.dtype, np.number)
        if c.ndim != x.ndim or c.shape[1:] != x.shape[1:] or c.shape[0] < 1 or not same_kind:
            raise _array_error(path, "x_cal", c, f"examples like x: shape [n, {', '.join(map(str, x.shape[1:]))}], "
                                                 f"{'integers' if y is None else 'numbers'}")


def load_npz_dataset(path, eval_examples=None, calibration_examples=128):
    """``(x_eval, y_eval, x_cal)`` from a ``.npz`` file.

    The file holds ``x`` and integer labels ``y`` (classification), or integer token
    sequences ``x`` ``[sequences, length]`` alone (language modelling: each token
    predicts the next one; ``y_eval`` is then ``None``), and optionally calibration
    inputs ``x_cal`` (default: the first ``calibration_examples`` of ``x``), on which
    input ranges are measured too.

    Raises:
      ValueError: an array is missing or has the wrong shape or dtype (the message names
        it, its shape and dtype, and what is allowed).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"dataset {str(path)!r} does not exist.") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"dataset {str(path)!r} is not a readable .npz file ({e}).") from e
    _check_npz(path, arrays)
    x, y = arrays["x"], arrays.get("y")
    n_eval = x.shape[0] if eval_examples is None else min(int(eval_examples), x.shape[0])
    x_cal = arrays.get("x_cal", x)[: int(calibration_examples)]
    return x[:n_eval], None if y is None else y[:n_eval], x_cal
