"""The package imports without an engine and the CLI answers --version."""

import subprocess
import sys


def test_model_imports_without_unicorn() -> None:
    code = (
        "import sys; sys.modules['unicorn'] = None; sys.modules['capstone'] = None\n"
        "import viridian, msr, viridian.tlfs.cpuid, viridian.tlfs.msrs, viridian.clock\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_version() -> None:
    out = subprocess.run([sys.executable, "-m", "viridian", "--version"], check=True, capture_output=True, text=True)
    assert "viridian" in out.stdout
