"""The compiled tensor path: slot formula, isolation probe, seed health, gradient telemetry,
the seed weights' fingerprint.

May import: ``esper.core`` and what it may, and ``esper.kernels``; never ``torch.nn``.
"""
