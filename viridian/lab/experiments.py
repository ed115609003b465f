"""The exit-reduction experiments of ``viridian measure``: what each enlightenment saves, on the lab guest
(fixtures/guests/lab, README there) whose command line selects the operation and the mechanism.

Each experiment names its configurations (an offer + the guest mechanism it enables), its parameters, the
figures it reports and, where one exists, the closed-form model of the exits per operation. Counts are
*differential*: a point runs the guest with n operations and with none, and reports the difference, so
boot and negotiation exits cancel and the model is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Stats = dict[str, Any]
Params = dict[str, int]


@dataclass(frozen=True)
class LabConfig:
    """One bar of a chart: an offer (viridian.config.spec string) and the guest command line it needs."""

    name: str
    offer: str
    guest: str
    note: str
    machine: tuple[tuple[str, int], ...] = ()  # Machine keyword options, e.g. (("ple_window", 0),)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    operation: str  # what one operation is ("interrupt", "round", ...)
    configs: tuple[LabConfig, ...]
    params: Params  # defaults; "n" is always the operation count
    vcpus: tuple[int, ...]  # default sweep
    min_vcpus: int
    guest: Callable[[Params, int], str]  # the experiment's own command-line part
    ops: Callable[[Params, int], int]  # operations in one run
    figures: Callable[[Stats, Stats], dict[str, float]]  # (run with n, run with n=0) -> figures
    primary: str  # the figure the table's reduction column uses (and the chart, unless ``chart`` names another)
    model: Callable[[str, Params, int], dict[str, float]] | None = None  # config, params, vcpus -> figures
    differential: bool = True
    pcpus: Callable[[Params, int], int | None] = field(default=lambda p, v: None)
    background: Callable[[LabConfig, Params], str] | None = None  # idle: command line of the other partition
    summary: str = ""
    chart: str = ""  # the figure the chart shows (default: primary)

    @property
    def chart_figure(self) -> str:
        return self.chart or self.primary

    def config(self, name: str) -> LabConfig:
        for c in self.configs:
            if c.name == name:
                return c
        raise KeyError(name)


EXPERIMENTS: dict[str, Experiment] = {}


def register(e: Experiment) -> Experiment:
    EXPERIMENTS[e.name] = e
    return e


def _delta(a: Stats, b: Stats, *path: str) -> int:
    def get(s: Stats) -> int:
        cur: Any = s
        for p in path:
            cur = cur.get(p, 0) if isinstance(cur, dict) else 0
        return int(cur or 0)

    return get(a) - get(b)


def _apic_exits(s: Stats) -> int:
    a = s["apic"]
    return int(a["eoi_exits"] + a["icr_exits"] + a["tpr_exits"])


def _common(a: Stats, b: Stats) -> dict[str, float]:
    return {"exits": _delta(a, b, "exits", "total"), "apic_exits": _apic_exits(a) - _apic_exits(b)}


# -- eoi: N timer interrupts per vCPU --------------------------------------------------------------------------
def _eoi_figures(a: Stats, b: Stats) -> dict[str, float]:
    return _common(a, b) | {"eoi_exits": _delta(a, b, "apic", "eoi_exits"),
                            "eoi_avoided": _delta(a, b, "apic", "eoi_avoided"),
                            "interrupts": _delta(a, b, "apic", "interrupts_delivered")}


def _eoi_model(config: str, p: Params, v: int) -> dict[str, float]:
    ints = p["n"] * v
    exits = 0 if config == "hv-assist" else ints  # one EOI exit per interrupt unless the assist page avoids it
    return {"interrupts": ints, "eoi_exits": exits, "eoi_avoided": ints - exits,
            "exits": ints + exits}  # + one HLT exit per interrupt (the vCPU sleeps between ticks)


register(Experiment(
    name="eoi", title="EOI exits per timer interrupt", operation="interrupt",
    configs=(LabConfig("xapic", "none", "apic=xapic eoi=xapic", "xAPIC MMIO EOI (bare-metal guest)"),
             LabConfig("x2apic", "none", "apic=x2apic eoi=x2apic", "x2APIC EOI MSR"),
             LabConfig("hv-msr", "hv-vapic", "apic=xapic eoi=hv", "HV_X64_MSR_EOI (hv-vapic)"),
             LabConfig("hv-assist", "hv-vapic", "apic=xapic eoi=assist",
                       "HV_X64_MSR_EOI + VP assist page (EOI avoidance)")),
    params={"n": 50}, vcpus=(1, 2, 4), min_vcpus=1,
    guest=lambda p, v: f"exp=eoi n={p['n']}", ops=lambda p, v: p["n"] * v,
    figures=_eoi_figures, primary="eoi_exits", model=_eoi_model,
    summary="APIC assist removes the EOI exit of every edge-triggered interrupt; the MSRs only make it cheaper.",
))


# -- ipi: vCPU 0 sends an IPI to k others, n rounds -------------------------------------------------------------
def _ipi_figures(a: Stats, b: Stats) -> dict[str, float]:
    s0a, s0b = a["per_vcpu"][0], b["per_vcpu"][0]
    sender = sum(s0a["apic_registers"]["mmio"].get(r, 0) - s0b["apic_registers"]["mmio"].get(r, 0)
                 for r in ("icr_low", "icr_high"))
    sender += sum(s0a["by_msr"].get(m, {}).get("write", 0) - s0b["by_msr"].get(m, {}).get("write", 0)
                  for m in ("0x00000830", "0x40000071"))
    sender += sum(s0a["by_hypercall"].get(c, 0) - s0b["by_hypercall"].get(c, 0) for c in ("0x000b", "0x0015"))
    return _common(a, b) | {"sender_exits": sender, "ipis": _delta(a, b, "apic", "interrupts_delivered")}


def _ipi_model(config: str, p: Params, v: int) -> dict[str, float]:
    n, k = p["n"], _targets(p, v)
    per_round = {"xapic": 2 * k, "x2apic": k, "hv-msr": k, "hypercall": 1, "hypercall-ex": 1}[config]
    return {"sender_exits": n * per_round, "ipis": n * k, "exits": n * (per_round + k)}  # + one EOI per target


def _targets(p: Params, v: int) -> int:
    return min(p.get("k", v - 1) or v - 1, v - 1)


register(Experiment(
    name="ipi", title="sender exits per IPI round", operation="round",
    configs=(LabConfig("xapic", "none", "apic=xapic ipi=icr", "xAPIC ICR: high + low MMIO write per target"),
             LabConfig("x2apic", "none", "apic=x2apic ipi=icr", "x2APIC ICR MSR: one write per target"),
             LabConfig("hv-msr", "hv-vapic", "apic=xapic ipi=hv", "HV_X64_MSR_ICR: one write per target"),
             LabConfig("hypercall", "hv-vpindex,hv-ipi", "apic=x2apic ipi=hypercall",
                       "HvCallSendSyntheticClusterIpi: one fast call per round (targets < 64)"),
             LabConfig("hypercall-ex", "hv-vpindex,hv-ipi", "apic=x2apic ipi=hypercall-ex",
                       "HvCallSendSyntheticClusterIpiEx: one call per round, any VP index")),
    params={"n": 10, "k": 0}, vcpus=(2, 4, 8), min_vcpus=2,
    guest=lambda p, v: f"exp=ipi n={p['n']} k={_targets(p, v)}", ops=lambda p, v: p["n"],
    figures=_ipi_figures, primary="sender_exits", model=_ipi_model,
    summary="The cluster-IPI hypercall sends to any number of targets in one exit; the ICR costs one (x2APIC, "
            "HV MSR) or two (xAPIC) exits per target.",
))


# -- tpr: IRQL raise/lower pairs ---------------------------------------------------------------------------------
def _tpr_figures(a: Stats, b: Stats) -> dict[str, float]:
    return _common(a, b) | {"tpr_exits": _delta(a, b, "apic", "tpr_exits")}


register(Experiment(
    name="tpr", title="TPR exits per IRQL raise/lower pair", operation="pair",
    configs=(LabConfig("xapic", "none", "apic=xapic tpr=mmio", "xAPIC TPR MMIO (32-bit Windows)"),
             LabConfig("x2apic", "none", "apic=x2apic tpr=x2apic", "x2APIC TPR MSR"),
             LabConfig("hv-msr", "hv-vapic", "apic=xapic tpr=hv", "HV_X64_MSR_TPR (hv-vapic)"),
             LabConfig("cr8", "none", "apic=xapic tpr=cr8", "MOV CR8 (x64; TPR shadow: no exit)")),
    params={"n": 100}, vcpus=(1,), min_vcpus=1,
    guest=lambda p, v: f"exp=tpr n={p['n']}", ops=lambda p, v: p["n"],
    figures=_tpr_figures, primary="tpr_exits",
    model=lambda c, p, v: {"tpr_exits": 0 if c == "cr8" else 2 * p["n"], "exits": 0 if c == "cr8" else 2 * p["n"]},
    summary="x64 guests raise IRQL through CR8, which never exits with a TPR shadow; the TPR MSR halves nothing "
            "but makes each access a cheap MSR exit instead of a decoded MMIO write.",
))


# -- tlb: shootdowns to k vCPUs ----------------------------------------------------------------------------------
def _tlb_figures(a: Stats, b: Stats) -> dict[str, float]:
    return _common(a, b) | {"flush_hypercalls": sum(_delta(a, b, "exits", "by_hypercall", c)
                                                    for c in ("0x0002", "0x0003", "0x0013", "0x0014"))}


def _tlb_model(config: str, p: Params, v: int) -> dict[str, float]:
    n, k = p["n"], _targets(p, v)
    # IPI shootdown: the sender's ICR writes, then one EOI exit per target (targets spin, IF = 1)
    per = {"ipi-xapic": 2 * k + k, "ipi-x2apic": k + k, "hypercall": 1, "hypercall-xmm": 1}[config]
    return {"exits": n * per}


register(Experiment(
    name="tlb", title="exits per TLB shootdown", operation="shootdown",
    configs=(LabConfig("ipi-xapic", "none", "apic=xapic tlb=ipi", "IPI + handler + EOI per target (xAPIC)"),
             LabConfig("ipi-x2apic", "none", "apic=x2apic tlb=ipi", "IPI + handler + EOI per target (x2APIC)"),
             LabConfig("hypercall", "hv-vpindex,hv-tlbflush", "apic=x2apic tlb=hypercall",
                       "HvCallFlushVirtualAddressSpace, memory input"),
             LabConfig("hypercall-xmm", "hv-vpindex,hv-tlbflush,hv-xmm-input", "apic=x2apic tlb=hypercall-xmm",
                       "HvCallFlushVirtualAddressSpace, XMM fast input")),
    params={"n": 10, "k": 0}, vcpus=(2, 4, 8), min_vcpus=2,
    guest=lambda p, v: f"exp=tlb n={p['n']} k={_targets(p, v)}", ops=lambda p, v: p["n"],
    figures=_tlb_figures, primary="exits", model=_tlb_model,
    summary="One flush hypercall replaces an IPI, an interrupt and an EOI on every target.",
))


# -- spin: lock-holder preemption, vCPUs > physical CPUs ----------------------------------------------------------
def _spin_figures(a: Stats, b: Stats) -> dict[str, float]:
    hz = a["time"]["tsc_hz"]
    cpu = sum(v["ticks"] for v in a["per_vcpu"])
    return {"exits": a["exits"]["total"], "apic_exits": _apic_exits(a),
            "time_ms": round(a["time"]["tsc"] * 1000 / hz, 3), "cpu_ms": round(cpu * 1000 / hz, 3),
            "spin_iterations": a["pauses_executed"], "notify_calls": a["exits"]["by_hypercall"].get("0x0008", 0),
            "pause_loop_exits": a["exits"]["by_reason"].get("pause", 0), "yields": a["exits"]["events"].get("yield", 0)}


def _spin_offer(retries: int) -> str:
    return f"hv-vpindex,hv-spinlocks={retries:#x}"


register(Experiment(
    name="spin", title="time to finish a contended spinlock workload, overcommitted", operation="acquisition",
    configs=(LabConfig("no-help", "none", "spin=pause", "PAUSE loop, no pause-loop exiting, no hint",
                       (("ple_window", 0),)),
             LabConfig("ple", "none", "spin=pause", "pause-loop exiting (hardware PLE, window 4096)"),
             LabConfig("notify-4095", _spin_offer(0xFFF), "spin=notify",
                       "HvNotifyLongSpinWait every 4095 failed polls (KVM default), no PLE", (("ple_window", 0),)),
             LabConfig("notify-256", _spin_offer(0x100), "spin=notify", "... every 256 failed polls, no PLE",
                       (("ple_window", 0),)),
             LabConfig("notify-64", _spin_offer(0x40), "spin=notify", "... every 64 failed polls, no PLE",
                       (("ple_window", 0),))),
    params={"n": 50, "hold": 5000, "think": 5000, "pcpus": 0}, vcpus=(4,), min_vcpus=2,
    guest=lambda p, v: f"exp=spin n={p['n']} hold={p['hold']} think={p['think']}", ops=lambda p, v: p["n"] * v,
    figures=_spin_figures, primary="time_ms", differential=False,
    pcpus=lambda p, v: p["pcpus"] or max(1, v // 2),
    summary="With more vCPUs than CPUs a preempted lock holder makes the others spin until their time slice "
            "ends; a pause-loop exit or HvNotifyLongSpinWait gives the CPU back early (KVM: directed yield).",
))


# -- idle: two partitions on one CPU, one mostly idle ---------------------------------------------------------
def _idle_figures(a: Stats, b: Stats) -> dict[str, float]:
    hz = a["time"]["tsc_hz"]
    busy = a["per_vcpu"][0]["ticks"]
    other = a.get("partitions", [{}])[0]
    return {"exits": a["exits"]["total"], "apic_exits": _apic_exits(a),
            "time_ms": round(a["time"]["tsc"] * 1000 / hz, 3),
            "busy_share_pct": round(busy * 100 / a["time"]["tsc"], 1) if a["time"]["tsc"] else 0.0,
            "idle_partition_exits": other.get("exits", {}).get("total", 0),
            "idle_partition_ms": round(sum(v["ticks"] for v in other.get("per_vcpu", [])) * 1000 / hz, 3)}


register(Experiment(
    name="idle", title="CPU share of a busy partition beside a mostly idle one (one physical CPU)",
    operation="run",
    configs=(LabConfig("poll", "none", "idle=poll", "the idle partition polls (no HLT): it keeps its time slices"),
             LabConfig("hlt", "none", "idle=hlt", "the idle partition halts: its CPU goes to the busy one"),
             LabConfig("guest-idle", "hv-guest-idle", "idle=guest-idle",
                       "the idle partition reads HV_X64_MSR_GUEST_IDLE (IF = 0)")),
    params={"n": 2_000_000, "period": 200_000}, vcpus=(1,), min_vcpus=1,
    guest=lambda p, v: f"exp=work n={p['n']}", ops=lambda p, v: 1,
    figures=_idle_figures, primary="time_ms", chart="busy_share_pct", differential=False, pcpus=lambda p, v: 1,
    background=lambda c, p: f"exp=idle period={p['period']} {c.guest}",
    summary="\"Spare processing power to other VMs\": a guest that halts or uses GUEST_IDLE gives its CPU away; "
            "one that polls keeps it.",
))
