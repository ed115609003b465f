"""viridian measure: the closed-form models hold exactly on small parameters; JSON/CSV schemas; the plot is a
PNG; the write-up; user errors. Runs the real lab guest (fixtures/guests/machine/lab.S)."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from viridian.errors import UserError
from viridian.lab.experiments import EXPERIMENTS
from viridian.lab.output import CSV_FIELDS, to_csv
from viridian.lab.runner import add_reductions, measure, points

CLI = [sys.executable, "-m", "viridian", "measure"]
EXACT = [("eoi", c, v) for c in ("xapic", "x2apic", "hv-msr", "hv-assist") for v in (1, 2)] + \
        [("ipi", c, v) for c in ("xapic", "x2apic", "hv-msr", "hypercall", "hypercall-ex") for v in (2, 3)] + \
        [("tpr", c, 1) for c in ("xapic", "x2apic", "hv-msr", "cr8")] + \
        [("tlb", c, v) for c in ("ipi-xapic", "ipi-x2apic", "hypercall", "hypercall-xmm") for v in (2, 3)]


@pytest.mark.parametrize(("exp", "config", "vcpus"), EXACT)
def test_model_is_exact(guests: Path, exp: str, config: str, vcpus: int) -> None:
    e = EXPERIMENTS[exp]
    (pt,) = points(e, [config], [vcpus], {"n": [3]})
    row = measure(pt)
    assert row["model"] is not None
    assert {k: row["figures"][k] for k in row["model"]} == row["model"], row["command"]
    assert row["model_matches"]


def test_ipi_targets_parameter(guests: Path) -> None:
    e = EXPERIMENTS["ipi"]
    rows = [measure(pt) for pt in points(e, ["xapic", "hypercall"], [4], {"n": [2], "k": [1, 3]})]
    sender = {(r["config"], r["params"]["k"]): r["figures"]["sender_exits"] for r in rows}
    assert sender == {("xapic", 1): 4, ("xapic", 3): 12, ("hypercall", 1): 2, ("hypercall", 3): 2}


def test_reductions_against_the_baseline(guests: Path) -> None:
    e = EXPERIMENTS["eoi"]
    rows = [measure(pt) for pt in points(e, ["xapic", "hv-assist"], [1], {"n": [4]})]
    add_reductions(e, rows)
    assert [r["reduction_pct"] for r in rows] == [0.0, 100.0]


def test_spin_and_idle_show_the_effect(guests: Path) -> None:
    spin = {r["config"]: r for r in (measure(pt) for pt in points(EXPERIMENTS["spin"], ["no-help", "notify-64"],
                                                                    [4], {"n": [20]}))}
    assert spin["notify-64"]["figures"]["notify_calls"] > 0
    assert spin["notify-64"]["figures"]["time_ms"] < spin["no-help"]["figures"]["time_ms"]
    assert spin["notify-64"]["figures"]["spin_iterations"] < spin["no-help"]["figures"]["spin_iterations"]
    idle = {r["config"]: r for r in (measure(pt) for pt in points(EXPERIMENTS["idle"], None, [1],
                                                                    {"n": [200_000]}))}
    assert idle["hlt"]["figures"]["busy_share_pct"] > 90 > 60 > idle["poll"]["figures"]["busy_share_pct"]
    assert idle["guest-idle"]["figures"]["busy_share_pct"] > 90


def test_cli_json_csv_plot_and_report(guests: Path, tmp_path: Path) -> None:
    png, js, cs = tmp_path / "eoi.png", tmp_path / "r.json", tmp_path / "r.csv"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # piped: the table keeps its natural width
    res = subprocess.run([*CLI, "eoi", "--vcpus", "1", "--param", "n=2", "--json-file", str(js), "--csv", str(cs),
                          "--plot", str(png)], capture_output=True, text=True, check=True, env=env)
    assert "== eoi:" in res.stdout and "baseline" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    row = data["experiments"]["eoi"][0]
    assert {"experiment", "config", "offer", "vcpus", "params", "operations", "figures", "per_operation", "model",
            "model_matches", "reduction_pct", "command", "command_zero"} <= set(row)
    lines = list(csv.reader(io.StringIO(cs.read_text())))
    assert tuple(lines[0]) == CSV_FIELDS and len(lines) > 4
    out = tmp_path / "rep"
    subprocess.run([*CLI, "tpr", "--report", str(out), "--param", "n=2", "--quiet"], check=True, capture_output=True)
    text = (out / "README.md").read_text()
    assert "## tpr" in text and "(tpr.png)" in text and "viridian run lab " in text
    assert (out / "tpr.png").exists() and (out / "results.json").exists()


def test_printed_command_reproduces_the_number(guests: Path, tmp_path: Path) -> None:
    (pt,) = points(EXPERIMENTS["tpr"], ["hv-msr"], [1], {"n": [5]})
    row = measure(pt)
    cmd = row["command"].split()
    assert cmd[:2] == ["viridian", "run"]
    # from a directory that is not the checkout: the command names the shipped guest, not a relative path
    res = subprocess.run([sys.executable, "-m", "viridian", *shlex.split(row["command"])[1:]],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    zero = subprocess.run([sys.executable, "-m", "viridian", *shlex.split(row["command_zero"])[1:]],
                          capture_output=True, text=True, check=True, cwd=tmp_path)
    a, b = json.loads(res.stdout), json.loads(zero.stdout)
    assert a["apic"]["tpr_exits"] - b["apic"]["tpr_exits"] == row["figures"]["tpr_exits"] == 10


@pytest.mark.parametrize(("args", "needle"), [(["nosuch"], "no experiment"), (["eoi", "--configs", "bogus"],
                                              "no configuration"), (["ipi", "--vcpus", "1"], "needs 2..256"),
                                              (["eoi", "--param", "zz=1"], "no parameter"),
                                              (["eoi", "--param", "n"], "KEY=VALUE"),
                                              (["all", "--plot", "x.png"], "--plot draws one")])
def test_user_errors(guests: Path, args: list[str], needle: str) -> None:
    res = subprocess.run([*CLI, *args], capture_output=True, text=True)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr


def test_points_validate(guests: Path) -> None:
    with pytest.raises(UserError):
        points(EXPERIMENTS["tlb"], None, [300], {})


def test_csv_of_nothing_is_a_header() -> None:
    assert to_csv({}).strip() == ",".join(CSV_FIELDS)
