"""The one exception the data package raises."""


class DatasetError(ValueError):
    """A task could not be loaded: unknown name, missing or malformed files, bad arguments.

    It subclasses :class:`ValueError`, so callers that already catch ``ValueError`` keep
    working; the message always names the task or file and the problem.
    """
