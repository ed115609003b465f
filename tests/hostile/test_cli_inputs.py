"""Issue 17 item 3: every bad host input of the issue, through main(argv) in-process -- the documented exit
status, exactly one line on stderr, no traceback, no file created. A few also through a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from viridian.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "fixtures" / "build" / "hello.elf"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    subprocess.run(["make", "-s", "-C", str(ROOT / "fixtures")], check=True)
    d = tmp_path_factory.mktemp("hostile")
    os.mkfifo(d / "fifo")
    (d / "dir").mkdir()
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "bad.xml").write_text("<domain><features><hyperv><relaxed state='maybe'/></hyperv></features></domain>")
    (d / "bomb.xml").write_text("<!DOCTYPE d [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;'>]><domain>&b;</domain>")
    (d / "latin1.xml").write_bytes(b"<domain>\xe9</domain>")
    (d / "README.md").write_text("a file, not a directory\n")
    (d / "out").mkdir()
    (d / "big.bin").write_bytes(b"\x90" * 9_000_000)  # a flat image larger than 8 MiB of RAM
    rec = d / "genuine.rec"
    assert main(["run", str(HELLO), "--quiet", "--mem", "8", "--max-ticks", "2000", "--record", str(rec)]) in (0, 103)
    return d


def _record(work: Path, name: str, edit: object) -> str:
    data = json.loads((work / "genuine.rec").read_text())
    if callable(edit):
        edit(data)
    (work / name).write_text(json.dumps(data))
    return str(work / name)


def _set(path: str, value: object):  # type: ignore[no-untyped-def]
    def edit(d: dict) -> None:  # type: ignore[type-arg]
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        d[last] = value
    return edit


OUT = "{out}/created.json"
# (argv with {w} = the work directory and {out} = an empty output directory, exit status, what stderr says)
CASES: list[tuple[list[str], int, str]] = [
    (["run", str(HELLO), "--stats-json", "{w}/dir"], 2, "is a directory"),
    (["run", str(HELLO), "--stats-json", "/nonexistent/x"], 2, "does not exist"),
    (["run", str(HELLO), "--trace", "{w}/dir"], 2, "is a directory"),
    (["run", str(HELLO), "--record", "{w}/dir"], 2, "is a directory"),
    (["run", str(HELLO), "--record", "-"], 2, "not allowed"),
    (["run", str(HELLO), "--snapshot-at", "10", "--snapshot", "{w}/dir"], 2, "is a directory"),
    (["run", str(HELLO), "--stats-json", "{w}/fifo"], 2, "FIFO"),
    (["run", str(HELLO), "--stats-json", "{w}/README.md/x"], 2, "Not a directory"),
    (["run", str(HELLO), "--stats-json", "/proc/x.json"], 2, "/proc"),
    (["boot", str(HELLO), "--stats-json", "{w}/dir"], 2, "is a directory"),
    (["conformance", "--junit", "{w}/dir"], 2, "is a directory"),
    (["conformance", "--json-file", "/nonexistent/x.json"], 2, "does not exist"),
    (["measure", "eoi", "--csv", "{w}/dir"], 2, "is a directory"),
    (["measure", "eoi", "--json-file", "{w}/dir"], 2, "is a directory"),
    (["measure", "eoi", "--plot", "/proc/x.png"], 2, "/proc"),
    (["measure", "eoi", "--report", "{w}/README.md"], 2, "not a directory"),
    (["run", str(HELLO), "--cmdline", "\udcff", "--stats-json", OUT], 2, "not valid UTF-8"),
    (["boot", str(HELLO), "--append", "a\udce9b", "--stats-json", OUT], 2, "not valid UTF-8"),
    (["compare", str(HELLO), "--a", "none", "--b", "all", "--cmdline", "\udcff"], 2, "not valid UTF-8"),
    (["run", "/dev/zero", "--stats-json", OUT], 2, "character device"),
    (["run", "{w}/fifo", "--stats-json", OUT], 2, "FIFO"),
    (["run", "{w}/dir", "--stats-json", OUT], 2, "directory"),
    (["boot", "/dev/zero"], 2, "character device"),
    (["boot", str(HELLO), "--initrd", "{w}/fifo"], 2, "FIFO"),
    (["run", str(ROOT / "fixtures/build/multiboot.elf"), "--initrd", "{w}/fifo", "--stats-json", OUT], 2, "FIFO"),
    (["run", str(HELLO), "--libvirt", "/dev/zero", "--stats-json", OUT], 2, "character device"),
    (["run", str(HELLO), "--libvirt", "{w}/fifo", "--stats-json", OUT], 2, "FIFO"),
    (["run", str(HELLO), "--libvirt", "{w}/bad.xml", "--stats-json", OUT], 2, "state"),
    (["cpuid", "--libvirt", "{w}/bomb.xml"], 2, "DOCTYPE"),
    (["cpuid", "--libvirt", "{w}/latin1.xml"], 2, "UTF-8"),
    (["cpuid", "--libvirt", "{w}/dir"], 2, "directory"),
    (["run", "--replay", "/dev/zero", "--stats-json", OUT], 2, "character device"),
    (["run", "--replay", "{w}/fifo", "--stats-json", OUT], 2, "FIFO"),
    (["run", "--replay", "{w}/deep.json", "--stats-json", OUT], 2, "nested too deeply"),
    (["run", "--replay", "{rec:vcpus_text}", "--stats-json", OUT], 2, "'vcpus' must be an integer"),
    (["run", "--replay", "{rec:vcpus_bool}", "--stats-json", OUT], 2, "'vcpus' must be an integer"),
    (["run", "--replay", "{rec:options_null}", "--stats-json", OUT], 2, "'options' must be a JSON object"),
    (["run", "--replay", "{rec:stats_inject}", "--stats-json", OUT], 2, "'stats_json' is not a run option"),
    (["run", "--replay", "{rec:trace_inject}"], 2, "'trace' is not a run option"),
    (["run", "--replay", "{rec:snapshot_inject}"], 2, "'snapshot' is not a run option"),
    (["run", "--replay", "{rec:no_images}", "--stats-json", OUT], 2, "not exactly the 1 file"),
    (["run", "--replay", "{rec:image_swap}", "--stats-json", OUT], 2, "not exactly the 1 file"),
    (["run", "--replay", "{rec:extra_image}", "--stats-json", OUT], 2, "not exactly the 1 file"),
    (["run", "--replay", "{rec:bad_sha}", "--stats-json", OUT], 2, "sha256"),
    (["run", "--replay", "{rec:mem_huge}", "--stats-json", OUT], 2, "'mem' must be"),
    (["run", "--replay", "{rec:cmdline_nul}", "--stats-json", OUT], 2, "NUL"),
    (["run", "--replay", "{rec:version_str}", "--stats-json", OUT], 2, "record version"),
    (["run", str(HELLO), "--vcpus", "x"], 2, "invalid int value"),
    (["run", str(HELLO), "--vcpus", "100000", "--stats-json", OUT], 2, "--vcpus must be 1..256"),
    (["run", str(HELLO), "--with", f"{HELLO}:²", "--stats-json", OUT], 2, "cannot read guest image"),
    (["run", "{w}/big.bin", "--mem", "8", "--trace", "{out}/t.jsonl"], 2, "does not fit"),
    (["boot", "{w}/README.md", "--trace", "{out}/t.jsonl"], 2, "Linux bzImage"),
    (["nonsense"], 2, "invalid choice"),
]


def _records(work: Path) -> dict[str, str]:
    other = work / "other.elf"
    other.write_bytes(HELLO.read_bytes() + b"\0")

    def swap(d: dict) -> None:  # type: ignore[type-arg]
        d["images"], d["options"]["image"] = [], str(other)

    def extra(d: dict) -> None:  # type: ignore[type-arg]
        d["images"].append({"path": str(other), "sha256": "0" * 64})

    edits = {"vcpus_text": _set("options.vcpus", "1"), "vcpus_bool": _set("options.vcpus", True),
             "options_null": _set("options", None), "stats_inject": _set("options.stats_json", str(work / "rc")),
             "trace_inject": _set("options.trace", str(work / "rc")),
             "snapshot_inject": _set("options.snapshot", str(work / "rc")), "no_images": _set("images", []),
             "image_swap": swap, "extra_image": extra, "bad_sha": _set("images", None),
             "mem_huge": _set("options.mem", 1 << 40), "cmdline_nul": _set("options.cmdline", "a\0b"),
             "version_str": _set("version", "1")}
    out = {k: _record(work, f"{k}.rec", e) for k, e in edits.items()}
    data = json.loads((work / "genuine.rec").read_text())
    data["images"][0]["sha256"] = "f" * 64
    (work / "bad_sha.rec").write_text(json.dumps(data))
    return out


@pytest.mark.parametrize(("argv", "status", "says"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line(work: Path, argv: list[str], status: int, says: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    recs = _records(work)
    out = work / "out"
    words = [w.replace("{w}", str(work)).replace("{out}", str(out)) for w in argv]
    words = [recs[w[5:-1]] if w.startswith("{rec:") else w for w in words]
    assert main(words) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert says in err, err
    assert not list(out.iterdir()), "a refused command created a file"
    assert not (work / "rc").exists()


def test_internal_errors_are_one_line_and_exit_70(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import viridian.cli.guest_os_id_cmd as cmd

    monkeypatch.setattr(cmd, "decode", lambda v: {}["boom"])
    assert main(["guest-os-id", "1"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "please report this" in err and "Traceback" not in err
    assert main(["--debug", "guest-os-id", "1"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err
    monkeypatch.setenv("VIRIDIAN_DEBUG", "1")
    assert main(["guest-os-id", "1"]) == 70
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "says"), [
    (["run", "/dev/zero"], "character device"),
    (["run", str(HELLO), "--cmdline", "\udcff"], "not valid UTF-8"),
    (["run", str(HELLO), "--stats-json", "/nonexistent/x"], "does not exist"),
])
def test_through_a_process(argv: list[str], says: str) -> None:
    words = [os.fsencode(w) for w in argv]
    res = subprocess.run([sys.executable.encode(), b"-m", b"viridian", *words], capture_output=True, timeout=60)
    err = res.stderr.decode("utf-8", "replace")
    assert res.returncode == 2 and err.count("\n") == 1 and says in err and "Traceback" not in err, err


def test_run_and_the_main_entry_return_a_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(HELLO), "--quiet", "--mem", "8"]) == 0
    assert main(["--version"]) == 0
    capsys.readouterr()
