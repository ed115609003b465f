"""The negotiation report of a finished run (``viridian run --report``; stats JSON ``negotiation``): who the
guest said it was, every enlightenment offered / used / offered-but-unused / used-but-not-offered and what the
guest got, the first use of each MSR, hypercall and CPUID leaf (a timeline), the mechanism counts, and the
fall-backs observed. Engine-free: it reads the machine's :class:`~viridian.machine.negotiation.NegotiationLog`,
exit counters and final offer."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from viridian.report.catalog import BY_KEY, CATALOG, LEAF_NAMES, Enlightenment, msr_name
from viridian.report.identity import describe_os
from viridian.tlfs.hypercalls import HvCall
from viridian.tlfs.msrs import HvMsr

if TYPE_CHECKING:
    from viridian.machine.machine import Machine
    from viridian.machine.stats import VcpuStats
    from viridian.partition.cpuid import Offer

APIC_REGS = {0x20: "ID", 0x30: "version", 0x80: "TPR", 0xB0: "EOI", 0xF0: "SVR", 0x300: "ICR low",
             0x310: "ICR high", 0x320: "LVT timer", 0x380: "timer initial", 0x390: "timer current",
             0x3E0: "timer divide"}
EVENTS = {"hlt": "HLT", "pause-loop": "pause-loop exit", "cr8_write": "MOV to CR8 (TPR)", "cr8_read": "MOV from CR8"}
DECISION = re.compile(r"^decide: ([A-Za-z_][\w-]*)=(\S+)", re.M)


def _us(tsc: int, hz: int) -> float:
    return round(tsc * 1_000_000 / hz, 1)


def _what(m: Machine, kind: str, ident: int | str) -> str:
    if kind == "cpuid":
        assert isinstance(ident, int)
        return f"CPUID {ident:#x}" + (f" ({LEAF_NAMES[ident]})" if ident in LEAF_NAMES else "")
    if kind in ("rdmsr", "wrmsr"):
        assert isinstance(ident, int)
        return f"{kind.upper()} {msr_name(ident)}"
    if kind == "hypercall":
        assert isinstance(ident, int)
        spec = m.partition.call_table.specs.get(ident)
        return f"hypercall {spec.name if spec else 'unknown'} ({ident:#06x})"
    if kind == "mmio":
        assert isinstance(ident, int)
        reg = ident & ~1
        return f"xAPIC MMIO {'write' if ident & 1 else 'read'} {APIC_REGS.get(reg, hex(reg))}"
    return EVENTS.get(str(ident), str(ident))


def _used(m: Machine, e: Enlightenment) -> tuple[bool, list[tuple[int, int]], dict[str, int]]:
    """Whether the guest used ``e``, its first uses (vcpu, tsc) and the non-success answers it got."""
    neg = m.neg
    firsts = [neg.first[(k, i)] for k in ("rdmsr", "wrmsr") for i in e.msrs if (k, i) in neg.first]
    firsts += [neg.first[("hypercall", c)] for c in e.hypercalls if ("hypercall", c) in neg.first]
    got: dict[str, int] = {}
    for (kind, ident, result), n in sorted(neg.outcomes.items(), key=str):
        mine = ident in e.msrs if kind in ("rdmsr", "wrmsr") else kind == "hypercall" and ident in e.hypercalls
        if mine and result != "SUCCESS":
            got[result] = got.get(result, 0) + n
    used = bool(firsts)
    if e.special == "eoi_avoided":
        used = sum(vp.assist.eois_avoided for vp in m.partition.vps) > 0
    elif e.special == "stimer_direct":
        used = neg.stimer_direct
    elif e.special == "advisory":
        used = False
    return used, [(f.vcpu, f.tsc) for f in firsts], got


def enlightenments(m: Machine) -> list[dict[str, Any]]:
    offer, hz = m.partition.offer, m.clock.tsc_hz
    rows = []
    for e in CATALOG:
        used, firsts, got = _used(m, e)
        offered = e.offered(offer)
        if e.special == "eoi_avoided" and not m.partition.config.apic_assist:
            offered = False  # Xen without its apic_assist group: the page works, NoEoiRequired is never set
        status = ("used" if offered else "used, not offered") if used else \
                 ("offered, unused" if offered else "not offered")
        if e.special == "advisory":
            status = "advisory" if e.recommended(offer) else "not offered"
        first = min(firsts, key=lambda f: (f[1], f[0])) if firsts else None
        rows.append({"key": e.key, "title": e.title, "spec": e.spec, "offered": offered,
                     "recommended": e.recommended(offer), "used": used, "status": status, "got": got,
                     "first": {"vcpu": first[0], "time_us": _us(first[1], hz)} if first else None})
    return rows


def timeline(m: Machine) -> list[dict[str, Any]]:
    hz = m.clock.tsc_hz
    items = sorted(m.neg.first.items(), key=lambda kv: (kv[1].tsc, kv[1].vcpu, kv[0][0], str(kv[0][1])))
    return [{"time_us": _us(f.tsc, hz), "tsc": f.tsc, "vcpu": f.vcpu, "kind": kind,
             "id": ident if isinstance(ident, str) else f"{ident:#x}", "what": _what(m, kind, ident),
             "result": f.result} for (kind, ident), f in items]


def mechanisms(m: Machine) -> dict[str, dict[str, int]]:
    """How the guest did each job, counted (exits unless noted)."""
    t = m.total_stats()
    w, r, hc = t.msr_writes, t.msr_reads, t.hypercalls
    avoided = sum(vp.assist.eois_avoided for vp in m.partition.vps)
    return {
        "eoi": {"xapic_mmio": t.apic_mmio[0xB0], "x2apic_msr": w[0x80B], "hv_msr": w[HvMsr.EOI],
                "avoided_by_assist": avoided},
        "ipi": {"xapic_icr_mmio": t.apic_mmio[0x300] + t.apic_mmio[0x310], "x2apic_icr_msr": w[0x830],
                "hv_icr_msr": w[HvMsr.ICR], "cluster_ipi_hypercall": hc[HvCall.SEND_SYNTHETIC_CLUSTER_IPI],
                "cluster_ipi_ex_hypercall": hc[HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX]},
        "tpr": {"xapic_mmio": t.apic_mmio[0x80], "x2apic_msr": w[0x808] + r[0x808],
                "hv_msr": w[HvMsr.TPR] + r[HvMsr.TPR], "cr8_no_exit": t.events["cr8_write"] + t.events["cr8_read"]},
        "tlb": {"flush_hypercall": hc[HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE] + hc[HvCall.FLUSH_VIRTUAL_ADDRESS_LIST],
                "flush_ex_hypercall": hc[HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX]
                + hc[HvCall.FLUSH_VIRTUAL_ADDRESS_LIST_EX], "vcpus_flushed": m.flushes},
        "timer": {"apic_timer_programming": _apic_timer_writes(t),
                  "stimer_msr": sum(n for i, n in w.items() if 0x400000B0 <= i <= 0x400000B7),
                  "stimer_direct": int(m.neg.stimer_direct)},
        "clock": {"time_ref_count_reads": r[HvMsr.TIME_REF_COUNT], "rdtsc": t.by_reason["rdtsc"],
                  "tsc_page_enabled": int(_tsc_page_enabled(m))},
        "idle": {"hlt": t.by_reason["hlt"], "guest_idle": r[HvMsr.GUEST_IDLE]},
        "spin": {"notify_long_spin_wait": hc[HvCall.NOTIFY_LONG_SPIN_WAIT], "pause_loop_exits": t.by_reason["pause"],
                 "pauses_executed": sum(int(v.pauses) for v in m.vcpus)},
    }


def _apic_timer_writes(t: VcpuStats) -> int:
    return sum(t.apic_mmio[reg] for reg in (0x320, 0x380, 0x3E0)) + sum(t.msr_writes[i] for i in (0x832, 0x838, 0x83E))


def _tsc_page_enabled(m: Machine) -> bool:
    return m.partition.time.enabled


def fallbacks(m: Machine, mech: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Legacy mechanisms the guest used where the offer had a better one (or lacked it), with the reason."""
    offer = m.partition.offer
    out: list[dict[str, Any]] = []

    def add(key: str, observed: str, count: int, instead: str, reason: str) -> None:
        if count:
            out.append({"key": key, "observed": observed, "count": count, "instead_of": instead, "reason": reason})

    apic = _offer_reason(offer, "apic_msrs")
    add("eoi", "EOI through xAPIC MMIO", mech["eoi"]["xapic_mmio"], "HV_X64_MSR_EOI / APIC assist", apic)
    if _offered(offer, "vp_assist"):
        add("eoi", "EOI through the x2APIC EOI MSR", mech["eoi"]["x2apic_msr"], "APIC assist (VP assist page)",
            "VP assist page offered; the guest did not use it" if not m.neg.used("wrmsr", HvMsr.VP_ASSIST_PAGE)
            else "EOIs the assist page could not avoid")
    ipi = _offer_reason(offer, "cluster_ipi")
    add("ipi", "IPIs through the xAPIC ICR (MMIO)", mech["ipi"]["xapic_icr_mmio"],
        "HvCallSendSyntheticClusterIpi / HV_X64_MSR_ICR", f"cluster IPI: {ipi}; APIC MSRs: {apic}")
    add("tpr", "TPR through xAPIC MMIO", mech["tpr"]["xapic_mmio"], "MOV CR8 / HV_X64_MSR_TPR", apic)
    add("idle", "idle with HLT", mech["idle"]["hlt"], "GUEST_IDLE", _offer_reason(offer, "guest_idle"))
    add("timer", "local APIC timer programmed", mech["timer"]["apic_timer_programming"], "synthetic timers",
        _offer_reason(offer, "stimers"))
    if _offered(offer, "reference_tsc"):
        add("clock", "reference time through the TIME_REF_COUNT MSR", mech["clock"]["time_ref_count_reads"],
            "reference TSC page", "TSC page offered but not enabled" if not mech["clock"]["tsc_page_enabled"]
            else "TSC page enabled; the guest also read the MSR (sequence 0 or its choice)")
    if not mech["spin"]["notify_long_spin_wait"]:
        reason = _offer_reason(offer, "spin_notify")
        if _offered(offer, "spin_notify") and BY_KEY["spin_notify"].recommended(offer):
            reason = (f"recommended after {offer.spin_retries} failed attempts (CPUID 0x40000004 EBX); no spin "
                      "wait reached that count, or the guest does not use it")
        add("spin", "spin waits without HvNotifyLongSpinWait (pause-loop exits)", mech["spin"]["pause_loop_exits"],
            "HvNotifyLongSpinWait", reason)
    return out


def _offered(offer: Offer, key: str) -> bool:
    return BY_KEY[key].offered(offer)


def _offer_reason(offer: Offer, key: str) -> str:
    e = BY_KEY[key]
    if not e.offered(offer):
        return "not offered"
    rec = e.recommended(offer)
    if rec is False:
        return "offered but not recommended"
    return "offered" + (" and recommended" if rec else "") + "; the guest chose not to use it"


def build(m: Machine) -> dict[str, Any]:
    """The whole report as JSON-ready data."""
    hz, neg = m.clock.tsc_hz, m.neg
    os_id = m.partition.guest_os_id
    mech = mechanisms(m)
    rows = enlightenments(m)
    leaves = sorted(i for k, i in neg.first if k == "cpuid" and isinstance(i, int))
    return {
        "guest": {"os_id": f"{os_id:#018x}", "os": describe_os(os_id) if os_id else None,
                  "writes": [{"vcpu": v, "time_us": _us(t, hz), "value": f"{x:#018x}",
                              "os": describe_os(x) if x else "0 (disables the hypercall page)"}
                             for v, t, x in neg.os_ids]},
        "cpuid_leaves": [{"leaf": f"{leaf:#x}", "name": LEAF_NAMES.get(leaf, ""),
                          "first": {"vcpu": neg.first[("cpuid", leaf)].vcpu,
                                    "time_us": _us(neg.first[("cpuid", leaf)].tsc, hz)}} for leaf in leaves],
        "enlightenments": rows,
        "summary": {s: [r["key"] for r in rows if r["status"] == s]
                    for s in ("used", "offered, unused", "used, not offered", "advisory")},
        "mechanisms": mech,
        "fallbacks": fallbacks(m, mech),
        "guest_decisions": dict(DECISION.findall(m.ports.serial.text())),
        "timeline": timeline(m),
        "dropped": neg.dropped,
    }
