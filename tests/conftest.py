"""Shared by every tier: makes ``tests/helpers.py`` importable as ``helpers``.

Test files in different tiers share basenames on purpose (``tests/<tier>/test_<module>.py``
mirrors the module under test: ``tests/protocol/test_connection.py`` and
``tests/server/test_connection.py``), and the test folders are not packages, so pyproject.toml
collects in ``importlib`` mode. Helpers are imported by plain name, through the paths the
conftest files add, which works in every mode.
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


import hypothesis_profiles  # noqa: E402, F401  (registers --hypothesis-profile=fuzz)


# TLS contexts for the TLS and AUTH tests of every tier (one throw-away CA per run).
@pytest.fixture
def server_ctx() -> ssl.SSLContext:
    from tls_helpers import tls_material

    return tls_material().server_context()


@pytest.fixture
def client_ctx() -> ssl.SSLContext:
    from tls_helpers import tls_material

    return tls_material().client_context()


@pytest.fixture
def untrusted_client_ctx() -> ssl.SSLContext:
    from tls_helpers import untrusted_context

    return untrusted_context()
