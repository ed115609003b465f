"""``--trace``: JSON lines of what each exit did, with the detail KVM's tracepoints give (docs/trace.md).

Every line has ``event``, ``kind``, ``vcpu`` and ``tsc``. ``exit`` lines (one per exit: reason, RIP, the
instruction there; KVM ``kvm_exit``) are followed by the detail the machine learns while handling it:
``msr`` (index, name, direction, value, result; KVM ``kvm_msr``), ``hypercall`` (code, name, fast/slow,
rep count/start, status; KVM ``kvm_hv_hypercall`` + ``kvm_hv_hypercall_done``), ``io`` (port, direction,
size, value; KVM ``kvm_pio``), ``mmio`` (APIC register, direction, value; KVM ``kvm_mmio``),
``exception`` (vector, error code), ``interrupt`` (vector, APIC/ExtINT/NMI, auto-EOI; KVM ``kvm_inj_virq``)
and ``eoi`` (vector and the way it was EOIed; KVM ``kvm_eoi``). ``--trace-filter`` keeps the lines of some
kinds only. The EOI, MMIO and port detail comes from callbacks this module adds to the machine's APICs,
APIC-assist state and port bus when a tracer is attached; without ``--trace`` none of it exists.
"""

from __future__ import annotations

import json
import sys
from typing import IO, TYPE_CHECKING, Any

from viridian.errors import UserError
from viridian.tlfs.hypercalls import HvCall
from viridian.tlfs.msr_names import msr_name

if TYPE_CHECKING:
    from viridian.abi.dispatch import HypercallOutcome
    from viridian.abi.registers import HypercallRegisters
    from viridian.machine.backend import VcpuBackend as Vcpu
    from viridian.machine.machine import Machine

# exit reason -> kind (the --trace-filter vocabulary)
REASON_KIND = {"msr_read": "msr", "msr_write": "msr", "hypercall": "hypercall", "io": "io", "mmio": "mmio",
               "cpuid": "cpuid", "rdtsc": "rdtsc", "hlt": "hlt", "pause": "pause", "exception": "exception",
               "interrupt_window": "interrupt_window"}
KINDS = frozenset(REASON_KIND.values()) | {"interrupt", "eoi"}
# EOI paths by the MSR written (SDM §11.12.1 x2APIC EOI; TLFS §10.5 HV_X64_MSR_EOI)
_EOI_MSRS = {0x80B: "x2apic_msr", 0x4000_0070: "hv_eoi_msr"}
_PIC_COMMAND = {0x20: "master", 0xA0: "slave"}  # 8259A OCW2 ports (Intel 8259A data sheet)
# architectural MSRs the guests we run touch, by their SDM vol. 4 names (table 2-2), beyond the report's
ARCH_NAMES = {0x3A: "IA32_FEATURE_CONTROL", 0x3B: "IA32_TSC_ADJUST", 0x48: "IA32_SPEC_CTRL", 0x49: "IA32_PRED_CMD",
              0x8B: "IA32_BIOS_SIGN_ID", 0xCE: "MSR_PLATFORM_INFO", 0xE7: "IA32_MPERF", 0xE8: "IA32_APERF",
              0xFE: "IA32_MTRRCAP", 0x10A: "IA32_ARCH_CAPABILITIES", 0x140: "MSR_MISC_FEATURES_ENABLES",
              0x174: "IA32_SYSENTER_CS", 0x175: "IA32_SYSENTER_ESP", 0x176: "IA32_SYSENTER_EIP",
              0x179: "IA32_MCG_CAP", 0x17A: "IA32_MCG_STATUS", 0x17B: "IA32_MCG_CTL", 0x1A0: "IA32_MISC_ENABLE",
              0x1D9: "IA32_DEBUGCTL", 0x250: "IA32_MTRR_FIX64K_00000", 0x258: "IA32_MTRR_FIX16K_80000",
              0x259: "IA32_MTRR_FIX16K_A0000", 0x2FF: "IA32_MTRR_DEF_TYPE", 0xDA0: "IA32_XSS",
              0xC000_0081: "IA32_STAR", 0xC000_0082: "IA32_LSTAR", 0xC000_0083: "IA32_CSTAR",
              0xC000_0084: "IA32_FMASK", 0xC000_0103: "IA32_TSC_AUX",
              **{0x268 + i: f"IA32_MTRR_FIX4K_{0xC0000 + i * 0x8000:05X}" for i in range(8)},
              **{0x200 + 2 * i + k: f"IA32_MTRR_PHYS{('BASE', 'MASK')[k]}{i}" for i in range(10) for k in (0, 1)},
              **{0x400 + 4 * i + k: f"IA32_MC{i}_{('CTL', 'STATUS', 'ADDR', 'MISC')[k]}"
                 for i in range(32) for k in range(4)}}


def msr_label(index: int) -> str | None:
    """The MSR's name, or None where neither the model nor the SDM table above knows it."""
    name = msr_name(index)
    return ARCH_NAMES.get(index) if name.startswith("MSR 0x") else name


def parse_filter(text: str | None) -> frozenset[str] | None:
    """``--trace-filter KIND[,KIND]``: the kinds to keep (None: all)."""
    if text is None:
        return None
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(kinds - KINDS)
    if unknown or not kinds:
        raise UserError(f"--trace-filter {text}: unknown kind {', '.join(unknown) or '(none)'}; "
                        f"choose from {', '.join(sorted(KINDS))}")
    return kinds


def _hex(value: int) -> str:
    return f"{value:#x}"


def _call_name(code: int) -> str:
    try:
        return HvCall(code).name
    except ValueError:
        return f"unknown({code:#06x})"


class Tracer:
    """Writes the events of one partition (the first of a run) as JSON lines to ``out``."""

    def __init__(self, out: IO[str], owned: bool, kinds: frozenset[str] | None = None) -> None:
        self.out, self.owned, self.kinds = out, owned, kinds
        self.machine: Machine | None = None
        self._exit_at: dict[int, tuple[int, str | None]] = {}  # vCPU -> (its ticks at the last exit, EOI path)
        self._eoi_via: list[str] = []  # set while an EOI path the exits cannot tell runs (assist, auto-EOI)

    # -- output ------------------------------------------------------------------------------------------
    def _emit(self, v: Vcpu | None, vp: int, kind: str, event: str, **fields: Any) -> None:
        if self.kinds is not None and kind not in self.kinds:
            return
        m = self.machine if v is None else v.m
        tsc = m.clock.tsc() if m is not None else 0
        rec = {"event": event, "kind": kind, "vcpu": vp, "tsc": tsc, **fields}
        self.out.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        if self.owned:
            self.out.close()
        else:
            self.out.flush()

    # -- events from the vCPU loop and the machine --------------------------------------------------------
    def exit(self, v: Vcpu, reason: str, rip: int | None = None) -> None:
        """One exit (called by the engine's count_exit, after its accounting)."""
        kind = REASON_KIND.get(reason, reason)
        via: str | None = "mmio" if reason == "mmio" else None  # xAPIC EOI register write (SDM §11.8.5)
        index = None
        if reason in ("msr_read", "msr_write"):
            index = v.read_registers(("rcx",))[0] & 0xFFFF_FFFF  # the MSR instruction's ECX is intact
            via = _EOI_MSRS.get(index) if reason == "msr_write" else None
        self._exit_at[v.index] = (v.ticks, via)
        if self.kinds is None or kind in self.kinds:
            if rip is None:
                rip = v.read_registers(("rip",))[0]
            self._emit(v, v.index, kind, "exit", reason=reason, rip=_hex(rip), insn=v.m.disassemble(v, rip))
        if index is not None and index in v.engine_msrs:  # the engine keeps these; the model never sees them
            if reason == "msr_write":
                eax, edx = v.read_registers(("rax", "rdx"))
                value = (edx & 0xFFFF_FFFF) << 32 | (eax & 0xFFFF_FFFF)
            else:
                value = v.read_msr(index)
            self.msr(v, index, reason == "msr_write", value, None)

    def msr(self, v: Vcpu, index: int, write: bool, value: int, result: Any) -> None:
        """An MSR access answered (``result``: a Fault, or None; a read's value in ``value``)."""
        fault = getattr(result, "vector", None)
        self._emit(v, v.index, "msr", "msr", msr=_hex(index), name=msr_label(index), dir="write" if write else "read",
                   value=None if fault is not None else _hex(value),
                   result="ok" if fault is None else f"#{'GP' if fault == 13 else 'UD' if fault == 6 else fault}")

    def hypercall(self, v: Vcpu, regs: HypercallRegisters, out: HypercallOutcome) -> None:
        """A hypercall answered (TLFS §3.7 input value, §3.8 result value)."""
        from viridian.abi.control import HypercallControl

        c = HypercallControl.decode(regs.control)
        status: str | None
        if out.fault is not None:
            status = f"#{'UD' if out.fault.vector == 6 else 'GP' if out.fault.vector == 13 else out.fault.vector}"
        else:
            status = out.status.name if out.status is not None else None
        self._emit(v, v.index, "hypercall", "hypercall", code=_hex(c.code), name=_call_name(c.code),
                   fast=c.fast, rep_count=c.rep_count, rep_start=c.rep_start, reps_completed=out.reps_completed,
                   var_header=c.var_header_qwords, status=status, continued=out.continued,
                   control=_hex(regs.control))

    def exception(self, v: Vcpu, vector: int, error: int | None, rip: int) -> None:
        self._emit(v, v.index, "exception", "exception", vector=vector, error_code=error, rip=_hex(rip))

    def interrupt(self, v: Vcpu, vector: int, via: str, auto_eoi: bool = False) -> None:
        """An interrupt delivered through the IDT: via "apic", "extint" (8259A through LINT0) or "nmi"."""
        self._emit(v, v.index, "interrupt", "interrupt", vector=vector, via=via, auto_eoi=auto_eoi)

    # -- callbacks added to the machine -------------------------------------------------------------------
    def attach(self, m: Machine) -> None:
        """Observe EOIs (every path) and port accesses of ``m``."""
        self.machine = m
        for apic, vp in zip(m.apics, m.partition.vps, strict=True):
            apic.on_eoi = self._on_eoi(vp.index, apic.on_eoi)
            apic.read_register = self._apic_access(vp.index, apic.read_register, False)  # type: ignore[method-assign]
            apic.write_register = self._apic_access(vp.index, apic.write_register, True)  # type: ignore[method-assign]
            apic.auto_eoi = self._labelled(apic.auto_eoi, "auto_eoi")  # type: ignore[method-assign]
            vp.assist.retire_lazy_eoi = self._labelled(vp.assist.retire_lazy_eoi,  # type: ignore[method-assign]
                                                       "apic_assist")
        ports = m.ports
        ports.read = self._port(ports.read, m, write=False)  # type: ignore[method-assign]
        ports.write = self._port(ports.write, m, write=True)  # type: ignore[method-assign]

    def _labelled(self, fn: Any, via: str) -> Any:
        def call(*args: Any) -> Any:
            self._eoi_via.append(via)
            try:
                return fn(*args)
            finally:
                self._eoi_via.pop()

        return call

    def _in_exit(self, vp: int, via: str) -> bool:
        """Is vCPU ``vp`` inside the handler of an exit of kind ``via`` (no guest code ran since)?"""
        m = self.machine
        ticks, last = self._exit_at.get(vp, (-1, None))
        return m is not None and last == via and m.vcpus[vp].ticks == ticks

    def _apic_access(self, vp: int, fn: Any, write: bool) -> Any:
        """xAPIC MMIO detail (KVM ``kvm_mmio``/``kvm_apic``): the register, direction and 32-bit value."""
        def emit(offset: int, value: int) -> None:
            v = self.machine.vcpus[vp] if self.machine is not None else None
            self._emit(v, vp, "mmio", "mmio", gpa=_hex(0xFEE0_0000 + offset), reg=_hex(offset),
                       dir="write" if write else "read", value=_hex(value))

        def access(offset: int, *value: int) -> Any:
            mine = self._in_exit(vp, "mmio")
            if mine and write:  # before its effects (an EOI, an IPI...)
                emit(offset, value[0])
            result = fn(offset, *value)
            if mine and not write:
                emit(offset, result)
            return result

        return access

    def _on_eoi(self, vp: int, chained: Any) -> Any:
        def on_eoi(vector: int) -> None:
            if self._eoi_via:
                via: str | None = self._eoi_via[-1]
            else:  # inside the handler of this vCPU's last exit (no guest code ran since)?
                via = self._exit_at.get(vp, (-1, None))[1]
                if via is None or not self._in_exit(vp, via):
                    via = None
            self._emit(None, vp, "eoi", "eoi", vector=vector, via=via or "unknown")
            if chained is not None:
                chained(vector)

        return on_eoi

    def _port(self, fn: Any, m: Machine, write: bool) -> Any:
        def access(port: int, size: int, *value: int) -> Any:
            v = m.running
            vp = v.index if v is not None else 0
            if write:
                self._emit(v, vp, "io", "io", port=_hex(port), dir="out", size=size, value=_hex(value[0]))
                cmd = value[0]
                if port in _PIC_COMMAND and cmd & 0x18 == 0 and cmd & 0x20:  # OCW2 with EOI set
                    self._emit(v, vp, "eoi", "eoi", vector=None, via="pic_ocw2", pic=_PIC_COMMAND[port],
                               specific=bool(cmd & 0x40), level=cmd & 7 if cmd & 0x40 else None)
                return fn(port, size, *value)
            result = fn(port, size)
            self._emit(v, vp, "io", "io", port=_hex(port), dir="in", size=size, value=_hex(result))
            return result

        return access


def open_tracer(path: str | None, kinds: str | None = None) -> Tracer | None:
    """The tracer for ``--trace PATH`` ('-' = stdout, as every FILE option: viridian.cli.grammar) and
    ``--trace-filter KINDS``."""
    if path is None:
        if kinds is not None:
            raise UserError("--trace-filter needs --trace FILE")
        return None
    chosen = parse_filter(kinds)
    if path == "-":
        return Tracer(sys.stdout, owned=False, kinds=chosen)
    try:
        return Tracer(open(path, "w", encoding="utf-8"), owned=True, kinds=chosen)
    except OSError as exc:
        raise UserError(f"cannot write trace file {path}: {exc.strerror}") from None
