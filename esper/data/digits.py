"""The default task: scikit-learn's bundled 8x8 handwritten digits, shaped for a CNN host.

The 1,797 images ship inside scikit-learn, so nothing is downloaded. They are grey-scale,
so the task has one input channel; they are upsampled (bilinear) from 8x8 to ``image_size``
so that a three-block CNN that halves the resolution per block still has pixels left
(16 -> 8 -> 4 -> 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..validation import check_int
from .base import TaskData, check_limit, normalize_images
from .errors import DatasetError

DIGITS_IMAGE_SIZE = 16
DIGITS_VAL_FRACTION = 0.2
_NATIVE_SIZE = 8
_MAX_PIXEL = 16.0


def stratified_split(labels: torch.Tensor, val_fraction: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Split example indices into train and val, keeping each class's share in both.

    Arguments:
        labels: ``int64 [N]`` class labels.
        val_fraction: share of each class, rounded to whole examples, that goes to val.
        generator: the source of randomness; the same state gives the same split.

    Returns:
        ``(train_indices, val_indices)``: disjoint, together all of ``range(N)``, each in
        a random order.
    """
    train_parts, val_parts = [], []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = round(val_fraction * len(members))
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    train, val = torch.cat(train_parts), torch.cat(val_parts)
    # Mix the classes so that the first `limit` examples are a fair sample.
    train = train[torch.randperm(len(train), generator=generator)]
    val = val[torch.randperm(len(val), generator=generator)]
    return train, val


def load_digits(*, seed: int = 0, limit: int | None = None,
                image_size: int = DIGITS_IMAGE_SIZE,
                val_fraction: float = DIGITS_VAL_FRACTION) -> TaskData:
    """Load the digits task: ``float32 [N, 1, image_size, image_size]`` images, 10 classes.

    Arguments:
        seed: seeds the stratified train/val split; the same seed gives the same split.
        limit: if given, keep at most this many examples in each split.
        image_size: side of the square images after bilinear upsampling from 8.
        val_fraction: share of each class held out for validation.

    Returns:
        A :class:`TaskData` with topology ``"cnn"``, ``in_channels=1`` and ``num_classes=10``,
        its images standardised with the mean and std of the training split it returns.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    check_limit(limit)
    check_int("digits: image_size", image_size, minimum=1, error=DatasetError)
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"digits: val_fraction must lie in (0, 1), got {val_fraction!r}")
    pixels, labels = sklearn_digits(return_X_y=True)
    images = torch.from_numpy(pixels).to(torch.float32).view(-1, 1, _NATIVE_SIZE, _NATIVE_SIZE)
    images = images / _MAX_PIXEL
    if image_size != _NATIVE_SIZE:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False)
    targets = torch.from_numpy(labels).to(torch.int64)
    train_idx, val_idx = stratified_split(targets, val_fraction,
                                           torch.Generator().manual_seed(seed))
    train_idx, val_idx = train_idx[:limit], val_idx[:limit]
    train_x, val_x = normalize_images(images[train_idx], images[val_idx])
    return TaskData(
        name="digits", topology="cnn",
        train=(train_x, targets[train_idx]), val=(val_x, targets[val_idx]),
        num_classes=10, input_shape=(1, image_size, image_size), in_channels=1,
        class_names=tuple(str(digit) for digit in range(10)),
    )
