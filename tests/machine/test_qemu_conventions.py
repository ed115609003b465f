"""A test kernel in the QEMU conventions third-party suites use (fixtures/guests/qemu_conv: fw_cfg CPU count, a
multiboot module as its environment, the "IMAGE ARGS" command line, hyperv-testdev SINT routes and connections)
boots unchanged on viridian, and on QEMU TCG the two agree on everything QEMU TCG offers (issue 18)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from viridian.cli.main import main
from viridian.config.presets import load_config
from viridian.devices.hyperv_testdev import attach
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine

ARGS = "--foo bar=1 baz"
SYNIC_TESTS = (7, 8, 9, 10)


def env_file(tmp_path: Path, cpus: int) -> Path:
    f = tmp_path / "env.txt"
    f.write_text(f"CPUS={cpus}\nARGS={ARGS}\nGREETING=hello world\n")
    return f


def tap(out: str) -> dict[int, str]:
    """Test number -> 'ok', 'not ok' or 'skip: REASON'."""
    res = {}
    for m in re.finditer(r"^(ok|not ok) (\d+) - [^#\n]*(?:# SKIP (.*))?$", out, re.M):
        res[int(m.group(2))] = f"skip: {m.group(3)}" if m.group(3) else m.group(1)
    return res


def facts(out: str) -> dict[str, str]:
    return dict(re.findall(r"^# fact ([^=\n]+)=(.*)$", out, re.M))


def run_viridian(guests: Path, tmp_path: Path, *, vcpus: int, preset: str, testdev: bool,
                 board: str = "minimal") -> tuple[int, str]:
    image = load_image(guests / "qemu_conv.elf", str(env_file(tmp_path, vcpus)))
    m = Machine(load_config(preset=preset), image, vcpus=vcpus, cmdline=ARGS, board=board)
    if testdev:
        dev = attach(m)
    res = m.run()
    assert res.status == "exit", res
    if testdev and preset != "none":  # the guest created and destroyed everything it used
        assert dev.misuse == 0 and dev.sints_raised == 1 and not dev.msg_conns and not dev.evt_conns
    return int(res.code or 0), m.ports.serial.text()


@pytest.mark.parametrize(("vcpus", "board"), [(1, "minimal"), (3, "pc")])
def test_boots_with_hyperv_testdev_and_every_test_passes(guests: Path, tmp_path: Path, vcpus: int,
                                                         board: str) -> None:
    code, out = run_viridian(guests, tmp_path, vcpus=vcpus, preset="recommended", testdev=True, board=board)
    assert code == 0, out
    assert tap(out) == {n: "ok" for n in range(1, 11)}, out
    f = facts(out)
    assert f["fw_cfg.cpus"] == f["fw_cfg.max_cpus"] == str(vcpus)
    assert f["fw_cfg.ram"] == str(128 << 20) and f["fw_cfg.signature"] == "QEMU"
    assert f["argv[0]"] == str(guests / "qemu_conv.elf") and f["argv[1]"] == "--foo" and f["argc"] == "4"
    assert f["module1.string"] == str(tmp_path / "env.txt") and f["env.GREETING"] == "hello world"


@pytest.mark.parametrize(("preset", "testdev", "reason"), [
    ("recommended", False, "no hyperv-testdev at port 0x3000"),
    ("none", True, "no Hyper-V interface in CPUID"),
])
def test_synic_tests_skip_when_the_device_or_the_synic_is_missing(guests: Path, tmp_path: Path, preset: str,
                                                                 testdev: bool, reason: str) -> None:
    code, out = run_viridian(guests, tmp_path, vcpus=2, preset=preset, testdev=testdev)
    results = tap(out)
    assert code == 0 and all(results[n] == "ok" for n in range(1, 7)), out
    assert all(results[n].startswith(f"skip: {reason}") for n in SYNIC_TESTS), out


def test_cli_flags(guests: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = env_file(tmp_path, 2)
    rc = main(["run", str(guests / "qemu_conv.elf"), "--initrd", str(env), "--cmdline", ARGS, "--vcpus", "2",
               "--device", "hyperv-testdev"])
    out = capsys.readouterr().out
    assert rc == 0 and tap(out) == {n: "ok" for n in range(1, 11)}, out


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed: `make qemu` installs Debian's "
                    "qemu-system-x86 (apt-get) -- the QEMU TCG comparison needs it")
@pytest.mark.parametrize("smp", [1, 3])
def test_qemu_tcg_and_viridian_agree(guests: Path, tmp_path: Path, smp: int) -> None:
    """The same image, module and command line under QEMU TCG (no Hyper-V there: the SynIC tests skip) and on
    viridian without an offer: identical facts (fw_cfg CPU count, RAM size, file; module; argv) and results."""
    image, env = guests / "qemu_conv.elf", env_file(tmp_path, smp)
    assert QEMU is not None
    proc = subprocess.run([QEMU, "-accel", "tcg", "-machine", "pc", "-kernel", str(image), "-initrd", str(env),
                           "-append", ARGS, "-smp", str(smp), "-m", "128", "-serial", "stdio", "-display", "none",
                           "-nodefaults", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # isa-debug-exit: (0 << 1) | 1
    code, out = run_viridian(guests, tmp_path, vcpus=smp, preset="none", testdev=False, board="pc")
    assert code == 0
    assert facts(proc.stdout) == facts(out), (proc.stdout, out)
    assert facts(out)["fw_cfg.cpus"] == str(smp)
    qemu_results = tap(proc.stdout)
    assert all(qemu_results[n] == "ok" for n in range(1, 7)), proc.stdout
    assert all(qemu_results[n].startswith("skip: no Hyper-V interface") for n in SYNIC_TESTS)
