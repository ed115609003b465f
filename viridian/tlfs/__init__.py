"""Layer 1 — TLFS definitions only (no state): CPUID bits, MSR indices and layouts, hypercall codes,
HV_STATUS, guest-memory structures as construct Structs, guest OS ID encoding."""
