"""The command line's side of the checked inputs and outputs (viridian/inputs.py): argparse types that turn a
check's UserError into argparse's one-line error. The checks themselves are re-exported for the subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from viridian.errors import UserError
from viridian.inputs import (
    CONFIG_MAX,
    IMAGE_MAX,
    JSON_DEPTH,
    RECORD_MAX,
    SNAPSHOT_MAX,
    check_output,
    check_output_dir,
    check_text,
    load_json,
    open_input,
    read_input,
    sha256_input,
)


def _argtype(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse ``type=``: a UserError becomes argparse's one-line 'argument --x: ...' error."""

    def convert(value: str) -> str:
        try:
            return check(value)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc).strip()) from None

    return convert


# argparse types for the subcommands' options
# (argparse names the option: "argument --stats-json: out/ is a directory (give a file name)")
out_file = _argtype(lambda v: check_output(v, ""))  # a file or '-' (stdout/stderr, as the option says)
out_file_named = _argtype(lambda v: check_output(v, "", dash=False))  # a file; '-' is refused
out_dir = _argtype(lambda v: check_output_dir(v, ""))
text = _argtype(lambda v: check_text(v, ""))

__all__ = ["CONFIG_MAX", "IMAGE_MAX", "JSON_DEPTH", "RECORD_MAX", "SNAPSHOT_MAX", "check_output",
           "check_output_dir", "check_text", "load_json", "open_input", "out_dir", "out_file",
           "out_file_named", "read_input", "sha256_input", "text"]
