"""Suite-wide test configuration: deterministic hypothesis runs.

Every property test draws from a derandomized profile, so CI sees the same examples on every run
(docs/architecture.md "Determinism"). The example database is off for the same reason: a failure found
once must not change what later runs try. Per-test ``@settings(...)`` still set their own example counts
and inherit everything else from this profile.

``HYPOTHESIS_PROFILE=explore`` switches to randomized search with the database on, for local bug hunting.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
