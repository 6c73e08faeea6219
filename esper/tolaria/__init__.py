"""The trainer: compiled step, epoch loop, breakers, signed commands, runs, logs, reports.

May import: every other Esper package except ``esper.kasmina`` (the facade) and ``esper.cli``.
"""
