"""The reference engine's identity for records and snapshots (engines.py: ``engine_identity``, ``identity_note``)."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any


@cache
def _library_sha256() -> str:
    import unicorn

    lib = Path(unicorn.__file__).parent / "lib"
    found = sorted(lib.glob("libunicorn.so*")) if lib.is_dir() else []
    return hashlib.sha256(found[0].read_bytes()).hexdigest() if found else ""


def engine_identity() -> dict[str, Any]:
    """What a record names as the engine it was made on."""
    import unicorn

    return {"engine": "reference", "unicorn": unicorn.__version__, "libunicorn_sha256": _library_sha256()}


def identity_note(recorded: Any) -> str | None:
    """One line when ``recorded`` names another engine build than this one, else None."""
    if not isinstance(recorded, dict):
        return "the record does not name the engine build it was made on"
    now = engine_identity()
    if recorded.get("engine") != "reference":
        return f"recorded on engine {recorded.get('engine', 'unicorn')!s:.20}, replaying on the reference engine"
    if recorded.get("unicorn") != now["unicorn"] or recorded.get("libunicorn_sha256") != now["libunicorn_sha256"]:
        return f"recorded on unicorn {recorded.get('unicorn')!s:.20}, replaying on unicorn {now['unicorn']}"
    return None
