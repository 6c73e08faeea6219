"""Reading ``checkpoint.json``: is it ours, which schema, and is every section the right type."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._version import __version__
from ..validation import check_int
from .errors import CheckpointError
from .format import (
    CHECKSUM_KEY,
    DOCUMENT_KEYS,
    FORMAT,
    MAX_DOCUMENT_BYTES,
    MAX_DOCUMENT_DEPTH,
    SCHEMA_VERSION,
    document_checksum,
)

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
        CheckpointError: a missing file, one over :data:`MAX_DOCUMENT_BYTES` or
            nesting deeper than :data:`MAX_DOCUMENT_DEPTH` (checked before
            parsing), invalid JSON, not an Esper checkpoint, a schema newer than
            this Esper reads, a checksum that does not match (an edited or
            corrupt document), or a missing or mistyped section.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a checkpoint, or its save was interrupted)")
    size = path.stat().st_size
    if size > MAX_DOCUMENT_BYTES:
        raise CheckpointError(f"{path}: {size} bytes, over the {MAX_DOCUMENT_BYTES} a "
                              "checkpoint document may have")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path}: not UTF-8 text ({error})") from error
    depth = nesting_depth(text)
    if depth > MAX_DOCUMENT_DEPTH:
        raise CheckpointError(f"{path}: JSON nested {depth} deep, over the "
                              f"{MAX_DOCUMENT_DEPTH} a checkpoint document may have")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(document, dict):
        raise CheckpointError(f"{path}: not an Esper checkpoint (a JSON "
                              f"{type(document).__name__}, not an object)")
    if document.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an Esper checkpoint (format "
                              f"{document.get('format')!r}, expected {FORMAT!r})")
    version = check_int(f"{path}: schema_version", document.get("schema_version"), minimum=1,
                        error=CheckpointError)
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: schema version {version} was written by a newer Esper "
            f"({document.get('esper_version')}); Esper {__version__} reads up to {SCHEMA_VERSION}")
    expected = DOCUMENT_KEYS if version >= 2 else DOCUMENT_KEYS - {CHECKSUM_KEY}
    if set(document) != expected:
        raise CheckpointError(f"{path}: missing sections {sorted(expected - set(document))}, "
                              f"unexpected sections {sorted(set(document) - expected)}")
    if version >= 2 and document[CHECKSUM_KEY] != document_checksum(document):
        raise CheckpointError(f"{path}: its checksum does not match its content (edited or "
                              "corrupt); restore it from a copy, or resume from an earlier "
                              "version in the checkpoint directory")
    for key, kind in _SECTIONS.items():
        if not isinstance(document[key], kind):
            raise CheckpointError(f"{path}: section {key!r} has the wrong type "
                                  f"({type(document[key]).__name__})")
    return document


def nesting_depth(text: str) -> int:
    """How deep the JSON in ``text`` nests (``[[1]]`` is 2), read without parsing it.

    Brackets inside strings do not count; the text need not be valid JSON.
    """
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


__all__ = ["exact", "nesting_depth", "read_document", "reading"]
