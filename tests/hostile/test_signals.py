"""Issue 17 item 4: SIGINT/SIGTERM sent by pid to a running 64-vCPU guest end the run at the next exit boundary:
exit 130/143, "interrupted at <virtual time>" on stderr, the partial stats written, no traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_64_vcpu_run(tmp_path: Path, sig: signal.Signals, status: int) -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "fixtures")], check=True)
    stats, trace = tmp_path / "stats.json", tmp_path / "trace.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "viridian", "run", str(ROOT / "fixtures/build/win10.elf"),
                             "--vcpus", "64", "--cmdline", "ticks=100000", "--quiet", "--stats-json", str(stats),
                             "--trace", str(trace)], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        while proc.poll() is None and not (trace.exists() and trace.stat().st_size > 0):
            time.sleep(0.05)  # the guest is running once it has exited to the host once
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.strip().splitlines()[-1].startswith(f"viridian: interrupted ({sig.name}) at "), err
    data = json.loads(stats.read_text())
    assert data["result"]["status"] == "interrupted" and data["vcpus"] == 64
    assert data["time"]["tsc"] > 0 and data["exits"]["total"] > 0


def test_a_signal_outside_a_run_is_one_line(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Before a guest runs (here: while the image loads) the handler ends the command at once."""
    import os

    import viridian.machine.loader as loader
    from viridian.cli.main import main

    def load(*a: object, **k: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs before this returns
        raise AssertionError("not interrupted")

    monkeypatch.setattr(loader, "load_image", load)
    assert main(["run", "x.elf", "--quiet"]) == 143
    err = capsys.readouterr().err
    assert err == "viridian: interrupted (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
