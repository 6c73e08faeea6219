"""Data: the tasks Esper grows networks on, and batching for the training loop.

``load_task(name)`` returns a :class:`TaskData`: tensors for the train and validation
splits plus what a host needs to be built. Every failure raises :class:`DatasetError`.

May import: ``esper.errors``, ``esper.validation``, ``esper.leyline`` and torch.
"""

from .base import TaskData as TaskData
from .chars import CHAR_VOCAB as CHAR_VOCAB
from .chars import UNK as UNK
from .chars import VOCAB_SIZE as VOCAB_SIZE
from .chars import decode as decode
from .chars import encode as encode
from .chars import load_chars as load_chars
from .cifar10 import CIFAR10_CLASSES as CIFAR10_CLASSES
from .cifar10 import SafeUnpickler as SafeUnpickler
from .cifar10 import load_cifar10 as load_cifar10
from .digits import load_digits as load_digits
from .errors import DatasetError as DatasetError
from .loader import batches as batches
from .loader import shard as shard
from .tasks import DEFAULT_TASK as DEFAULT_TASK
from .tasks import TASKS as TASKS
from .tasks import load_task as load_task

__all__ = [
    "CHAR_VOCAB", "CIFAR10_CLASSES", "DEFAULT_TASK", "TASKS", "UNK", "VOCAB_SIZE",
    "DatasetError", "SafeUnpickler", "TaskData", "batches", "decode", "encode", "load_chars",
    "load_cifar10", "load_digits", "load_task", "shard",
]
