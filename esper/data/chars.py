"""A character-level language-model task over the Python standard library's own source.

The corpus is the text of the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` (or a
directory you name), read in sorted relative-path order, skipping ``site-packages``, test
directories and files that are not UTF-8, and cut at ``max_chars`` characters. It is offline
and deterministic for a given Python installation.

The vocabulary is fixed, so a host can be built before any text is read: token 0 is the
unknown token (shown as U+FFFD), then tab, newline and the 95 printable ASCII characters;
every other character maps to the unknown token.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..validation import check_int
from .base import TaskData, check_limit
from .errors import DatasetError

UNK = "\ufffd"
CHAR_VOCAB = UNK + "\t\n" + "".join(chr(code) for code in range(32, 127))
VOCAB_SIZE = len(CHAR_VOCAB)
DEFAULT_BLOCK_SIZE = 128
DEFAULT_MAX_CHARS = 1_000_000
CHARS_VAL_FRACTION = 0.1
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                           "__pycache__"})



def _ascii_ids() -> np.ndarray:
    """The token id of every ASCII code point (0, the unknown token, where none)."""
    table = np.zeros(128, dtype=np.int64)
    for token, char in enumerate(CHAR_VOCAB[1:], start=1):
        table[ord(char)] = token
    return table


_ASCII_IDS = _ascii_ids()


def encode(text: str) -> Tensor:
    """Map characters to token ids.

    Arguments:
        text: any string.

    Returns:
        ``int64 [len(text)]`` ids in ``[0, VOCAB_SIZE)``; characters outside the vocabulary
        become 0, the unknown token.
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
    ids = np.where(codes < 128, _ASCII_IDS[np.minimum(codes, 127)], 0)
    return torch.from_numpy(ids)


def decode(ids: Tensor) -> str:
    """Map token ids back to characters.

    Arguments:
        ids: a 1-D tensor of ids in ``[0, VOCAB_SIZE)``.

    Returns:
        The text; the unknown token reads as U+FFFD.
    """
    values = ids.flatten().tolist()
    if any(not 0 <= value < VOCAB_SIZE for value in values):
        raise DatasetError(f"decode: token ids must lie in [0, {VOCAB_SIZE})")
    return "".join(CHAR_VOCAB[value] for value in values)


def corpus_files(root: Path) -> list[Path]:
    """List the ``.py`` files under ``root`` in the order the corpus reads them.

    Arguments:
        root: the source directory.

    Returns:
        The files, sorted by path relative to ``root``, without skipped directories.
    """
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [name for name in subdirs if name not in _SKIPPED_DIRS]
        found.extend(Path(directory, name) for name in names if name.endswith(".py"))
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def read_corpus(root: Path, max_chars: int) -> str:
    """Concatenate source files under ``root`` until ``max_chars`` characters are read.

    Arguments:
        root: the source directory.
        max_chars: the cap on the corpus length.

    Returns:
        At most ``max_chars`` characters of source text.
    """
    if not root.is_dir():
        raise DatasetError(f"chars: Python source not found: {str(root)!r} is not a directory")
    parts, total = [], 0
    for path in corpus_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text if text.endswith("\n") else text + "\n")
        total += len(parts[-1])
        if total >= max_chars:
            break
    if not parts:
        raise DatasetError(f"chars: no readable .py source files under {str(root)!r}")
    return "".join(parts)[:max_chars]


def _windows(tokens: Tensor, block_size: int, limit: int | None) -> tuple[Tensor, Tensor]:
    count = (len(tokens) - 1) // block_size
    if limit is not None:
        count = min(count, limit)
    inputs = tokens[:count * block_size].view(count, block_size)
    targets = tokens[1:count * block_size + 1].view(count, block_size)
    return inputs, targets


def load_chars(*, block_size: int = DEFAULT_BLOCK_SIZE, limit: int | None = None,
               source_dir: str | Path | None = None, max_chars: int = DEFAULT_MAX_CHARS,
               val_fraction: float = CHARS_VAL_FRACTION) -> TaskData:
    """Load the chars task: ``int64 [N, block_size]`` tokens and next-token targets.

    The corpus is split by position: the first ``1 - val_fraction`` of the tokens train,
    the rest validate. Each split is cut into non-overlapping windows of ``block_size``
    tokens; the targets are the same windows shifted one token ahead.

    Arguments:
        block_size: tokens per sequence.
        limit: if given, keep at most this many sequences in each split.
        source_dir: a directory of ``.py`` files to read instead of the standard library.
        max_chars: the cap on the corpus length in characters.
        val_fraction: share of the corpus, from its end, held out for validation.

    Returns:
        A :class:`TaskData` with topology ``"transformer"``, ``num_classes=VOCAB_SIZE``
        and ``vocab=CHAR_VOCAB``.
    """
    check_limit(limit)
    for name, value in (("block_size", block_size), ("max_chars", max_chars)):
        check_int(f"chars: {name}", value, minimum=1, error=DatasetError)
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"chars: val_fraction must lie in (0, 1), got {val_fraction!r}")
    root = Path(source_dir) if source_dir is not None else Path(sysconfig.get_paths()["stdlib"])
    tokens = encode(read_corpus(root, max_chars))
    cut = int(len(tokens) * (1.0 - val_fraction))
    train = _windows(tokens[:cut], block_size, limit)
    val = _windows(tokens[cut:], block_size, limit)
    if len(train[0]) == 0 or len(val[0]) == 0:
        raise DatasetError(f"chars: a corpus of {len(tokens)} characters is too short for "
                           f"block_size={block_size} in both splits")
    return TaskData(name="chars", topology="transformer", train=train, val=val,
                    num_classes=VOCAB_SIZE, input_shape=(block_size,), vocab=CHAR_VOCAB)
