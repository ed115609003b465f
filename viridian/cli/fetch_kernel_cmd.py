"""``viridian fetch-kernel``: download Debian's cloud kernel package with apt and extract its bzImage.

The kernel is never part of the repository: it lives in ``$VIRIDIAN_CACHE`` (default
``~/.cache/viridian/kernels``), one directory per package version. Tests get it through :func:`fetch_kernel`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from viridian.errors import UserError

SERIES = "6.1"
_PKG = re.compile(r"^linux-image-(\d+\.\d+)\.(\d+)-(\d+)-cloud-amd64-unsigned\s")


def cache_dir() -> Path:
    env = os.environ.get("VIRIDIAN_CACHE")
    return Path(env).expanduser() / "kernels" if env else Path.home() / ".cache" / "viridian" / "kernels"


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found: fetch-kernel needs Debian's apt tools (apt-cache, apt-get, "
                        "dpkg-deb)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{' '.join(cmd)} took longer than 300 s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"{' '.join(cmd)} failed: {last}")
    return done.stdout


def latest_package(series: str = SERIES) -> str:
    """The newest ``linux-image-<series>.0-N-cloud-amd64-unsigned`` apt can download."""
    out = _run(["apt-cache", "search", "--names-only", r"^linux-image-.*-cloud-amd64-unsigned$"])
    found = []
    for line in out.splitlines():
        m = _PKG.match(line)
        if m and m.group(1) == series:
            found.append((int(m.group(2)), int(m.group(3)), line.split()[0]))
    for *_, name in sorted(found, reverse=True):
        policy = _run(["apt-cache", "policy", name])
        if "Candidate: (none)" not in policy:
            return name
    raise UserError(f"no linux-image-{series}.*-cloud-amd64-unsigned package in the apt lists "
                    "(run apt-get update, or pass a bzImage to viridian boot)")


def fetch_kernel(package: str | None = None, cache: Path | None = None) -> Path:
    """The path of the bzImage of ``package`` (default: the newest 6.1 cloud kernel), downloading and
    extracting it into the cache the first time."""
    cache = cache or cache_dir()
    if package is not None and not re.fullmatch(r"linux-image-[0-9A-Za-z.+~-]+", package):
        raise UserError(f"--package {package!r}: expected a linux-image-... package name")
    name = package or latest_package()
    target = cache / name
    found = sorted(target.glob("vmlinuz-*")) if target.is_dir() else []
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt's sandbox user must be able to write here
        _run(["apt-get", "download", name], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise UserError(f"apt-get download {name} produced no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), str(work / "root")])
        kernels = sorted((work / "root" / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise UserError(f"{debs[0].name} holds no boot/vmlinuz-*")
        staging = work / "out"
        staging.mkdir()
        for f in kernels + sorted((work / "root" / "boot").glob("config-*")):
            shutil.copy2(f, staging / f.name)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return sorted(target.glob("vmlinuz-*"))[-1]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("fetch-kernel", help="download Debian's cloud kernel (apt) and print its bzImage path",
                              description="apt-get download linux-image-<version>-cloud-amd64-unsigned into "
                              "$VIRIDIAN_CACHE/kernels (default ~/.cache/viridian/kernels), extract boot/vmlinuz-* "
                              "and print its path. Reuses the cached copy.")
    p.add_argument("--package", metavar="NAME",
                   help=f"the package (default: the newest linux-image-{SERIES}.0-N-cloud-amd64-unsigned)")
    p.add_argument("--json", action="store_true", help="print {package, path, size} as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = fetch_kernel(args.package)
    if args.json:
        data: dict[str, Any] = {"package": path.parent.name, "path": str(path), "size": path.stat().st_size}
        print(json.dumps(data))
    else:
        print(path)
    return 0
