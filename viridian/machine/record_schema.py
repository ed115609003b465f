"""What a replay record may say (issue 17 item 2): records are inert data.

Only the run options below are taken from a record, each type- and range-checked; output paths (--stats-json,
--trace, --record, --snapshot) and anything else that writes are not run options and come only from the
command line. The record's image list must be exactly the files its options name (the image, the --with
images, the --libvirt file, the --initrd modules; same count, same paths, same order), each with an unchanged
sha256. The same checks apply to the options given on the command line (check_options), so a value a record
may hold is exactly a value the command line may hold.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from viridian.errors import UserError
from viridian.machine import layout as L

if TYPE_CHECKING:
    from pathlib import Path

Check = Callable[[Any], str | None]  # None: valid; else what is wrong
_HEX64 = re.compile(r"[0-9a-f]{64}")
TEXT_MAX = 4096
MAX_IMAGES = 64


FORMAT = "viridian-replay"  # a record's "format" and "version" (replay.py writes them)
VERSION = 1


def sha256_file(path: str | Path) -> str:
    """An input file's sha256 (read as the loader reads it: a regular file of bounded size)."""
    from viridian.inputs import sha256_input

    return sha256_input(path, "image")

def _int(lo: int, hi: int, none: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if v is None and none:
            return None
        if type(v) is not int:  # bool is an int subclass: refused too
            return "must be an integer" + (" or null" if none else "")
        return None if lo <= v <= hi else f"must be {lo}..{hi}"
    return check


def _bool(v: Any) -> str | None:
    return None if type(v) is bool else "must be true or false"


def _text(limit: int = TEXT_MAX, none: bool = True, empty: bool = True) -> Check:
    def check(v: Any) -> str | None:
        if v is None:
            return None if none else "must be text"
        if type(v) is not str:
            return "must be text" + (" or null" if none else "")
        try:
            size = len(v.encode("utf-8"))
        except UnicodeEncodeError:
            return "is not valid UTF-8"
        if "\0" in v:
            return "must not contain NUL"
        if size > limit:
            return f"is longer than {limit} bytes"
        return None if v or empty else "must not be empty"
    return check


def _choice(*values: str) -> Check:
    return lambda v: None if type(v) is str and v in values else f"must be one of {', '.join(values)}"


def _list(item: Check, limit: int) -> Check:
    def check(v: Any) -> str | None:
        if type(v) is not list:
            return "must be a list"
        if len(v) > limit:
            return f"has more than {limit} items"
        for x in v:
            why = item(x)
            if why is not None:
                return f"item {x!r:.40}: {why}"
        return None
    return check


# name -> (check, default when the record does not name it)
OPTION_SCHEMA: dict[str, tuple[Check, Any]] = {
    "image": (_text(none=False, empty=False), None),
    "hv": (_text(), None), "xen": (_text(), None), "libvirt": (_text(), None), "preset": (_text(), None),
    "cpuid": (_list(_text(256, none=False), 256), []),
    "vcpus": (_int(1, L.MAX_VCPUS), 1),
    "mem": (_int(2, L.MAX_RAM >> 20), 128),
    "max_ticks": (_int(0, (1 << 63) - 1), 20_000_000_000),
    "quantum": (_int(1, 1 << 40), 200_000),
    "pcpus": (_int(1, 4096, none=True), None),
    "ple_window": (_int(0, (1 << 32) - 1), 4096), "ple_gap": (_int(0, (1 << 32) - 1), 128),
    "ap_start": (_choice("entry", "sipi"), "entry"),
    "fast": (_bool, False), "stop_others": (_bool, False),
    "cmdline": (_text(L.CMDLINE_MAX, none=False), ""), "with_cmdline": (_text(L.CMDLINE_MAX, none=False), ""),
    "others": (_list(_text(none=False, empty=False), 16), []),
    "initrd": (_text(65536), None),
    "device": (_list(_choice("hyperv-testdev"), 8), []),
    "machine": (_choice("pc", "minimal"), "minimal"),  # records from before --machine ran the minimal layout
}


def check_options(options: dict[str, Any], where: str) -> dict[str, Any]:
    """The allow-listed run options of ``options``, checked; UserError (one line) naming the first bad one.
    ``where``: "the command line" or "record F" (unknown names are refused only in a record)."""
    record = where != "the command line"
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name not in OPTION_SCHEMA:
            if record:
                raise UserError(f"{where}: {name!r:.60} is not a run option a record may set (output paths and "
                                "everything that writes come only from the command line)")
            continue
        why = OPTION_SCHEMA[name][0](value)
        if why is not None:
            label = f"option {name!r}" if record else "--" + name.replace("_", "-")
            raise UserError(f"{where}: {label} {why}")
        out[name] = value
    if record:
        for name, (_check, default) in OPTION_SCHEMA.items():
            out.setdefault(name, list(default) if isinstance(default, list) else default)
    vcpus, mem = out.get("vcpus"), out.get("mem")
    if vcpus is not None and mem is not None and L.reserved_top(vcpus, mem << 20) <= L.IMAGE_MIN:
        raise UserError(f"{where}: {mem} MiB of RAM is too small for {vcpus} vCPU stacks; raise the memory")
    return out


def record_images(options: dict[str, Any]) -> list[str]:
    """The input files a run's options name, in record order: the image, the --with images, the --libvirt
    file, the --initrd modules."""
    paths = [options["image"], *[with_spec(s)[0] for s in options.get("others") or []]]
    if options.get("libvirt"):
        paths.append(options["libvirt"])
    if options.get("initrd"):
        from viridian.machine import loader

        parse = getattr(loader, "parse_initrd", None)
        paths += [p for p, _ in parse(options["initrd"])] if parse else [options["initrd"]]
    return paths


def with_spec(spec: str) -> tuple[str, int]:
    """``--with IMAGE[:VCPUS]`` -> (IMAGE, VCPUS)."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isascii() and tail.isdigit() and len(tail) < 6:
        return head, int(tail)
    return spec, 1


def resolve(path: str) -> str:
    """A path as the loader opens it (a bare shipped-guest name such as "win7" names fixtures' build)."""
    from viridian.guests import guest_path, is_guest_name

    return str(guest_path(path)) if is_guest_name(path) else path


def check_record(path: str, data: Any) -> dict[str, Any]:
    """A parsed record, validated; a clean copy holding only what a replay uses."""
    where = f"record {path}"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a viridian record")
    if type(data.get("version")) is not int or data["version"] != VERSION:
        raise UserError(f"{path}: record version {str(data.get('version'))[:20]} (this viridian reads {VERSION})")
    for key, kind in (("options", dict), ("images", list), ("host_events", dict), ("outcome", dict)):
        if key not in data:
            raise UserError(f"{path}: record is missing '{key}'")
        if type(data[key]) is not kind:
            raise UserError(f"{where}: '{key}' must be a JSON {'object' if kind is dict else 'array'}")
    options = check_options(data["options"], where)
    if options["image"] is None:
        raise UserError(f"{where}: option 'image' must be text")
    images = data["images"]
    if len(images) > MAX_IMAGES:
        raise UserError(f"{where}: more than {MAX_IMAGES} images")
    for img in images:
        if (type(img) is not dict or set(img) != {"path", "sha256"} or _text(none=False, empty=False)(img["path"])
                or type(img["sha256"]) is not str or not _HEX64.fullmatch(img["sha256"])):
            raise UserError(f"{where}: each image must be {{\"path\": text, \"sha256\": 64 hex digits}}")
    named = [resolve(p) for p in record_images(options)]
    listed = [resolve(img["path"]) for img in images]
    if named != listed:
        raise UserError(f"{where}: its images ({len(listed)}) are not exactly the {len(named)} file(s) its "
                        "options name (image, --with, --libvirt, --initrd)")
    for img, real in zip(images, listed, strict=True):
        try:
            actual = sha256_file(real)
        except UserError as exc:
            raise UserError(f"{where}: the recorded image: {exc}") from None
        if actual != img["sha256"]:
            raise UserError(f"{where}: the image {img['path']} changed since the recording (sha256 differs)")
    wall = data["host_events"].get("wall_clock", [])
    if _list(_int(0, (1 << 63) - 1), 1 << 24)(wall) is not None:
        raise UserError(f"{where}: host_events.wall_clock must be a list of clock readings (0..2^63-1)")
    outcome = data["outcome"]
    digests = {}
    for key in ("result", "exits", "serial", "state"):
        value = outcome.get(key)
        if type(value) is not str or not _HEX64.fullmatch(value):
            raise UserError(f"{where}: outcome.{key} must be a sha256 (64 hex digits)")
        digests[key] = value
    return {"format": FORMAT, "version": VERSION, "options": options,
            "images": [{"path": i["path"], "sha256": i["sha256"]} for i in images],
            "host_events": {"wall_clock": list(wall)}, "outcome": digests}
