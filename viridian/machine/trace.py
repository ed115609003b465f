"""``--trace``: one JSON line per exit (vCPU, virtual time, reason, RIP, the instruction there)."""

from __future__ import annotations

import json
import sys
from typing import IO, TYPE_CHECKING

from unicorn import x86_const as X

from viridian.errors import UserError

if TYPE_CHECKING:
    from viridian.machine.vcpu import Vcpu


class Tracer:
    def __init__(self, out: IO[str], owned: bool) -> None:
        self.out, self.owned = out, owned

    def exit(self, v: Vcpu, reason: str, rip: int | None = None) -> None:
        if rip is None:
            rip = v.uc.reg_read(X.UC_X86_REG_RIP)
        rec = {"vcpu": v.index, "tsc": v.m.clock.tsc(), "reason": reason, "rip": f"{rip:#x}",
               "insn": v.m.disassemble(v, rip)}
        self.out.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        if self.owned:
            self.out.close()
        else:
            self.out.flush()


def open_tracer(path: str | None) -> Tracer | None:
    if path is None:
        return None
    if path == "-":
        return Tracer(sys.stderr, owned=False)
    try:
        return Tracer(open(path, "w", encoding="utf-8"), owned=True)
    except OSError as exc:
        raise UserError(f"cannot write trace file {path}: {exc.strerror}") from None
