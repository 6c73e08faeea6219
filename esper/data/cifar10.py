"""CIFAR-10 from a local directory in the standard python-pickle batch format.

The directory holds ``data_batch_1`` .. ``data_batch_5`` (the training split), ``test_batch``
(used as the validation split) and, optionally, ``batches.meta`` (the class names). Every
batch is a pickled dict with ``b"data"``, a ``uint8 [N, 3072]`` numpy array of row-major
red, green and blue 32x32 planes, and ``b"labels"``, N ints in ``[0, 10)``.

Pickles can run arbitrary code, so these are read with :class:`SafeUnpickler`, which
resolves only the numpy reconstructors the real files use and refuses every other global.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from .base import TaskData, check_limit, normalize_images
from .errors import DatasetError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
VAL_FILE = "test_batch"
META_FILE = "batches.meta"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
_SIDE = 32
_CHANNELS = 3
_ROW = _CHANNELS * _SIDE * _SIDE
_GET_CIFAR = ("download the CIFAR-10 python version (cifar-10-python.tar.gz), extract it and "
              "pass its cifar-10-batches-py directory (--data-dir on the command line)")

# The globals a pickled numpy array needs, taken from numpy's own pickling so that nothing
# is imported by name; numpy 2 renamed the module numpy.core to numpy._core.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers and numpy arrays, and nothing else.

    Arguments:
        file: a binary file object holding the pickle.
        source: the file's name, quoted in errors.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> object:
        """Resolve an allowed numpy reconstructor; refuse any other global.

        Arguments:
            module: the module the pickle names.
            name: the attribute the pickle names.

        Returns:
            The allowed object, never imported from the module the pickle asks for.
        """
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(f"{self.source}: refusing to unpickle global {module}.{name}; "
                               "a CIFAR-10 batch may only contain numpy arrays") from None


def read_pickle(path: Path) -> object:
    """Unpickle one file with :class:`SafeUnpickler`.

    Arguments:
        path: the file to read.

    Returns:
        The unpickled object.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read: {error}") from error
    try:
        return SafeUnpickler(io.BytesIO(raw), str(path)).load()
    except DatasetError:
        raise
    except Exception as error:  # a corrupt pickle can fail in many ways
        raise DatasetError(f"{path}: is not a valid pickle: "
                           f"{type(error).__name__}: {error}") from error


def _field(batch: dict, key: str, path: Path) -> object:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DatasetError(f"{path}: missing key b{key!r}; found keys {sorted(map(repr, batch))}")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one CIFAR-10 batch.

    Arguments:
        path: a ``data_batch_*`` or ``test_batch`` file.

    Returns:
        ``(images, labels)``: ``uint8 [N, 3, 32, 32]`` and ``int64 [N]``.
    """
    batch = read_pickle(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data, labels = _field(batch, "data", path), _field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = f"array of {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: b'data' must be a uint8 numpy array, got {kind}")
    if data.ndim != 2 or data.shape[1] != _ROW:
        raise DatasetError(f"{path}: b'data' must have shape [N, {_ROW}], got {data.shape}")
    try:
        label_array = np.asarray(labels)
    except Exception as error:
        raise DatasetError(f"{path}: b'labels' is not a list of ints: {error}") from error
    if label_array.ndim != 1 or not (np.issubdtype(label_array.dtype, np.integer)
                                     or label_array.size == 0):
        raise DatasetError(f"{path}: b'labels' must be a flat list of ints, "
                           f"got {label_array.dtype} with shape {label_array.shape}")
    if len(label_array) != len(data):
        raise DatasetError(f"{path}: label count mismatch: {len(label_array)} labels "
                           f"for {len(data)} images")
    if label_array.size and (label_array.min() < 0 or label_array.max() >= len(CIFAR10_CLASSES)):
        raise DatasetError(f"{path}: labels out of range [0, {len(CIFAR10_CLASSES)}): "
                           f"found {label_array.min()}..{label_array.max()}")
    return data.reshape(-1, _CHANNELS, _SIDE, _SIDE), label_array.astype(np.int64)


def read_class_names(path: Path) -> tuple[str, ...]:
    """Read the class names from ``batches.meta``.

    Arguments:
        path: the ``batches.meta`` file.

    Returns:
        The ten class names in label order.
    """
    meta = read_pickle(path)
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(meta).__name__}")
    names = _field(meta, "label_names", path)
    if (not isinstance(names, list) or len(names) != len(CIFAR10_CLASSES)
            or not all(isinstance(n, bytes | str) for n in names)):
        raise DatasetError(f"{path}: b'label_names' must be a list of "
                           f"{len(CIFAR10_CLASSES)} strings")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


def load_cifar10(data_dir: str | Path | None, *, limit: int | None = None) -> TaskData:
    """Load CIFAR-10: ``float32 [N, 3, 32, 32]`` images, 10 classes.

    The five training batches form the training split and ``test_batch`` the validation
    split, so there is nothing to seed.

    Arguments:
        data_dir: the directory holding the batch files.
        limit: if given, keep the first ``limit`` examples of each split, in file order.

    Returns:
        A :class:`TaskData` with topology ``"cnn"`` and ``in_channels=3``, its images
        standardised per channel with the mean and std of the training split it returns.
    """
    check_limit(limit)
    if data_dir is None:
        raise DatasetError(f"cifar10: needs data_dir, a directory of CIFAR-10 python batches; "
                           f"{_GET_CIFAR}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"cifar10: data_dir {str(root)!r} is not a directory; {_GET_CIFAR}")
    missing = [name for name in (*TRAIN_FILES, VAL_FILE) if not (root / name).is_file()]
    if missing:
        raise DatasetError(f"cifar10: {root} is missing {', '.join(missing)}")
    train = [read_batch(root / name) for name in TRAIN_FILES]
    val_images, val_labels = read_batch(root / VAL_FILE)
    meta = root / META_FILE
    class_names = read_class_names(meta) if meta.is_file() else CIFAR10_CLASSES
    train_images = np.concatenate([images for images, _ in train])[:limit]
    train_labels = np.concatenate([labels for _, labels in train])[:limit]
    val_images, val_labels = val_images[:limit], val_labels[:limit]
    if len(train_images) == 0 or len(val_images) == 0:
        raise DatasetError(f"cifar10: {root} holds no training or no validation images")
    train_x, val_x = normalize_images(torch.from_numpy(train_images).to(torch.float32) / 255.0,
                                      torch.from_numpy(val_images).to(torch.float32) / 255.0)
    return TaskData(
        name="cifar10", topology="cnn",
        train=(train_x, torch.from_numpy(train_labels)),
        val=(val_x, torch.from_numpy(val_labels)),
        num_classes=len(CIFAR10_CLASSES), input_shape=(_CHANNELS, _SIDE, _SIDE),
        in_channels=_CHANNELS, class_names=class_names,
    )
