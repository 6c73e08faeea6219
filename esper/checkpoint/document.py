"""Reading ``checkpoint.json``: is it ours, which schema, and is every section the right type."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from .errors import CheckpointError
from .format import DOCUMENT_KEYS, FORMAT, SCHEMA_VERSION

_SECTIONS: dict[str, type | tuple[type, ...]] = {
    "esper_version": str, "host": dict, "model": dict, "slots": dict,
    "optimizer": (dict, type(None)), "trainer": dict, "tensors": dict, "tied": dict,
    "weights": dict,
}


@contextlib.contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Turn a ``KeyError``, ``TypeError`` or ``ValueError`` inside into a :class:`CheckpointError`.

    Arguments:
        path: the file being interpreted (named in the message).
        what: the part of it (``"slot 'mid'"``).

    Raises:
        CheckpointError: ``"{path}: {what}: {error}"``.
    """
    try:
        yield
    except CheckpointError:
        raise
    except KeyError as error:
        raise CheckpointError(f"{path}: {what}: missing key {error}") from error
    except (TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: {what}: {error}") from error


def exact(data: Any, keys: set[str] | type, what: str,
          optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``data`` if it is a dict with exactly ``keys`` (or a dataclass's field names).

    Keys in ``optional`` may be missing (fields added since older checkpoints
    were written; the caller's defaults fill them).

    Raises:
        ValueError: not a dict, or keys missing or unexpected (wrap in :func:`reading`).
    """
    names = {f.name for f in dataclasses.fields(keys)} if isinstance(keys, type) else keys
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be an object, got {type(data).__name__}")
    if not set(data) <= names or not names - optional <= set(data):
        raise ValueError(f"{what}: missing keys {sorted(names - optional - set(data))}, "
                         f"unexpected keys {sorted(set(data) - names)}")
    return data


def read_document(path: Path) -> dict[str, Any]:
    """Parse and check the top level of ``checkpoint.json``.

    Arguments:
        path: the document.

    Returns:
        The document; its sections have the right JSON types.

    Raises:
        CheckpointError: a missing file, invalid JSON, not an Esper checkpoint,
            a schema newer than this Esper reads, or a missing or mistyped section.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a checkpoint, or its save was interrupted)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(document, dict):
        raise CheckpointError(f"{path}: not an Esper checkpoint (a JSON "
                              f"{type(document).__name__}, not an object)")
    if document.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an Esper checkpoint (format "
                              f"{document.get('format')!r}, expected {FORMAT!r})")
    version = document.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: schema_version must be an int >= 1, got {version!r}")
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: schema version {version} was written by a newer Esper "
            f"({document.get('esper_version')}); Esper {__version__} reads up to {SCHEMA_VERSION}")
    if set(document) != DOCUMENT_KEYS:
        raise CheckpointError(f"{path}: missing sections {sorted(DOCUMENT_KEYS - set(document))}, "
                              f"unexpected sections {sorted(set(document) - DOCUMENT_KEYS)}")
    for key, kind in _SECTIONS.items():
        if not isinstance(document[key], kind):
            raise CheckpointError(f"{path}: section {key!r} has the wrong type "
                                  f"({type(document[key]).__name__})")
    return document


__all__ = ["exact", "read_document", "reading"]
