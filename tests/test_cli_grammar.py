"""One CLI grammar (issue 20 item 5): --json is a switch everywhere, --json-file FILE writes, '-' means stdout
for every data FILE option, -q/--quiet and --vcpus mean the same on every command, a text file is not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from viridian.cli.main import build_parser, main
from viridian.machine.loader import load_image, looks_like_text

ROOT = Path(__file__).resolve().parents[1]
HELLO_ELF = ROOT / "fixtures" / "build" / "hello.elf"
HELLO_BIN = ROOT / "fixtures" / "build" / "hello.bin"

# every command with --json, and the words it needs before it (a positional after --json must stay positional)
JSON_COMMANDS = [
    ("run", ["win7"], "image"),
    ("boot", ["vmlinux"], "kernel"),
    ("compare", ["win7", "-a", "none", "-b", "all"], "image"),
    ("cpuid", [], None),
    ("fuzz", [], None),
    ("resume", ["snap.bin"], "snapshot"),
    ("conformance", [], None),
    ("measure", ["eoi"], "experiment"),
    ("guests", [], None),
]


def parse(*words: str) -> object:
    return build_parser().parse_args(list(words))


@pytest.mark.parametrize(("command", "words", "positional"), JSON_COMMANDS)
def test_json_is_a_switch_that_never_swallows_the_next_word(command: str, words: list[str],
                                                           positional: str | None) -> None:
    args = parse(command, "--json", *words)
    assert args.json is True
    if positional is not None:
        assert getattr(args, positional) == words[0]
    assert parse(command, *words).json is False


@pytest.mark.parametrize("command", ["compare", "cpuid", "fuzz", "conformance", "measure", "guests"])
def test_json_file_takes_a_file(command: str, tmp_path: Path) -> None:
    words = dict((c, w) for c, w, _ in JSON_COMMANDS)[command]
    args = parse(command, *words, "--json-file", str(tmp_path / "out.json"))
    assert args.json_file == str(tmp_path / "out.json") and args.json is False


@pytest.mark.parametrize(("command", "words"), [("run", ["win7"]), ("boot", ["vmlinux"]), ("resume", ["s"]),
                                                ("compare", ["win7", "-a", "none", "-b", "all"]), ("fuzz", []),
                                                ("conformance", []), ("measure", ["eoi"])])
@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_quiet_everywhere(command: str, words: list[str], flag: str) -> None:
    assert parse(command, *words, flag).quiet is True


@pytest.mark.parametrize(("command", "words", "default"), [("run", ["win7"], 1), ("boot", ["vmlinux"], 1),
                                                           ("compare", ["win7", "-a", "none", "-b", "all"], 1),
                                                           ("conformance", [], 2)])
def test_vcpus_is_an_int(command: str, words: list[str], default: int) -> None:
    assert parse(command, *words).vcpus == default
    assert parse(command, *words, "--vcpus", "4").vcpus == 4
    assert main([command, *words, "--vcpus", "two"]) == 2


def test_compare_short_and_long_sides() -> None:
    short = parse("compare", "win7", "-a", "none", "-b", "recommended")
    long = parse("compare", "win7", "--a", "none", "--b", "recommended")
    assert (short.a, short.b) == (long.a, long.b) == ("none", "recommended")


def test_guests_json_file_leaves_stdout_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.json"
    assert main(["guests", "--json-file", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "win7" in stdout and not stdout.lstrip().startswith("{")  # the human list
    assert any(g["name"] == "win7" for g in json.loads(out.read_text())["guests"])
    assert main(["guests", "--json-file", "-"]) == 0  # '-' = stdout, JSON only
    assert "guests" in json.loads(capsys.readouterr().out)


def test_trace_dash_is_stdout_and_json_lines_only(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["run", str(HELLO_ELF), "--trace", "-", "--max-ticks", "20000000"])
    out, _err = capsys.readouterr()
    assert status in (0, 103)
    lines = out.splitlines()
    assert lines, "no trace on stdout"
    assert all(isinstance(json.loads(line), dict) for line in lines)  # no serial echo mixed in


def test_text_file_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(ROOT / "README.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "is not an ELF or multiboot image; --flat to load it as a flat binary anyway" in err


def test_flat_forces_a_flat_load() -> None:
    assert load_image(ROOT / "README.md", flat=True).kind == "flat"
    assert load_image(HELLO_ELF, flat=True).kind == "flat"
    assert load_image(HELLO_BIN).kind == "flat"  # a real flat binary still loads without --flat


@pytest.mark.parametrize(("blob", "text"), [
    (b"# viridian\nA Python model\n", True),
    (b"#!/bin/sh\necho hi\n", True),
    (("a" + "\u00e9" * 3000).encode(), True),     # UTF-8 text cut mid-character at 4 KiB
    (b"\xf4", False),                       # hlt
    (b"\xeb\xfe", False),                   # jmp $
    (b"\xb0A\xe6\xe9\xf4", False),          # mov al,'A'; out 0xe9,al; hlt
    (b"abc\x00def", False),                 # a NUL: not text
    (b"\x01\x02\x03\x04" * 10, False),      # control characters
    (b"", False),
])
def test_looks_like_text(blob: bytes, text: bool) -> None:
    assert looks_like_text(blob) is text


def test_every_shipped_flat_binary_is_not_text() -> None:
    bins = sorted((ROOT / "fixtures" / "build").glob("*.bin"))
    assert bins
    assert [b.name for b in bins if looks_like_text(b.read_bytes())] == []


def test_top_level_help_is_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "one argparse subcommand" not in out  # not a code docstring
    assert "examples:" in out and "viridian run win10" in out
    for command in ("run", "boot", "compare", "cpuid", "conformance", "measure", "fuzz", "guests", "resume"):
        assert f"\n    {command}" in out


@pytest.mark.parametrize("words", [["--stats-json", "-"], ["--json"]])
def test_stats_on_stdout_are_one_json_document(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(HELLO_ELF), *words]) == 0
    data = json.loads(capsys.readouterr().out)  # no serial echo before it
    assert data["exits"]["total"] > 0
