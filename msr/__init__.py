"""Engine-free MSR emulation: registry of providers, access rules, #GP semantics, architectural MSRs."""

from msr.faults import Fault, GuestFault, gp, ud
from msr.registry import NOT_MINE, Access, Bound, MsrChain, MsrSpec, MsrTable

__all__ = ["NOT_MINE", "Access", "Bound", "Fault", "GuestFault", "MsrChain", "MsrSpec", "MsrTable", "gp", "ud"]
