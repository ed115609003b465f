"""tests/conftest.py loads a derandomized hypothesis profile: CI must be deterministic."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci", reason="explicit profile chosen")
def test_default_profile_is_derandomized() -> None:
    assert settings.default.derandomize is True
    assert settings.default.database is None
    # per-test settings inherit the profile for everything they do not set
    assert settings(max_examples=3).derandomize is True
