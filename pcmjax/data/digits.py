"""The scikit-learn 8x8 handwritten digits, split and scaled for training.

The data ship with scikit-learn (no network access); install them with the
``pcmjax[data]`` extra. This module also defines :class:`Dataset`, the container
returned by every loader in :mod:`pcmjax.data`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pcmjax._validate import check_bool, check_float, check_int

DIGITS_NUM_CLASSES = 10
DIGITS_MAX_VALUE = 16.0  # pixel values of sklearn's digits are integers in [0, 16]


class Dataset(NamedTuple):
    """A train/test split held as NumPy arrays.

    Attributes:
      x_train: float32 inputs, ``[N_train, *input_shape]``.
      y_train: int32 class labels in ``[0, num_classes)``, ``[N_train]``.
      x_test: float32 inputs, ``[N_test, *input_shape]``.
      y_test: int32 class labels, ``[N_test]``.
      num_classes: number of classes.
      input_shape: shape of one example (without the batch axis), e.g. ``(64,)``
        or ``(8, 8, 1)`` (NHWC images).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple


def _require_sklearn():
    """Import scikit-learn or raise an ImportError naming the ``pcmjax[data]`` extra."""
    try:
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError as e:
        raise ImportError(
            "pcmjax.data.load_digits needs scikit-learn, which is not installed. "
            "Install the data extra: pip install 'pcmjax[data]' (or pip install scikit-learn)."
        ) from e
    return sklearn.datasets, sklearn.model_selection


def load_digits(split_seed: int = 0, test_fraction: float = 0.25, *, as_images: bool = False) -> Dataset:
    """Loads scikit-learn's 8x8 digits as a deterministic, stratified train/test split.

    Pixels are scaled from ``[0, 16]`` to ``[0, 1]`` (divided by 16). The split uses
    ``sklearn.model_selection.train_test_split`` with ``stratify=labels`` and
    ``random_state=split_seed``, so equal arguments give identical arrays and every
    class keeps (up to rounding) its share in both parts.

    Args:
      split_seed: ``random_state`` of the split.
      test_fraction: fraction of the 1797 examples held out for testing, in ``(0, 1)``.
      as_images: if True, inputs have shape ``[N, 8, 8, 1]`` (NHWC, for CNNs);
        otherwise they are flat, ``[N, 64]``.

    Returns:
      A :class:`Dataset` with float32 inputs in ``[0, 1]``, int32 labels,
      ``num_classes=10`` and ``input_shape`` ``(64,)`` or ``(8, 8, 1)``.

    Raises:
      ImportError: if scikit-learn is not installed.
      ValueError: if ``test_fraction`` is not in ``(0, 1)``.
    """
    check_int("split_seed", split_seed, 0)
    test_fraction = check_float("test_fraction", test_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
    check_bool("as_images", as_images)
    datasets, model_selection = _require_sklearn()
    bunch = datasets.load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / DIGITS_MAX_VALUE).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int32)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=split_seed
    )
    input_shape = (8, 8, 1) if as_images else (64,)
    x_train = np.ascontiguousarray(x_train.reshape((-1,) + input_shape), dtype=np.float32)
    x_test = np.ascontiguousarray(x_test.reshape((-1,) + input_shape), dtype=np.float32)
    return Dataset(
        x_train=x_train,
        y_train=np.ascontiguousarray(y_train, dtype=np.int32),
        x_test=x_test,
        y_test=np.ascontiguousarray(y_test, dtype=np.int32),
        num_classes=DIGITS_NUM_CLASSES,
        input_shape=input_shape,
    )
