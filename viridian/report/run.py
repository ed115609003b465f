"""The stats JSON of a run (README "viridian run") and the one-screen summary, read from a finished machine
(its result, counters and logs; the machine itself knows nothing of reports)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from viridian.machine.stats import vcpu_json
from viridian.report import negotiation
from viridian.report.identity import describe_os

if TYPE_CHECKING:
    from viridian.machine.machine import Machine

EXIT_STATUS = {"reset": 100, "crash": 101, "hung": 102, "timeout": 103, "error": 104, "triple-fault": 105}


def stats_json(m: Machine) -> dict[str, Any]:
    res = m.result
    assert res is not None
    total = m.total_stats()
    exits = vcpu_json(total)
    avoided = sum(vp.assist.eois_avoided for vp in m.partition.vps)
    os_id = m.partition.guest_os_id
    return {
        "result": {"status": res.status, "code": res.code, "vcpu": res.vcpu, "detail": res.detail, **res.extra},
        "vcpus": m.vcpu_count,
        "image": {"path": m.image.path, "kind": m.image.kind, "entry": f"{m.image.entry:#x}"},
        "time": {"tsc": m.clock.tsc(), "tsc_hz": m.clock.tsc_hz, "reference_time_100ns": m.clock.ref_time()},
        "exits": exits,
        "apic": {
            "eoi_exits": total.eoi_exits, "eoi_avoided": avoided, "icr_exits": total.icr_exits,
            "tpr_exits": total.tpr_exits, "interrupts_delivered": total.interrupts_delivered,
            "ipis_sent": total.ipis_sent + sum(m.bus.ipis_sent.values()),  # hypercall + APIC ICR sends
        },
        "tlb_flushes": m.flushes,
        "pauses_executed": sum(int(v.pauses) for v in m.vcpus),
        "unclaimed_ports": {f"{p:#06x}": n for p, n in sorted(m.ports.unclaimed.items())},
        "guest": {"os_id": f"{os_id:#018x}", "os": describe_os(os_id) if os_id else None},
        "serial": m.ports.serial.text(),
        "per_vcpu": [vcpu_json(v.stats) | {"ticks": v.ticks_used} for v in m.vcpus],
        "negotiation": negotiation.build(m),
    }


def summary_lines(m: Machine) -> list[str]:
    res = m.result
    assert res is not None
    total = m.total_stats()
    head = f"viridian: {res.status}" + (f" code {res.code}" if res.code is not None else "")
    if res.detail:
        head += f" ({res.detail})"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(total.by_reason.items()))
    lines = [head, f"viridian: {total.total} exits on {m.vcpu_count} vCPU(s): {reasons or 'none'}"]
    if total.hypercalls:
        calls = ", ".join(f"{m.partition.call_table.specs[c].name if c in m.partition.call_table.specs else hex(c)} {n}"
                          for c, n in sorted(total.hypercalls.items()))
        lines.append(f"viridian: hypercalls: {calls}")
    avoided = sum(vp.assist.eois_avoided for vp in m.partition.vps)
    if total.interrupts_delivered or avoided:
        lines.append(f"viridian: {total.interrupts_delivered} interrupts delivered, {total.eoi_exits} EOI exits, "
                     f"{avoided} EOIs avoided by APIC assist")
    if m.partition.guest_os_id:
        lines.append(f"viridian: guest reported {describe_os(m.partition.guest_os_id)}")
    return lines
