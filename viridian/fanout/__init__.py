"""Fan-out of independent, deterministic runs over processes and machines (issue 21): see executor.py."""

from viridian.fanout.executor import Cell, CellResult, fan_out, make_executor

__all__ = ["Cell", "CellResult", "fan_out", "make_executor"]
