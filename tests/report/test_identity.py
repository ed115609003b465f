"""The guest OS identity has one decoder: the run summary and the negotiation report (describe_os) say what
``viridian guest-os-id`` says (TLFS "Reporting the Guest OS Identity"), plus the release when it is known."""

from __future__ import annotations

import subprocess
import sys

import pytest

from viridian.report.identity import describe_os
from viridian.tlfs.guest_os_id import decode

CASES = [
    # Linux's value (open source, OS type Linux, kernel version code 0x0601C0): once shown as "version 393664"
    (0x8100_0006_01C0_0000, "Linux 6.1.192 (open source, build 0)"),
    (0x0001_0406_0100_1DB0, "Microsoft Windows NT 6.1 build 7600 (Windows 7 / Windows Server 2008 R2)"),
    (0x0001_040A_0000_4A61, "Microsoft Windows NT 10.0 build 19041"),
]


@pytest.mark.parametrize(("value", "text"), CASES, ids=[f"{v:#x}" for v, _ in CASES])
def test_one_decoder(value: int, text: str) -> None:
    assert describe_os(value).startswith(decode(value).describe())
    cli = subprocess.run([sys.executable, "-m", "viridian", "guest-os-id", f"{value:#x}"], capture_output=True,
                         text=True, check=True).stdout.splitlines()[-1]
    assert text.startswith(cli) and describe_os(value).startswith(text)
