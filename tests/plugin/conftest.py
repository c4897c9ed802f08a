"""The plugin's own tests drive inner pytest runs through ``pytester``.

``pytest_plugins = ["pytester"]`` here would break every run that starts above this folder
(pytest refuses ``pytest_plugins`` in a conftest that is not loaded at start-up), so the
plugin is loaded from ``pytest_configure``, which works both as a start-up conftest
(``pytest tests/plugin``) and as one found during collection (``pytest`` at the root).

In-process inner runs restore ``sys.modules`` when they end. ``cryptography`` (under trustme)
cannot be imported twice in one process, so it is imported here, once, before any inner run.
"""

from __future__ import annotations

import contextlib

import pytest

import smtptrio.testing  # noqa: F401  # one copy for every inner run (see above)

with contextlib.suppress(ImportError):
    import trustme  # noqa: F401  # see above


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")
