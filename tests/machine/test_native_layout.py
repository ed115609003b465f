"""native.VnState mirrors csrc/vn_state.h: checked when the library loads (size and field offsets)."""

from __future__ import annotations

import ctypes

import pytest

from viridian.machine.unicorn import native


def test_the_mirror_matches_the_compiled_structure() -> None:
    native.check_layout(native.library())


def test_a_mirror_missing_a_field_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Short(ctypes.Structure):
        _fields_ = native.VnState._fields_[:-1]  # type: ignore[misc]

    monkeypatch.setattr(native, "VnState", Short)
    with pytest.raises(RuntimeError, match="does not mirror"):
        native.check_layout(native.library())
