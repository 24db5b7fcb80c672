"""CIFAR-10 from a local copy of the standard *python* batches (never downloaded).

The folder holds ``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` (and
usually ``batches.meta``), as distributed in ``cifar-10-python.tar.gz`` from
https://www.cs.toronto.edu/~kriz/cifar.html. Each batch is a pickled dict with

* ``b'data'``: uint8 ``[N, 3072]``; each row is one 32x32 RGB image stored channel
  major: the 1024 red values (row-major 32x32), then the 1024 green, then the 1024 blue;
* ``b'labels'``: N integers in ``[0, 10)``.

The folder is given by the ``path`` argument or, failing that, by the
``PCMJAX_CIFAR10`` environment variable; either may also name the parent folder that
contains ``cifar-10-batches-py/``. Batches are unpickled with a restricted unpickler
that only rebuilds NumPy arrays and plain Python containers, so a stray file cannot
execute code.
"""

from __future__ import annotations

import codecs
import copyreg
import os
import pathlib
import pickle

import numpy as np

from pcmjax._validate import check_bool, check_int
from pcmjax.data.digits import Dataset

ENV_VAR = "PCMJAX_CIFAR10"
SUBDIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = TRAIN_FILES + (TEST_FILE,)

IMAGE_SIZE = 32
NUM_CHANNELS = 3
ROW_SIZE = IMAGE_SIZE * IMAGE_SIZE * NUM_CHANNELS  # 3072
NUM_CLASSES = 10
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Standard per-channel statistics of the CIFAR-10 training set (pixels in [0, 1]).
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)

_SOURCE_HINT = (
    "pcmjax never downloads data: fetch the python version (cifar-10-python.tar.gz) from "
    "https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and pass its folder as "
    f"path=... or set the {ENV_VAR} environment variable."
)

PathLike = str | os.PathLike

# Globals a CIFAR-10 batch may reference, mapped to the objects that rebuild them.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals needed by NumPy arrays."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR-10 batch") from None


def _unpickle(file: pathlib.Path):
    """Reads one pickled batch (Python 2 or 3 pickles; str data decoded as bytes)."""
    try:
        with open(file, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError) as e:
        raise ValueError(f"{file} is not a valid CIFAR-10 python batch (unpickling failed: {e})") from e


def _get(d: dict, key: str):
    """``d[b'key']`` or ``d['key']`` (batches pickled by Python 3 may use str keys)."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _resolve_dir(path: PathLike | None) -> pathlib.Path:
    """Finds the folder holding the batch files from ``path`` or ``$PCMJAX_CIFAR10``."""
    if path is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            raise FileNotFoundError(
                f"No CIFAR-10 folder given: path=None and the {ENV_VAR} environment variable is not set. "
                + _SOURCE_HINT
            )
        source = f"from ${ENV_VAR}"
        root = pathlib.Path(env).expanduser()
    else:
        source = "from the path argument"
        root = pathlib.Path(path).expanduser()

    if not root.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 folder {str(root)!r} ({source}) does not exist or is not a directory "
            f"(the folder may be given by path=... or the {ENV_VAR} environment variable). " + _SOURCE_HINT
        )
    candidates = [root, root / SUBDIR]
    for c in candidates:
        if all((c / name).is_file() for name in REQUIRED_FILES):
            return c
    # Report against the candidate that looks most like a CIFAR-10 folder.
    best = max(candidates, key=lambda c: sum((c / name).is_file() for name in REQUIRED_FILES))
    missing = [name for name in REQUIRED_FILES if not (best / name).is_file()]
    raise FileNotFoundError(
        f"CIFAR-10 batch files missing in {str(best)!r} ({source}; also looked in "
        f"{str(root / SUBDIR)!r}): {', '.join(missing)}. Expected {', '.join(REQUIRED_FILES)} "
        f"(path=... or the {ENV_VAR} environment variable may point to that folder or its parent). " + _SOURCE_HINT
    )


def _read_meta(folder: pathlib.Path) -> int:
    """Number of classes from ``batches.meta`` if present, else 10."""
    file = folder / META_FILE
    if not file.is_file():
        return NUM_CLASSES
    meta = _unpickle(file)
    names = _get(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) == 0:
        raise ValueError(f"{file} is malformed: expected a dict with a non-empty 'label_names' list")
    return len(names)


def _read_batch(file: pathlib.Path, num_classes: int):
    """Reads and validates one batch: uint8 ``[N, 3072]`` data and int32 ``[N]`` labels."""
    batch = _unpickle(file)
    if not isinstance(batch, dict):
        raise ValueError(f"{file} is malformed: expected a pickled dict, got {type(batch).__name__}")
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if data is None or labels is None:
        raise ValueError(
            f"{file} is malformed: expected keys b'data' and b'labels', found {sorted(map(repr, batch))}"
        )
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_SIZE:
        raise ValueError(
            f"{file} is malformed: b'data' must be uint8 of shape [N, {ROW_SIZE}], "
            f"got {data.dtype} of shape {list(data.shape)}"
        )
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as e:  # ragged or otherwise unconvertible
        raise ValueError(f"{file} is malformed: b'labels' is not a list of integers ({e})") from e
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{file} is malformed: b'labels' must be a 1-D list of integers, got {labels.dtype} "
                         f"of shape {list(labels.shape)}")
    if labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"{file} is malformed: {data.shape[0]} rows in b'data' but {labels.shape[0]} entries in b'labels'"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{file} is malformed: labels must lie in [0, {num_classes}), got range "
            f"[{labels.min()}, {labels.max()}]"
        )
    return data, labels.astype(np.int32)


def _load_split(folder: pathlib.Path, files, limit: int | None, num_classes: int):
    """Concatenates batches (reading only as many as ``limit`` needs)."""
    datas, labels, count = [], [], 0
    for name in files:
        if limit is not None and count >= limit:
            break
        d, lab = _read_batch(folder / name, num_classes)
        datas.append(d)
        labels.append(lab)
        count += d.shape[0]
    data = np.concatenate(datas) if datas else np.zeros((0, ROW_SIZE), np.uint8)
    label = np.concatenate(labels) if labels else np.zeros((0,), np.int32)
    if limit is not None:
        data, label = data[:limit], label[:limit]
    return data, label


def _to_float_nhwc(data: np.ndarray, normalize: bool) -> np.ndarray:
    """uint8 ``[N, 3072]`` (channel major) -> float32 ``[N, 32, 32, 3]`` in [0, 1] or standardised."""
    x = data.reshape(-1, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1).astype(np.float32)
    np.divide(x, np.float32(255.0), out=x)
    if normalize:
        x -= CIFAR10_MEAN
        x /= CIFAR10_STD
    return x


def _check_limit(name: str, value) -> int | None:
    if value is None:
        return None
    return check_int(name, value, 0)


def load_cifar10(
    path: PathLike | None = None,
    *,
    normalize: bool = False,
    max_train: int | None = None,
    max_test: int | None = None,
    as_images: bool = True,
) -> Dataset:
    """Loads CIFAR-10 from a local folder of the standard python batches.

    Nothing is ever downloaded. The folder is ``path`` if given, else the value of the
    ``PCMJAX_CIFAR10`` environment variable; it may hold the batch files itself or be
    their parent containing ``cifar-10-batches-py/``. Training examples are
    ``data_batch_1`` ... ``data_batch_5`` in order, test examples ``test_batch``; subsets
    keep the first ``max_train`` / ``max_test`` examples in that order (and only the
    batches needed are read). The full set takes about 740 MB as float32.

    Args:
      path: folder with the batch files, or its parent; ``None`` reads ``$PCMJAX_CIFAR10``.
      normalize: if True, standardise each channel with the usual CIFAR-10 statistics
        (``CIFAR10_MEAN``, ``CIFAR10_STD``) after scaling to ``[0, 1]``.
      max_train: keep at most this many training examples (``None``: all 50000).
      max_test: keep at most this many test examples (``None``: all 10000).
      as_images: if True (default) inputs are NHWC ``[N, 32, 32, 3]``; otherwise those
        images flattened to ``[N, 3072]`` (HWC order).

    Returns:
      A :class:`~pcmjax.data.Dataset` with float32 inputs (in ``[0, 1]`` unless
      ``normalize``), int32 labels, ``num_classes`` (10, or the length of
      ``label_names`` in ``batches.meta``) and ``input_shape`` ``(32, 32, 3)`` or ``(3072,)``.

    Raises:
      FileNotFoundError: if no folder is given, it does not exist, or batch files are
        missing; the message names the path tried and ``PCMJAX_CIFAR10``.
      ValueError: if a batch is malformed (not a pickled dict, missing keys, wrong
        dtype or sizes, labels out of range); the message names the file.
    """
    max_train = _check_limit("max_train", max_train)
    max_test = _check_limit("max_test", max_test)
    folder = _resolve_dir(path)
    num_classes = _read_meta(folder)
    train_data, y_train = _load_split(folder, TRAIN_FILES, max_train, num_classes)
    test_data, y_test = _load_split(folder, (TEST_FILE,), max_test, num_classes)
    x_train = _to_float_nhwc(train_data, normalize)
    x_test = _to_float_nhwc(test_data, normalize)
    input_shape = (IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS)
    if not as_images:
        input_shape = (ROW_SIZE,)
        x_train = x_train.reshape(-1, ROW_SIZE)
        x_test = x_test.reshape(-1, ROW_SIZE)
    return Dataset(x_train, y_train, x_test, y_test, num_classes, input_shape)


def write_synthetic_cifar10(
    folder: PathLike,
    n_train_per_batch: int = 20,
    n_test: int = 20,
    seed: int = 0,
    *,
    write_meta: bool = True,
) -> pathlib.Path:
    """Writes a tiny random CIFAR-10 folder in the standard python-batch format.

    Each of ``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` is a pickled dict
    (protocol 2, bytes keys, like the original files) with ``b'batch_label'``,
    ``b'labels'``, ``b'data'`` (uniform random uint8 ``[N, 3072]``, channel major) and
    ``b'filenames'``. Labels cycle through the 10 classes in a random order, so every
    class appears once ``N >= 10``. Meant for tests and CI: :func:`load_cifar10`
    reads it like the real data.

    Args:
      folder: output folder (created if needed; existing batch files are overwritten).
      n_train_per_batch: examples in each of the 5 training batches.
      n_test: examples in the test batch.
      seed: seed of the NumPy random generator.
      write_meta: also write ``batches.meta`` with the 10 class names.

    Returns:
      The folder, as a :class:`pathlib.Path`.
    """
    check_int("n_train_per_batch", n_train_per_batch, 1)
    check_int("n_test", n_test, 1)
    check_int("seed", seed, 0)
    check_bool("write_meta", write_meta)
    folder = pathlib.Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def write(name: str, n: int, label: str):
        labels = rng.permutation(np.arange(n) % NUM_CLASSES).tolist()
        batch = {
            b"batch_label": label.encode(),
            b"labels": [int(v) for v in labels],
            b"data": rng.integers(0, 256, size=(n, ROW_SIZE), dtype=np.uint8),
            b"filenames": [f"synthetic_{name}_{i:05d}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)

    for i, name in enumerate(TRAIN_FILES, start=1):
        write(name, int(n_train_per_batch), f"training batch {i} of 5")
    write(TEST_FILE, int(n_test), "testing batch 1 of 1")
    if write_meta:
        meta = {
            b"num_cases_per_batch": int(n_train_per_batch),
            b"label_names": [n.encode() for n in CLASS_NAMES],
            b"num_vis": ROW_SIZE,
        }
        with open(folder / META_FILE, "wb") as f:
            pickle.dump(meta, f, protocol=2)
    return folder
