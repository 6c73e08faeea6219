import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from esper.data import CIFAR10_CLASSES, DatasetError, SafeUnpickler, load_cifar10, load_task
from esper.data.cifar10 import TRAIN_FILES, read_pickle

PER_BATCH = 4
ROW = 3 * 32 * 32


def write_pickle(path: Path, obj: object, protocol: int = 4) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def make_batch(seed: int, count: int = PER_BATCH) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"fake", b"labels": rng.integers(0, 10, count).tolist(),
            b"data": rng.integers(0, 256, (count, ROW), dtype=np.uint8)}


def make_cifar(root: Path, meta: bool = True) -> Path:
    root.mkdir(exist_ok=True)
    for seed, name in enumerate((*TRAIN_FILES, "test_batch")):
        write_pickle(root / name, make_batch(seed))
    if meta:
        names = [f"class{i}".encode() for i in range(10)]
        write_pickle(root / "batches.meta", {b"label_names": names, b"num_vis": ROW})
    return root


def test_valid_directory_loads(tmp_path):
    task = load_task("cifar10", data_dir=make_cifar(tmp_path))
    (train_x, train_y), (val_x, val_y) = task.train, task.val
    assert task.topology == "cnn" and task.in_channels == 3 and task.num_classes == 10
    assert train_x.shape == (5 * PER_BATCH, 3, 32, 32) and val_x.shape == (PER_BATCH, 3, 32, 32)
    assert train_x.dtype == val_x.dtype == torch.float32
    assert train_y.dtype == val_y.dtype == torch.int64
    assert train_y.tolist() == [
        label for seed in range(5) for label in make_batch(seed)[b"labels"]]
    assert task.class_names == tuple(f"class{i}" for i in range(10))
    means = train_x.mean(dim=(0, 2, 3))
    stds = train_x.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(means, torch.zeros(3), atol=1e-5)
    assert torch.allclose(stds, torch.ones(3), atol=1e-4)


def test_pixel_layout_and_limit(tmp_path):
    root = make_cifar(tmp_path, meta=False)
    batch = make_batch(0)
    batch[b"data"][:] = 0
    batch[b"data"][0, 2 * 1024 + 5 * 32 + 7] = 255  # blue plane, row 5, column 7
    write_pickle(root / "data_batch_1", batch)
    task = load_cifar10(root, limit=3)
    assert task.train[0].shape == (3, 3, 32, 32) and task.val[0].shape == (3, 3, 32, 32)
    blue = task.train[0][:, 2]
    assert torch.nonzero(blue == blue.max()).tolist() == [[0, 5, 7]]
    assert task.class_names == CIFAR10_CLASSES


def test_py2_style_numpy_global_is_allowed(tmp_path):
    # The real files were written by numpy 1 as `numpy.core.multiarray._reconstruct`.
    raw = pickle.dumps(make_batch(0), protocol=3)
    assert b"cnumpy._core.multiarray\n" in raw
    path = tmp_path / "batch"
    path.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    loaded = read_pickle(path)
    assert np.array_equal(loaded[b"data"], make_batch(0)[b"data"])


def set_key(name, key, value):
    def mutate(root: Path) -> None:
        batch = make_batch(0)
        batch[key] = value
        write_pickle(root / name, batch)
    return mutate


def drop_key(key):
    def mutate(root: Path) -> None:
        batch = make_batch(0)
        del batch[key]
        write_pickle(root / "data_batch_2", batch)
    return mutate


def write_raw(name, raw):
    return lambda root: (root / name).write_bytes(raw)


MALFORMED = {
    "missing file": (lambda root: (root / "data_batch_3").unlink(), "missing data_batch_3"),
    "missing test batch": (lambda root: (root / "test_batch").unlink(), "missing test_batch"),
    "not a pickle": (write_raw("data_batch_1", b"this is not a pickle"), "not a valid pickle"),
    "truncated": (lambda root: (root / "data_batch_4").write_bytes(
        (root / "data_batch_4").read_bytes()[:50]), "not a valid pickle"),
    "not a dict": (lambda root: write_pickle(root / "test_batch", [1, 2]), "expected a pickled"),
    "no data key": (drop_key(b"data"), "missing key b'data'"),
    "no labels key": (drop_key(b"labels"), "missing key b'labels'"),
    "float data": (set_key("data_batch_1", b"data", np.zeros((PER_BATCH, ROW), np.float32)),
                   "uint8"),
    "list data": (set_key("data_batch_1", b"data", [[0] * ROW] * PER_BATCH), "uint8"),
    "wrong row size": (set_key("data_batch_5", b"data", np.zeros((PER_BATCH, 100), np.uint8)),
                       "shape"),
    "3-d data": (set_key("data_batch_5", b"data", np.zeros((PER_BATCH, ROW, 1), np.uint8)),
                 "shape"),
    "label count": (set_key("test_batch", b"labels", [0] * (PER_BATCH + 1)),
                    "label count mismatch"),
    "label too big": (set_key("data_batch_1", b"labels", [0, 1, 2, 10]), "out of range"),
    "negative label": (set_key("data_batch_1", b"labels", [0, -1, 2, 3]), "out of range"),
    "float labels": (set_key("data_batch_1", b"labels", [0.5] * PER_BATCH), "list of ints"),
    "bad meta": (lambda root: write_pickle(root / "batches.meta", {b"label_names": [b"a"]}),
                 "label_names"),
    "protocol 5 global": (lambda root: write_pickle(root / "data_batch_1", make_batch(0), 5),
                          "refusing to unpickle global numpy._core.numeric._frombuffer"),
}


@pytest.mark.parametrize("mutate, problem", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_directory_is_refused(tmp_path, mutate, problem):
    root = make_cifar(tmp_path)
    mutate(root)
    with pytest.raises(DatasetError, match=problem):
        load_cifar10(root)


def test_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="needs data_dir"):
        load_task("cifar10")
    with pytest.raises(DatasetError, match="not a directory"):
        load_cifar10(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        load_cifar10(tmp_path / "file")
    with pytest.raises(DatasetError, match="missing data_batch_1, data_batch_2"):
        load_cifar10(tmp_path)


class SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class ExecCall(SystemCall):
    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload, name", [(SystemCall, "system"), (ExecCall, "exec")])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, name, where):
    root = make_cifar(tmp_path / "cifar")
    marker = tmp_path / "pwned"
    evil = payload(marker)
    batch = make_batch(0)
    batch[b"labels"] = evil
    write_pickle(root / "data_batch_2", evil if where == "top" else batch)
    with pytest.raises(DatasetError, match=f"refusing to unpickle global .*{name}"):
        load_cifar10(root)
    assert not marker.exists()


def test_unpickler_refuses_any_other_global(tmp_path):
    path = tmp_path / "p"
    write_pickle(path, {b"x": Path("a")})
    with pytest.raises(DatasetError, match="refusing"):
        read_pickle(path)
    assert issubclass(SafeUnpickler, pickle.Unpickler)
