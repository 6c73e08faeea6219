"""The pure seed lifecycle: slot state, transitions, gates, events, alpha, breaker, serialization,
whether a training seed's weights moved.

May import: ``esper.errors``, ``esper.validation``, ``esper.leyline``, torch (never ``torch.nn``).
"""
