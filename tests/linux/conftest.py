"""Real-kernel tests: Debian's cloud kernel, fetched once (``viridian fetch-kernel``'s code path)."""

from __future__ import annotations

import pytest

from viridian.errors import UserError


@pytest.fixture(scope="session")
def kernel() -> str:
    """The cached Debian bzImage; skipped with the reason when the package cannot be fetched."""
    from viridian.cli.fetch_kernel_cmd import fetch_kernel

    try:
        return str(fetch_kernel())
    except UserError as exc:
        pytest.skip(f"Debian cloud kernel not available: {exc}")
