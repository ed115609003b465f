"""Real guest code on the machine: traps, exception delivery through the guest IDT, hypercalls, multi-vCPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.errors import UserError
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.unicorn import store_watch
from viridian.report.run import stats_json


def run_guest(path: Path, preset: str = "recommended", vcpus: int = 1, xen: str | None = None,
              **kw: Any) -> tuple[Machine, dict[str, Any]]:
    config = load_config(xen=xen) if xen else load_config(preset=preset)
    m = Machine(config, load_image(path), vcpus=vcpus, max_ticks=4_000_000_000, **kw)
    m.run()
    return m, stats_json(m)


@pytest.mark.parametrize("vcpus", [1, 2, 4, 16])
def test_hello_every_vcpu_prints(guests: Path, vcpus: int) -> None:
    _, s = run_guest(guests / "hello.elf", vcpus=vcpus)
    assert s["result"]["status"] == "exit" and s["result"]["code"] == 0
    for i in range(vcpus):
        assert f"hello from vcpu {i} of {vcpus}" in s["serial"]
    assert s["exits"]["by_reason"]["io"] > 0


def test_flat_binary_loads_at_1mib(guests: Path) -> None:
    _, s = run_guest(guests / "hello.bin")
    assert s["result"]["status"] == "exit" and "hello from vcpu 0 of 1" in s["serial"]


@pytest.mark.parametrize(("preset", "code"), [("recommended", 0), ("xen-3.4", 0), ("none", 4)])
def test_cpuid_probe_sees_the_offer(guests: Path, preset: str, code: int) -> None:
    _, s = run_guest(guests / "cpuid_probe.elf", preset=preset)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", code)
    if code == 0:
        assert "vendor=Microsoft Hv" in s["serial"] and s["exits"]["by_reason"]["cpuid"] >= 4


def test_negotiate_through_the_hypercall_page(guests: Path) -> None:
    m, s = run_guest(guests / "negotiate.elf")
    assert s["result"]["status"] == "exit" and s["result"]["code"] == 0, s["serial"]
    assert s["guest"]["os_id"] == "0x0001040601001db0"
    assert "Windows NT 6.1" in s["guest"]["os"]
    assert s["exits"]["by_hypercall"] == {"0x0008": 1}
    assert s["exits"]["by_msr"]["0x40000000"] == {"read": 1, "write": 1}
    assert s["exits"]["by_msr"]["0x40000020"]["read"] == 2
    assert m.partition.hypercall_page_gpa is not None


def test_exceptions_reach_the_guest_idt(guests: Path) -> None:
    """#GP from an unoffered MSR, two #PF in a row (the spurious-#DF hazard), #UD, #DE, #BP, #GP on a RO MSR."""
    _, s = run_guest(guests / "exceptions.elf", preset="xen-3.4")
    assert s["result"]["status"] == "exit" and s["result"]["code"] == 0, s["serial"]
    assert "all exceptions matched" in s["serial"]
    assert s["exits"]["by_exception"] == {"0": 1, "3": 1, "6": 1, "13": 2, "14": 2}


def test_hypercall_loop_counts_exactly(guests: Path) -> None:
    _, s = run_guest(guests / "loop_hypercall.elf")
    assert s["result"]["code"] == 0
    assert s["exits"]["by_hypercall"]["0x0008"] == 200_000


def test_rdmsr_loop_counts_exactly(guests: Path) -> None:
    _, s = run_guest(guests / "loop_rdmsr.elf")
    assert s["result"]["code"] == 0
    assert s["exits"]["by_msr"]["0x40000020"]["read"] == 200_000


def test_runs_are_deterministic(guests: Path) -> None:
    a = run_guest(guests / "hello.elf", vcpus=4)[1]
    b = run_guest(guests / "hello.elf", vcpus=4)[1]
    assert a == b


def test_unoffered_hypercall_is_ud_before_guest_os_id(guests: Path) -> None:
    """loop_hypercall under `none`: no Hv#1, GUEST_OS_ID write #GPs and the guest ends up faulting."""
    _, s = run_guest(guests / "loop_hypercall.elf", preset="none")
    assert s["result"]["status"] != "exit" or s["result"]["code"] != 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "viridian", *args], capture_output=True, text=True, check=False)


def test_cli_run_stats_json(guests: Path, tmp_path: Path) -> None:
    out = tmp_path / "stats.json"
    proc = _cli("run", str(guests / "negotiate.elf"), "--stats-json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "negotiated" in proc.stdout
    data = json.loads(out.read_text())
    for key in ("result", "vcpus", "exits", "apic", "guest", "serial"):
        assert key in data
    assert set(data["apic"]) >= {"eoi_exits", "eoi_avoided", "icr_exits", "tpr_exits", "interrupts_delivered",
                                 "ipis_sent"}
    assert data["exits"]["total"] == sum(data["exits"]["by_reason"].values())


@pytest.mark.parametrize("args", [["run", "/nonexistent.elf"], ["run", "x.elf", "--hv", "hv-stimer"],
                                  ["run", "x.elf", "--vcpus", "0"]])
def test_cli_user_errors_are_one_line(args: list[str], tmp_path: Path) -> None:
    if args[1] == "x.elf":
        (tmp_path / "x.elf").write_bytes(b"\x90\xf4")
        args = [args[0], str(tmp_path / "x.elf"), *args[2:]]
    proc = _cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("viridian: error:") and "Traceback" not in proc.stderr


def test_apic_timer_periodic_oneshot_deadline(guests: Path) -> None:
    _, s = run_guest(guests / "apic_timer.elf")
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]
    assert s["apic"]["interrupts_delivered"] == 12  # 10 periodic + 1 one-shot + 1 TSC-deadline
    assert s["exits"]["by_reason"]["hlt"] >= 1


@pytest.mark.parametrize("vcpus", [2, 4, 8])
def test_ipis_reach_every_ap(guests: Path, vcpus: int) -> None:
    _, s = run_guest(guests / "ipi.elf", vcpus=vcpus)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]
    assert s["apic"]["interrupts_delivered"] == 3 * (vcpus - 1)
    assert s["apic"]["ipis_sent"] == 3 * (vcpus - 1)
    assert s["exits"]["apic_registers"]["mmio"]["icr_high"] == 3 * (vcpus - 1)  # one high write per IPI
    assert s["apic"]["icr_exits"] >= 2 * 3 * (vcpus - 1)


def test_hlt_wakeup_and_guest_idle_with_if_clear(guests: Path) -> None:
    """GUEST_IDLE returns once an interrupt is pending even with IF = 0; `sti; nop` then takes it."""
    _, s = run_guest(guests / "idle.elf")
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]
    assert s["exits"]["events"]["guest_idle"] == 1
    assert s["exits"]["by_reason"]["interrupt_window"] == 1


def test_guest_idle_not_offered_is_gp(guests: Path) -> None:
    _, s = run_guest(guests / "idle.elf", preset="xen-3.4")
    assert s["result"]["code"] == 44  # the guest saw #GP on RDMSR 0x400000F0


def test_64_vcpus_negotiate_in_one_partition(guests: Path) -> None:
    _, s = run_guest(guests / "hello.elf", vcpus=64)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0)
    assert "hello from vcpu 63 of 64" in s["serial"]


def test_hung_when_nothing_can_wake(tmp_path: Path) -> None:
    img = tmp_path / "hang.bin"
    img.write_bytes(b"\xfa\xf4")  # cli; hlt
    m = Machine(load_config(preset="none"), load_image(img))
    assert m.run().status == "hung"


def test_timeout_on_a_spinning_guest(tmp_path: Path) -> None:
    img = tmp_path / "spin.bin"
    img.write_bytes(b"\xeb\xfe")  # jmp $
    m = Machine(load_config(preset="none"), load_image(img), max_ticks=10_000_000)
    assert m.run().status == "timeout"


@pytest.mark.parametrize("precise", [True, False])
def test_guest_write_to_hypercall_page_is_gp(tmp_path: Path, precise: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLFS §3.13: the hypercall page is a read+execute overlay; a guest write raises #GP (here with no IDT:
    #GP -> #DF -> triple fault) at the writing instruction -- nothing after it in its block runs -- and the page
    keeps our stub. Through the write-protect map (vn_tbipf) or, without it, a read+execute mapping."""
    if not precise:
        monkeypatch.setattr(store_watch, "precise_write_protect", lambda: False)
    code = bytes.fromhex("b900000040b80100000031d20f30"  # wrmsr GUEST_OS_ID = 1
                         "b901000040b8010020000f30"  # wrmsr HYPERCALL = 0x200000 | enable
                         "48c7c300002000c60390"  # mov byte [0x200000], 0x90
                         "c60425000030000001f4")  # mov byte [0x300000], 1; hlt
    img = tmp_path / "wp.bin"
    img.write_bytes(code)
    m = Machine(load_config(preset="recommended"), load_image(img))
    res = m.run()
    assert res.status == "triple-fault" and "first vector 13" in res.detail
    assert m.total_stats().exceptions[13] == 1
    assert bytes(m.ram[0x200000:0x200004]) == bytes.fromhex("48c7c0ff")
    assert m.ram[0x300000] == 0
    assert (int(m.engine_state.wp_map[0x200000 >> 18]) >> ((0x200000 >> 12) & 63) & 1) == precise


def test_trace_has_one_exit_line_per_exit(guests: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    stats = tmp_path / "s.json"
    proc = _cli("run", str(guests / "negotiate.elf"), "--trace", str(trace), "--stats-json", str(stats), "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    exits = [e for e in lines if e["event"] == "exit"]  # each exit line is followed by its detail events (docs/trace.md)
    assert len(exits) == json.loads(stats.read_text())["exits"]["total"]
    assert {"vcpu", "tsc", "reason", "rip", "insn"} <= set(exits[0])


def test_pause_loop_exiting(guests: Path) -> None:
    """APs spin with PAUSE while vCPU 0 prints: PLE exits happen, and none with the window off."""
    _, on = run_guest(guests / "hello.elf", vcpus=4)
    _, off = run_guest(guests / "hello.elf", vcpus=4, ple_window=0)
    assert on["exits"]["by_reason"].get("pause", 0) > 0
    assert "pause" not in off["exits"]["by_reason"]
    assert on["pauses_executed"] > 0 and off["pauses_executed"] > 0


def test_overcommit_one_pcpu_still_completes(guests: Path) -> None:
    _, s = run_guest(guests / "ipi.elf", vcpus=4, pcpus=1)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0)
    assert s["exits"]["events"].get("yield", 0) >= 1


def test_code_written_by_one_vcpu_is_seen_by_another(guests: Path) -> None:
    """Each vCPU's engine caches translations; a store by vCPU 1 into code vCPU 0 ran must reach it."""
    _, s = run_guest(guests / "smc.elf", vcpus=2)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]


@pytest.mark.parametrize("vcpus", [1, 2])
def test_a_data_page_that_becomes_code_is_watched_again(guests: Path, vcpus: int) -> None:
    """Fast stores (csrc/engine_watch.c) skip the engine's store path for pages that never held code; once a
    page holds code, its own vCPU's and another vCPU's stores through TLB entries made while it was data must
    reach the translations (exit 71: own rewrite unseen, 72: the other vCPU's)."""
    _, s = run_guest(guests / "jit.elf", vcpus=vcpus)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]


def test_the_engine_watch_is_active_on_this_engine_build(guests: Path) -> None:
    """The engine watch (store_watch.py) is all-or-nothing and falls back silently; on the pinned Unicorn it
    must be in place: fast stores, the translation hook filter and hook-free PAUSE all did work."""
    m, s = run_guest(guests / "hello.elf", vcpus=4)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0)
    n = [v.native for v in m.vcpus]
    assert all(x.pause_native for x in n)
    assert sum(x.fast_fills for x in n) > 0 and sum(x.filtered_tbs for x in n) > 0
    assert s["pauses_executed"] > 0  # counted through vn_svm_check: no PAUSE has a code hook


def test_x2apic_timer_and_eoi_assist(guests: Path) -> None:
    """x2APIC via IA32_APIC_BASE, timer via x2APIC MSRs; every EOI avoided through the VP assist page."""
    _, s = run_guest(guests / "apic_msrs.elf")
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]
    assert s["apic"]["interrupts_delivered"] == 10
    assert s["apic"]["eoi_avoided"] == 10 and s["apic"]["eoi_exits"] == 0
    assert s["exits"]["apic_registers"]["msr"]["lvt_timer"] == 2


def test_assist_page_not_offered_is_gp(guests: Path) -> None:
    m = Machine(load_config(hv="hv-vpindex"), load_image(guests / "apic_msrs.elf"), max_ticks=4_000_000_000)
    m.run()
    assert m.result is not None and m.result.code == 1  # the guest's "unexpected #GP" exit
    assert m.total_stats().exceptions[13] == 1


def test_synthetic_timer_messages_and_direct_mode(guests: Path) -> None:
    _, s = run_guest(guests / "stimer.elf")
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]
    assert "stimer messages=5" in s["serial"] and "stimer direct interrupts=1" in s["serial"]
    assert s["time"]["reference_time_100ns"] >= 6 * 10_000  # 5 periods of 1 ms, then a 1 ms one-shot
    assert s["apic"]["interrupts_delivered"] == 6


CRASH = "b900000040b80100000031d20f30b900010040b8adde00000f30b90501004031c0ba000000800f30f4"
RESET = "b903000040b80100000031d20f30f4"


@pytest.mark.parametrize(("code", "hv", "status", "rc"), [(CRASH, "hv-crash", "crash", 101),
                                                          (RESET, "hv-reset", "reset", 100)])
def test_crash_and_reset_end_the_run(tmp_path: Path, code: str, hv: str, status: str, rc: int) -> None:
    """CRASH_CTL notify (P0 = 0xdead) ends the run "crash"; HV_X64_MSR_RESET ends it "reset" (exit codes)."""
    img = tmp_path / "g.bin"
    img.write_bytes(bytes.fromhex(code))
    m = Machine(load_config(hv=hv), load_image(img))
    res = m.run()
    assert res.status == status
    if status == "crash":
        assert res.extra["params"][0] == "0xdead"
    proc = _cli("run", str(img), "--hv", hv, "--quiet")
    assert proc.returncode == rc


@pytest.mark.parametrize("vcpus", [2, 4])
def test_cluster_ipi_and_flush_hypercalls(guests: Path, vcpus: int) -> None:
    _, s = run_guest(guests / "hv_ipi.elf", vcpus=vcpus)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]
    assert s["exits"]["by_hypercall"] == {"0x0002": 1, "0x000b": 2}
    assert s["apic"]["ipis_sent"] == s["apic"]["interrupts_delivered"] == 2 * (vcpus - 1)
    assert s["apic"]["icr_exits"] == 0  # no APIC ICR access at all: the hypercall replaced it
    assert s["tlb_flushes"] == vcpus


def test_fast_mode_follows_the_wall_clock(guests: Path) -> None:
    """--fast: time is wall time (one-shot timers only here: a periodic timer faster than the emulated
    handler would livelock, as documented)."""
    m, s = run_guest(guests / "idle.elf", fast=True)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]
    assert m.fast and s["time"]["tsc"] > 0


CR8 = ("b80a000000440f22c048bb8000e0fe000000008b034989c4c70330000000e680eb00440f20c048c1e0084c09e04989c5f4")


def test_cr8_is_the_apic_tpr(tmp_path: Path) -> None:
    """mov cr8, 0xA -> TPR (MMIO) reads 0xA0; TPR (MMIO) = 0x30 -> mov rax, cr8 reads 3 (SDM §10.8.6.1)."""
    from unicorn import x86_const as X

    img = tmp_path / "cr8.bin"
    img.write_bytes(bytes.fromhex(CR8))
    m = Machine(load_config(preset="none"), load_image(img))
    m.run()
    assert m.vcpus[0].uc.reg_read(X.UC_X86_REG_R13) == 0x3A0
    assert m.apics[0].get_tpr() == 0x30
    assert m.vcpus[0].stats.events["cr8_write"] == 1 and m.vcpus[0].stats.events["cr8_read"] == 1


@pytest.mark.parametrize("ap_start", ["sipi", "entry"])
def test_init_sipi_starts_an_ap_in_real_mode(guests: Path, ap_start: str) -> None:
    """The AP runs a real -> long mode trampoline (a 16-bit engine instance, context moved to the 64-bit one)."""
    m, s = run_guest(guests / "sipi.elf", vcpus=2, ap_start=ap_start)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]
    assert m.vcpus[1].stats.events["sipi_start"] == 1
    assert m.vcpus[1].stats.events["init"] == 1


def test_bad_trampoline_is_a_clear_error(tmp_path: Path) -> None:
    """An AP whose SIPI page holds garbage ends the run "error" naming the trampoline, never a crash."""
    from viridian.machine.unicorn.realmode import bring_up

    img = tmp_path / "hlt.bin"
    img.write_bytes(b"\xfa\xf4")
    m = Machine(load_config(preset="none"), load_image(img), vcpus=2)
    m.ram[0x70000:0x70002] = b"\xf4\xf4"  # hlt in real mode: never reaches long mode
    assert not bring_up(m.vcpus[1], 0x70)
    assert m.result is not None and m.result.status == "error" and "0x70000" in m.result.detail


def test_native_spin_wait_path_matches_the_python_path(guests: Path, tmp_path: Path) -> None:
    """Fast NotifyLongSpinWait completes natively unless tracing (which must see every exit): same counts."""
    from viridian.machine.trace import open_tracer

    native = run_guest(guests / "loop_hypercall.elf")[1]
    tracer = open_tracer(str(tmp_path / "t.jsonl"))
    traced = run_guest(guests / "loop_hypercall.elf", tracer=tracer)[1]
    assert tracer is not None
    tracer.close()
    for s in (native, traced):
        assert s["result"]["code"] == 0 and s["exits"]["by_hypercall"]["0x0008"] == 200_000
    assert native["exits"]["by_reason"] == traced["exits"]["by_reason"]
    assert native["exits"]["events"] == traced["exits"]["events"]


def test_two_partitions_share_one_cpu(guests: Path) -> None:
    """A CPU-bound partition and a mostly-halted one on one simulated CPU: both finish, and their vCPUs
    never ran at the same time (used ticks add up to at most the host's elapsed time)."""
    from viridian.machine.host import Host

    busy = Machine(load_config(preset="recommended"), load_image(guests / "loop_alu.elf"), max_ticks=10**11)
    idle = Machine(load_config(preset="recommended"), load_image(guests / "apic_timer.elf"), max_ticks=10**11)
    host = Host([busy, idle], pcpus=1)
    results = host.run()
    assert [(r.status, r.code) for r in results] == [("exit", 0), ("exit", 0)]
    used = busy.vcpus[0].ticks_used + idle.vcpus[0].ticks_used
    assert used <= host.T + 2 * 200_000


def test_a_hung_partition_does_not_stop_the_other(guests: Path, tmp_path: Path) -> None:
    from viridian.machine.host import Host

    img = tmp_path / "hang.bin"
    img.write_bytes(b"\xfa\xf4")  # cli; hlt
    hung = Machine(load_config(preset="none"), load_image(img))
    ok = Machine(load_config(preset="recommended"), load_image(guests / "negotiate.elf"))
    assert [r.status for r in Host([hung, ok], pcpus=1).run()] == ["hung", "exit"]


def test_cli_with_other_partitions(guests: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    proc = _cli("run", str(guests / "negotiate.elf"), "--with", f"{guests / 'hello.elf'}:2", "--pcpus", "1",
                "--stats-json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "[partition 1] hello from vcpu 1 of 2" in proc.stdout
    data = json.loads(out.read_text())
    assert data["partitions"][0]["vcpus"] == 2 and data["partitions"][0]["result"]["status"] == "exit"


def test_self_nmi_ignores_if(tmp_path: Path) -> None:
    """ICR self-NMI with IF = 0 is delivered at once (vector 2; no IDT here, so it escalates to shutdown)."""
    img = tmp_path / "nmi.bin"
    img.write_bytes(bytes.fromhex("48bb0003e0fe00000000c70300440400f4"))
    m = Machine(load_config(preset="none"), load_image(img))
    res = m.run()
    assert res.status == "triple-fault" and "first vector 2" in res.detail
    assert m.vcpus[0].stats.events["nmi"] == 0  # never got in
    assert m.vcpus[0].stats.exceptions == {13: 1, 8: 1}  # delivery's #GP (IDT limit 0) and the #DF it became


@pytest.mark.parametrize(("cmdline", "code"), [("ticks=5", ord("t")), ("", 0)])
def test_cmdline_address_is_in_rcx(tmp_path: Path, cmdline: str, code: int) -> None:
    """Guest contract: RCX = address of the NUL-terminated command line."""
    img = tmp_path / "cmd.bin"
    img.write_bytes(bytes.fromhex("8a01" "e6f4" "f4"))  # mov al, [rcx]; out 0xf4, al; hlt
    m = Machine(load_config(preset="none"), load_image(img), cmdline=cmdline)
    res = m.run()
    assert (res.status, res.code) == ("exit", code)
    assert bytes(m.ram[0x1F000:0x1F000 + len(cmdline) + 1]) == cmdline.encode() + b"\0"


def test_cmdline_too_long_is_a_user_error(tmp_path: Path) -> None:
    img = tmp_path / "x.bin"
    img.write_bytes(b"\xf4")
    with pytest.raises(UserError, match="--cmdline"):
        Machine(load_config(preset="none"), load_image(img), cmdline="x" * 5000)


def test_interrupt_window_in_cached_code(guests: Path) -> None:
    """rdmsr GUEST_IDLE; sti; nop; cli in a loop whose blocks were translated before the window opened: the
    interrupt is taken after the NOP every time (found by helper-3; fixed by flushing translations)."""
    _, s = run_guest(guests / "idle_loop.elf", preset="all")
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0)
    assert "idle reads 5" in s["serial"]
    assert s["exits"]["by_reason"]["interrupt_window"] == 5


def test_xen_without_apic_assist_publishes_no_eoi_skips(guests: Path) -> None:
    """Xen group apic_assist off (the xen-3.4 preset): the VP assist page works but NoEoiRequired is never
    set, so every EOI is a real one."""
    _, s = run_guest(guests / "apic_msrs.elf", preset="xen-3.4")
    assert s["apic"]["eoi_avoided"] == 0 and s["apic"]["eoi_exits"] == 10
    _, s = run_guest(guests / "apic_msrs.elf", xen="base,freq,apic_assist")
    assert s["apic"]["eoi_avoided"] == 10


@pytest.mark.parametrize("elf32", [False, True])
def test_multiboot_kernel_enters_in_protected_mode(guests: Path, tmp_path: Path, elf32: bool) -> None:
    """Multiboot v1 (spec §3.2): EAX = 0x2BADB002, EBX = info (memory, cmdline, loader name); the kernel
    switches itself to long mode. QEMU -kernel needs ELF32, so the same image converted must work too."""
    image = guests / "multiboot.elf"
    if elf32:
        image = tmp_path / "mb32.elf"
        subprocess.run(["objcopy", "-O", "elf32-i386", str(guests / "multiboot.elf"), str(image)], check=True)
    m = Machine(load_config(preset="recommended"), load_image(image), vcpus=2, mem_mib=64, cmdline="a=1 b=2")
    assert m.image.kind == "multiboot"
    res = m.run()
    assert (res.status, res.code) == ("exit", 0), res
    # QEMU convention: the multiboot command line is "IMAGE ARGS" (the kernel path first)
    assert f"mem_upper=64512 KiB, loader=viridian, cmdline={image} a=1 b=2" in m.ports.serial.text()
    assert m.vcpus[1].wait_sipi  # APs wait for INIT-SIPI, as on hardware
    assert m.vcpus[0].stats.events["multiboot_entry"] == 1


def test_syscall_is_performed_not_stepped_over(guests: Path) -> None:
    """Unicorn alone treats SYSCALL as a two-byte no-op; the machine performs it (SDM vol. 2B SYSCALL)."""
    _, s = run_guest(guests / "syscall.elf")
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]
    assert s["exits"]["events"]["syscall"] == 1
    assert "syscall" not in s["exits"]["by_reason"]  # not a hypervisor exit on hardware
