"""Tier 1: makes ``tests/protocol/engine_driver.py`` importable as ``engine_driver``.

The path is added explicitly so the import works under any ``--import-mode``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
