"""Results of the conformance suite on another hypervisor (``viridian conformance --from-tap SERIAL.LOG``): the
suite's COM1 output captured on QEMU/KVM (``-serial stdio`` or ``-serial file:F``), Xen (``serial='file:F'``)
or Hyper-V (a COM port on a named pipe), turned into the same run dict as a run on viridian (runner.result).

The log may hold firmware or boot-loader text before the suite and CR LF line ends; when it holds several
suite starts (a reboot), the last one is read. Its header comment names the hypervisor and the vCPU count:
``# viridian conformance suite 1; hypervisor: vendor "KVMKVMKVM", interface Hv#1; vCPUs: 4``.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from viridian.conformance.runner import result
from viridian.errors import UserError

LOG_MAX = 64 << 20  # a serial log larger than this is not one suite run
HEADER = re.compile(r'hypervisor: vendor "(?P<vendor>[^"]*)", interface (?P<iface>[^;]+); vCPUs: (?P<vcpus>\d+)')
START = "TAP version"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal escapes some firmware prints


def read_log(path: str | Path) -> str:
    """The text of a serial log (a regular file of at most LOG_MAX bytes); UserError (one line) otherwise."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"--from-tap {name}: not a regular file")
        if st.st_size > LOG_MAX:
            raise UserError(f"--from-tap {name}: {st.st_size} bytes, more than a serial log of one run "
                            f"({LOG_MAX >> 20} MiB)")
        with open(name, "rb") as fh:
            blob = fh.read(LOG_MAX + 1)
    except OSError as exc:
        raise UserError(f"cannot read --from-tap {name}: {exc.strerror or type(exc).__name__}") from None
    text = blob.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n").replace("\0", "")
    return ANSI.sub("", text)


def from_tap(path: str | Path) -> dict[str, Any]:
    """One run dict from a serial log; the run is named after the hypervisor the suite saw and the log file."""
    text = read_log(path)
    at = text.rfind(START)
    if at < 0:
        raise UserError(f"--from-tap {path}: no '{START}' line: not a conformance suite serial log")
    text = text[at:]
    head = HEADER.search(text)
    vendor, iface, vcpus = (head["vendor"].strip(), head["iface"].strip(), int(head["vcpus"])) if head else \
        ("?", "?", 0)
    offer = f"{vendor or 'no vendor'}/{iface}"
    return result(f"{offer} x{vcpus} ({Path(path).name})", offer, vcpus, "", text, "log", None)
