"""The pure seed lifecycle: slot state, transitions, gates, events, alpha, breaker, serialization.

May import: ``esper.errors``, ``esper.validation``, ``esper.leyline``, torch (never ``torch.nn``).
"""
