"""``viridian run --gdb``: a scripted GDB remote-protocol client (and real gdb in batch mode) driving fixture
guests: breakpoints at ELF symbols, registers, memory, single-step, a write watchpoint, threads on 2 vCPUs,
Ctrl-C, detach, kill; and a run with --gdb but no debugger gives the same stats as one without."""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from viridian.cli.main import main
from viridian.machine.gdbstub import checksum, escape, parse_address, unescape
from viridian.machine.unicorn.debug import REGS

REGNO = {name: i for i, (name, *_rest) in enumerate(REGS)}
OFFSET = {name: sum(r[1] for r in REGS[:i]) for i, (name, *_rest) in enumerate(REGS)}


def symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {f[2]: int(f[0], 16) for f in (line.split() for line in out.splitlines()) if len(f) == 3}


def elf_bytes(elf: Path, addr: int, length: int) -> bytes:
    """Bytes of the ELF64 image at ``addr`` (its PT_LOAD segments, p_paddr = p_vaddr in our guests)."""
    data = elf.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        ptype, _, off, vaddr, _, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if ptype == 1 and vaddr <= addr and addr + length <= vaddr + filesz:
            return data[off + addr - vaddr:off + addr - vaddr + length]
    raise AssertionError(f"{addr:#x} not in a PT_LOAD segment")


class Client:
    """A minimal RSP client (acks on, then no-ack mode when asked)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""
        self.ack = True

    def _byte(self) -> int:
        while not self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "stub closed the connection"
            self.buf += chunk
        b, self.buf = self.buf[0], self.buf[1:]
        return b

    def send(self, payload: str | bytes) -> None:
        raw = payload.encode() if isinstance(payload, str) else payload
        self.sock.sendall(b"$" + raw + b"#" + b"%02x" % checksum(raw))
        if self.ack:
            assert self._byte() == ord("+")

    def recv(self) -> bytes:
        while self._byte() != ord("$"):
            pass
        body = bytearray()
        while (b := self._byte()) != ord("#"):
            body.append(b)
        cs = bytes((self._byte(), self._byte()))
        assert int(cs, 16) == checksum(bytes(body)), "bad checksum from the stub"
        if self.ack:
            self.sock.sendall(b"+")
        return bytes(body)

    def ask(self, payload: str | bytes) -> bytes:
        self.send(payload)
        return self.recv()

    def reg(self, name: str, regs: bytes | None = None) -> int:
        if regs is None:
            return int.from_bytes(bytes.fromhex(self.ask(f"p{REGNO[name]:x}").decode()), "little")
        size = REGS[REGNO[name]][1]
        return int.from_bytes(regs[OFFSET[name]:OFFSET[name] + size], "little")

    def regs(self) -> bytes:
        return bytes.fromhex(self.ask("g").decode())


class Stub:
    """``viridian run IMAGE --gdb 127.0.0.1:0 --gdb-wait`` in a subprocess, and a client connected to it."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "viridian", "run", *argv, "--gdb", "127.0.0.1:0",
                                      "--gdb-wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        match = re.search(r"gdb server on (127\.0\.0\.1):(\d+)", line)
        assert match, line
        self.port = int(match.group(2))

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, out, err


@pytest.fixture
def hello2(guests: Path) -> Iterator[tuple[Stub, Client, dict[str, int], Path]]:
    elf = guests / "hello.elf"
    stub = Stub([str(elf), "--vcpus", "2"])
    client = Client(stub.port)
    yield stub, client, symbols(elf), elf
    if stub.proc.poll() is None:
        stub.proc.kill()
        stub.proc.wait()


def test_session_on_two_vcpus(hello2: tuple[Stub, Client, dict[str, int], Path]) -> None:
    stub, c, sym, elf = hello2
    supported = c.ask("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386").decode()
    assert "PacketSize=" in supported and "qXfer:features:read+" in supported
    assert c.ask("?").startswith(b"T05thread:1;")
    xml = c.ask("qXfer:features:read:target.xml:0,10000")
    assert xml[:1] == b"l" and b"<architecture>i386:x86-64</architecture>" in xml
    for name in ("rax", "r15", "rip", "eflags", "fs_base", "gs_base", "cr0", "cr3", "cr4", "efer"):
        assert f'name="{name}"'.encode() in xml
    assert c.ask("qfThreadInfo") == b"m1,2" and c.ask("qsThreadInfo") == b"l"
    assert c.ask("T2") == b"OK" and c.ask("T3").startswith(b"E")
    assert b"vCPU 1" in bytes.fromhex(c.ask("qThreadExtraInfo,2").decode())

    # a breakpoint at guest_main (UC_HOOK_CODE; guest memory is not written)
    main_at = sym["guest_main"]
    before = c.ask(f"m{main_at:x},4")
    assert c.ask(f"Z0,{main_at:x},1") == b"OK"
    assert c.ask(f"m{main_at:x},4") == before == elf_bytes(elf, main_at, 4).hex().encode()
    reply = c.ask("c").decode()
    assert reply.startswith("T05thread:") and "swbreak" in reply
    tid = int(reply.split("thread:")[1].split(";")[0], 16)
    regs = c.regs()
    assert c.reg("rip", regs) == main_at == c.reg("rip")
    assert c.reg("rdi", regs) == tid - 1 and c.reg("rsi", regs) == 2  # the guest contract: RDI index, RSI count
    assert c.reg("cr0", regs) & 0x8000_0001 == 0x8000_0001 and c.reg("efer", regs) & 0x500 == 0x500

    # single-step: mov r12, rdi (3 bytes); the other vCPU runs meanwhile (all-stop), so the breakpoint goes first
    assert c.ask(f"z0,{main_at:x},1") == b"OK"
    c.ask(f"Hc{tid:x}")
    reply = c.ask("s").decode()
    assert reply.startswith(f"T05thread:{tid:x};")
    assert c.reg("rip") == main_at + 3 and c.reg("r12") == tid - 1

    # the other thread's registers are its own
    other = 3 - tid
    assert c.ask(f"Hg{other:x}") == b"OK"
    assert c.reg("rdi") == other - 1
    assert c.ask(f"Hg{tid:x}") == b"OK"

    # a write watchpoint on the turn counter: the first increment stops there with the new value in memory
    printed = sym["printed"]
    assert c.ask(f"Z2,{printed:x},8") == b"OK"
    reply = c.ask("vCont;c").decode()
    assert reply.startswith("T05thread:") and f"watch:{printed:x};" in reply
    assert int.from_bytes(bytes.fromhex(c.ask(f"m{printed:x},8").decode()), "little") == 1
    assert c.ask(f"z2,{printed:x},8") == b"OK"

    # memory and register writes (M, X, P), read back
    scratch = sym["pcpu_area"] + 0x800
    assert c.ask(f"M{scratch:x},4:deadbeef") == b"OK"
    assert c.ask(f"m{scratch:x},4") == b"deadbeef"
    payload = bytes([0x23, 0x24, 0x7D, 0x2A])  # '#', '$', '}', '*' need escaping in X
    assert c.ask(f"X{scratch:x},4:".encode() + escape(payload)) == b"OK"
    assert bytes.fromhex(c.ask(f"m{scratch:x},4").decode()) == payload
    assert c.ask(f"m{0x7f00_0000_0000:x},8") == b"E14"  # not mapped in the guest's page tables
    assert c.ask(f"P{REGNO['r15']:x}=" + (0x1122334455667788).to_bytes(8, "little").hex()) == b"OK"
    assert c.reg("r15") == 0x1122334455667788
    blob = bytearray(c.regs())  # G: the whole set back with R14 changed; read-only registers unchanged pass
    blob[OFFSET["r14"]:OFFSET["r14"] + 8] = (0xCAFE).to_bytes(8, "little")
    assert c.ask("G" + blob.hex()) == b"OK" and c.reg("r14") == 0xCAFE and c.regs() == bytes(blob)
    blob[OFFSET["cr3"]:OFFSET["cr3"] + 8] = (0x5000).to_bytes(8, "little")
    assert c.ask("G" + blob.hex()).startswith(b"E") and c.reg("cr3") != 0x5000  # CR3 is not writable from gdb

    # run to the end: the guest exits 0 and gdb is told so
    assert c.ask("c") == b"W00"
    code, out, _ = stub.finish()
    assert code == 0 and "hello from vcpu 1 of 2" in out


def test_ctrl_c_detach_and_no_ack(guests: Path) -> None:
    elf = guests / "hello.elf"
    sym = symbols(elf)
    stub = Stub([str(elf)])
    c = Client(stub.port)
    try:
        assert c.ask("QStartNoAckMode") == b"OK"
        c.ack = False
        assert c.ask("?").startswith(b"T05")
        main_at = sym["guest_main"]
        assert c.ask(f"M{main_at:x},2:ebfe") == b"OK"  # jmp $: the guest now spins at guest_main
        c.send("c")
        c.sock.sendall(b"\x03")  # Ctrl-C
        reply = c.recv().decode()
        assert reply.startswith("T02thread:1;")
        assert c.reg("rip") == main_at  # the patched code ran (translations of the page were dropped)
        assert c.ask(f"M{main_at:x},2:" + elf_bytes(elf, main_at, 2).hex()) == b"OK"  # put it back
        printed = sym["printed"]
        assert c.ask(f"Z3,{printed:x},8") == b"OK"  # a read watchpoint: the turn counter's first read
        reply = c.ask("c").decode()
        assert reply.startswith("T05thread:1;") and f"rwatch:{printed:x};" in reply
        assert c.ask(f"z3,{printed:x},8") == b"OK"
        assert c.ask("D") == b"OK"  # detach: the guest goes on and ends by itself
        code, out, _ = stub.finish()
        assert code == 0 and "hello from vcpu 0 of 1" in out
    finally:
        if stub.proc.poll() is None:
            stub.proc.kill()


HOSTILE = ["g1", "Gzz", "p", "pffffffff", "P1", "Pzz=00", "m", "m1,", "mzz,1", "m" + "f" * 40 + ",10",
           "M0,2:00", "M1000,1:zz", "X1000,5:ab", "Z9,0,1", "Z0", "Z2,x,8", "H", "Hgzz", "Hg99", "T", "Tzz",
           "vCont;s:zz", "vCont;", "qXfer:features:read:other.xml:0,10", "qXfer:features:read:target.xml:zz",
           "qThreadExtraInfo,zz", "qThreadExtraInfo,99", "Q", "\xff\xfe", "z0,1,1"]


def test_hostile_packets(guests: Path) -> None:
    """Malformed or out-of-range packets get an error or an empty reply; the session goes on."""
    stub = Stub([str(guests / "hello.elf")])
    c = Client(stub.port)
    try:
        for pkt in HOSTILE:
            reply = c.ask(pkt.encode("latin-1"))
            assert reply == b"" or reply.startswith(b"E") or reply in (b"OK", b"l") or reply.startswith(b"m") \
                or all(ch in b"0123456789abcdef" for ch in reply), (pkt, reply)
        assert c.ask("?").startswith(b"T05") and c.ask("c") == b"W00"
        assert stub.finish()[0] == 0
    finally:
        if stub.proc.poll() is None:
            stub.proc.kill()


def test_step_over_rdmsr(guests: Path) -> None:
    """Stepping over RDMSR HV_X64_MSR_TIME_REF_COUNT shows the model's answer in RAX:RDX, and the count grows
    from one loop iteration to the next (TLFS §12.4: a monotonic 100 ns counter)."""
    elf = guests / "loop_rdmsr.elf"
    main_at = symbols(elf)["guest_main"]
    at = main_at + elf_bytes(elf, main_at, 0x30).index(b"\xb9\x20\x00\x00\x40\x0f\x1f\x00\x0f\x32") + 8
    stub = Stub([str(elf)])
    c = Client(stub.port)
    try:
        assert c.ask(f"Z0,{at:x},1") == b"OK"
        assert c.ask("c").startswith(b"T05") and c.reg("rip") == at and c.reg("rcx") == 0x4000_0020
        assert c.ask(f"z0,{at:x},1") == b"OK"
        assert c.ask("s").startswith(b"T05") and c.reg("rip") == at + 2
        counts = [c.reg("rax") | c.reg("rdx") << 32]
        assert c.ask(f"Z0,{at + 2:x},1") == b"OK"
        for _ in range(2):
            assert c.ask("c").startswith(b"T05") and c.reg("rip") == at + 2
            counts.append(c.reg("rax") | c.reg("rdx") << 32)
        assert 0 < counts[0] < counts[1] < counts[2]
        assert c.ask("D") == b"OK"
        assert stub.finish()[0] == 0
    finally:
        if stub.proc.poll() is None:
            stub.proc.kill()


def test_kill(guests: Path) -> None:
    stub = Stub([str(guests / "hello.elf")])
    c = Client(stub.port)
    c.send("k")
    code, out, err = stub.finish()
    assert code == 1 and "hello" not in out and "killed from gdb" in err


def test_gdb_without_debugger_changes_nothing(guests: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", str(guests / "win7.elf"), "--vcpus", "2", "--json"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--gdb", "127.0.0.1:0"]) == 0
    captured = capsys.readouterr()
    assert "gdb server on 127.0.0.1:" in captured.err
    debugged = json.loads(captured.out)
    assert debugged["exits"] == plain["exits"] and debugged["time"] == plain["time"]
    assert debugged["per_vcpu"] == plain["per_vcpu"]


def test_breakpoint_hits_change_nothing(guests: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A vCPU held at a breakpoint waits inside the code hook; continuing returns from it: the run's exits,
    per-vCPU stats and virtual time are those of a run without a debugger (2 vCPUs, every timer EOI)."""
    elf = guests / "win7.elf"
    argv = [str(elf), "--vcpus", "2", "--json"]
    assert main(["run", *argv]) == 0
    plain = json.loads(capsys.readouterr().out)
    stub = Stub(argv)
    c = Client(stub.port)
    at = symbols(elf)["hv_assist_eoi_skip"]
    assert c.ask(f"Z0,{at:x},1") == b"OK"
    hits, threads = 0, set()
    while (reply := c.ask("c").decode()).startswith("T05"):
        hits += 1
        threads.add(reply.split("thread:")[1].split(";")[0])
        assert c.reg("rip") == at
    assert reply == "W00" and hits >= 10 and threads == {"1", "2"}
    code, out, _ = stub.finish()
    debugged = json.loads(out)
    assert code == 0
    assert debugged["exits"] == plain["exits"] and debugged["time"] == plain["time"]
    assert debugged["per_vcpu"] == plain["per_vcpu"]


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed (apt-get install gdb)")
def test_real_gdb(guests: Path) -> None:
    elf = guests / "hello.elf"
    sym = symbols(elf)
    stub = Stub([str(elf), "--vcpus", "2"])
    try:
        cmds = ["set confirm off", f"target remote 127.0.0.1:{stub.port}", "info threads",
                f"break *{sym['guest_main']:#x}", "continue", "info registers rip", "stepi", "info registers rip",
                "delete", f"watch *(long *){sym['printed']:#x}", "continue", f"print *(long *){sym['printed']:#x}",
                "delete", "detach"]
        out = subprocess.run(["gdb", "-nx", "-batch", *(a for cmd in cmds for a in ("-ex", cmd))],
                             capture_output=True, text=True, timeout=120).stdout
        assert "Thread 2 (vCPU 1" in out
        assert re.search(rf"rip\s+{sym['guest_main']:#x}", out)
        assert re.search(rf"rip\s+{sym['guest_main'] + 3:#x}", out)
        assert "New value = 1" in out and "$1 = 1" in out
        code, serial, _ = stub.finish()
        assert code == 0 and "hello from vcpu 1 of 2" in serial
    finally:
        if stub.proc.poll() is None:
            stub.proc.kill()


def test_framing_and_address() -> None:
    assert checksum(b"OK") == 0x9A
    data = bytes(range(256))
    assert unescape(escape(data)) == data and b"#" not in escape(data) and b"$" not in escape(data)
    assert parse_address("1234") == ("127.0.0.1", 1234)  # loopback unless a host is given
    assert parse_address("0.0.0.0:1") == ("0.0.0.0", 1) and parse_address("[::1]:5") == ("::1", 5)
    with pytest.raises(ValueError):
        parse_address("70000")
