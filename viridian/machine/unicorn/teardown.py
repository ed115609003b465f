"""Ordered end of a vCPU's engine (Machine.close): nothing native may outlive what it points into.

What the fast engine's native side reaches (csrc/): the engine patches keep a table of registered engines
(engine handle -> the vCPU's ``vn_state``) and, through each ``vn_state``, the machine's RAM buffer and its
code/translation/write-protect maps; Unicorn reaches the RAM buffer (``mem_map_ptr``) and the hook callbacks.
Left to the cycle collector these go in no fixed order, in whatever thread happens to collect -- possibly while
another machine's engine runs with the GIL released. So a machine is closed explicitly, in this order:

1. the ``vn_state`` is unregistered from the engine patches (``vn_unregister``: frees its translation-filter
   index; the patches never look it up again);
2. the Unicorn instance is closed (``uc_close``: its hooks, translations and address space go; RAM mapped with
   ``mem_map_ptr`` is the machine's and is not touched);
3. the handle is set to NULL in place (every holder of it -- register batches, the settle call -- then fails
   at once instead of reaching freed memory), and the untracked ``byref`` of the native state is dropped, so
   the vCPU, its ``vn_state``, the RAM and the maps become ordinary garbage, freed by the next collection.

A machine that is never closed is never collected (the ``byref`` keeps its native state alive): it leaks, it
never frees memory an engine still reaches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu


def close_engine(v: Vcpu) -> None:
    """Close ``v``'s engine in the order above; a second call does nothing."""
    uc: Any = v.__dict__.get("uc")  # (not getattr: that would build a lazy engine just to close it)
    if uc is None:
        v.__dict__["_closed"] = True  # and none is built after the close (lazy.py): it would never be freed
        return
    unregister = v.__dict__.pop("_vn_unregister", None)  # vcpu_code.watch_stores: a weakref.finalize
    if unregister is not None:
        unregister()  # vn_unregister(handle), once (a finalize never runs twice)
    release = getattr(uc, "_Uc__finalizer", None)  # the binding's own uc_close, run once
    if release is not None:
        release()
    else:  # pragma: no cover - the pinned binding (unicorn 2.1.4) has it
        from unicorn.unicorn_py3.unicorn import uclib

        uclib.uc_close(uc._uch)
    uc._uch.value = None  # shared by FastRegs, MmrReg and the settle call: NULL, never a freed engine
    v.uc = None
    v.__dict__.pop("_native_ref", None)  # a later run fails loudly (AttributeError), never in native code
