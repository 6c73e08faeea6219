"""The task container shared by every loader, and helpers the image tasks share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..leyline import Topology
from ..validation import is_int
from .errors import DatasetError

TASK_TOPOLOGIES: tuple[Topology, ...] = ("cnn", "transformer")
"""The host kinds a task trains: images for the CNN, token sequences for the transformer."""


@dataclass(frozen=True, slots=True, eq=False)
class TaskData:
    """One task, ready to train: tensors for both splits plus what a host needs to be built.

    Attributes:
        name: the task name given to :func:`~esper.data.load_task`.
        topology: ``"cnn"`` (images ``float32 [N, C, H, W]``, labels ``int64 [N]``) or
            ``"transformer"`` (tokens ``int64 [N, T]``, next-token targets ``int64 [N, T]``).
        train: the training ``(x, y)`` tensors.
        val: the validation ``(x, y)`` tensors.
        num_classes: width of the output layer (for a language model: the vocabulary size).
        input_shape: shape of one example, ``x.shape[1:]``.
        in_channels: image channels for a CNN host; ``None`` for a transformer task.
        vocab: for a language model, the characters of the vocabulary in token-id order.
        class_names: a readable name per class of an image task.

    Example:
        >>> task = load_task("digits", limit=64)
        >>> host = CNNHost(in_channels=task.in_channels, num_classes=task.num_classes)
    """

    name: str
    topology: Topology
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    num_classes: int
    input_shape: tuple[int, ...]
    in_channels: int | None = None
    vocab: str | None = None
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.topology not in TASK_TOPOLOGIES:
            raise DatasetError(f"TaskData.topology must be one of {TASK_TOPOLOGIES}, "
                               f"got {self.topology!r}")
        x_dtype = torch.float32 if self.topology == "cnn" else torch.int64
        for split, (x, y) in (("train", self.train), ("val", self.val)):
            where = f"task {self.name!r} {split} split"
            if x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise DatasetError(f"{where}: needs as many targets as inputs and at least one "
                                   f"example, got x {tuple(x.shape)} and y {tuple(y.shape)}")
            if tuple(x.shape[1:]) != self.input_shape:
                raise DatasetError(f"{where}: example shape {tuple(x.shape[1:])} "
                                   f"is not input_shape {self.input_shape}")
            if x.dtype != x_dtype or y.dtype != torch.int64:
                raise DatasetError(f"{where}: expected x {x_dtype} and y torch.int64, "
                                   f"got {x.dtype} and {y.dtype}")
        if self.topology == "cnn" and self.in_channels != self.input_shape[0]:
            raise DatasetError(f"task {self.name!r}: in_channels {self.in_channels} does not "
                               f"match input_shape {self.input_shape}")
        if self.topology == "transformer" and (self.vocab is None
                                               or len(self.vocab) != self.num_classes):
            raise DatasetError(f"task {self.name!r}: a transformer task needs a vocab of "
                               f"num_classes={self.num_classes} characters")

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary size of a language-model task, ``None`` for an image task."""
        return self.num_classes if self.topology == "transformer" else None

    @property
    def block_size(self) -> int | None:
        """Tokens per sequence of a language-model task, ``None`` for an image task."""
        return self.input_shape[0] if self.topology == "transformer" else None

    def to(self, device: torch.device | str) -> TaskData:
        """The same task with both splits on ``device`` (itself when they are there)."""
        device = torch.device(device)
        if self.train[0].device == device:
            return self
        return dataclasses.replace(self, train=tuple(t.to(device) for t in self.train),
                                   val=tuple(t.to(device) for t in self.val))


def check_limit(limit: int | None) -> None:
    """Reject a ``limit`` that is neither ``None`` nor a positive int.

    Arguments:
        limit: the cap on examples per split.
    """
    if limit is not None and not (is_int(limit) and limit >= 1):
        raise DatasetError(f"limit must be None or an int >= 1, got {limit!r}")


def normalize_images(train: Tensor, val: Tensor) -> tuple[Tensor, Tensor]:
    """Standardise both splits per channel with the mean and std of ``train``.

    Arguments:
        train: training images, ``float32 [N, C, H, W]``.
        val: validation images with the same channels.

    Returns:
        ``(train, val)`` shifted and scaled so that every channel of ``train`` has mean 0
        and standard deviation 1.
    """
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), correction=0, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (val - mean) / std
