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
