"""The one exception the data package raises (defined with the others in :mod:`esper.errors`).

:class:`DatasetError` subclasses :class:`ValueError`, so callers that already catch
``ValueError`` keep working; the message always names the task or file and the problem.
"""

from ..errors import DatasetError

__all__ = ["DatasetError"]
