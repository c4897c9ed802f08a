"""Hypothesis settings profiles, registered for every test run (imported by tests/conftest.py).

``pytest --hypothesis-profile=fuzz`` (the noxfile's ``fuzz`` session) runs the long soak. The
default profile is hypothesis' own; tests that want a modest default count set it themselves
only while the default profile is active, so a profile chosen on the command line wins.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
