"""What the packaging tests read from the sources."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_packages() -> set[str]:
    """Every package the sources hold: each folder under ``esper/`` with an ``__init__.py``,
    the link ``esper/kernels -> ../kernels`` followed."""
    walk = os.walk(ROOT / "esper", followlinks=True)
    return {".".join(Path(folder).relative_to(ROOT).parts)
            for folder, _, names in walk if "__init__.py" in names}
