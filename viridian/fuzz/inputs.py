"""Host-input fuzzing (issue 17, ``make fuzz-inputs``): generated bad host inputs run in-process through
``viridian.cli.main.main(argv)``.

Inputs: argument vectors from the CLI's grammar with hostile values; replay records, libvirt XML, guest images,
kernels and snapshots made by mutating genuine ones; special files (FIFO, /dev/zero, a directory, /proc files,
an oversized sparse file) in every file option. Oracles, per input:

- no traceback: main returns (never raises) and never answers 70 ("internal error, please report");
- a refusal (status 2) is exactly one line on stderr and leaves no file behind;
- nothing runs and nothing is written outside the case's output directory: an audit hook (sys.addaudithook)
  watches for process creation (subprocess, os.system, exec*, spawn, fork), code compiled or executed from a
  string, unpickling, and every open for writing, rename, removal or mkdir.

Most inputs are refused before a guest starts; those that start one get a tiny virtual-time budget.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from viridian.fuzz.audit import Guard


@dataclass
class Case:
    category: str
    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)  # name in the case directory -> contents


@dataclass
class Outcome:
    cases: int = 0
    seconds: float = 0.0
    by_category: Counter[str] = field(default_factory=Counter)
    seconds_by_category: dict[str, float] = field(default_factory=dict)
    slowest: list[tuple[float, str]] = field(default_factory=list)
    by_status: Counter[int] = field(default_factory=Counter)
    tracebacks: list[str] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)  # code execution or writes outside the output directory
    multiline: list[str] = field(default_factory=list)  # refusals longer than one line
    left_files: list[str] = field(default_factory=list)  # refusals that created a file

    def to_json(self) -> dict[str, Any]:
        return {"cases": self.cases, "seconds": round(self.seconds, 1),
                "rate": round(self.cases / self.seconds) if self.seconds else 0,
                "by_category": dict(self.by_category),
                "seconds_by_category": {k: round(v, 1) for k, v in self.seconds_by_category.items()}, "by_status": {str(k): v for k, v in self.by_status.items()},
                "tracebacks": len(self.tracebacks), "stray": len(self.stray), "multiline": len(self.multiline),
                "left_files": len(self.left_files), "slowest": self.slowest, "examples": (self.tracebacks + self.stray + self.multiline
                                                                 + self.left_files)[:20]}

    @property
    def clean(self) -> bool:
        return not (self.tracebacks or self.stray or self.multiline or self.left_files)


# -- genuine inputs to mutate ----------------------------------------------------------------------------------
LIBVIRT = (b"<?xml version='1.0'?>\n<domain type='kvm'><name>w</name><features><hyperv mode='custom'>"
           b"<relaxed state='on'/><vapic state='on'/><spinlocks state='on' retries='8191'/><vpindex state='on'/>"
           b"<synic state='on'/><stimer state='on'><direct state='on'/></stimer><vendor_id state='on' "
           b"value='KVM Hv'/><tlbflush state='on'/><ipi state='on'/></hyperv></features></domain>\n")


def _bzimage() -> bytes:
    """A bzImage-shaped blob: boot_flag, "HdrS", protocol 2.15, XLF_KERNEL_64 -- the fields the loader reads."""
    blob = bytearray(0x4000)
    blob[0x1F1] = 1  # setup_sects
    blob[0x1FE:0x200] = b"\x55\xaa"
    blob[0x202:0x206] = b"HdrS"
    blob[0x206:0x208] = (0x20F).to_bytes(2, "little")
    blob[0x211] = 1  # loadflags: LOADED_HIGH
    blob[0x236:0x238] = (1).to_bytes(2, "little")  # xloadflags: XLF_KERNEL_64
    blob[0x258:0x260] = (0x1000000).to_bytes(8, "little")  # pref_address
    blob[0x260:0x264] = (0x100000).to_bytes(4, "little")  # init_size
    return bytes(blob)


@dataclass
class Corpus:
    root: Path  # scratch: genuine files, special files, the case files
    out: Path  # the only place a case may write
    guest: Path
    record: bytes  # a genuine record of a 2000-tick run
    late_record: bytes  # the same with 256 vCPUs in 2 MiB: valid data, refused when the machine is built
    snapshot: bytes | None
    specials: list[str]

    @classmethod
    def build(cls, root: Path, guest: Path) -> Corpus:
        from viridian.cli.main import main

        out = root / "out"
        out.mkdir()
        image = root / "guest.elf"
        shutil.copy(guest, image)
        rec, snap = root / "genuine.rec", root / "genuine.snap"
        quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        with quiet[0], quiet[1]:
            main(["run", str(image), "--quiet", "--max-ticks", "2000", "--mem", "8", "--record", str(rec)])
            main(["run", str(image), "--quiet", "--max-ticks", "60000", "--mem", "8", "--snapshot-at", "20000",
                  "--snapshot", str(snap)])
        fifo, folder, big = root / "fifo", root / "a-directory", root / "big.sparse"
        os.mkfifo(fifo)
        folder.mkdir()
        with open(big, "wb") as fh:
            fh.truncate(1 << 31)
        loop = root / "loop"
        os.symlink(loop, loop)
        specials = [str(fifo), str(folder), str(big), str(loop), "/dev/zero", "/dev/null", "/dev/urandom",
                    "/proc/self/mem", "/proc/self/environ", "/proc/self/status", "/nonexistent/x", "", "-",
                    str(root / "missing.bin")]
        late = json.loads(rec.read_bytes())
        late["options"].update(vcpus=256, mem=2)
        return cls(root, out, image, rec.read_bytes(), json.dumps(late).encode(),
                   snap.read_bytes() if snap.exists() else None, specials)


# -- generators -------------------------------------------------------------------------------------------------
_INTS = ["0", "-1", "1", "2", "3", "65", "256", "257", "4096", "-9223372036854775809", "18446744073709551616",
         "1e3", "0x10", "٣", "", " 1", "99999999999999999999999999999", "nan"]
_TEXT = ["", "x", "\0", "\udcff", "\ud800", "é", "a" * 5000, "$(touch /tmp/pwned)", "../../etc/passwd",
         "hv-relaxed,hv-vapic", "hv-spinlocks=0x1fff", "hv-passthrough", "base,freq", "defaults", "none",
         "recommended", "all", "xen-3.4", "0x40000003.eax-0x10", "0x40000003.eax=0xffffffff", "ticks=1",
         "0x40000001.ebx+1", "hv-", "hv-relaxed=on", ",", "=", "a:b", "x:99999", "x:²", "%s%n", "-" * 3]


def _value(rng: random.Random, c: Corpus) -> str:
    pick = rng.random()
    if pick < 0.35:
        return rng.choice(_INTS)
    if pick < 0.7:
        return rng.choice(_TEXT)
    if pick < 0.85:
        return rng.choice(c.specials)
    return str(c.guest) if rng.random() < 0.5 else str(c.out / rng.choice(["s.json", "t.jsonl", "r.rec", "x/y"]))


_OPTIONS: dict[str, list[str]] = {
    "run": ["--hv", "--xen", "--libvirt", "--preset", "--cpuid", "--vcpus", "--mem", "--max-ticks", "--quantum",
            "--pcpus", "--ple-window", "--ple-gap", "--ap-start", "--cmdline", "--stats-json", "--trace", "--with",
            "--with-cmdline", "--record", "--replay", "--snapshot-at", "--snapshot", "--initrd", "--device"],
    "boot": ["--initrd", "--append", "--hv", "--preset", "--cpuid", "--vcpus", "--mem", "--max-ticks",
             "--stats-json", "--trace", "--libvirt"],
    "compare": ["--a", "--b", "--vcpus", "--mem", "--pcpus", "--cmdline", "--initrd", "--append", "--max-ticks"],
    "cpuid": ["--hv", "--xen", "--libvirt", "--preset", "--guest-os-id", "--cpuid", "--json-file"],
    "guest-os-id": [],
    "conformance": ["--hv", "--xen", "--libvirt", "--preset", "--cpuid", "--vcpus", "--mem", "--cmdline",
                    "--image", "--json-file", "--junit"],
    "measure": ["--configs", "--vcpus", "--param", "--json-file", "--csv", "--plot", "--report"],
    "resume": ["--stats-json"],
    "fuzz": ["--ops", "--seed", "--presets"],
    "fetch-kernel": ["--package"],
}
_FLAGS = ["--quiet", "-q", "--flat", "--json", "--report", "--fast", "--stop-others", "--matrix", "--verbose", "--list", "--help",
          "--bogus", "--", "-x"]
_LATE = ["--vcpus", "256", "--mem", "2", "--quiet"]  # refused after every file was read, before a guest runs
_SLOW = {"conformance", "measure", "fuzz", "fetch-kernel", "compare"}  # commands that must not get to run


def _argv_case(rng: random.Random, c: Corpus) -> Case:
    cmd = rng.choice([*_OPTIONS, "nonsense", ""])
    argv = [cmd] if cmd else []
    if cmd in ("run", "boot", "compare", "guest-os-id", "measure", "resume") and rng.random() < 0.9:
        argv.append(str(c.guest) if cmd in ("run", "boot", "compare") and rng.random() < 0.6 else _value(rng, c))
    for _ in range(rng.randint(0, 5)):
        if rng.random() < 0.15:
            argv.append(rng.choice(_FLAGS))
        else:
            argv += [rng.choice(_OPTIONS.get(cmd) or ["--x"]), _value(rng, c)]
    if cmd in _SLOW:  # a refusal these commands reach before running anything
        argv += {"fetch-kernel": ["--package", "not a package"], "conformance": ["--preset", "no-such-preset"]
                 }.get(cmd, ["--vcpus", "-7"])
    elif cmd in ("run", "boot") and rng.random() < 0.03:  # rarely a guest runs (a tiny budget)
        argv += ["--max-ticks", str(rng.choice([0, 1, 1000])), "--vcpus", "1", "--mem", "8", "--quiet"]
    elif cmd in ("run", "boot"):  # refused late: after the image, the offer and the files were read
        argv += ["--vcpus", "256", "--mem", "2", "--quiet"]
    return Case("argv", argv)


def _mutate_json(rng: random.Random, doc: Any) -> Any:
    """One structural mutation of a JSON document (in place where it can)."""
    hostile = [None, True, 0, -1, 1 << 64, 1.5, "", "1", "\udcff", [], {}, [[[[1]]]], "x" * 10000,
               "/etc/passwd", "$(id)", {"path": "/etc/passwd"}]
    nodes: list[tuple[Any, Any]] = []  # (container, key)
    stack = [doc]
    while stack:
        item = stack.pop()
        keys = list(item) if isinstance(item, dict) else range(len(item)) if isinstance(item, list) else []
        for k in keys:
            nodes.append((item, k))
            stack.append(item[k])
    op = rng.random()
    if not nodes or op < 0.1:
        return rng.choice(hostile)
    box, key = rng.choice(nodes)
    if op < 0.55:
        box[key] = rng.choice(hostile)
    elif op < 0.7 and key not in ("max_ticks", "mem"):  # (their defaults would make a slow, valid run)
        del box[key]
    elif op < 0.85 and isinstance(box, dict):
        box[rng.choice(["stats_json", "trace", "record", "snapshot", "json", "junit", "csv", "report",
                        "snapshot_at", "replay", "func", "__class__", "engine"])] = rng.choice(hostile)
    else:
        box[key] = [box[key]] if rng.random() < 0.5 else {"k": box[key]}
    return doc


def _bytes_mutate(rng: random.Random, blob: bytes, head: int | None = None) -> bytes:
    b = bytearray(blob)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        span = min(len(b), head or len(b)) or 1
        i = rng.randrange(span)
        if op < 0.5 and b:
            b[i % len(b)] = rng.randrange(256)
        elif op < 0.65:
            b = b[: rng.randrange(len(b) + 1)]
        elif op < 0.8:
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op < 0.9 and len(b) >= 8:
            b[i % (len(b) - 7): i % (len(b) - 7) + 8] = rng.choice([b"\xff" * 8, b"\0" * 8, (1 << 63).to_bytes(8, "little")])
        else:
            del b[i:i + rng.randint(1, 64)]
    return bytes(b)


def _record_case(rng: random.Random, c: Corpus) -> Case:
    genuine = c.record if rng.random() < 0.1 else c.late_record  # most replays are refused before a guest runs
    if rng.random() < 0.25:
        blob = _bytes_mutate(rng, genuine)
    elif rng.random() < 0.05:
        blob = b"[" * rng.choice([100, 1000, 100_000]) + b"]" * rng.choice([0, 1])
    else:
        doc = json.loads(genuine)
        for _ in range(rng.randint(1, 3)):
            doc = _mutate_json(rng, doc)
        blob = json.dumps(doc).encode("utf-8", "surrogatepass")
    argv = ["run", "--replay", "{case}/r.rec", "--quiet", *(["--stats-json", str(c.out / "s.json")]
                                                             if rng.random() < 0.5 else [])]
    return Case("record", argv, {"r.rec": blob})


def _libvirt_case(rng: random.Random, c: Corpus) -> Case:
    pick = rng.random()
    if pick < 0.1:
        blob = (b"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;'>]>"
                b"<domain>&b;</domain>")
    elif pick < 0.2:
        depth = rng.choice([100, 10_000, 200_000])
        blob = b"<domain>" + b"<features>" * depth + b"</features>" * depth + b"</domain>"
    else:
        blob = _bytes_mutate(rng, LIBVIRT)
    return Case("libvirt", ["cpuid", "--libvirt", "{case}/d.xml", *(["--json"] if rng.random() < 0.5 else [])],
                {"d.xml": blob})


def _image_case(rng: random.Random, c: Corpus) -> Case:
    blob = c.guest.read_bytes()
    if rng.random() < 0.2:  # a multiboot header at a random place in the first 8 KiB
        off = rng.randrange(0, 8192 - 48, 4)
        hdr = (0x1BADB002).to_bytes(4, "little") + rng.randbytes(44)
        blob = blob[:off] + hdr + blob[off + 48:]
    else:
        blob = _bytes_mutate(rng, blob, head=256)
    outputs = ["--trace", str(c.out / "t.jsonl"), "--stats-json", str(c.out / "s.json")] if rng.random() < 0.3 else []
    return Case("image", ["run", "{case}/g.elf", "--quiet", "--max-ticks", "2000", "--mem", "8", *outputs],
                {"g.elf": blob})


def _kernel_case(rng: random.Random, c: Corpus) -> Case:
    blob = _bytes_mutate(rng, _bzimage(), head=0x300)
    return Case("kernel", ["boot", "{case}/k.bin", "--quiet", "--max-ticks", "2000", "--mem", "64"], {"k.bin": blob})


def _snapshot_case(rng: random.Random, c: Corpus) -> Case:
    blob = _bytes_mutate(rng, c.snapshot or b"", head=4096) if c.snapshot else rng.randbytes(64)
    return Case("snapshot", ["resume", "{case}/s.snap", "--quiet"], {"s.snap": blob})


def _special_case(rng: random.Random, c: Corpus) -> Case:
    where = rng.choice([["run", "@", "--quiet"], ["run", str(c.guest), "--libvirt", "@", "--quiet"],
                        ["run", "--replay", "@"], ["resume", "@"], ["boot", "@", *_LATE], ["boot", str(c.guest), "--initrd", "@", *_LATE],
                        ["cpuid", "--libvirt", "@"], ["conformance", "--image", "@", "--vcpus", "0"],
                        ["run", str(c.guest), "--stats-json", "@", *_LATE], ["run", str(c.guest), "--trace", "@", *_LATE],
                        ["run", str(c.guest), "--record", "@", *_LATE], ["run", str(c.guest), "--snapshot", "@", *_LATE],
                        ["measure", "nope", "--report", "@"], ["conformance", "--junit", "@", "--vcpus", "0"]])
    value = rng.choice(c.specials)
    return Case("special", [value if w == "@" else w for w in where])


GENERATORS: list[tuple[str, Callable[[random.Random, Corpus], Case], float]] = [
    ("argv", _argv_case, 0.45), ("record", _record_case, 0.25), ("libvirt", _libvirt_case, 0.15),
    ("special", _special_case, 0.11), ("image", _image_case, 0.02), ("kernel", _kernel_case, 0.0005),
    ("snapshot", _snapshot_case, 0.0195)]


# -- the campaign -------------------------------------------------------------------------------------------------
def _import_everything() -> None:
    """Import-time side effects (caches, dataclasses) happen before the guard watches."""
    import importlib
    import pkgutil

    import viridian

    for mod in pkgutil.walk_packages(viridian.__path__, "viridian."):
        if not mod.name.endswith("__main__"):
            with contextlib.suppress(Exception):
                importlib.import_module(mod.name)
    with contextlib.suppress(Exception):
        importlib.import_module("matplotlib.pyplot")


def run_case(case: Case, c: Corpus, guard: Guard, out: Outcome) -> int:
    from viridian.cli.main import main

    case_dir = c.root / "case"
    case_dir.mkdir(exist_ok=True)
    for name, blob in case.files.items():
        (case_dir / name).write_bytes(blob)
    argv = [w.replace("{case}", str(case_dir)) for w in case.argv]
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # strict, as a real UTF-8 stdout
    stderr = io.StringIO()
    t0 = time.perf_counter()
    guard.events.clear()
    guard.allowed = (str(c.out),)
    guard.named = {os.path.abspath(w) for w in argv if w and "\0" not in w}
    guard.active = True
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = main(argv)
    except BaseException as exc:  # main must never raise
        status = -1
        stderr.write(f"escaped: {type(exc).__name__}: {exc}\n")
    finally:
        guard.active = False
    text = stderr.getvalue()
    out.cases += 1
    out.by_category[case.category] += 1
    out.by_status[status] += 1
    label = f"{case.category} {argv!r:.300}"
    took = time.perf_counter() - t0
    out.seconds_by_category[case.category] = out.seconds_by_category.get(case.category, 0.0) + took
    out.slowest = sorted([*out.slowest, (round(took, 3), label)], reverse=True)[:5]
    if status in (-1, 70) or "Traceback" in text:
        out.tracebacks.append(f"{label}: {text.strip()[-400:]}")
    for event in guard.events:
        out.stray.append(f"{label}: {event}")
    refused = status == 2 and "error" in text  # (a guest may exit 2 too)
    said = [line for line in text.splitlines() if not line.startswith("viridian: note:")]
    if refused and len(said) != 1:
        out.multiline.append(f"{label}: {text!r:.300}")
    left = os.listdir(c.out)
    if left:
        if refused:
            out.left_files.append(f"{label}: left {left}")
        for name in left:
            p = c.out / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return status


def campaign(cases: int, seed: int, guest: Path, progress: Callable[[int], None] | None = None) -> Outcome:
    """``cases`` generated inputs (seeded) through main(argv); see the module docstring for the oracles."""
    rng = random.Random(seed)
    guard = Guard.get()
    out = Outcome()
    guest = guest.resolve()  # before the working directory changes
    with tempfile.TemporaryDirectory(prefix="viridian-fuzz-inputs-") as tmp, \
            contextlib.chdir(tmp):  # relative output names in generated argv land in the corpus, not in cwd
        corpus = Corpus.build(Path(tmp), guest)
        os.chdir(corpus.out)
        _names, gens, weights = zip(*GENERATORS, strict=True)
        _import_everything()
        for gen in gens:  # warm up (imports, the engine library, cached parsers) before the clock starts
            for k in range(20):
                run_case(gen(random.Random(k), corpus), corpus, Guard(), Outcome())
        t0 = time.perf_counter()
        for i in range(cases):
            gen = rng.choices(gens, weights)[0]
            if run_case(gen(rng, corpus), corpus, guard, out) in (130, 143):
                raise KeyboardInterrupt  # a signal for this process, not an input's answer
            if progress is not None and i % 1000 == 0:
                progress(i)
        out.seconds = time.perf_counter() - t0
    return out


def chunked(cases: int, seed: int, guest: Path, chunk: int) -> dict[str, Any]:
    """The campaign in child processes of ``chunk`` inputs each (seeds seed*1000+k): a Machine is never freed
    in-process (issue 17 notes, ~4.5 MB per guest started), so memory stays bounded by the chunk."""
    import subprocess

    total: dict[str, Any] = {"cases": 0, "seconds": 0.0, "by_category": Counter(), "by_status": Counter(),
                             "seconds_by_category": Counter(), "tracebacks": 0, "stray": 0, "multiline": 0,
                             "left_files": 0, "examples": [], "slowest": []}
    for k, start in enumerate(range(0, cases, chunk)):
        n = min(chunk, cases - start)
        res = subprocess.run([sys.executable, "-m", "viridian.fuzz.inputs", "--cases", str(n), "--seed",
                              str(seed * 1000 + k), "--guest", str(guest), "--json", "--chunk", "0"],
                             capture_output=True, text=True, check=False)
        try:
            d = json.loads(res.stdout)
        except ValueError:
            raise SystemExit(f"fuzz-inputs chunk {k} failed: {res.stderr.strip()[-2000:]}") from None
        for key in ("cases", "seconds", "tracebacks", "stray", "multiline", "left_files"):
            total[key] += d[key]
        for key in ("by_category", "by_status", "seconds_by_category"):
            total[key].update(d[key])
        total["examples"] += d["examples"]
        total["slowest"] = sorted([*total["slowest"], *map(tuple, d["slowest"])], reverse=True)[:5]
        if sys.stderr.isatty():
            print(f"\r  {total['cases']:>9,} inputs", end="", file=sys.stderr, flush=True)
    total["rate"] = round(total["cases"] / total["seconds"]) if total["seconds"] else 0
    total["seconds"] = round(total["seconds"], 1)
    total["seconds_by_category"] = {k: round(v, 1) for k, v in total["seconds_by_category"].items()}
    return total


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m viridian.fuzz.inputs", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--guest", default=str(Path(__file__).resolve().parents[2] / "fixtures" / "build" / "hello.elf"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--chunk", type=int, default=10_000, help="inputs per child process (0: all in this one)")
    args = p.parse_args(argv)
    real_err = sys.stderr

    def progress(i: int) -> None:
        if real_err.isatty():
            print(f"\r  {i:>9,} inputs", end="", file=real_err, flush=True)

    if args.chunk:
        d = chunked(args.cases, args.seed, Path(args.guest), args.chunk)
        clean = not (d["tracebacks"] or d["stray"] or d["multiline"] or d["left_files"])
    else:
        out = campaign(args.cases, args.seed, Path(args.guest), progress)
        d, clean = out.to_json(), out.clean
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(f"\rfuzz-inputs: {d['cases']:,} inputs in {d['seconds']} s ({d['rate']:,}/s), seed {args.seed}")
        print("  by kind:   " + ", ".join(f"{k} {v:,} ({d['seconds_by_category'][k]} s)"
                                          for k, v in sorted(d["by_category"].items())))
        print("  by status: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(d["by_status"].items())))
        print(f"  tracebacks {d['tracebacks']}, stray writes/executions {d['stray']}, multi-line refusals "
              f"{d['multiline']}, files left by refusals {d['left_files']}")
        for e in d["examples"]:
            print(f"  ! {e}")
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
