"""viridian.report.text tables: rich-rendered, fitting a width, a wide matrix wrapped into column groups."""

from __future__ import annotations

import pytest

from viridian.report.text import table, table_wrapped, terminal_width


def test_natural_table_keeps_alignment_and_brackets() -> None:
    lines = table(["figure", "A", "B"], [["  cpuid", 12, 130], ["x [a] y", 1.5, 2]], right=(1, 2))
    assert lines[0].split() == ["figure", "A", "B"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].startswith("    cpuid") and lines[2].endswith(" 12  130")  # leading spaces kept, right-aligned
    assert "x [a] y" in lines[3]  # not taken for rich markup


@pytest.mark.parametrize("width", [40, 60, 100])
def test_table_fits_the_width(width: int) -> None:
    lines = table(["name", "long text"], [["a" * 30, "b " * 60]], width=width)
    assert max(map(len, lines)) <= width
    assert "".join(lines).count("b") == 60  # wrapped, nothing lost


@pytest.mark.parametrize("width", [50, 80, 120])
def test_matrix_wraps_into_groups_that_fit(width: int) -> None:
    head = ["area", *[f"offer{i} x{n}" for i in range(4) for n in (1, 2, 4, 65)]]
    body = [[area, *[f"{k}/0/1" for k in range(16)]] for area in ("apic", "hypercall", "total")]
    lines = table_wrapped(head, body, right=range(1, 17), width=width)
    assert max(map(len, lines)) <= width
    headers = [w for line in lines if line.strip().startswith("area") for w in line.split()[1:]]
    assert " ".join(headers).split() == " ".join(head[1:]).split()  # every column once, in order
    groups = (len(lines) + 1) // 6  # header, rule, 3 rows, a blank line between groups
    assert groups >= 2 and sum(1 for line in lines if line.strip().startswith("total")) == groups


def test_matrix_that_fits_is_one_table() -> None:
    head = ["area", *[f"c{i}" for i in range(30)]]
    assert len(table_wrapped(head, [["x", *range(30)]], width=10_000)) == 3


def test_columns_env_sets_the_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "77")
    assert terminal_width() == 77
