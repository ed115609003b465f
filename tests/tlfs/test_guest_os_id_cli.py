"""``viridian guest-os-id`` through viridian.cli.main.main."""

from __future__ import annotations

import json
import re

import pytest

from viridian.cli.main import main


def test_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guest-os-id", "0x0001040601001DB0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "Microsoft Windows NT 6.1 build 7600"
    table = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out[:-1])
    assert table["vendor"] == "Microsoft (0x0001)"
    assert table["build"] == "7600"
    assert table["release"] == "Windows 7 / Windows Server 2008 R2"


def test_decimal_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guest-os-id", str(0x0001040601001DB0)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "Microsoft Windows NT 6.1 build 7600"


def test_linux_and_not_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guest-os-id", "0x8100000601000000"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "Linux 6.1.0 (open source, build 0)"
    assert main(["guest-os-id", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "not set"


def test_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guest-os-id", "0x0001040601001DB0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["vendor"] == 1 and data["os_id"] == 4
    assert (data["major"], data["minor"], data["build"]) == (6, 1, 7600)
    assert data["description"] == "Microsoft Windows NT 6.1 build 7600"


@pytest.mark.parametrize("bad", ["banana", "0x", "1DB0", "-1", "0x10000000000000000", "18446744073709551616"])
def test_invalid_input_is_a_one_line_user_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guest-os-id", bad]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("viridian: error: ")
