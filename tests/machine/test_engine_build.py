"""The engine build (viridian/machine/unicorn/engine_build.py): the pinned Unicorn is checked at start-up, records name
the build they were made on, and every engine instance gets a bounded translator buffer -- an address-space
shortage is one line, not an exit inside libunicorn."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from viridian.cli.main import main
from viridian.errors import UserError
from viridian.machine.unicorn import engine_build

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_engine_is_the_pinned_one() -> None:
    engine_build.check_engine()
    assert engine_build.installed_version() == engine_build.PINNED
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"unicorn=={engine_build.PINNED}"' in pyproject


@pytest.mark.parametrize("version", ["2.1.0", "2.1.3", "2.1.5", "2.0.1", "3.0.0"])
def test_another_engine_version_is_one_user_error(version: str) -> None:
    with pytest.raises(UserError) as err:
        engine_build.check_engine(version)
    text = str(err.value)
    assert "\n" not in text and f"unicorn {version} is installed" in text and "unicorn==2.1.4" in text


def test_a_run_on_another_engine_version_exits_2_with_one_line(guests: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(engine_build, "installed_version", lambda: "2.1.3")
    engine_build._checked.cache_clear()
    try:
        code = main(["run", str(guests / "hello.elf"), "--quiet"])
    finally:
        engine_build._checked.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unicorn 2.1.3 is installed" in err[0]


def test_engine_identity_names_version_library_and_fast_paths() -> None:
    ident = engine_build.engine_identity()
    lib = Path(engine_build.libunicorn_path()).read_bytes()
    assert ident["unicorn"] == engine_build.PINNED
    assert ident["libunicorn_sha256"] == hashlib.sha256(lib).hexdigest()
    assert set(ident["fast_paths"]) <= set(engine_build.FAST_PATHS)
    assert {"store_watch", "block_entry", "quiet_access"} <= set(ident["fast_paths"])  # the pinned wheel
    assert engine_build.identity_note(ident) is None


@pytest.mark.parametrize(("edit", "says"), [
    ({"libunicorn_sha256": "0" * 64}, "replaying on unicorn 2.1.4"),
    ({"unicorn": "2.1.3"}, "recorded on unicorn 2.1.3"),
    ({"fast_paths": []}, "other engine fast paths"),
])
def test_another_build_is_named_in_one_line(edit: dict[str, object], says: str) -> None:
    note = engine_build.identity_note({**engine_build.engine_identity(), **edit})
    assert note is not None and says in note and "\n" not in note


@pytest.mark.parametrize("junk", [None, 7, "x", [], {"unicorn": ["\n" * 5]}])
def test_a_hostile_engine_field_is_one_line(junk: object) -> None:
    note = engine_build.identity_note(junk)
    assert note is not None and "\n" not in note


def test_a_record_carries_the_build_and_a_replay_elsewhere_says_so(guests: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "r.json"
    assert main(["run", str(guests / "hello.elf"), "--vcpus", "2", "--quiet", "--record", str(rec)]) == 0
    data = json.loads(rec.read_text(encoding="utf-8"))
    assert data["engine"] == engine_build.engine_identity()
    capsys.readouterr()
    assert main(["run", "--replay", str(rec), "--quiet"]) == 0
    assert "note:" not in capsys.readouterr().err
    data["engine"]["libunicorn_sha256"] = "f" * 64
    rec.write_text(json.dumps(data), encoding="utf-8")
    assert main(["run", "--replay", str(rec), "--quiet"]) == 0  # the same run: virtual time does not differ
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "note:" in ln]
    assert len(notes) == 1 and "libunicorn ffffffffffff" in notes[0]


def test_engines_get_the_bounded_translator_buffer(guests: Path) -> None:
    from viridian.config.presets import load_config
    from viridian.machine.loader import load_image
    from viridian.machine.machine import Machine

    m = Machine(load_config(preset="none"), load_image(guests / "hello.elf"), vcpus=2)
    assert all(v.uc.ctl_get_tcg_buffer_size() == engine_build.TCG_BUFFER for v in m.vcpus)


@pytest.mark.parametrize("raw", ["x", "0", "3", "4096", "-1"])
def test_a_bad_buffer_size_is_one_user_error(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engine_build.TCG_ENV, raw)
    with pytest.raises(UserError, match=engine_build.TCG_ENV):
        engine_build.tcg_buffer_size()


def _run_limited(limit_kib: int, vcpus: int, guest: Path) -> subprocess.CompletedProcess[str]:
    """``viridian run`` in a child whose address space is capped (ulimit -v)."""
    cap = limit_kib << 10
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap})); "
            "from viridian.cli.main import main; sys.exit(main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k not in (engine_build.TCG_ENV, engine_build.DISABLE_ENV)}
    return subprocess.run([sys.executable, "-c", code, "run", str(guest), "--vcpus", str(vcpus)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


def test_sixteen_vcpus_fit_where_the_default_buffer_would_not(guests: Path) -> None:
    """16 vCPUs under 2.5 GB of address space: the engine's default (1 GiB each) needs 16 GiB."""
    proc = _run_limited(2_500_000, 16, guests / "hello.elf")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("hello from vcpu") == 16


def test_running_out_of_address_space_is_one_line(guests: Path) -> None:
    proc = _run_limited(1_200_000, 64, guests / "hello.elf")  # room for the image, not 64 buffers
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "cannot reserve" in lines[0] and "ulimit -v" in lines[0]
