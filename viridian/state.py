"""Typed reading of saved state (snapshots): plain JSON data checked field by field before a model uses it.

Every model object that a snapshot carries has ``save_state() -> dict`` (ints, bools, strs, lists, dicts;
bytes as hex strings) and ``load_state(state)``, which reads the dict through :class:`Fields`: each getter
checks the type (``bool`` is not an ``int`` here) and the range, and raises :class:`StateError` (a
``ValueError``) naming the field. Nothing is executed or imported by name: loading is data in, setters out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_ITEMS = 1 << 20  # no list or dict in saved state is longer (bounded work per field)
MAX_HEX = 16 << 20  # hex digits of one bytes field (the serial log: 4 MiB -> 8 Mi digits)


class StateError(ValueError):
    """A saved field is missing, of the wrong type or out of range."""


class Fields:
    """Checked access to one saved dict; ``where`` names it in errors (``apic[1].lvt``)."""

    def __init__(self, state: Any, where: str) -> None:
        if not isinstance(state, dict):
            raise StateError(f"{where}: expected an object, got {type(state).__name__}")
        self.d: dict[str, Any] = state
        self.where = where

    def _get(self, key: str) -> Any:
        if key not in self.d:
            raise StateError(f"{self.where}.{key}: missing")
        return self.d[key]

    def raw(self, key: str) -> Any:
        """The value as saved (the receiving object checks it)."""
        return self._get(key)

    def uint(self, key: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
        return check_int(self._get(key), lo, hi, f"{self.where}.{key}")

    def opt_uint(self, key: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int | None:
        v = self._get(key)
        return None if v is None else check_int(v, lo, hi, f"{self.where}.{key}")

    def flag(self, key: str) -> bool:
        v = self._get(key)
        if type(v) is not bool:
            raise StateError(f"{self.where}.{key}: expected true/false")
        return v

    def text(self, key: str, choices: tuple[str, ...] | None = None, max_len: int = 4096) -> str:
        v = self._get(key)
        if type(v) is not str or len(v) > max_len or (choices is not None and v not in choices):
            want = f"one of {', '.join(choices)}" if choices else f"a string of at most {max_len} characters"
            raise StateError(f"{self.where}.{key}: expected {want}")
        return v

    def blob(self, key: str, max_bytes: int) -> bytes:
        v = self._get(key)
        if type(v) is not str or len(v) > 2 * max_bytes or len(v) > MAX_HEX:
            raise StateError(f"{self.where}.{key}: expected hex bytes (at most {max_bytes})")
        try:
            return bytes.fromhex(v)
        except ValueError:
            raise StateError(f"{self.where}.{key}: not hex") from None

    def seq(self, key: str, length: int | None = None, max_len: int = MAX_ITEMS) -> list[Any]:
        v = self._get(key)
        if type(v) is not list or len(v) > max_len or (length is not None and len(v) != length):
            want = f"{length} items" if length is not None else f"at most {max_len} items"
            raise StateError(f"{self.where}.{key}: expected a list of {want}")
        return v

    def uints(self, key: str, length: int | None = None, lo: int = 0, hi: int = (1 << 64) - 1,
             max_len: int = MAX_ITEMS) -> list[int]:
        items = self.seq(key, length, max_len)
        return [check_int(x, lo, hi, f"{self.where}.{key}[{i}]") for i, x in enumerate(items)]

    def sub(self, key: str) -> Fields:
        return Fields(self._get(key), f"{self.where}.{key}")

    def counter(self, key: str, int_keys: bool, max_len: int = MAX_ITEMS) -> dict[Any, int]:
        """A Counter saved as ``[[key, count], ...]`` (int or str keys, counts >= 0)."""
        out: dict[Any, int] = {}
        for i, item in enumerate(self.seq(key, max_len=max_len)):
            at = f"{self.where}.{key}[{i}]"
            if type(item) is not list or len(item) != 2:
                raise StateError(f"{at}: expected [key, count]")
            k, n = item
            if int_keys:
                k = check_int(k, 0, (1 << 64) - 1, at)
            elif type(k) is not str or len(k) > 256:
                raise StateError(f"{at}: expected a name")
            out[k] = check_int(n, 0, 1 << 63, at)
        return out


def check_int(v: Any, lo: int, hi: int, where: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise StateError(f"{where}: expected an integer in {lo:#x}..{hi:#x}")
    return v


def counter_items(c: Mapping[Any, int]) -> list[list[Any]]:
    """A Counter as saved data (sorted for a stable file)."""
    return [[k, int(n)] for k, n in sorted(c.items(), key=lambda kv: str(kv[0]))]
