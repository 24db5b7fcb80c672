"""Tests of pcmjax.data: the digits split and the local CIFAR-10 loader."""

import pickle
import sys

import numpy as np
import pytest

from pcmjax.data import Dataset, load_cifar10, load_digits, write_synthetic_cifar10
from pcmjax.data import cifar10 as cifar_mod

# ---------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_shapes_and_dtypes(digits):
    assert isinstance(digits, Dataset)
    assert digits.x_train.shape[0] + digits.x_test.shape[0] == 1797
    assert digits.x_test.shape[0] == 450  # ceil(0.25 * 1797)
    assert digits.x_train.shape[1:] == (64,) == digits.input_shape
    assert digits.x_train.dtype == np.float32 and digits.x_test.dtype == np.float32
    assert digits.y_train.dtype == np.int32 and digits.y_test.dtype == np.int32
    assert digits.y_train.shape == (digits.x_train.shape[0],)
    assert digits.num_classes == 10


def test_digits_value_range(digits):
    for x in (digits.x_train, digits.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
        # sklearn's pixels are integers 0..16, so every value is a multiple of 1/16
        np.testing.assert_array_equal(x * 16, np.round(x * 16))
    assert set(np.unique(digits.y_train)) == set(range(10))


def test_digits_stratified_split(digits):
    train_counts = np.bincount(digits.y_train, minlength=10)
    test_counts = np.bincount(digits.y_test, minlength=10)
    total = train_counts + test_counts
    # each class keeps its overall share in the test part, up to rounding
    np.testing.assert_allclose(test_counts, 0.25 * total, atol=1.0)
    np.testing.assert_allclose(train_counts / train_counts.sum(), total / total.sum(), atol=0.003)


def test_digits_deterministic_and_seed_dependent(digits):
    again = load_digits(split_seed=0)
    for a, b in zip(digits[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    other = load_digits(split_seed=1)
    assert not np.array_equal(digits.y_test, other.y_test)


def test_digits_test_fraction_and_images(digits):
    small = load_digits(test_fraction=0.1)
    assert small.x_test.shape[0] == 180
    img = load_digits(as_images=True)
    assert img.input_shape == (8, 8, 1)
    assert img.x_train.shape == (digits.x_train.shape[0], 8, 8, 1)
    np.testing.assert_array_equal(img.x_train.reshape(-1, 64), digits.x_train)
    np.testing.assert_array_equal(img.y_test, digits.y_test)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


def test_digits_missing_sklearn_names_extra(monkeypatch):
    for name in list(sys.modules):
        if name == "sklearn" or name.startswith("sklearn."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn...` fail
    with pytest.raises(ImportError, match=r"pcmjax\[data\]"):
        load_digits()


# ---------------------------------------------------------------------------- CIFAR-10


def _raw(folder, name):
    with open(folder / name, "rb") as f:
        return pickle.load(f, encoding="bytes")


@pytest.fixture()
def synth(tmp_path):
    return write_synthetic_cifar10(tmp_path / "batches", n_train_per_batch=12, n_test=15, seed=3)


def test_synthetic_folder_format(synth):
    for name in cifar_mod.REQUIRED_FILES + (cifar_mod.META_FILE,):
        assert (synth / name).is_file()
    b = _raw(synth, "data_batch_2")
    assert isinstance(b, dict) and {b"data", b"labels"} <= set(b)
    assert b[b"data"].dtype == np.uint8 and b[b"data"].shape == (12, 3072)
    assert isinstance(b[b"labels"], list) and len(b[b"labels"]) == 12
    assert set(b[b"labels"]) == set(range(10))
    meta = _raw(synth, "batches.meta")
    assert len(meta[b"label_names"]) == 10


def test_cifar_round_trip(synth):
    ds = load_cifar10(synth)
    assert isinstance(ds, Dataset)
    assert ds.x_train.shape == (60, 32, 32, 3) and ds.x_test.shape == (15, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.input_shape == (32, 32, 3) and ds.num_classes == 10
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0

    raws = [_raw(synth, n) for n in cifar_mod.TRAIN_FILES]
    raw_train = np.concatenate([r[b"data"] for r in raws])
    raw_labels = np.concatenate([r[b"labels"] for r in raws])
    np.testing.assert_array_equal(ds.y_train, raw_labels)
    np.testing.assert_array_equal(ds.y_test, _raw(synth, "test_batch")[b"labels"])
    # every value equals what was written, scaled by 1/255
    expected = raw_train.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(ds.x_train, expected)


def test_cifar_channel_layout_by_hand(synth):
    ds = load_cifar10(synth)
    raw = _raw(synth, "data_batch_1")[b"data"]
    raw_test = _raw(synth, "test_batch")[b"data"]
    # raw row: R plane (1024, row-major 32x32), then G plane, then B plane
    for n, h, w in [(0, 0, 0), (3, 5, 17), (7, 31, 2), (11, 31, 31)]:
        for c in range(3):
            assert ds.x_train[n, h, w, c] == np.float32(raw[n, c * 1024 + h * 32 + w]) / np.float32(255)
    n, h, w = 14, 9, 30
    for c in range(3):
        assert ds.x_test[n, h, w, c] == np.float32(raw_test[n, c * 1024 + h * 32 + w]) / np.float32(255)


def test_cifar_normalize_flat_and_subsets(synth):
    base = load_cifar10(synth)
    norm = load_cifar10(synth, normalize=True)
    np.testing.assert_allclose(
        norm.x_train, (base.x_train - cifar_mod.CIFAR10_MEAN) / cifar_mod.CIFAR10_STD, rtol=1e-6, atol=1e-6
    )
    assert norm.x_train.dtype == np.float32

    flat = load_cifar10(synth, as_images=False)
    assert flat.input_shape == (3072,) and flat.x_test.shape == (15, 3072)
    np.testing.assert_array_equal(flat.x_test, base.x_test.reshape(15, -1))

    sub = load_cifar10(synth, max_train=20, max_test=4)  # spans data_batch_1 and _2
    assert sub.x_train.shape == (20, 32, 32, 3) and sub.x_test.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(sub.x_train, base.x_train[:20])
    np.testing.assert_array_equal(sub.y_test, base.y_test[:4])
    big = load_cifar10(synth, max_train=10**6)
    assert big.x_train.shape[0] == 60
    with pytest.raises(ValueError, match="max_train"):
        load_cifar10(synth, max_train=-1)


def test_cifar_env_var_resolution(synth, monkeypatch):
    monkeypatch.setenv("PCMJAX_CIFAR10", str(synth))
    ds = load_cifar10()
    np.testing.assert_array_equal(ds.y_train, load_cifar10(synth).y_train)


def test_cifar_parent_folder_resolution(tmp_path, monkeypatch):
    folder = write_synthetic_cifar10(tmp_path / "cifar-10-batches-py", n_train_per_batch=2, n_test=3)
    ds = load_cifar10(tmp_path)
    assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(ds.y_test, load_cifar10(folder).y_test)
    monkeypatch.setenv("PCMJAX_CIFAR10", str(tmp_path))
    assert load_cifar10().x_test.shape == (3, 32, 32, 3)


def test_cifar_argument_overrides_env(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("PCMJAX_CIFAR10", str(tmp_path / "nowhere"))
    assert load_cifar10(synth).x_test.shape[0] == 15


def test_cifar_missing_folder_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("PCMJAX_CIFAR10", raising=False)
    with pytest.raises(FileNotFoundError, match="PCMJAX_CIFAR10"):
        load_cifar10()

    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError) as e:
        load_cifar10(missing)
    assert str(missing) in str(e.value) and "PCMJAX_CIFAR10" in str(e.value)

    monkeypatch.setenv("PCMJAX_CIFAR10", str(missing))
    with pytest.raises(FileNotFoundError) as e:
        load_cifar10()
    assert str(missing) in str(e.value) and "PCMJAX_CIFAR10" in str(e.value)


def test_cifar_missing_files_error(synth):
    (synth / "data_batch_4").unlink()
    (synth / "test_batch").unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_cifar10(synth)
    msg = str(e.value)
    assert str(synth) in msg and "data_batch_4" in msg and "test_batch" in msg and "PCMJAX_CIFAR10" in msg
    assert "data_batch_1," not in msg.split("Expected")[0]  # only the missing files are listed


def _rewrite(folder, name, obj):
    with open(folder / name, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize(
    "batch, pattern",
    [
        ({b"pixels": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, "b'data'"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "b'labels'"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "3072"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, "rows"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"\[0, 10\)"),
        ([1, 2, 3], "dict"),
    ],
)
def test_cifar_malformed_batch(synth, batch, pattern):
    _rewrite(synth, "data_batch_3", batch)
    with pytest.raises(ValueError, match=pattern) as e:
        load_cifar10(synth)
    assert "data_batch_3" in str(e.value)


def test_cifar_not_a_pickle(synth):
    (synth / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(synth)


def test_cifar_refuses_arbitrary_globals(synth):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    _rewrite(synth, "data_batch_1", {b"data": Evil(), b"labels": []})
    with pytest.raises(ValueError, match="data_batch_1.*not allowed"):
        load_cifar10(synth)


def test_cifar_str_keys_accepted(synth):
    """Batches re-pickled by Python 3 with str keys load too."""
    raw = _raw(synth, "data_batch_5")
    _rewrite(synth, "data_batch_5", {"data": raw[b"data"], "labels": raw[b"labels"]})
    ds = load_cifar10(synth)
    np.testing.assert_array_equal(ds.y_train[-12:], raw[b"labels"])


def test_cifar_malformed_meta(synth):
    _rewrite(synth, "batches.meta", {b"label_names": []})
    with pytest.raises(ValueError, match="batches.meta"):
        load_cifar10(synth)
