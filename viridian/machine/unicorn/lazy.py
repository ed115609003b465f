"""A vCPU's engine is built on first use (issue 19 item 5: engines and RAM mappings created lazily).

Building a Unicorn instance costs ~2.8 MiB and several ms (its own start-up; the RAM mapping is the call that
triggers it), so a vCPU gets one only when something needs it: its first run (an AP at its SIPI, or at entry),
a register read, a snapshot. An AP a kernel never starts never gets one.

Correct by construction: any attribute of the engine part (``uc``, the native state, register batches, the
overlay pages...) that is missing triggers :meth:`LazyEngine.__getattr__`, which builds the engine first. The
calls the core makes on *every* vCPU (code coherence, TLB flushes, overlay pages, the fast-spin flag, clocks)
check :func:`unbuilt` instead, so a parked AP stays cheap: nothing to forget or flush, and the overlay pages and
fast-spin flag are remembered (:func:`defer`) and applied when the engine is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


def unbuilt(v: Any) -> bool:
    """``v`` has no engine yet (it is built on first use)."""
    d = v.__dict__
    return "uc" not in d and "_boot" in d


def defer(v: Any, what: str, value: Any) -> None:
    """Remember a setting for when ``v``'s engine is built (``protected`` pages, ``fast_spin``)."""
    v.__dict__.setdefault("_deferred", {})[what] = value


class LazyEngine:
    """Mixin of the Unicorn vCPU: ``build_engine()`` runs on the first access to an attribute it creates."""

    if not TYPE_CHECKING:  # (hidden from mypy: every attribute would type as Any)

        def __getattr__(self, name: str) -> Any:
            d = self.__dict__
            if name.startswith("__") or not unbuilt(self) or d.get("_building") or d.get("_closed"):
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            d["_building"] = True
            try:
                self.build_engine()
            finally:
                d["_building"] = False
            deferred = d.pop("_deferred", {})
            if "protected" in deferred:
                self.set_protected(deferred["protected"])
            if "fast_spin" in deferred:
                self.set_fast_spin(deferred["fast_spin"])
            return getattr(self, name)
